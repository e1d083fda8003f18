"""Digits from the same x_T with about 10 model evaluations per sampler, and 1000-step DDPM for reference."""

from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from refimpl.core import pick_device
from refimpl.ddpm import load_for_sampling
from refimpl.plots import image_grid, save
from refimpl.solvers import SAMPLERS, nfe

PAGE = "efficient-sampling/solvers.md"
OUTPUTS = ("solvers_digits.svg",)
ROWS = (("DDIM", "ddim", "uniform", 10), ("DPM-Solver++(2M)", "dpmpp-2m", "karras", 10), ("EDM Heun", "heun", "karras", 5))
COLUMNS = 12


def make(out: Path, preset: str) -> None:
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("digits", preset), device)
    # the first draw of a generator seeded 0: the x_T of the cached DDPM samples (refimpl.ddpm.sample_from_checkpoint)
    x_T = torch.randn((256, *shape), generator=torch.Generator().manual_seed(0))[:COLUMNS].to(device)
    rows = [SAMPLERS[name].sample(model, x_T, schedule, steps=steps, spacing=spacing, disable=True).cpu()
            for _, name, spacing, steps in ROWS]
    rows.append(ddpm_samples("digits", preset, n=256)["x0"][:COLUMNS])
    titles = [f"{label}，NFE {nfe(name, steps)}" for label, name, _, steps in ROWS] + ["DDPM，NFE 1000"]
    fig = image_grid(torch.stack(rows), row_titles=titles, size=0.5)
    save(fig, out / "solvers_digits.svg")
