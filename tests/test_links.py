"""The built site's links, images and headings (verification ladder, rung 5), read from its HTML.

Internal links and anchors must resolve; external links are collected into a report (never fetched);
every image has alt text; headings are in order; a second build gives the same bytes.
"""

import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from figures.registry import load

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("site")]  # one build: see conftest.site

HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


class Page(HTMLParser):
    """What the checks need from one HTML file: ids, links, images and the article's headings."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url) of every href/src
        self.images: list[tuple[str, str | None]] = []  # (src, alt) inside <article>
        self.headings: list[int] = []  # levels, inside <article>
        self.article_depth = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attributes.get(key):
                self.ids.add(attributes[key])
        self.links += [(tag, attributes[key]) for key in ("href", "src") if attributes.get(key) is not None]
        if tag == "article":
            self.article_depth += 1
        elif tag == "img" and self.article_depth:
            self.images.append((attributes.get("src", ""), attributes.get("alt")))
        elif tag in HEADINGS and self.article_depth:
            self.headings.append(int(tag[1]))

    def handle_endtag(self, tag):
        if tag == "article":
            self.article_depth -= 1


@pytest.fixture(scope="module")
def parsed(site) -> dict[Path, Page]:
    return {path: Page(path.read_text(encoding="utf-8")) for path in sorted(site.rglob("*.html"))}


def site_url(site: Path) -> tuple[str, str]:
    """(origin, base path) of the site's own address (mkdocs.yml's site_url, which MkDocs writes as the
    landing page's canonical link): absolute links there are internal links."""
    match = re.search(r'<link rel="canonical" href="([^"]+)"', (site / "index.html").read_text(encoding="utf-8"))
    parts = urlsplit(match[1] if match else "")
    return f"{parts.scheme}://{parts.netloc}", parts.path or "/"


def url_of(site: Path, path: Path) -> str:
    return "/" + path.relative_to(site).as_posix()


def is_external(link: str, origin: str, base: str) -> bool:
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https", "") or not (parts.scheme or link.startswith("//")):
        return False
    return f"{parts.scheme or 'https'}://{parts.netloc}" != origin or not parts.path.startswith(base)


def test_internal_links_and_anchors_resolve(site, parsed):
    """Every href/src of every HTML file (nav, content, assets, footnotes, permalinks, bibliography anchors)
    that stays on the site names a file of the tree, and its #fragment an id of that page."""
    origin, base = site_url(site)
    broken, checked = [], 0
    for path, page in parsed.items():
        for tag, link in page.links:
            parts = urlsplit(link)
            if parts.scheme in ("mailto", "data", "javascript") or is_external(link, origin, base):
                continue  # not a location / test_external_links_are_reported
            if parts.scheme:  # the site's own origin (the canonical link): map site_url onto the tree
                resolved = "/" + parts.path[len(base):]
            else:
                resolved = urlsplit(urljoin(url_of(site, path), link)).path
            target = site / unquote(resolved).lstrip("/")
            target = target / "index.html" if target.is_dir() else target
            checked += 1
            if not target.is_file():
                broken.append(f"{url_of(site, path)}: <{tag}> {link}: no file {resolved}")
            elif parts.fragment and target in parsed and unquote(parts.fragment) not in parsed[target].ids:
                broken.append(f"{url_of(site, path)}: <{tag}> {link}: no id {unquote(parts.fragment)!r}")
    assert checked > 20 * len(parsed), checked  # the navigation alone links every page from every page
    assert broken == [], f"{len(broken)} broken of {checked}:\n" + "\n".join(broken[:60])


def test_external_links_are_reported(site, parsed, reports_dir):
    """External links are collected (never fetched) into reports/external-links.md; the registry's arXiv
    links, which the bibliography page shows, must all be there."""
    origin, base = site_url(site)
    uses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # link -> page -> count
    for path, page in parsed.items():
        for _, link in page.links:
            if is_external(link, origin, base):
                uses[link][url_of(site, path)] += 1
    domains = {urlsplit(link).netloc for link in uses}
    lines = ["# External links of the built site", "",
             f"{len(uses)} links on {len(domains)} domains, never fetched by the tests.", "",
             "| link | uses | pages |", "|---|---|---|"]
    for link in sorted(uses):
        pages = uses[link]
        lines.append(f"| <{link}> | {sum(pages.values())} | {', '.join(sorted(pages))} |")
    report = reports_dir / "external-links.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = report.read_text(encoding="utf-8")
    missing = [p.id for p in load().values() if p.arxiv and f"<https://arxiv.org/abs/{p.arxiv}>" not in text]
    assert missing == [], f"arXiv links of {missing} are not in {report}"


def test_images_have_alt_text(parsed, site):
    missing = [f"{url_of(site, path)}: {src}" for path, page in parsed.items() for src, alt in page.images
               if not (alt or "").strip()]
    assert missing == [], missing


def test_headings_are_in_order(parsed, site):
    """Exactly one h1 per page, first; no level skipped going down (h2 -> h4)."""
    bad = []
    for path, page in parsed.items():
        levels = page.headings
        if not levels:
            continue  # no <article>: none of MkDocs' pages lacks one, test_site checks every page has it
        jumps = [(a, b) for a, b in zip(levels, levels[1:]) if b > a + 1]
        if levels.count(1) != 1 or levels[0] != 1 or jumps:
            bad.append(f"{url_of(site, path)}: {levels}")
    assert bad == [], "\n".join(bad)


def test_second_build_is_byte_identical(site, build_site, tmp_path, reports_dir):
    """A second strict build (same sources, same figure cache) into another directory gives the same tree.
    MkDocs stamps the build date into sitemap.xml(.gz); build_site pins it with SOURCE_DATE_EPOCH (as
    `make build` does), so no file needs an exception."""
    again = tmp_path / "site"
    seconds = build_site(again)
    (reports_dir / "second-build.txt").write_text(f"second strict build: {seconds:.1f} s\n", encoding="utf-8")
    files = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file())
    files_again = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == files_again, sorted(set(files) ^ set(files_again))[:20]
    differ = [str(f) for f in files if (site / f).read_bytes() != (again / f).read_bytes()]
    assert differ == [], differ
