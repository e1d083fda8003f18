"""The home page's list of pages, generated from the nav of mkdocs.yml, the paper registry and docs/pages.yml, so
that a new page appears in it (and a paper page's description is its registry entry's) without a hand edit."""

from __future__ import annotations

from pathlib import Path

import yaml

from figures.registry import DOCS_DIR, load

PAGE = "index.md"
OUTPUTS = ("page_list.md",)
INPUTS = ("mkdocs.yml", "docs/papers.yml", "docs/pages.yml")
MKDOCS = DOCS_DIR.parent / "mkdocs.yml"
DESCRIPTIONS = DOCS_DIR / "pages.yml"


class _NavLoader(yaml.SafeLoader):
    """mkdocs.yml with its tags (!ENV, !!python/...) read as None: only the nav is wanted."""


_NavLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def nav_pages(mkdocs_yml: Path = MKDOCS) -> list[tuple[str, str]]:
    """(title, page) for every page of the nav in order, the home page and the API sub-pages left out (a section
    whose first item is an untitled page, as "API 参考" is, is listed once under the section's title)."""
    nav = yaml.load(mkdocs_yml.read_text(encoding="utf-8"), Loader=_NavLoader)["nav"]
    out: list[tuple[str, str]] = []

    def walk(items) -> None:
        for item in items:
            (title, value), = item.items() if isinstance(item, dict) else ((None, item),)
            if isinstance(value, list):
                if value and isinstance(value[0], str):  # a section with an index page
                    out.append((title, value[0]))
                else:
                    walk(value)
            elif title is not None and value != "index.md":
                out.append((title, value))

    walk(nav)
    return out


def page_list(registry=None) -> list[str]:
    """One Markdown list item per nav page: a paper page's papers, years and registry description; any other
    page's description from docs/pages.yml."""
    registry = registry or load()
    described = yaml.safe_load(DESCRIPTIONS.read_text(encoding="utf-8")) or {}
    lines = []
    for title, page in nav_pages():
        papers = [p for p in registry.values() if p.page == page]
        if papers:
            years = sorted({p.year for p in papers if p.year})
            span = "–".join(dict.fromkeys(map(str, years[:1] + years[-1:])))  # "2022" or "2018–2020"
            names = "、".join(p.short for p in papers)
            when = f"，{span}" if span and span not in names else ""  # "Sohl-Dickstein 2015" already says it
            about = "；".join(p.zh.rstrip("。") for p in papers) + "。"
            lines.append(f"- [{title}]({page})（{names}{when}）：{about}")
        elif page in described:
            lines.append(f"- [{title}]({page})：{described[page]}")
        else:
            raise ValueError(f"site_pages: {page} is in the nav but neither a paper's page nor in docs/pages.yml")
    return lines


def make(out: Path, preset: str) -> None:
    (out / "page_list.md").write_text("\n".join(page_list()) + "\n", encoding="utf-8")
