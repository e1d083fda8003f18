"""Training curve of the swiss-roll model: the one-timestep estimate of K (bits) per training step, against the
isotropic-Gaussian baseline L_null and the data's exact log likelihood (the ceiling of K)."""

import math
from pathlib import Path

import numpy as np
import torch

from figures.zoo.nonequilibrium import checkpoint, swissroll_log_density
from refimpl import nonequilibrium
from refimpl.data import toy_2d
from refimpl.plots import save, subplots
from refimpl.training import load_model

PAGE = "diffusion/nonequilibrium.md"
OUTPUTS = ("nonequilibrium_training.svg",)


def make(out: Path, preset: str) -> None:
    _, ckpt = load_model(checkpoint(preset), "nonequilibrium")
    steps, minus_k = np.array(ckpt.extra["history"], dtype=float).T
    data = toy_2d("swissroll", 4000, torch.Generator().manual_seed(4))
    null = nonequilibrium.log_pi(data).mean().item() / math.log(2)
    ceiling = swissroll_log_density(data).mean().item() / math.log(2)
    window = 20
    smooth = np.convolve(-minus_k, np.ones(window) / window, mode="valid")
    fig, ax = subplots(figsize=(6.8, 4.2))
    # Unicode symbols: mathtext has no CJK glyphs
    ax.plot(steps, -minus_k, color="C3", alpha=0.25, lw=0.8, label="K 的估计（10 步批次的平均）")
    ax.plot(steps[window - 1:], smooth, color="C3", lw=1.8, label=f"{window * 10} 步滑动平均")
    ax.axhline(null, color="C0", ls="--", label=f"L_null，各向同性高斯：{null:.2f} bits")
    ax.axhline(ceiling, color="k", ls=":", label=f"数据的精确 E log₂ q(x⁽⁰⁾)：{ceiling:.2f} bits")
    ax.set(xlabel="训练步数", ylabel="bits / 点", ylim=(null - 2, ceiling + 0.5),
           title="瑞士卷：训练中的下界 K（式 14）")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "nonequilibrium_training.svg")
