"""The LLM evolution tree's data: load and validate ``docs/llm/models.yml``.

A library, not a figure script (no ``OUTPUTS``): figures/pages/llm/llm_tree.py draws the tree and
writes the page's table from :func:`load`, and the tests hold the data to its rules through it.
Every problem raises :class:`ModelsError` with one line naming the file, the entry and the field.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from figures.registry import DOCS_DIR, Paper
from figures.registry import load as load_registry

DEFAULT_PATH = DOCS_DIR / "llm" / "models.yml"
BRANCHES = ("encoder-only", "encoder-decoder", "decoder-only")
WEIGHTS = ("open", "closed")
KEYS = ("id", "name", "year", "month", "branch", "organization", "weights", "parents", "arxiv", "registry")
#: keys an entry has only where they apply: ``relation`` with parents, ``released`` when the model came before its paper
OPTIONAL = ("relation", "released")
#: what a parent edge may mean (models.yml's edge rule): fine-tuned or distilled from the parent, or presented as
#: the parent's next version (same architecture, a new training run)
RELATIONS = ("fine-tuned", "distilled", "next-version")
FIRST_YEAR = 2017  # the Transformer; every model here comes after it
#: the paper may follow the model's first public release (weights, product) by at most this many
#: months; it can never precede it, since a paper is itself a public release.
MAX_PAPER_LAG_MONTHS = 6

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ARXIV_RE = re.compile(r"^(?P<yy>\d{2})(?P<mm>\d{2})\.\d{4,5}$")


class ModelsError(ValueError):
    """models.yml is malformed or contradicts itself or the paper registry."""


@dataclass(frozen=True)
class Model:
    """One validated entry of models.yml (see the comment block at its top)."""

    id: str
    name: str
    year: int
    month: int | None
    branch: str
    organization: str
    weights: str
    parents: tuple[str, ...]
    arxiv: str | None
    registry: str | None
    relation: str | None = None
    released: str | None = None

    @property
    def when(self) -> float:
        """Time in years for plotting: mid-month, or mid-year where the month is unknown."""
        return self.year + ((self.month - 0.5) / 12 if self.month else 0.5)


def arxiv_lag_months(arxiv_id: str, year: int, month: int) -> int:
    """Months from the model's first release to its paper's arXiv number (YYMM)."""
    m = _ARXIV_RE.match(arxiv_id)
    return (2000 + int(m["yy"])) * 12 + int(m["mm"]) - (year * 12 + month)


def _check_entry(item: Any, source: str, index: int, this_year: int) -> Model:
    if not isinstance(item, dict):
        raise ModelsError(f"{source}: entry #{index + 1}: must be a mapping")
    where = f"{source}: {item.get('id') or f'entry #{index + 1}'}"
    missing = [k for k in KEYS if k not in item]
    unknown = sorted(set(item) - set(KEYS) - set(OPTIONAL))
    if missing or unknown:
        raise ModelsError(f"{where}: missing key(s) {missing}, unknown key(s) {unknown}")
    for key in ("id", "name", "organization"):
        if not isinstance(item[key], str) or not item[key].strip():
            raise ModelsError(f"{where}.{key}: must be a non-empty string")
    if not _ID_RE.match(item["id"]):
        raise ModelsError(f"{where}.id: must match [a-z0-9][a-z0-9-]*")
    year, month = item["year"], item["month"]
    if type(year) is not int or not FIRST_YEAR <= year <= this_year:
        raise ModelsError(f"{where}.year: must be an integer in [{FIRST_YEAR}, {this_year}], got {year!r}")
    if month is not None and (type(month) is not int or not 1 <= month <= 12):
        raise ModelsError(f"{where}.month: must be 1..12 or null, got {month!r}")
    if item["branch"] not in BRANCHES:
        raise ModelsError(f"{where}.branch: must be one of {', '.join(BRANCHES)}, got {item['branch']!r}")
    if item["weights"] not in WEIGHTS:
        raise ModelsError(f"{where}.weights: must be open or closed, got {item['weights']!r}")
    parents = item["parents"]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ModelsError(f"{where}.parents: must be a list of ids")
    relation = item.get("relation")
    if parents and relation not in RELATIONS:
        raise ModelsError(f"{where}.relation: an entry with parents says how it was built from them, one of "
                          f"{', '.join(RELATIONS)}; got {relation!r}")
    if not parents and relation is not None:
        raise ModelsError(f"{where}.relation: only an entry with parents has one")
    arxiv, released = item["arxiv"], item.get("released")
    if released is not None and (not isinstance(released, str) or not released.startswith("https://")):
        raise ModelsError(f"{where}.released: must be the https:// address of the earlier release")
    if arxiv is not None:
        if not isinstance(arxiv, str) or not _ARXIV_RE.match(arxiv):
            raise ModelsError(f"{where}.arxiv: not a new-style arXiv id as a quoted string: {arxiv!r}")
        lag = arxiv_lag_months(arxiv, year, month) if month is not None else None
        if lag is not None and not 0 <= lag <= MAX_PAPER_LAG_MONTHS:
            raise ModelsError(f"{where}.arxiv: {arxiv} is not 0..{MAX_PAPER_LAG_MONTHS} months after "
                              f"{year}-{month:02d}")
        if lag is not None and (lag > 0) != (released is not None):
            raise ModelsError(f"{where}.released: dated {year}-{month:02d}, {lag} months before its paper "
                              f"({arxiv}): say where it was released first" if lag else
                              f"{where}.released: dated by its paper ({arxiv}), so no earlier release")
    if item["registry"] is not None and not isinstance(item["registry"], str):
        raise ModelsError(f"{where}.registry: must be a registry id or null")
    return Model(item["id"], item["name"], year, month, item["branch"], item["organization"],
                 item["weights"], tuple(parents), arxiv, item["registry"], relation, released)


def _check_registry(model: Model, where: str, registry: Mapping[str, Paper], by_arxiv: dict[str, str]) -> None:
    """A model with a registry id has exactly that entry's arXiv id and date; an arXiv id that is in
    the registry belongs to the model whose ``registry`` names that entry."""
    if model.registry is not None:
        paper = registry.get(model.registry)
        if paper is None:
            raise ModelsError(f"{where}.registry: no entry {model.registry!r} in docs/papers.yml")
        if paper.arxiv != model.arxiv:
            raise ModelsError(f"{where}.arxiv: {model.arxiv!r} differs from registry entry "
                              f"{paper.id!r} ({paper.arxiv!r})")
        # a model released before its paper (``released``) is dated by that release, its registry entry by the paper
        dated_by = (model.year, model.month) if model.released is None else None
        if paper.date is not None and dated_by and (paper.date.year, paper.date.month) != dated_by:
            raise ModelsError(f"{where}.month: {model.year}-{model.month} differs from registry entry "
                              f"{paper.id!r} ({paper.date.isoformat()})")
    if model.arxiv in by_arxiv and model.registry != by_arxiv[model.arxiv]:
        raise ModelsError(f"{where}.registry: arXiv {model.arxiv} is registry entry "
                          f"{by_arxiv[model.arxiv]!r}; set registry: {by_arxiv[model.arxiv]}")


def parse(data: Any, *, registry: Mapping[str, Paper], source: str = "models.yml",
          this_year: int | None = None) -> dict[str, Model]:
    """Validate parsed YAML; return ``{id: Model}`` in file order."""
    this_year = _dt.date.today().year if this_year is None else this_year
    if not isinstance(data, list):
        raise ModelsError(f"{source}: must be a YAML list of models")
    by_arxiv = {p.arxiv: p.id for p in registry.values() if p.arxiv}
    models: dict[str, Model] = {}
    names: set[str] = set()
    for index, item in enumerate(data):
        model = _check_entry(item, source, index, this_year)
        where = f"{source}: {model.id}"
        if model.id in models:
            raise ModelsError(f"{where}.id: duplicate id")
        if model.name in names:
            raise ModelsError(f"{where}.name: duplicate name {model.name!r}")
        names.add(model.name)
        _check_registry(model, where, registry, by_arxiv)
        models[model.id] = model
    for model in models.values():
        where = f"{source}: {model.id}"
        for pid in model.parents:
            parent = models.get(pid)
            if parent is None:
                raise ModelsError(f"{where}.parents: no model {pid!r} in this file")
            later = (parent.year, parent.month or 0) > (model.year, model.month or 12)
            if later:
                raise ModelsError(f"{where}.parents: {pid} ({parent.year}-{parent.month}) is later than "
                                  f"{model.id} ({model.year}-{model.month})")
    return models


def load(path: Path | str = DEFAULT_PATH, *, registry: Mapping[str, Paper] | None = None) -> dict[str, Model]:
    """Read and validate models.yml (against ``docs/papers.yml`` unless ``registry`` is given)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ModelsError(f"{path.name}: not valid YAML: {' '.join(str(err).split())}") from None
    return parse(data, registry=load_registry() if registry is None else registry, source=path.name)
