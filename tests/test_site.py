"""The site (verification ladder, rung 5): a strict build from a clean state, and what it must contain.

The build uses the figure cache named by LINEAGE_CACHE; `make test` points that at a fresh
directory and builds every figure into it before the tests run (trained models are shared with the learning
tests); run alone, pytest builds whatever that cache lacks.
"""

import html
import re
from pathlib import Path

import pytest

from figures.registry import declared_papers, front_matter, load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("site")]  # one build: see conftest.site


def pages() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md"))


def html_of(site: Path, page: Path) -> str:
    rel = page.relative_to(ROOT / "docs").with_suffix("")
    target = site / ("index.html" if rel.name == "index" else rel / "index.html")
    if rel.name == "index" and rel.parent != Path("."):
        target = site / rel.parent / "index.html"
    return target.read_text(encoding="utf-8")


def test_every_page_is_built(site):
    for page in pages():
        assert "<article" in html_of(site, page), page


def test_paper_pages_carry_their_registry_card(site):
    registry = load()
    paper_pages = {p: declared_papers(front_matter(p.read_text(encoding="utf-8"))) for p in pages()}
    paper_pages = {page: ids for page, ids in paper_pages.items() if ids}
    assert paper_pages, "no paper pages found"
    for page, ids in paper_pages.items():
        text = html.unescape(html_of(site, page))
        assert text.count("论文卡片") == len(ids), page
        for paper in map(registry.__getitem__, ids):
            assert paper.title in text and (paper.arxiv_url or paper.url) in text
            assert all(author in text for author in paper.authors)


def test_code_on_pages_is_the_refimpl_source(site):
    """The DDPM page shows every refimpl snippet section it includes (q_sample and posterior from
    refimpl/schedules.py, the rest from refimpl/ddpm.py) verbatim, after highlighting is stripped."""
    page = ROOT / "docs/diffusion/ddpm.md"
    text = html.unescape(re.sub(r"<[^>]+>", "", html_of(site, page)))
    includes = re.findall(r'^--8<-- "(refimpl/[\w/]+\.py):([\w-]+)"$', page.read_text(encoding="utf-8"), re.MULTILINE)
    assert {"q_sample", "posterior", "loss_simple", "ddpm_step", "ddpm_sample", "train"} <= {n for _, n in includes}
    for path, name in includes:
        source = (ROOT / path).read_text(encoding="utf-8")
        section = re.search(rf"# --8<-- \[start:{name}\]\n(.*?)# --8<-- \[end:{name}\]", source, re.DOTALL)
        assert section, (path, name)
        first_def = next(line for line in section[1].splitlines() if line.startswith(("def ", "@", "class ")))
        assert first_def in text, (path, name)


def test_images_exist_and_are_generated(site):
    for page in pages():
        page_html = html_of(site, page)
        out_dir = (site / page.relative_to(ROOT / "docs").with_suffix("")) if page.stem != "index" else site
        for src in re.findall(r'<img[^>]+src="([^"]+)"', page_html):
            assert not src.startswith(("http:", "https:", "//")), (page, src)
            assert (out_dir / src).resolve().is_file(), (page, src)
            if "figures/" in src:  # a reader can open every figure full size: it links to its own file
                assert f'<a class="lineage-figure" href="{src}" target="_blank"' in page_html, (page, src)
    assert not (ROOT / "docs" / "figures").exists(), "generated figures must not live in docs/"
    figures = sorted(p.name for p in (site / "figures").iterdir())
    assert {"ddpm_forward_2d.svg", "ddpm_reverse_digits.svg", "diffusion_timeline.svg"} <= set(figures)


def test_no_third_party_requests(site):
    """No script, stylesheet, font or image from another origin on any page."""
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        for tag, attribute in re.findall(r"<(script|link|img|iframe)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"",
                                          text):
            if tag == "link" and re.search(r'rel="(canonical|alternate)"', text):
                continue
            pytest.fail(f"{path.relative_to(site)}: third-party {tag}: {attribute}")
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")


def test_mathjax_is_served_locally_with_preloaded_extensions(site):
    assert (site / "assets/mathjax/tex-chtml.js").stat().st_size > 100_000
    assert (site / "assets/mathjax/input/tex/extensions/boldsymbol.js").is_file()
    assert (site / "assets/mathjax/output/chtml/fonts/woff-v2").is_dir()
    ddpm = html_of(site, ROOT / "docs/diffusion/ddpm.md")
    assert 'src="../../assets/mathjax/tex-chtml.js"' in ddpm
    assert 'class="arithmatex"' in ddpm


def test_generated_markdown_is_placed(site):
    ddpm = html_of(site, ROOT / "docs/diffusion/ddpm.md")
    assert "lineage:include" not in ddpm
    assert "Fréchet" in ddpm and "<table>" in ddpm
    bibliography = html_of(site, ROOT / "docs/bibliography.md")
    for paper_id in load():
        assert f'id="{paper_id}"' in bibliography, paper_id


def test_search_index_segments_chinese(site):
    """Material segments Chinese with jieba at build time, marking word boundaries with U+200B."""
    import json

    docs = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))["docs"]
    ddpm = " ".join(d["text"] for d in docs if d["location"].startswith("diffusion/ddpm/"))
    assert "扩散\u200b" in ddpm or "\u200b扩散" in ddpm


def test_reproduction_summary_links_every_reproduction_table(site):
    """The 复现总表 holds at least one row per table that a paper page includes in its 复现 section, each row
    linking back to that page (figures/summary.py; the row mapping itself is unit-tested in test_summary.py)."""
    from figures.summary import reproduction_includes

    summary = html_of(site, ROOT / "docs/reproduction.md")
    rows = re.findall(r"<tr>(.*?)</tr>", summary, re.DOTALL)[1:]  # without the header row
    expected = 0
    for page in pages():
        text = page.read_text(encoding="utf-8")
        if declared_papers(front_matter(text)) and reproduction_includes(text):
            expected += len(reproduction_includes(text))
            href = page.relative_to(ROOT / "docs").with_suffix("").as_posix() + "/"
            assert any(f'href="../{href}"' in row for row in rows), page
    assert expected >= 9 and len(rows) >= expected, (len(rows), expected)
