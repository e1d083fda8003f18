"""Text for the language models (GPT, BERT, T5): this repository's own notes, a character tokenizer, batches,
and the unigram baseline every model must beat.

Corpus: the prose of ``docs/**/*.md`` (Chinese with English terms): fenced code, display math, HTML,
tables, snippet includes and figure markup are dropped, headings kept as text. Every 10th line (a Markdown line
is a paragraph) is held out, so the held-out text comes from the same pages as the training text.
Nothing is downloaded. The models read a snapshot of that prose, ``refimpl/notes.txt``, taken on purpose with
``make corpus`` (:func:`snapshot`): editing a page retrains no model and leaves no cached figure stale, and the
package works where ``docs/`` is not installed beside it.

Tokenizer: one token per Unicode character (so one Chinese character is one token, as in BERT's Chinese
vocabulary), plus special tokens: padding, unknown, BERT's ``<mask>``, a start token ``<bos>``, and T5's
sentinels ``<extra_0>``, ``<extra_1>``, ... . The vocabulary is stored in each checkpoint's config, so a model
keeps working after the notes change.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from refimpl.core import LineageError

DOCS = Path(__file__).resolve().parent.parent / "docs"
SENTINELS = 16
SPECIALS = ("<pad>", "<unk>", "<mask>", "<bos>", *(f"<extra_{i}>" for i in range(SENTINELS)))
HELD_OUT_EVERY = 10
#: files next to this module that it reads at run time: the figure builder keys every script and model that imports
#: this module on them (figures.builder.module_closure), as it does on the module's source
DATA_FILES = ("notes.txt",)
NOTES = Path(__file__).with_name(DATA_FILES[0])


def _prose(markdown: str) -> list[str]:
    """The lines of a page that are prose: no code, display math, HTML, tables, includes or figures."""
    lines, skip = [], None
    for raw in markdown.splitlines():
        line = raw.strip()
        if skip:  # inside a fenced block or a display-math block: wait for its closing line
            if line.startswith(skip):
                skip = None
            continue
        if line.startswith(("```", "$$")):
            skip = line[:3] if line.startswith("```") else "$$"
            if line.startswith("$$") and line.endswith("$$") and len(line) > 2:
                skip = None  # one-line display math
            continue
        if not line or line.startswith(("<", "|", "!", "--8<--", "===", "---", ":::", "[^", "*[")):
            continue
        line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line.lstrip("#>-* ").strip())  # links -> their text
        if line:
            lines.append(line)
    return lines


def prose_lines(docs: Path | str = DOCS) -> list[str]:
    """The prose lines of every page under ``docs``, pages in path order."""
    pages = sorted(Path(docs).rglob("*.md"))
    if not pages:
        raise LineageError(f"no Markdown pages under {docs}: the language models train on the repository's notes")
    return [line for page in pages for line in _prose(page.read_text(encoding="utf-8"))]


def snapshot(docs: Path | str = DOCS, path: Path | str = NOTES) -> Path:
    """Write the prose lines of ``docs`` to ``path``, one per line (atomically): the text :func:`corpus` reads."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in prose_lines(docs)), encoding="utf-8")
    tmp.replace(path)
    return path


def corpus(docs: Path | str | None = None, notes: Path | str = NOTES) -> tuple[str, str]:
    """``(train, held_out)`` text: the snapshot ``notes`` (or, given ``docs``, the prose of the pages under it now),
    every :data:`HELD_OUT_EVERY`-th line held out, lines joined by newlines."""
    if docs is not None:
        lines = prose_lines(docs)
    else:
        try:
            lines = [line for line in Path(notes).read_text(encoding="utf-8").split("\n") if line]
        except OSError:
            raise LineageError(f"cannot read the notes snapshot {notes}: run `make corpus`") from None
    held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(lines))]
    return ("\n".join(line for line, h in zip(lines, held) if not h),
            "\n".join(line for line, h in zip(lines, held) if h))


# --8<-- [start:tokenizer]
class CharTokenizer:
    """Characters <-> ids: the :data:`SPECIALS` first, then ``chars`` in the given order."""

    def __init__(self, chars: str):
        self.tokens = [*SPECIALS, *chars]
        self.index = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise LineageError("the tokenizer's characters must be distinct")
        self.chars = chars
        self.pad, self.unk, self.mask, self.bos = range(4)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.tokens)

    def sentinel(self, i: int) -> int:
        """T5's i-th sentinel token ``<extra_i>``."""
        if not 0 <= i < SENTINELS:
            raise LineageError(f"only {SENTINELS} sentinels")
        return 4 + i

    def encode(self, text: str, *, strict: bool = False) -> torch.Tensor:
        """int64 ids of ``text``'s characters; unknown characters become ``<unk>`` (``strict``: an error)."""
        if strict and (unknown := sorted(set(text) - set(self.chars))):
            raise LineageError(f"characters not in the vocabulary: {''.join(unknown[:10])!r}")
        return torch.tensor([self.index.get(ch, self.unk) for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)
# --8<-- [end:tokenizer]


def windows(ids: torch.Tensor, length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``length`` consecutive ids, (batch, length); drawn from ``generator``."""
    if ids.numel() < length + 1:
        raise LineageError(f"text of {ids.numel()} tokens is shorter than a window of {length + 1}")
    start = torch.randint(0, ids.numel() - length, (batch,), generator=generator)
    return ids[start[:, None] + torch.arange(length)]


def unigram_nll(train: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of ``targets`` under the training text's character frequencies with
    add-one (Laplace) smoothing: the baseline a language model that ignores context can reach."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_p = counts.log() - math.log(float(counts.sum()))
    return float(-log_p[targets].mean())
