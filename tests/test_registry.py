"""The paper registry (docs/papers.yml) holds to the facts that can be checked offline,
and the library that renders from it (figures/registry.py) is correct."""

from __future__ import annotations

import datetime as dt
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from figures import registry  # noqa: E402
from figures.registry import RegistryError  # noqa: E402

DOCS = ROOT / "docs"

# Edges (predecessor, successor) whose arXiv dates run backwards, with the reason.
# Classifier-free guidance was presented at the NeurIPS 2021 Workshop on Deep Generative
# Models and Downstream Applications (December 2021); GLIDE (2021-12) and Imagen (2022-05)
# build on and cite that workshop version, while the arXiv v1 (2207.12598) only appeared
# on 2022-07-26. The registry records the arXiv date, so these two edges go backwards.
DATE_ORDER_EXCEPTIONS = {("cfg", "glide"), ("cfg", "imagen"), ("cfg", "ldm")}


@pytest.fixture(scope="module")
def reg():
    return registry.load()


def _md_pages():
    return sorted(DOCS.rglob("*.md"))


# ----------------------------------------------------------------- the real registry


def test_registry_loads_and_validates(reg):
    assert len(reg) >= 22
    for pid, paper in reg.items():
        assert paper.id == pid
        assert paper.branch in registry.BRANCHES


def test_seed_papers_are_present(reg):
    expected = {
        "nonequilibrium": "1503.03585", "ncsn": "1907.05600", "ddpm": "2006.11239",
        "score-sde": "2011.13456", "ddim": "2010.02502", "iddpm": "2102.09672",
        "adm": "2105.05233", "cfg": "2207.12598", "glide": "2112.10741",
        "unclip": "2204.06125", "imagen": "2205.11487", "ldm": "2112.10752",
        "diffusion-survey": "2209.00796", "gan": "1406.2661", "clip": "2103.00020",
        "llm-survey": "2304.13712", "transformer": "1706.03762", "bert": "1810.04805",
        "gpt3": "2005.14165", "t5": "1910.10683", "gpt1": None, "gpt2": None,
    }
    for pid, arxiv in expected.items():
        assert pid in reg, pid
        assert reg[pid].arxiv == arxiv, pid


def test_arxiv_month_agrees_with_date(reg):
    for paper in reg.values():
        if paper.arxiv and paper.date:
            assert registry.arxiv_month_ok(paper.arxiv, paper.date), (
                f"{paper.id}: arXiv {paper.arxiv} vs first version {paper.date}"
            )


def test_clip_is_the_next_month_case(reg):
    clip = reg["clip"]
    assert clip.date == dt.date(2021, 2, 26) and clip.arxiv == "2103.00020"
    assert registry.arxiv_month_ok("2103.00020", "2021-02-26")
    assert registry.arxiv_month_ok("2103.00020", "2021-03-01")
    assert not registry.arxiv_month_ok("2103.00020", "2021-01-31")
    assert not registry.arxiv_month_ok("2103.00020", "2021-04-01")
    assert registry.arxiv_month_ok("2101.00001", "2020-12-31")  # across a year


def test_dates_are_real_and_not_in_the_future(reg):
    today = dt.date.today()
    for paper in reg.values():
        if paper.date is not None:
            assert isinstance(paper.date, dt.date), paper.id
            assert dt.date(1990, 1, 1) <= paper.date <= today, paper.id


def test_non_arxiv_works_have_an_official_url_instead(reg):
    for paper in reg.values():
        if paper.arxiv is None:
            assert paper.url and paper.url.startswith("https://"), paper.id
        else:
            assert paper.url is None, paper.id


def test_predecessors_precede_their_successors(reg):
    for paper in reg.values():
        for pred_id in paper.predecessors:
            pred = reg[pred_id]
            if (pred_id, paper.id) in DATE_ORDER_EXCEPTIONS:
                assert pred.date > paper.date, f"exception {pred_id}->{paper.id} no longer needed"
                continue
            assert pred.date is not None and paper.date is not None
            assert pred.date <= paper.date, f"{pred_id} ({pred.date}) -> {paper.id} ({paper.date})"


