"""figures.summary: the 复现总表 merges every paper page's generated tables, row for row."""

from pathlib import Path

import pytest

from figures.summary import parse_tables, rebase_links, reproduction_includes, summary_rows, summary_table

CLAIMS = """\
| 指标 | 论文（表 1） | 我们测得 | 参照 |
| --- | --- | --- | --- |
| FID | 3.17 | 22.8 | 17.9 |
| 似然 | 3.75 bits | 未测 \\| 见正文 | — |
"""
MEASURED = """\
Some text.

| 采样器 | NFE | 误差 |
| --- | --- | --- |
| DDIM | 10 | 0.19 |

| SDE | 似然误差 |
| --- | --- |
| vp | 3.9e-05 |
"""


def test_parse_tables_keeps_escaped_pipes_and_finds_every_table():
    [(header, rows)] = parse_tables(CLAIMS)
    assert header == ["指标", "论文（表 1）", "我们测得", "参照"]
    assert rows[1] == ["似然", "3.75 bits", "未测 \\| 见正文", "—"]
    assert [h for h, _ in parse_tables(MEASURED)] == [["采样器", "NFE", "误差"], ["SDE", "似然误差"]]
    with pytest.raises(ValueError, match="no Markdown pipe table"):
        parse_tables("just prose")
    with pytest.raises(ValueError, match="not a Markdown pipe table"):
        parse_tables("| a | b |\n| 1 | 2 |\n")


def test_claims_tables_map_onto_paper_measured_reference():
    [(header, rows)] = parse_tables(CLAIMS)
    assert summary_rows(header, rows) == [("FID", "3.17", "22.8", "17.9"),
                                          ("似然", "3.75 bits", "未测 \\| 见正文", "—")]


def test_measurement_tables_list_their_columns():
    (header, rows), (header2, rows2) = parse_tables(MEASURED)
    assert summary_rows(header, rows) == [("采样器：DDIM", "—", "NFE：10；误差：0.19", "—")]
    assert summary_rows(header2, rows2) == [("SDE：vp", "—", "似然误差：3.9e-05", "—")]


def test_summary_table_reads_the_includes_of_paper_pages_only(tmp_path):
    docs = tmp_path / "docs"
    (docs / "diffusion").mkdir(parents=True)
    (docs / "diffusion" / "a.md").write_text("---\npaper: ddpm\n---\n# 论文 A\n\n## 数据\n<!-- lineage:include e.md -->"
                                             "\n\n## 复现\n\n<!-- lineage:include a.md -->\n", encoding="utf-8")
    (docs / "errata.md").write_text("# 勘误\n\n<!-- lineage:include e.md -->\n", encoding="utf-8")
    outputs = {"a.md": tmp_path / "a.md", "e.md": tmp_path / "e.md"}
    outputs["a.md"].write_text(CLAIMS, encoding="utf-8")
    outputs["e.md"].write_text("| x | y |\n| --- | --- |\n| 1 | 2 |\n", encoding="utf-8")
    table = summary_table(outputs.__getitem__, docs)
    lines = table.splitlines()
    assert lines[0] == "| 页面 | 项目 | 论文报告 | 本站测得 | 参照 |"
    assert lines[2] == "| [论文 A](diffusion/a.md) | FID | 3.17 | 22.8 | 17.9 |"
    # the errata page declares no paper, and a.md's other include sits outside its 复现 section
    assert len(lines) == 2 + 2


def test_a_broken_table_names_the_page_and_output(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "p.md").write_text("---\npaper: ddpm\n---\n# P\n## 复现\n<!-- lineage:include bad.md -->\n",
                               encoding="utf-8")
    (tmp_path / "bad.md").write_text("no table here", encoding="utf-8")
    with pytest.raises(ValueError, match="p.md: bad.md: no Markdown pipe table"):
        summary_table(lambda name: Path(tmp_path / name), docs)


def test_only_includes_of_the_reproduction_sections_count():
    text = "# T\n## 方法\n<!-- lineage:include x.md -->\n## 复现：小规模\n<!-- lineage:include a.md -->\n" \
           "<!-- lineage:include b.md -->\n## 勘误\n<!-- lineage:include c.md -->\n"
    assert reproduction_includes(text) == ["a.md", "b.md"]


def test_links_are_rebased_onto_the_summary_page():
    cell = "见 [DDPM](../diffusion/ddpm.md#fu) 与 [论文](../bibliography.md#cfg)，[外链](https://arxiv.org/abs/1)，[本页](#x)"
    assert rebase_links(cell, "guidance/cfg.md") == (
        "见 [DDPM](diffusion/ddpm.md#fu) 与 [论文](bibliography.md#cfg)，[外链](https://arxiv.org/abs/1)，"
        "[本页](guidance/cfg.md#x)")
