"""The 勘误 page's table: every mistake of the seed note, generated from the data the pages use.

Rows come from two files: the ``seed`` field of each entry of ``docs/papers.yml`` (read with
:mod:`figures.registry`) and ``docs/errata.yml`` for the mistakes that a single registry field
does not hold. Each row says what the note says, what is right, the source and where the site
discusses it. Links are relative to ``docs/errata.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from figures.registry import DOCS_DIR, Paper, RegistryError, load, paper_href, relative_href

PAGE = "errata.md"
OUTPUTS = ("errata_table.md",)
INPUTS = ("docs/papers.yml", "docs/errata.yml")
ERRATA_PATH = DOCS_DIR / "errata.yml"
#: keys of an errata.yml item; ``url`` (an https:// source outside the registry) is optional
ERRATA_KEYS = ("id", "note", "fix", "sources", "discussed")
#: the note's words as a registry seed field quotes them: 「…」 or 《…》
_QUOTE = re.compile(r"「([^」]+)」|《([^》]+)》")


def seed_quote(paper: Paper) -> str:
    """The note's words in a registry ``seed`` field: its first 「…」 or 《…》 quotation."""
    m = _QUOTE.search(paper.seed or "")
    if m is None:
        raise RegistryError(f"{paper.id}.seed: quotes none of the note's words in 「」 or 《》")
    return m.group(1) or m.group(2)


def load_errata(path: Path | str = ERRATA_PATH, registry: Mapping[str, Paper] | None = None) -> list[dict[str, Any]]:
    """Read and validate ``docs/errata.yml``: a list of items with :data:`ERRATA_KEYS` (and
    optional ``url``). ``sources`` are registry ids, ``discussed`` pages relative to docs/.
    Any problem raises :class:`RegistryError` naming the item and the field."""
    registry = load() if registry is None else registry
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise RegistryError(f"{path}: must be a YAML list of items")
    items, seen = [], set()
    for index, item in enumerate(data):
        where = f"{path}: item #{index + 1}"
        if not isinstance(item, dict):
            raise RegistryError(f"{where}: must be a mapping")
        where = f"{path}: {item.get('id', f'item #{index + 1}')}"
        missing = [k for k in ERRATA_KEYS if k not in item]
        unknown = sorted(set(item) - set(ERRATA_KEYS) - {"url"})
        if missing or unknown:
            raise RegistryError(f"{where}: missing key(s) {missing}, unknown key(s) {unknown}")
        for key in ("id", "note", "fix"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise RegistryError(f"{where}.{key}: must be a non-empty string")
        if item["id"] in seen:
            raise RegistryError(f"{where}.id: duplicate id")
        seen.add(item["id"])
        for key in ("sources", "discussed"):
            if not isinstance(item[key], list) or not all(isinstance(v, str) for v in item[key]):
                raise RegistryError(f"{where}.{key}: must be a list of strings")
        bad = [s for s in item["sources"] if s not in registry]
        if bad:
            raise RegistryError(f"{where}.sources: unknown paper id(s) {bad}")
        url = item.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith("https://")):
            raise RegistryError(f"{where}.url: must be an https:// URL")
        if not item["sources"] and url is None:
            raise RegistryError(f"{where}.sources: give at least one paper id or a url")
        bad = [p for p in item["discussed"] if not (DOCS_DIR / p).is_file()]
        if bad:
            raise RegistryError(f"{where}.discussed: no such page under docs/: {bad}")
        items.append(item)
    return items


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _page_link(page: str, registry: Mapping[str, Paper]) -> str:
    """A link to a page of the site, named after the registry papers it covers ("DDPM 页")."""
    names = [p.short for p in registry.values() if p.page == page]
    return f"[{'、'.join(names) + ' 页' if names else page}]({relative_href(page, PAGE)})"


def rows(registry: Mapping[str, Paper], errata: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(note's words, correction, source, where discussed) for every registry ``seed`` field,
    in registry order, then every errata.yml item, in file order."""
    out = []
    for p in registry.values():
        if p.seed:
            where = _page_link(p.page, registry) if p.page else "—"
            out.append((seed_quote(p), p.seed, f"[{p.short}]({paper_href(p, PAGE)})", where))
    for item in errata:
        sources = [f"[{registry[s].short}]({paper_href(registry[s], PAGE)})" for s in item["sources"]]
        if item.get("url"):
            sources.append(f"[{item['url'].split('/')[2]}]({item['url']})")
        out.append((item["note"], item["fix"], "、".join(sources),
                    "、".join(_page_link(page, registry) for page in item["discussed"]) or "—"))
    return out


def table(registry: Mapping[str, Paper] | None = None, errata_path: Path | str = ERRATA_PATH) -> str:
    """The Markdown table the 勘误 page includes."""
    registry = load() if registry is None else registry
    lines = ["| 种子笔记原文 | 更正 | 出处 | 本站讨论 |", "| --- | --- | --- | --- |"]
    for note, fix, source, where in rows(registry, load_errata(errata_path, registry)):
        lines.append(f"| 「{_cell(note)}」 | {_cell(fix)} | {source} | {where} |")
    return "\n".join(lines) + "\n"


def make(out: Path, preset: str) -> None:
    (out / "errata_table.md").write_text(table(), encoding="utf-8")
