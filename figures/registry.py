"""The paper registry: load and validate ``docs/papers.yml`` and render from it.

A library, not a figure script (it defines no ``OUTPUTS``). Everything the site says
about a paper's bibliographic facts is generated here from the one data file:

- :func:`load` / :func:`loads` / :func:`parse` read and validate the registry and
  return ``{id: Paper}`` in file order; any problem raises :class:`RegistryError`
  naming the entry and the field.
- :func:`paper_card` renders the Material admonition at the top of a paper page.
- :func:`bibliography` renders the bibliography page body (anchors ``#<id>``).
- :func:`lineage_links` gives the previous/next papers in the lineage as links.
- :func:`timeline_rows` gives the rows the timeline figures plot.
- :func:`arxiv_month_ok`, :func:`find_arxiv_ids`, :func:`front_matter`,
  :func:`paper_pages` are the checks the tests (and the site build) share.

Every link is written relative to the page it appears on, so pages in subfolders
(``diffusion/ddpm.md``) get ``../bibliography.md#ncsn`` and ``../api/ddpm.md``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
DEFAULT_PATH = DOCS_DIR / "papers.yml"

#: Page (relative to docs/) that holds the bibliography; entries are anchored by id.
BIBLIOGRAPHY_PAGE = "bibliography.md"

#: Allowed branches, in the order the bibliography lists them, with Chinese headings.
BRANCHES: dict[str, str] = {
    "background": "背景：其他生成模型",
    "diffusion-foundations": "扩散模型的基础",
    "efficient-sampling": "高效采样",
    "guided-diffusion": "引导扩散",
    "clip-diffusion": "CLIP + 扩散",
    "latent-diffusion": "潜空间扩散（LDM）",
    "after-2022": "2022 年之后：流匹配、DiT 与一致性模型",
    "side-clip": "辅线：CLIP",
    "fine-tuning": "微调",
    "llm": "大语言模型（LLM）进化树",
    "survey": "综述",
}

REQUIRED_KEYS = (
    "id", "title", "short", "authors", "arxiv", "date", "venue", "url",
    "branch", "predecessors", "page", "refimpl", "zh",
)
OPTIONAL_KEYS = ("seed",)

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ARXIV_RE = re.compile(r"^(?P<yy>\d{2})(?P<mm>\d{2})\.(?P<num>\d{4,5})$")
_MODULE_RE = re.compile(r"^refimpl(\.[a-z_][a-z0-9_]*)+$")
# arXiv links on pages: abs or pdf, optional version and ".pdf" suffix.
_ARXIV_LINK_RE = re.compile(
    r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})(?:v\d+)?(?:\.pdf)?", re.IGNORECASE
)
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class RegistryError(ValueError):
    """The registry file is malformed or contradicts itself (message names entry and field)."""


@dataclass(frozen=True)
class Paper:
    """One validated registry entry (see the comment block at the top of papers.yml)."""

    id: str
    title: str
    short: str
    authors: tuple[str, ...]
    arxiv: str | None
    date: _dt.date | None
    venue: str | None
    url: str | None
    branch: str
    predecessors: tuple[str, ...]
    page: str | None
    refimpl: tuple[str, ...]
    zh: str
    seed: str | None = None

    @property
    def arxiv_url(self) -> str | None:
        """``https://arxiv.org/abs/<id>`` or None for works not on arXiv."""
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    @property
    def year(self) -> int | None:
        return self.date.year if self.date else None


class Link(NamedTuple):
    """A link to a paper, already relative to the page it is written on."""

    id: str
    short: str
    href: str


# --------------------------------------------------------------------------- checks


def arxiv_month_ok(arxiv_id: str, date: _dt.date | str) -> bool:
    """True if a new-style arXiv id's YYMM is the date's year-month or the month after.

    arXiv numbers a paper by the month it is announced in, so a paper submitted at the
    end of a month can carry the next month's number: CLIP, submitted 2021-02-26, is
    ``2103.00020``. Any other gap means the id or the date is wrong.
    """
    m = _ARXIV_RE.match(str(arxiv_id))
    if not m:
        raise RegistryError(f"not a new-style arXiv id (YYMM.NNNNN): {arxiv_id!r}")
    d = _to_date(date)
    id_month = (2000 + int(m["yy"])) * 12 + int(m["mm"]) - 1
    date_month = d.year * 12 + d.month - 1
    return id_month - date_month in (0, 1)


