"""Imagen's thresholding at a high guidance weight: samples with no, static and dynamic thresholding, and the share
of saturated pixels and of recognised digits against the guidance weight w."""

from pathlib import Path

import torch

from figures.zoo.imagen import HIGH_W, PER_DIGIT, WEIGHTS, accuracy, samples, saturation
from refimpl.imagen import THRESHOLDS
from refimpl.plots import image_grid, save, subplots

PAGE = "clip-diffusion/imagen.md"
OUTPUTS = ("imagen_thresholding.svg", "imagen_saturation.svg")
COLUMNS = 3  # samples per digit and thresholding
NAMES = {"none": "不处理", "static": "静态阈值", "dynamic": "动态阈值"}


def make(out: Path, preset: str) -> None:
    s = samples(preset)
    rows = [torch.cat([s[f"w{HIGH_W:g}_{kind}"][k * PER_DIGIT:k * PER_DIGIT + COLUMNS] for kind in THRESHOLDS])
            for k in range(10)]
    titles = [NAMES[kind] if j == 0 else "" for kind in THRESHOLDS for j in range(COLUMNS)]
    fig = image_grid(torch.stack(rows), column_titles=titles, row_titles=[str(k) for k in range(10)], size=0.55)
    save(fig, out / "imagen_thresholding.svg")

    fig, (ax_sat, ax_acc) = subplots(1, 2, figsize=(7.5, 3.0))
    for kind, marker in zip(THRESHOLDS, "osD"):
        ax_sat.plot(WEIGHTS, [saturation(s[f"w{w:g}_{kind}"]) for w in WEIGHTS], marker=marker, label=NAMES[kind])
        ax_acc.plot(WEIGHTS, [accuracy(s[f"w{w:g}_{kind}"], s["labels"]) for w in WEIGHTS], marker=marker,
                    label=NAMES[kind])
    ax_sat.set(xlabel="引导权重 w", ylabel="|x| > 0.98 的像素比例", ylim=(0, 1))
    ax_acc.set(xlabel="引导权重 w", ylabel="分类器读出所写数字的比例", ylim=(0, 1))
    ax_acc.axhline(0.1, color="gray", linestyle=":", linewidth=1, label="随机猜测")
    ax_sat.legend()
    ax_acc.legend()
    fig.tight_layout()
    save(fig, out / "imagen_saturation.svg")
