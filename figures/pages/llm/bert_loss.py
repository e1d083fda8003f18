"""Masked-token loss of the quick BERT run against training steps: training loss, held-out loss, unigram baseline."""

import json
from pathlib import Path

from figures.zoo.bert import bert_run
from refimpl.plots import save, subplots

PAGE = "llm/bert.md"
OUTPUTS = ("bert_loss.svg",)


def make(out: Path, preset: str) -> None:
    run = json.loads((bert_run(preset) / "held_out.json").read_text())
    fig, ax = subplots(figsize=(5.0, 3.2))
    ax.plot(*zip(*run["train"]), label="训练损失（batch 中被遮住的位置）", alpha=0.8)
    held = run["held_out"]
    ax.plot([h["step"] for h in held], [h["model"] for h in held], marker="o", label="留出笔记")
    ax.axhline(held[-1]["unigram"], color="0.5", linestyle="--", label="一元（unigram）基线（留出笔记）")
    ax.set_xlabel("训练步数")
    ax.set_ylabel("交叉熵（nats/被遮住的字）")
    ax.legend()
    save(fig, out / "bert_loss.svg")
