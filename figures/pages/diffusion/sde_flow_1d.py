"""A 1-D mixture flowing through the VP SDE: p_t(x) over t with forward SDE paths, reverse SDE paths and
probability-flow ODE paths, all with the exact score (the layout of the paper's Figure 1)."""

from pathlib import Path

import math

import numpy as np
import torch

from refimpl.mixture import GaussianMixture
from refimpl.plots import save, subplots
from refimpl.sde import VPSDE, em_sample, exact_score, ode_sample

PAGE = "diffusion/score-sde.md"
OUTPUTS = ("sde_flow_1d.svg",)
EPS, STEPS, PATHS = 1e-3, 500, 12


def mixture_1d() -> GaussianMixture:
    return GaussianMixture([0.6, 0.4], [[-1.6], [1.4]], [[[0.09]], [[0.16]]])


def forward_paths(sde, x0, generator):
    """Euler-Maruyama on the forward SDE from t = eps to 1 (the same grid as the samplers)."""
    dt, x, path = (1 - EPS) / STEPS, x0, [x0]
    for k in range(STEPS):
        t = torch.full((x.shape[0],), EPS + k * dt, dtype=x.dtype)
        x = x + sde.drift(x, t) * dt + math.sqrt(dt) * sde.diffusion(t)[:, None] * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        path.append(x)
    return torch.stack(path)[:, :, 0].numpy()


def reverse_paths(sampler, model, sde, x_T, generator):
    path = [x_T]
    sampler(model, x_T, sde, steps=STEPS, eps=EPS, generator=generator, disable=True,
            callback=lambda t, x, x0: path.append(x))
    return torch.stack(path)[:, :, 0].numpy()


def make(out: Path, preset: str) -> None:
    mixture, sde = mixture_1d(), VPSDE()
    model = exact_score(mixture, sde)
    ts = np.linspace(EPS, 1, 200)
    xs = torch.linspace(-3.5, 3.5, 300, dtype=torch.float64)[:, None]
    density = np.stack([mixture.noised(*map(float, sde.marginal(t))).log_prob(xs).exp().numpy() for t in ts], axis=1)
    generator = torch.Generator().manual_seed(0)
    x0 = mixture.sample(PATHS, generator)[0]
    x_T = torch.randn(PATHS, 1, generator=generator, dtype=torch.float64)
    fwd_t = EPS + np.arange(STEPS + 1) * (1 - EPS) / STEPS
    rev_t = fwd_t[::-1]
    panels = (("前向 SDE（数据 → 噪声）", forward_paths(sde, x0, generator), fwd_t),
              ("反向 SDE（噪声 → 数据）", reverse_paths(em_sample, model, sde, x_T, generator), rev_t),
              ("概率流 ODE", reverse_paths(ode_sample, model, sde, x_T, generator), rev_t))
    fig, axes = subplots(1, 3, figsize=(7, 2.9), sharey=True)
    for ax, (title, paths, t) in zip(axes, panels):
        ax.imshow(density, origin="lower", aspect="auto", extent=(EPS, 1, -3.5, 3.5), cmap="Blues")
        ax.plot(t, paths, color="C3" if "SDE" in title else "C1", lw=0.8, alpha=0.9)
        ax.set(title=title, xlabel="t", xlim=(0, 1), xticks=(0, 0.5, 1))
    axes[0].set_ylabel("x")
    fig.tight_layout(w_pad=1.5)  # keeps "1.0" of one panel clear of "0.0" of the next
    save(fig, out / "sde_flow_1d.svg")