def test_every_arxiv_link_on_a_page_is_a_registry_entry(reg):
    known = {p.arxiv for p in reg.values() if p.arxiv}
    missing = []
    for md in _md_pages():
        for arxiv_id in registry.find_arxiv_ids(md.read_text(encoding="utf-8")):
            if arxiv_id not in known:
                missing.append(f"{md.relative_to(DOCS)}: {arxiv_id}")
    assert not missing, "arXiv links not in docs/papers.yml: " + ", ".join(missing)


#: the sections of a page where a link to the bibliography is the point (a reference list), whatever the entry
REFERENCE_SECTIONS = ("## 参考", "## 延伸阅读")


def test_a_paper_with_a_page_is_linked_to_its_page_in_the_prose(reg):
    """In running text, a link to a bibliography entry whose paper has its own page goes to that page instead (the
    links written before the page existed went stale); the reference lists at the end of a page cite entries."""
    link = re.compile(r"\]\((?:\.\./)*bibliography\.md#([a-z0-9-]+)\)")
    stale = []
    for md in _md_pages():
        section = ""
        for number, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("## "):
                section = line.strip()
            if section in REFERENCE_SECTIONS:
                continue
            stale += [f"{md.relative_to(DOCS)}:{number}: #{pid} -> {reg[pid].page}" for pid in link.findall(line)
                      if pid in reg and reg[pid].page and DOCS / reg[pid].page != md]
    assert stale == []


def test_the_home_page_lists_every_nav_page_once(reg):
    """figures/pages/site_pages.py: every page of the nav is in the home page's list, described by its papers'
    registry entries or by docs/pages.yml, and docs/pages.yml describes nothing else."""
    from figures.pages import site_pages

    pages = [page for _, page in site_pages.nav_pages()]
    lines = site_pages.page_list(reg)
    assert len(lines) == len(pages) == len(set(pages)) and "overview.md" in pages and "latent/ldm.md" in pages
    assert all(f"]({page})" in line for page, line in zip(pages, lines))
    described = yaml.safe_load((DOCS / "pages.yml").read_text(encoding="utf-8"))
    assert set(described) == {page for page in pages if not any(p.page == page for p in reg.values())}


def test_every_entry_with_a_page_has_that_page(reg):
    for paper in reg.values():
        if paper.page:
            assert (DOCS / paper.page).is_file(), f"{paper.id}: docs/{paper.page} does not exist"


def test_every_paper_page_has_exactly_one_entry(reg):
    for page, ids in registry.paper_pages(DOCS).items():
        owners = [p.id for p in reg.values() if p.page == page]
        assert sorted(owners) == sorted(ids), f"docs/{page} declares paper: {ids}, registry entries: {owners}"


def test_refimpl_modules_exist(reg):
    for paper in reg.values():
        for module in paper.refimpl:
            path = ROOT / (module.replace(".", "/") + ".py")
            assert path.is_file(), f"{paper.id}: {module} ({path.relative_to(ROOT)}) is missing"


# ----------------------------------------------------------------- rendering


def test_paper_card_has_the_key_facts(reg):
    card = registry.paper_card("ddpm", "diffusion/ddpm.md", reg)
    assert card.startswith('!!! abstract "论文卡片：DDPM"')
    assert "Denoising Diffusion Probabilistic Models" in card
    for author in ("Jonathan Ho", "Ajay Jain", "Pieter Abbeel"):
        assert author in card
    assert "https://arxiv.org/abs/2006.11239" in card
    assert "2020-06-19" in card and "NeurIPS 2020" in card
    assert "(../api/ddpm.md)" in card  # our implementation, relative to the subfolder
    assert "(ncsn.md)" in card  # predecessor with a page in the same folder
    assert "(../efficient-sampling/ddim.md)" in card  # successor with a page, relative to the subfolder
    assert "(../latent/ldm.md)" in card  # successor with a page in another folder
    # a successor without a page of its own links to its bibliography entry
    assert "(../bibliography.md#ict)" in registry.paper_card("consistency-models", "modern/consistency-models.md", reg)
    # every body line is indented into the admonition
    body = card.split("\n", 2)[2]
    assert all(line.startswith("    ") for line in body.splitlines() if line)