def find_arxiv_ids(text: str) -> list[str]:
    """arXiv ids of every ``arxiv.org/abs/ID`` or ``arxiv.org/pdf/ID`` link in ``text``.

    Version suffixes (``v1``) and ``.pdf`` are dropped; order of first appearance, no
    duplicates.
    """
    seen: dict[str, None] = {}
    for m in _ARXIV_LINK_RE.finditer(text):
        seen.setdefault(m.group(1), None)
    return list(seen)


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a Markdown page as a dict ({} if it has none)."""
    m = _FRONT_MATTER_RE.match(text)
    if not m:
        return {}
    data = yaml.safe_load(m.group(1))
    return data if isinstance(data, dict) else {}


def declared_papers(meta: dict[str, Any]) -> list[str]:
    """The paper ids a page's front matter declares: ``paper: <id>`` or, for a page that covers
    several papers, ``paper: [<id>, <id>, ...]`` (one card each, in that order)."""
    value = meta.get("paper")
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def paper_pages(docs_dir: Path | str = DOCS_DIR) -> dict[str, list[str]]:
    """``{page path relative to docs/: [paper ids]}`` for every page whose front matter
    declares ``paper:`` (see :func:`declared_papers`). Pages without that key are not paper pages."""
    docs_dir = Path(docs_dir)
    out: dict[str, list[str]] = {}
    for md in sorted(docs_dir.rglob("*.md")):
        ids = declared_papers(front_matter(md.read_text(encoding="utf-8")))
        if ids:
            out[md.relative_to(docs_dir).as_posix()] = ids
    return out


# --------------------------------------------------------------------------- loading


def load(path: Path | str | None = None) -> dict[str, Paper]:
    """Read and validate the registry file (default ``docs/papers.yml``).

    Returns ``{id: Paper}`` in file order. Raises :class:`RegistryError` on any problem.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc}") from exc
    return loads(text, source=str(path))


