"""refimpl.text: the prose the language models read, and its snapshot (refimpl/notes.txt)."""

from pathlib import Path

import pytest

from refimpl import text
from refimpl.core import LineageError


def _pages(root: Path) -> Path:
    (root / "b").mkdir(parents=True)
    (root / "a.md").write_text("# 标题（Title）\n\n```python\ncode = 1\n```\n$$\nx^2\n$$\n| a | b |\n"
                               "见 [DDPM](ddpm.md) 一节。\n<div>html</div>\n![fig](x.png)\n", encoding="utf-8")
    (root / "b" / "c.md").write_text("".join(f"line {i}\n" for i in range(12)), encoding="utf-8")
    return root


def test_prose_drops_code_math_tables_html_and_figures(tmp_path):
    assert text.prose_lines(_pages(tmp_path / "docs"))[:2] == ["标题（Title）", "见 DDPM 一节。"]


def test_the_snapshot_is_the_prose_and_every_tenth_line_is_held_out(tmp_path):
    docs, notes = _pages(tmp_path / "docs"), tmp_path / "notes.txt"
    text.snapshot(docs, notes)
    train, held = text.corpus(notes=notes)
    assert (train, held) == text.corpus(docs)
    lines = text.prose_lines(docs)  # 2 + 12 lines: the 10th (index 9) is held out
    assert held == lines[9] and train.split("\n") == lines[:9] + lines[10:]


def test_the_models_read_the_snapshot_not_the_pages(monkeypatch, tmp_path):
    """Editing a page changes nothing the models read until `make corpus` takes a new snapshot."""
    def read_pages(*args):
        raise AssertionError("corpus() read the pages")

    monkeypatch.setattr(text, "prose_lines", read_pages)
    assert len(text.corpus()[0]) > 10_000
    with pytest.raises(LineageError, match="cannot read the notes snapshot .* run `make corpus`"):
        text.corpus(notes=tmp_path / "missing.txt")
