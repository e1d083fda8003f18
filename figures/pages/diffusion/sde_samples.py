"""Samples of the quick VP-SDE score model on swissroll with Euler-Maruyama, predictor-corrector and the
probability-flow ODE, next to the data."""

from pathlib import Path

import torch

from figures.zoo.sde import sde_checkpoint
from refimpl.data import toy_2d
from refimpl.plots import save, scatter_2d, subplots
from refimpl.sde import sample_from_checkpoint

PAGE = "diffusion/score-sde.md"
OUTPUTS = ("sde_samples.svg",)
RUNS = (("em", 1000, "Euler-Maruyama，1000 步"), ("pc", 1000, "PC（反向扩散 + 朗之万），1000 步"),
        ("ode", 100, "概率流 ODE，RK4 100 步"))


def make(out: Path, preset: str) -> None:
    checkpoint = sde_checkpoint("vp", "swissroll", preset)
    fig, axes = subplots(2, 2, figsize=(6.4, 6.8))
    axes = axes.flatten()
    scatter_2d(toy_2d("swissroll", 2000, torch.Generator().manual_seed(11)), ax=axes[0], color="0.4", title="数据")
    for ax, (sampler, steps, title) in zip(axes[1:], RUNS):
        x = sample_from_checkpoint(checkpoint, 2000, sampler=sampler, steps=steps, seed=0, disable=True)
        scatter_2d(x.cpu(), ax=ax, title=title)
    fig.tight_layout()
    save(fig, out / "sde_samples.svg")
