"""Fill-mask on held-out sentences of the notes: one Chinese character masked, the quick model's top-5 guesses."""

import random
from pathlib import Path

import torch

from figures.zoo.bert import bert_checkpoint
from refimpl import bert

PAGE = "llm/bert.md"
OUTPUTS = ("bert_fill.md",)
SENTENCES = 10
SEED = 0
MARKUP = set("|$`\\*_<>[]#&~")  # lines with these are left out: they would turn into Markdown or math in a table


def _held_out_examples(max_len: int) -> list[tuple[str, int]]:
    """(line, index of the masked character): held-out prose lines that fit the context, a Chinese character
    masked, both drawn with a fixed seed."""
    from refimpl.text import corpus

    rng = random.Random(SEED)
    lines = [line for line in corpus()[1].splitlines() if 12 <= len(line) <= max_len and not MARKUP & set(line)]
    examples = []
    for line in rng.sample(lines, len(lines)):
        hanzi = [i for i, ch in enumerate(line) if "\u4e00" <= ch <= "\u9fff"]
        if hanzi:
            examples.append((line, rng.choice(hanzi)))
        if len(examples) == SENTENCES:
            break
    return examples


def _show(ch: str) -> str:
    """A candidate character as table text: whitespace named, markup characters as HTML entities."""
    return {" ": "（空格）", "\n": "（换行）"}.get(ch, f"&#{ord(ch)};" if ch in MARKUP else ch)


def make(out: Path, preset: str) -> None:
    model, tokenizer = bert.load(bert_checkpoint(preset))
    train_ids = bert.text_data(tokenizer.chars)[1]
    frequency = torch.bincount(train_ids, minlength=len(tokenizer)).double() / train_ids.numel()
    rows = ["| 留出句子（被挖掉的字记作 [MASK]） | 原字 | 模型的前 5 个候选（概率） | 原字的名次与概率（字频） |",
            "| --- | --- | --- | --- |"]
    hits = helped = 0
    for line, i in _held_out_examples(model.max_len):
        ranking = bert.fill(model, tokenizer, line[:i] + bert.PLACEHOLDER + line[i + 1:], k=len(tokenizer.chars))[0]
        rank = [c for c, _ in ranking].index(line[i]) + 1
        p, q = ranking[rank - 1][1], frequency[tokenizer.index[line[i]]].item()
        hits, helped = hits + (rank == 1), helped + (p > q)
        shown = "、".join(f"**{_show(c)}** {pc:.2f}" if c == line[i] else f"{_show(c)} {pc:.2f}" for c, pc in ranking[:5])
        rows.append(f"| {line[:i]}&#91;MASK&#93;{line[i + 1:]} | {line[i]} | {shown} | 第 {rank} 名，{p:.2g}（{q:.2g}） |")
    rows += ["", f"{SENTENCES} 句中，首选猜中原字的有 {hits} 句；模型给原字的概率高于它在训练文本中的字频（即上下文帮上了忙）的有 "
             f"{helped} 句。候选中加粗的是原字。"]
    (out / "bert_fill.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
