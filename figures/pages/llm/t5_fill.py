"""Span corruption on held-out lines of the notes and the quick model's greedy fill (t5_fill.md)."""

from pathlib import Path

import torch

from figures.zoo.t5 import t5_checkpoint
from refimpl import t5
from refimpl.text import SENTINELS

PAGE = "llm/t5.md"
OUTPUTS = ("t5_fill.md",)
EXAMPLES, LENGTH, SEED = 5, 48, 3


def _cell(text: str) -> str:
    """Show a string verbatim in a Markdown table cell (as code; pipes, backticks and newlines replaced)."""
    return "`" + text.replace("|", "¦").replace("`", "'").replace("\n", "⏎") + "`"


def make(out: Path, preset: str) -> None:
    model, tokenizer = t5.load(t5_checkpoint(preset))
    _, _, held_out, _ = t5.text_data()
    generator = torch.Generator().manual_seed(SEED)
    sentinels = range(tokenizer.sentinel(0), tokenizer.sentinel(0) + SENTINELS)
    rows = ["| 原文（留出集） | 编码器输入 | 目标 | 模型生成（贪心） |", "| --- | --- | --- | --- |"]
    for start in torch.randint(0, held_out.numel() - LENGTH, (EXAMPLES,), generator=generator).tolist():
        ids = held_out[start:start + LENGTH]
        inputs, targets = t5.span_corrupt(ids, tokenizer, generator)
        marked = "".join(t5.PLACEHOLDER if int(i) in sentinels else tokenizer.decode([i]) for i in inputs)
        _, generated = t5.fill(model, tokenizer, marked)
        rows.append(" | ".join(["", *map(_cell, (tokenizer.decode(ids), tokenizer.decode(inputs),
                                                  tokenizer.decode(targets), generated)), ""]).strip())
    rows += ["", f"预设 {preset}；每例是留出集中随机的 {LENGTH} 个字符（种子 {SEED}），按训练时的方式破坏；"
             "本表在站点构建时由 figures/pages/llm/t5_fill.py 用缓存的模型生成。"]
    (out / "t5_fill.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
