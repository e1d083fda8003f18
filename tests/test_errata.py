"""The 勘误 page's table (figures/pages/errata.py) is generated from the registry's ``seed`` fields
plus docs/errata.yml: one row each, every link resolves, and errata.yml is validated."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from figures import builder, registry  # noqa: E402
from figures.registry import RegistryError  # noqa: E402

errata = builder.load_script("errata")  # the figure script figures/pages/errata.py (not in a package)

DOCS = ROOT / "docs"
SEED_NOTE = Path("/work/shared/seed/000_ffa0c88012c09b4c.txt")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def reg():
    return registry.load()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("errata")
    errata.make(out, "quick")
    return (out / "errata_table.md").read_text(encoding="utf-8")


def _body_rows(table: str) -> list[str]:
    return [line for line in table.splitlines()[2:] if line.startswith("| ")]


def test_one_row_per_seed_field_and_errata_item(table, reg):
    rows = _body_rows(table)
    expected = [f"「{errata.seed_quote(p)}」" for p in reg.values() if p.seed]
    expected += [f"「{item['note']}」" for item in errata.load_errata(registry=reg)]
    assert [row.split(" | ")[0][2:] for row in rows] == expected
    assert all(row.count(" | ") == 3 for row in rows)  # four cells, no unescaped '|' inside


def test_every_link_resolves(table, reg):
    links = _LINK.findall(table)
    assert links
    for href in links:
        if href.startswith("https://"):
            continue
        target, _, anchor = href.partition("#")
        assert (DOCS / target).is_file(), href  # the page sits at docs/ top level
        if target == registry.BIBLIOGRAPHY_PAGE:
            assert anchor in reg, href


@pytest.mark.skipif(not SEED_NOTE.is_file(), reason="the seed note lives outside the repository")
def test_every_row_quotes_the_seed_note_exactly(reg):
    note = SEED_NOTE.read_text(encoding="utf-8")
    for item in errata.load_errata(registry=reg):
        assert item["note"] in note, item["id"]
    for paper in reg.values():
        if paper.seed:
            assert errata.seed_quote(paper) in note, paper.id


GOOD = """\
- id: x
  note: "反向传播"
  fix: "应为反向过程"
  sources: [ddpm]
  discussed: ["diffusion/ddpm.md"]
"""


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.replace('  fix: "应为反向过程"\n', ""), "fix"),
    (lambda s: s.replace("[ddpm]", "[no-such-paper]"), "sources"),
    (lambda s: s.replace("[ddpm]", "[]"), "sources"),
    (lambda s: s.replace('["diffusion/ddpm.md"]', '["diffusion/missing.md"]'), "discussed"),
    (lambda s: s.replace('"反向传播"', '""'), "note"),
    (lambda s: s + '  url: "http://example.org"\n', "url"),
    (lambda s: s + GOOD, "id"),
])
def test_bad_errata_file_names_the_field(tmp_path, reg, edit, field):
    path = tmp_path / "errata.yml"
    path.write_text(GOOD, encoding="utf-8")
    assert errata.load_errata(path, reg)[0]["id"] == "x"
    path.write_text(edit(GOOD), encoding="utf-8")
    with pytest.raises(RegistryError, match=field):
        errata.load_errata(path, reg)


def test_seed_field_without_quotation_is_rejected(reg):
    paper = reg["ddpm"]
    with pytest.raises(RegistryError, match="ddpm.seed"):
        errata.seed_quote(type(paper)(**{**paper.__dict__, "seed": "no quotation here"}))