def loads(text: str, *, source: str = "<string>") -> dict[str, Paper]:
    """Validate a registry given as YAML text (see :func:`load`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: invalid YAML: {exc}") from exc
    except ValueError as exc:  # PyYAML builds dates eagerly: 2020-02-30 fails here
        raise RegistryError(f"{source}: not a real date ({exc})") from exc
    return parse(data, source=source)


def parse(data: Any, *, source: str = "<data>", today: _dt.date | None = None) -> dict[str, Paper]:
    """Validate already-parsed registry data (a list of mappings) and build the papers."""
    today = today or _dt.date.today()
    if not isinstance(data, list):
        raise RegistryError(
            f"{source}: the registry must be a YAML list of paper entries, got {type(data).__name__}"
        )
    papers: dict[str, Paper] = {}
    arxiv_owner: dict[str, str] = {}
    for index, entry in enumerate(data):
        paper = _parse_entry(entry, index, source, today)
        if paper.id in papers:
            raise RegistryError(f"{source}: duplicate id {paper.id!r} (entry #{index + 1})")
        if paper.arxiv is not None:
            if paper.arxiv in arxiv_owner:
                raise RegistryError(
                    f"{source}: duplicate arXiv id {paper.arxiv} in {arxiv_owner[paper.arxiv]!r} "
                    f"and {paper.id!r}"
                )
            arxiv_owner[paper.arxiv] = paper.id
        papers[paper.id] = paper

    for paper in papers.values():
        for pred in paper.predecessors:
            if pred not in papers:
                raise RegistryError(
                    f"{source}: {paper.id}.predecessors: unknown paper id {pred!r}"
                )
    _check_acyclic(papers, source)
    return papers


def _parse_entry(entry: Any, index: int, source: str, today: _dt.date) -> Paper:
    where = f"{source}: entry #{index + 1}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: must be a mapping, got {type(entry).__name__}")
    pid = entry.get("id")
    if not isinstance(pid, str) or not _ID_RE.match(pid):
        raise RegistryError(f"{where}: id must match {_ID_RE.pattern}, got {pid!r}")
    where = f"{source}: {pid}"

    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise RegistryError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise RegistryError(f"{where}: missing key(s) {', '.join(missing)} (use null if unknown)")

    title = _text(entry, "title", where)
    short = _text(entry, "short", where)
    zh = _text(entry, "zh", where)
    seed = _text(entry, "seed", where, optional=True) if "seed" in entry else None
    venue = _text(entry, "venue", where, optional=True)

    authors = entry["authors"]
    if not isinstance(authors, list) or not authors or not all(
        isinstance(a, str) and a.strip() for a in authors
    ):
        raise RegistryError(f"{where}.authors: must be a non-empty list of names")
    if len(set(authors)) != len(authors):
        raise RegistryError(f"{where}.authors: an author is listed twice")

    arxiv = entry["arxiv"]
    if arxiv is not None:
        if not isinstance(arxiv, str):
            raise RegistryError(
                f"{where}.arxiv: must be a quoted string like \"2006.11239\", got "
                f"{type(arxiv).__name__} {arxiv!r} (unquoted ids are read as numbers)"
            )
        _check_arxiv_format(arxiv, f"{where}.arxiv")

    date = entry["date"]
    if date is not None:
        try:
            date = _to_date(date)
        except RegistryError as exc:
            raise RegistryError(f"{where}.date: {exc}") from None
        if date > today:
            raise RegistryError(f"{where}.date: {date.isoformat()} is in the future")
        if arxiv is not None and not arxiv_month_ok(arxiv, date):
            raise RegistryError(
                f"{where}: arXiv id {arxiv} (month 20{arxiv[:2]}-{arxiv[2:4]}) does not match "
                f"date {date.isoformat()}: the id's YYMM must be the date's month or the next"
            )

    url = entry["url"]
    if url is not None:
        if not isinstance(url, str) or not url.startswith("https://"):
            raise RegistryError(f"{where}.url: must be an https:// URL or null, got {url!r}")
        if arxiv is not None:
            raise RegistryError(f"{where}.url: only for works without an arXiv id (set it to null)")

    branch = entry["branch"]
    if branch not in BRANCHES:
        raise RegistryError(
            f"{where}.branch: {branch!r} is not one of {', '.join(BRANCHES)}"
        )

    preds = entry["predecessors"]
    if not isinstance(preds, list) or not all(isinstance(p, str) for p in preds):
        raise RegistryError(f"{where}.predecessors: must be a list of paper ids")
    if pid in preds:
        raise RegistryError(f"{where}.predecessors: a paper cannot precede itself")
    if len(set(preds)) != len(preds):
        raise RegistryError(f"{where}.predecessors: duplicate id")

    page = entry["page"]
    if page is not None:
        if (
            not isinstance(page, str)
            or not page.endswith(".md")
            or page.startswith(("/", "docs/"))
            or "\\" in page
            or ".." in page.split("/")
        ):
            raise RegistryError(
                f"{where}.page: must be a .md path relative to docs/ (e.g. \"diffusion/ddpm.md\"), "
                f"got {page!r}"
            )

    refimpl = entry["refimpl"]
    if not isinstance(refimpl, list) or not all(
        isinstance(m, str) and _MODULE_RE.match(m) for m in refimpl
    ):
        raise RegistryError(
            f"{where}.refimpl: must be a list of module names like \"refimpl.ddpm\", got {refimpl!r}"
        )

    return Paper(
        id=pid, title=title, short=short, authors=tuple(authors), arxiv=arxiv, date=date,
        venue=venue, url=url, branch=branch, predecessors=tuple(preds), page=page,
        refimpl=tuple(refimpl), zh=zh, seed=seed,
    )


def _text(entry: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    return value.strip()


def _check_arxiv_format(arxiv: str, where: str) -> None:
    m = _ARXIV_RE.match(arxiv)
    if not m:
        raise RegistryError(f"{where}: {arxiv!r} is not a new-style arXiv id YYMM.NNNNN")
    yymm, digits = m["yy"] + m["mm"], len(m["num"])
    if not 1 <= int(m["mm"]) <= 12:
        raise RegistryError(f"{where}: {arxiv!r} has month {m['mm']}")
    if int(yymm) < 704:
        raise RegistryError(f"{where}: {arxiv!r}: new-style ids start in 0704")
    expected = 5 if int(yymm) >= 1501 else 4
    if digits != expected:
        raise RegistryError(
            f"{where}: {arxiv!r}: ids from {'2015' if expected == 5 else 'before 2015'} "
            f"have {expected} digits after the dot"
        )


def _to_date(value: Any) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return _dt.date.fromisoformat(value)
        except ValueError as exc:
            raise RegistryError(f"{value!r} is not a real date ({exc})") from None
    raise RegistryError(f"expected a date YYYY-MM-DD, got {value!r}")


def _check_acyclic(papers: Mapping[str, Paper], source: str) -> None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(pid: str, path: list[str]) -> None:
        if state.get(pid) == 2:
            return
        if state.get(pid) == 1:
            cycle = path[path.index(pid):] + [pid]
            raise RegistryError(f"{source}: predecessor cycle: {' -> '.join(cycle)}")
        state[pid] = 1
        for pred in papers[pid].predecessors:
            visit(pred, path + [pid])
        state[pid] = 2

    for pid in papers:
        visit(pid, [])


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int) -> dict[str, Paper]:
    return load(path)


def _registry(registry: Mapping[str, Paper] | None) -> Mapping[str, Paper]:
    """The given registry, or the default file (re-read when it changes)."""
    if registry is not None:
        return registry
    return _cached(str(DEFAULT_PATH), DEFAULT_PATH.stat().st_mtime_ns)


def _get(registry: Mapping[str, Paper], paper_id: str) -> Paper:
    try:
        return registry[paper_id]
    except KeyError:
        raise RegistryError(f"unknown paper id {paper_id!r}") from None


# --------------------------------------------------------------------------- rendering


def relative_href(target: str, page_path: str) -> str:
    """Link from the page ``page_path`` to ``target`` (both relative to docs/)."""
    start = posixpath.dirname(page_path) or "."
    target_path, sep, anchor = target.partition("#")
    rel = posixpath.relpath(target_path, start)
    return rel + sep + anchor


def paper_href(paper: Paper, page_path: str) -> str:
    """Where a mention of ``paper`` on ``page_path`` should point: its page if it has
    one, else its entry on the bibliography page."""
    target = paper.page if paper.page else f"{BIBLIOGRAPHY_PAGE}#{paper.id}"
    return relative_href(target, page_path)


def api_page(module: str) -> str:
    """API reference page (relative to docs/) of a refimpl module: ``refimpl.ddpm`` ->
    ``api/ddpm.md``."""
    if not _MODULE_RE.match(module):
        raise RegistryError(f"not a refimpl module name: {module!r}")
    return "api/" + module.split(".", 1)[1].replace(".", "/") + ".md"


def _sort_key(paper: Paper) -> tuple:
    return (paper.date is None, paper.date or _dt.date.max, paper.id)


def successors(paper_id: str, registry: Mapping[str, Paper] | None = None) -> list[Paper]:
    """Papers that list ``paper_id`` among their predecessors, oldest first."""
    reg = _registry(registry)
    _get(reg, paper_id)
    return sorted((p for p in reg.values() if paper_id in p.predecessors), key=_sort_key)


def lineage_links(
    paper_id: str, page_path: str, registry: Mapping[str, Paper] | None = None
) -> dict[str, list[Link]]:
    """Previous and next papers in the lineage, as links relative to ``page_path``.

    ``{"previous": [...predecessors...], "next": [...successors, oldest first...]}``;
    each :class:`Link` points to the paper's page if it has one, else to its
    bibliography entry.
    """
    reg = _registry(registry)
    paper = _get(reg, paper_id)
    prev = [reg[p] for p in paper.predecessors]
    nxt = successors(paper_id, reg)
    as_link = lambda p: Link(p.id, p.short, paper_href(p, page_path))  # noqa: E731
    return {"previous": [as_link(p) for p in prev], "next": [as_link(p) for p in nxt]}


def lineage_markdown(
    paper_id: str, page_path: str, registry: Mapping[str, Paper] | None = None
) -> str:
    """One line of Markdown: ``前驱：A、B；后继：C`` (``无`` where empty)."""
    links = lineage_links(paper_id, page_path, registry)

    def fmt(items: list[Link]) -> str:
        return "、".join(f"[{link.short}]({link.href})" for link in items) or "无"

    return f"前驱：{fmt(links['previous'])}；后继：{fmt(links['next'])}"


def _authors(paper: Paper) -> str:
    return ", ".join(paper.authors)


def paper_card(
    paper_id: str, page_path: str, registry: Mapping[str, Paper] | None = None
) -> str:
    """Markdown for the paper card at the top of ``page_path`` (a Material admonition).

    Contains the title, authors, first-version date, venue, arXiv link (or the official
    location for works not on arXiv), our implementation (module linked to its API
    page) and the position in the lineage. Unverified fields say so instead of guessing.
    """
    reg = _registry(registry)
    p = _get(reg, paper_id)
    if p.arxiv:
        date_label = "arXiv 首版日期"
        source = f"**arXiv**：[{p.arxiv}]({p.arxiv_url})"
    else:
        date_label = "发布日期"
        source = f"**原文**：[官方发布页]({p.url})" if p.url else "**原文**：未核实"
    date = p.date.isoformat() if p.date else "未核实"
    venue = p.venue or "—"
    if p.refimpl:
        impl = "、".join(
            f"[`{m}`]({relative_href(api_page(m), page_path)})" for m in p.refimpl
        )
    else:
        impl = "暂无"
    lines = [
        f"**标题**：{p.title}",
        f"**作者**：{_authors(p)}",
        f"**{date_label}**：{date}",
        f"**发表于**：{venue}",
        source,
        f"**我们的实现**：{impl}",
        f"**谱系位置**：{lineage_markdown(paper_id, page_path, reg)}",
    ]
    body = "\n".join(f"    - {line}" for line in lines)
    return f'!!! abstract "论文卡片：{p.short}"\n\n{body}\n'


def bibliography(
    registry: Mapping[str, Paper] | None = None,
    *,
    page_path: str = BIBLIOGRAPHY_PAGE,
    heading_level: int = 2,
) -> str:
    """Markdown body of the bibliography page: one section per branch (Chinese
    heading, fixed order), entries sorted by date, each anchored ``#<id>``.

    Each entry: authors (year). **title**. venue. arXiv link and first-version date (or
    the official location), and a link to our page if the paper has one. Links are
    relative to ``page_path``.
    """
    reg = _registry(registry)
    hashes = "#" * heading_level
    out: list[str] = []
    for branch, heading in BRANCHES.items():
        members = sorted((p for p in reg.values() if p.branch == branch), key=_sort_key)
        if not members:
            continue
        out.append(f"{hashes} {heading}\n")
        for p in members:
            year = str(p.year) if p.year else "年份未核实"
            parts = [f'<a id="{p.id}"></a>{_authors(p)}（{year}）. **{p.title}**.']
            if p.venue:
                parts.append(f"*{p.venue}*.")
            if p.arxiv:
                first = p.date.isoformat() if p.date else "未核实"
                parts.append(f"[arXiv:{p.arxiv}]({p.arxiv_url})（首版 {first}）。")
            elif p.url:
                first = p.date.isoformat() if p.date else "未核实"
                parts.append(f"[原文]({p.url})（发布于 {first}）。")
            if p.page:
                parts.append(f"本站页面：[{p.short}]({relative_href(p.page, page_path)})")
            out.append("- " + " ".join(parts))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def timeline_rows(
    branches: Iterable[str] | None = None, registry: Mapping[str, Paper] | None = None
) -> list[dict[str, Any]]:
    """Rows for the timeline figures, oldest first: dicts with ``id``, ``short``,
    ``date`` (``datetime.date``), ``branch`` and ``predecessors`` (list of ids).

    ``branches`` restricts to those branches (unknown names raise). Papers without a
    verified date are left out, since they cannot be placed on a time axis.
    """
    reg = _registry(registry)
    wanted = None
    if branches is not None:
        wanted = set(branches)
        bad = wanted - set(BRANCHES)
        if bad:
            raise RegistryError(f"unknown branch(es): {', '.join(sorted(bad))}")
    rows = []
    for p in sorted(reg.values(), key=_sort_key):
        if p.date is None or (wanted is not None and p.branch not in wanted):
            continue
        rows.append({
            "id": p.id, "short": p.short, "date": p.date, "branch": p.branch,
            "predecessors": list(p.predecessors),
        })
    return rows


__all__ = [
    "BIBLIOGRAPHY_PAGE", "BRANCHES", "DEFAULT_PATH", "DOCS_DIR", "Link", "Paper",
    "RegistryError", "api_page", "arxiv_month_ok", "bibliography", "find_arxiv_ids",
    "front_matter", "lineage_links", "lineage_markdown", "load", "loads", "paper_card",
    "paper_href", "declared_papers", "paper_pages", "parse", "relative_href", "successors", "timeline_rows",
]
