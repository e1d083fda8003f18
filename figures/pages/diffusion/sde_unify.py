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
    fig, (ax_vp, ax_ve, ax_paths) = subplots(1, 3, figsize=(14, 3.8))
    ax_vp.plot(i, schedule.alpha_bar.sqrt(), color="C0", lw=3, alpha=0.4, label=r"DDPM $\sqrt{\bar\alpha_i}$")
    ax_vp.plot(i, (1 - schedule.alpha_bar).sqrt(), color="C1", lw=3, alpha=0.4, label=r"DDPM $\sqrt{1-\bar\alpha_i}$")
    ax_vp.plot(i, mean_coef, "--", color="C0", lw=1, label="VP SDE mean coef. at t = i/N")
    ax_vp.plot(i, std, "--", color="C1", lw=1, label="VP SDE std at t = i/N")
    ax_vp.set(xlabel="step i (t = i/N)", title="DDPM chain vs VP SDE kernel")
    ax_vp.legend(fontsize=7)

    levels = 10  # NCSN: geometric sigma_1 > ... > sigma_L, here on the VE SDE's range
    sigmas = np.exp(np.linspace(math.log(0.01), math.log(50.0), levels))
    tt = torch.linspace(0, 1, 200, dtype=torch.float64)
    ax_ve.plot(tt, ve.sigma(tt), color="C2", label=r"VE SDE $\sigma(t)$")
    ax_ve.plot(np.linspace(0, 1, levels), sigmas, "o", color="C3", ms=4, label=r"geometric $\sigma_i$, 10 levels")
    ax_ve.set(yscale="log", xlabel="t", title="SMLD noise levels vs VE SDE")
    ax_ve.legend(fontsize=7)

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
    ax_paths.set(xlabel="step i", title="DDPM chain (thick) vs Euler-Maruyama on VP SDE (dashed), same z")
    fig.tight_layout()
    save(fig, out / "sde_unify.svg")