def test_card_for_a_work_without_arxiv(reg):
    card = registry.paper_card("gpt2", "llm/gpt2.md", reg)
    assert "arxiv.org" not in card
    assert reg["gpt2"].url in card and "2019-02-14" in card


def test_links_are_relative_to_the_page(reg):
    assert registry.relative_href("bibliography.md#ncsn", "index.md") == "bibliography.md#ncsn"
    assert registry.relative_href("bibliography.md#ncsn", "diffusion/ddpm.md") == "../bibliography.md#ncsn"
    assert registry.relative_href("diffusion/ddpm.md", "diffusion/ddim.md") == "ddpm.md"
    assert registry.relative_href("api/ddpm.md", "a/b/c.md") == "../../api/ddpm.md"
    links = registry.lineage_links("ddim", "diffusion/ddim.md", reg)
    ddpm_href = registry.paper_href(reg["ddpm"], "diffusion/ddim.md")
    assert [link.id for link in links["previous"]] == ["ddpm"]
    assert links["previous"][0].href == ddpm_href
    assert reg["ddpm"].page == "diffusion/ddpm.md" and ddpm_href == "ddpm.md"  # sibling page
    assert "ldm" in [link.id for link in links["next"]]


def test_bibliography_renders_every_entry(reg):
    text = registry.bibliography(reg)
    for paper in reg.values():
        assert f'<a id="{paper.id}"></a>' in text, paper.id
        assert paper.title in text
        if paper.arxiv:
            assert f"https://arxiv.org/abs/{paper.arxiv}" in text
    for heading in registry.BRANCHES.values():
        assert f"## {heading}" in text
    entry = next(line for line in text.splitlines() if '<a id="ddpm"></a>' in line)
    assert "Jonathan Ho, Ajay Jain, Pieter Abbeel" in entry and "2020" in entry
    assert "NeurIPS 2020" in entry and "(diffusion/ddpm.md)" in entry
    # sorted by date within a branch
    assert text.index('id="nonequilibrium"') < text.index('id="ncsn"') < text.index('id="ddpm"')


def test_timeline_rows(reg):
    rows = registry.timeline_rows(["diffusion-foundations", "efficient-sampling"], reg)
    assert [r["id"] for r in rows] == ["nonequilibrium", "ncsn", "ddpm", "ddim", "score-sde", "iddpm",
                                          "progressive-distillation", "edm", "dpm-solver", "dpm-solver-pp"]
    assert set(rows[0]) == {"id", "short", "date", "branch", "predecessors"}
    assert rows[2]["predecessors"] == ["nonequilibrium", "ncsn"]
    assert len(registry.timeline_rows(registry=reg)) == len(reg)
    with pytest.raises(RegistryError, match="unknown branch"):
        registry.timeline_rows(["nope"], reg)


def test_find_arxiv_ids_and_front_matter():
    text = "[a](https://arxiv.org/pdf/1907.05600v1.pdf) [b](https://arxiv.org/abs/2006.11239) [c](http://arxiv.org/pdf/2011.13456v1)"
    assert registry.find_arxiv_ids(text) == ["1907.05600", "2006.11239", "2011.13456"]
    assert registry.front_matter("---\npaper: ddpm\ntitle: x\n---\n# DDPM\n") == {"paper": "ddpm", "title": "x"}
    assert registry.front_matter("# no front matter\n---\n") == {}


def test_paper_pages_scans_front_matter(tmp_path):
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "diffusion" / "ddpm.md").write_text("---\npaper: ddpm\n---\n# DDPM\n", encoding="utf-8")
    (tmp_path / "index.md").write_text("# 首页\n", encoding="utf-8")
    (tmp_path / "about.md").write_text("---\ntitle: 关于\n---\n", encoding="utf-8")
    (tmp_path / "solvers.md").write_text("---\npaper: [dpm-solver, edm]\n---\n# 求解器\n", encoding="utf-8")
    assert registry.paper_pages(tmp_path) == {"diffusion/ddpm.md": ["ddpm"], "solvers.md": ["dpm-solver", "edm"]}


