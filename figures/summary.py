"""The 复现总表 page: every reproduction table of every paper page, merged into one table.

A paper page (front matter ``paper:``) shows its generated results with ``<!-- lineage:include NAME.md -->`` in
its reproduction section (the ``## 复现`` heading); those Markdown tables are the data the pages themselves use. :func:`summary_table` reads each of them (through
``lookup``, the hook's :func:`figures.hook.figure_output`) and writes one row per table row, in page order
(the site's nav order is not known here; pages are sorted by path) with four columns:

- 页面: a link to the paper page, and the row's label (its first cell, prefixed by the first column's header
  when that header is not a generic one such as 指标/项目/实验);
- 论文报告: the cell of a column whose header names the paper (论文...), or "—" when the table has none;
- 本站测得: the cell of the column headed 我们测得/本站测量, or else every remaining cell as ``header：value``;
- 参照: the cell of a column headed 参照/对照, or "—".

Relative links inside cells are rewritten to point from the summary page to the same target. Nothing is
retyped: a number changes here when the figure script that measures it changes.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Callable

from figures.registry import DOCS_DIR, declared_papers, front_matter, relative_href

SUMMARY_PAGE = "reproduction.md"  # where the table is placed (links are relative to it)
_INCLUDE = re.compile(r"^<!-- lineage:include (\S+\.md) -->$", re.MULTILINE)
_SECTION = re.compile(r"^## (.*)$", re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_GENERIC_LABELS = ("指标", "项目", "实验")
_PAPER = re.compile(r"^论文")
_MEASURED = ("我们测得", "本站测量", "本站测得")
_REFERENCE = ("参照", "对照")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SPLIT.split(line.strip().strip("|"))]


def parse_tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, body rows) of every pipe table in ``markdown``: runs of lines starting with "|" (cells
    stripped, ``\\|`` kept). Raises ValueError if there is none or a run lacks its separator line."""
    tables, run = [], []
    for line in markdown.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            run.append(line)
            continue
        if run:
            if len(run) < 2 or not re.fullmatch(r"[\s|:-]+", run[1]):
                raise ValueError(f"not a Markdown pipe table (header, separator, rows): {run[0]!r}")
            tables.append((_cells(run[0]), [_cells(row) for row in run[2:]]))
            run = []
    if not tables:
        raise ValueError("no Markdown pipe table")
    return tables


def _column(header: list[str], test: Callable[[str], bool]) -> int | None:
    return next((i for i, name in enumerate(header) if i > 0 and test(name)), None)


def summary_rows(header: list[str], rows: list[list[str]]) -> list[tuple[str, str, str, str]]:
    """(label, paper, measured, reference) for each row of one reproduction table (see the module docstring)."""
    paper = _column(header, lambda h: bool(_PAPER.match(h)))
    measured = _column(header, lambda h: h.startswith(_MEASURED))
    reference = _column(header, lambda h: h.startswith(_REFERENCE))
    out = []
    for row in rows:
        row = row + [""] * (len(header) - len(row))
        label = row[0] if header[0] in _GENERIC_LABELS else f"{header[0]}：{row[0]}"
        if measured is None:
            used = {0, paper, reference}
            shown = "；".join(f"{header[i]}：{row[i]}" for i in range(1, len(header)) if i not in used)
        else:
            shown = row[measured]
        out.append((label, row[paper] if paper is not None else "—", shown,
                    row[reference] if reference is not None else "—"))
    return out


def reproduction_includes(text: str) -> list[str]:
    """The outputs a page includes in its reproduction section(s): ``## 复现...`` up to the next ``## ``."""
    sections = [(m.start(), m.group(1)) for m in _SECTION.finditer(text)]
    names = []
    for m in _INCLUDE.finditer(text):
        heading = next((title for start, title in reversed(sections) if start < m.start()), "")
        if heading.startswith("复现"):
            names.append(m.group(1))
    return names


def rebase_links(cell: str, page: str) -> str:
    """Relative Markdown links of ``cell``, written on ``page``, rewritten relative to the summary page."""
    def rebase(m: re.Match) -> str:
        href = m.group(1)
        if href.startswith("/") or re.match(r"[a-z]+:", href):
            return m.group(0)
        path, hash_, anchor = href.partition("#")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path)) if path else page
        return f"]({relative_href(target, SUMMARY_PAGE)}{hash_}{anchor})"

    return _LINK.sub(rebase, cell)


def summary_table(lookup: Callable[[str], Path], docs_dir: Path = DOCS_DIR) -> str:
    """The merged Markdown table of every ``lineage:include`` on every paper page under ``docs_dir``."""
    lines = ["| 页面 | 项目 | 论文报告 | 本站测得 | 参照 |", "| --- | --- | --- | --- | --- |"]
    for md in sorted(docs_dir.rglob("*.md")):
        text = md.read_text(encoding="utf-8")
        if not declared_papers(front_matter(text)):
            continue
        page = md.relative_to(docs_dir).as_posix()
        title = re.search(r"^# (.+)$", text, re.MULTILINE)
        link = f"[{title.group(1) if title else page}]({relative_href(page, SUMMARY_PAGE)})"
        for name in reproduction_includes(text):
            try:
                tables = parse_tables(lookup(name).read_text(encoding="utf-8"))
            except ValueError as err:
                raise ValueError(f"{page}: {name}: {err}") from None
            lines += ["| " + " | ".join([link] + [rebase_links(cell, page) for cell in cells]) + " |"
                      for header, rows in tables for cells in summary_rows(header, rows)]
    return "\n".join(lines) + "\n"
