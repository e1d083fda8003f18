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
    fig, ax = subplots(figsize=(6.4, 4))
    ax.plot(steps, -minus_k, color="C3", alpha=0.25, lw=0.8, label="K estimate (mean of 10 steps' batches)")
    ax.plot(steps[window - 1:], smooth, color="C3", lw=1.8, label=f"running mean over {window * 10} steps")
    ax.axhline(null, color="C0", ls="--", label=f"$L_{{null}}$, isotropic Gaussian: {null:.2f} bits")
    ax.axhline(ceiling, color="k", ls=":", label=f"exact $E\\log_2 q(x^{{(0)}})$ of the data: {ceiling:.2f} bits")
    ax.set(xlabel="training step", ylabel="bits per point", ylim=(null - 2, ceiling + 0.5),
           title="swiss roll: the bound K (Eq. 14) during training")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "nonequilibrium_training.svg")
