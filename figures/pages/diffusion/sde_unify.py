"""The unification: DDPM's sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i) against the VP SDE's kernel at t = i/N, NCSN's
geometric sigma_i against the VE SDE's sigma(t), and DDPM-chain vs Euler-Maruyama paths on the same increments."""

import math
from pathlib import Path

import numpy as np
import torch

from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule
from refimpl.sde import VESDE, VPSDE

PAGE = "diffusion/score-sde.md"
OUTPUTS = ("sde_unify.svg",)
N = 1000


def make(out: Path, preset: str) -> None:
    vp, ve = VPSDE(), VESDE(0.01, 50.0)
    schedule = make_schedule("linear", N)
    i = np.arange(1, N + 1)
    t = torch.tensor(i / N, dtype=torch.float64)
    mean_coef, std = vp.marginal(t)
    fig, axes = subplots(2, 2, figsize=(7, 6.4))
    ax_vp, ax_ve = axes[0]
    for ax in axes[1]:
        ax.remove()
    ax_paths = fig.add_subplot(axes[0, 0].get_gridspec()[1, :])  # the paths span the bottom row
    # Unicode symbols: mathtext has no CJK glyphs, and its radical sign needs a STIX font the reader may lack
    ax_vp.plot(i, schedule.alpha_bar.sqrt(), color="C0", lw=3, alpha=0.4, label="DDPM √ᾱᵢ")
    ax_vp.plot(i, (1 - schedule.alpha_bar).sqrt(), color="C1", lw=3, alpha=0.4, label="DDPM √(1 − ᾱᵢ)")
    ax_vp.plot(i, mean_coef, "--", color="C0", lw=1, label="VP SDE 均值系数，t = i/N")
    ax_vp.plot(i, std, "--", color="C1", lw=1, label="VP SDE 标准差，t = i/N")
    ax_vp.set(xlabel="步 i（t = i/N）", title="DDPM 链 vs VP SDE 的核")
    ax_vp.legend()

    levels = 10  # NCSN: geometric sigma_1 > ... > sigma_L, here on the VE SDE's range
    sigmas = np.exp(np.linspace(math.log(0.01), math.log(50.0), levels))
    tt = torch.linspace(0, 1, 200, dtype=torch.float64)
    ax_ve.plot(tt, ve.sigma(tt), color="C2", label=r"VE SDE $\sigma(t)$")
    ax_ve.plot(np.linspace(0, 1, levels), sigmas, "o", color="C3", ms=4, label="几何噪声尺度 σᵢ，10 级")
    ax_ve.set(yscale="log", xlabel="t", title="SMLD 噪声尺度 vs VE SDE")
    ax_ve.tick_params(axis="y", which="both", labelsize=11)  # 11 pt: mathtext draws the powers of ten at 70%
    ax_ve.legend()

    generator = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.5, 0.3, 1.8], dtype=torch.float64)
    z = torch.randn(N, 3, generator=generator, dtype=torch.float64)
    chain, em = [x0], [x0]
    betas = schedule.betas.double()
    for k in range(N):
        chain.append((1 - betas[k]).sqrt() * chain[-1] + betas[k].sqrt() * z[k])
        tk = torch.tensor(k / N, dtype=torch.float64)
        em.append(em[-1] - 0.5 * vp.beta(tk) * em[-1] / N + vp.beta(tk).sqrt() * math.sqrt(1 / N) * z[k])
    for j in range(3):
        ax_paths.plot(np.stack(chain)[:, j], color=f"C{j}", lw=2.5, alpha=0.35)
        ax_paths.plot(np.stack(em)[:, j], "--", color=f"C{j}", lw=0.8)
    ax_paths.set(xlabel="步 i", title="DDPM 链（粗线）vs VP SDE 的 Euler-Maruyama（虚线），同一组 z")
    fig.tight_layout()
    save(fig, out / "sde_unify.svg")
