"""Training and held-out loss of the quick GPT against the unigram baseline, and the GPT page's 复现 table."""

import json
from pathlib import Path

from figures.zoo.gpt import curve, gpt_run
from refimpl import gpt
from refimpl.plots import save, subplots

PAGE = "llm/gpt.md"
OUTPUTS = ("gpt_loss.svg", "gpt_repro.md")


def make(out: Path, preset: str) -> None:
    run = gpt_run(preset)  # once: the notes (and so the key) may change while the site builds
    c = curve(run)
    fig, ax = subplots(figsize=(5.0, 3.2))
    ax.plot(*zip(*c["train"]), lw=1, alpha=0.7, label="训练损失（每 10 步平均）")
    ax.plot(c["steps"], c["held_out"], marker="o", ms=3, label="留出集损失")
    ax.axhline(c["unigram"], color="gray", ls="--", lw=1, label="一元（unigram）基线（留出集）")
    ax.set_xlabel("训练步数")
    ax.set_ylabel("交叉熵（nats/字符）")
    ax.legend()
    save(fig, out / "gpt_loss.svg")

    model, tok = gpt.load(run)
    params = sum(p.numel() for p in model.parameters())
    m = model.config
    config = json.loads((run / "config.json").read_text())["config"]
    rows = [
        ("留出集交叉熵（nats/字符）", "—（论文在 BooksCorpus / WebText 上报告困惑度，字级与词级不可比）",
         f"{c['held_out'][-1]:.3f}", f"unigram 基线 {c['unigram']:.3f}；未训练模型 {c['held_out'][0]:.3f}"),
        ("模型规模", "GPT-1：12 层、768 维、12 头；GPT-2 最大 48 层、1600 维、15 亿参数；GPT-3 最大 96 层、"
         "12288 维、1750 亿参数",
         f"{m['depth']} 层、{m['width']} 维、{m['heads']} 头，{params / 1e3:.0f}k 参数（词表 {len(tok)} 个字符）",
         "—"),
        ("上下文与训练", "上下文 512 / 1024 / 2048 个 token",
         f"上下文 {m['max_len']} 个字符，{config['steps']} 步 × batch {config['batch_size']}（{preset} 预设）", "—"),
    ]
    lines = ["| 指标 | 论文（GPT-1 / 2 / 3） | 我们测得（本站笔记，字符级） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "gpt_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
