"""Continuations of a few prompts by the quick GPT (fixed seeds, temperature 0.8, top-k 20), as a Markdown table."""

import re
from pathlib import Path

import torch

from figures.zoo.gpt import gpt_run
from refimpl import gpt

PAGE = "llm/gpt.md"
OUTPUTS = ("gpt_sample.md",)
PROMPTS = ("扩散模型", "注意力", "我们的实现")
TEMPERATURE, TOP_K, TOKENS = 0.8, 20, 60


def literal(text: str) -> str:
    """``text`` shown as is in a Markdown table cell: newlines as ⏎, every punctuation character as an HTML
    entity, so that no Markdown, math (``$``) or table syntax (``|``) in the sampled text is interpreted; in a <code> element,
    because it is text the model wrote, not TeX for MathJax."""
    return re.sub(r"[^\w\s]|_", lambda m: f"&#{ord(m[0])};", text.replace("\n", "⏎"))


def make(out: Path, preset: str) -> None:
    model, tok = gpt.load(gpt_run(preset))
    lines = [f"| 提示 | 设置 | 续写（{TOKENS} 个字符） |", "| --- | --- | --- |"]
    for prompt in PROMPTS:
        settings = (("贪心（top-k 1）", 0.0, 1), (f"温度 {TEMPERATURE}，top-k {TOP_K}，种子 0", TEMPERATURE, TOP_K))
        for label, temperature, k in settings:
            ids = gpt.generate(model, tok.encode(prompt, strict=True), TOKENS, temperature=temperature, top_k=k,
                               generator=torch.Generator().manual_seed(0))
            lines.append(f"| {prompt} | {label} | <code>{literal(tok.decode(ids[len(prompt):]))}</code> |")
    (out / "gpt_sample.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
