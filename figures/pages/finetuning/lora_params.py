"""Trainable parameters of each way to fine-tune the quick LDM: full fine-tuning, LoRA at several ranks r (the
count r (d_in + d_out) per adapted matrix), and a ControlNet (the copied encoder half plus its new layers): the
counts come from figures/lib/trainable.py, which the page's 复现 table (lora_repro.py) shares."""

from pathlib import Path

from matplotlib.ticker import StrMethodFormatter

from figures.lib.trainable import RANKS, counts
from refimpl.plots import save, subplots

PAGE = "finetuning/lora.md"
OUTPUTS = ("lora_params.svg",)


def make(out: Path, preset: str) -> None:
    rows = counts(preset)
    fig, ax = subplots(figsize=(6.4, 3.2))
    labels, values = zip(*rows)
    # "full" in Chinese; the others are method names, the rank on a second line so that ten-point labels fit
    labels = ["全量微调" if label == "full" else label.replace(" ", "\n") for label in labels]
    colors = ["C7"] + ["C0"] * len(RANKS) + ["C3"]
    ax.bar(labels, values, color=colors)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 10^5 would set its exponent in 7 pt
    ax.set_ylabel("可训练参数")
    for i, v in enumerate(values):
        ax.text(i, v * 1.15, f"{v:,}", ha="center", fontsize=9)
    ax.set_ylim(top=max(values) * 4)
    save(fig, out / "lora_params.svg")