# ----------------------------------------------------------------- validation


GOOD = """
- id: a
  title: "Paper A"
  short: "A"
  authors: ["Ann Author"]
  arxiv: "2006.11239"
  date: 2020-06-19
  venue: null
  url: null
  branch: diffusion-foundations
  predecessors: []
  page: null
  refimpl: []
  zh: "甲"
- id: b
  title: "Paper B"
  short: "B"
  authors: ["Bob Author"]
  arxiv: null
  date: 2021-01-01
  venue: "X 2021"
  url: "https://example.org/b"
  branch: llm
  predecessors: [a]
  page: "llm/b.md"
  refimpl: ["refimpl.b"]
  zh: "乙"
"""


def _bad(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def test_small_registry_is_valid():
    papers = registry.loads(GOOD)
    assert list(papers) == ["a", "b"]
    assert papers["a"].date == dt.date(2020, 6, 19)
    card = registry.paper_card("b", "llm/b.md", papers)
    assert "(../bibliography.md#a)" in card and "(../api/b.md)" in card


@pytest.mark.parametrize(
    "text, message",
    [
        (_bad("date: 2020-06-19", "date: 2020-02-30"), "not a real date"),
        (_bad("date: 2020-06-19", "date: 2020/06/19"), "expected a date"),
        (_bad("date: 2020-06-19", "date: 2020-09-01"), "does not match date"),
        (_bad("date: 2020-06-19", "date: 2020-04-30"), "does not match date"),
        (_bad("predecessors: [a]", "predecessors: [zz]"), "unknown paper id 'zz'"),
        (_bad("predecessors: [a]", "predecessors: [b]"), "cannot precede itself"),
        (_bad("predecessors: []", "predecessors: [b]"), "predecessor cycle"),
        (_bad('arxiv: "2006.11239"', "arxiv: 2006.11239"), "quoted string"),
        (_bad('arxiv: "2006.11239"', 'arxiv: "2006.1123"'), "5 digits"),
        (_bad('arxiv: "2006.11239"', 'arxiv: "2013.11239"'), "month 13"),
        (_bad('arxiv: "2006.11239"', 'arxiv: "abs/2006.11239"'), "new-style"),
        (_bad("branch: llm", "branch: llms"), "not one of"),
        (_bad('  zh: "乙"', '  zh: "乙"\n  extra: 1'), "unknown key"),
        (_bad('  venue: "X 2021"\n', ""), "missing key"),
        (_bad("- id: b", "- id: a").replace("predecessors: [a]", "predecessors: []"), "duplicate id"),
        (_bad("arxiv: null", 'arxiv: "2006.11239"').replace("date: 2021-01-01", "date: 2020-06-19")
         .replace('url: "https://example.org/b"', "url: null"), "duplicate arXiv id"),
        (_bad('url: "https://example.org/b"', 'url: "http://example.org/b"'), "https://"),
        (_bad('page: "llm/b.md"', 'page: "/llm/b.md"'), "relative to docs/"),
        (_bad('refimpl: ["refimpl.b"]', 'refimpl: ["b"]'), "module names"),
        (_bad('authors: ["Bob Author"]', "authors: []"), "non-empty list"),
        (_bad("- id: b", "- id: B!"), "id must match"),
        ("{a: 1}", "must be a YAML list"),
    ],
)
def test_validation_rejects_bad_entries(text, message):
    with pytest.raises(RegistryError, match=message):
        registry.loads(text)


def test_validation_rejects_future_dates():
    with pytest.raises(RegistryError, match="in the future"):
        registry.parse(
            yaml.safe_load(GOOD), today=dt.date(2021, 1, 1) - dt.timedelta(days=1)
        )


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="cannot read registry"):
        registry.load(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text(textwrap.dedent("- id: [unclosed\n"), encoding="utf-8")
    with pytest.raises(RegistryError, match="invalid YAML"):
        registry.load(bad)
