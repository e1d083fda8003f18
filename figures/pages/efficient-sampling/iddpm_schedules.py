"""Linear vs cosine schedule: alpha_bar against t/T, and how far from noise the skipped steps still are.

Improved DDPM Sec. 3.2: with the linear schedule the end of the forward process is so close to pure
noise that skipping up to ~20% of the reverse process barely hurts sample quality (a figure of the paper); the
cosine schedule spends those steps usefully. Measured here without any training: for the 2-D Gaussian
mixture benchmark the noised marginal q_t is exact, and starting the reverse process from N(0, I) at
t = (1 - f) T costs at most KL(N(0, I) || q_t) (the exact reverse kernels cannot increase a KL
divergence: data processing inequality), which we estimate by Monte Carlo with exact densities.
"""

from pathlib import Path

import torch

from refimpl.mixture import mixture_2d
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule

PAGE = "efficient-sampling/iddpm.md"
OUTPUTS = ("iddpm_schedules.svg",)
FRACTIONS = tuple(i / 100 for i in range(0, 51, 5))
N = 200_000


def kl_prior_to_marginal(alpha_bar: float, z: torch.Tensor) -> float:
    """KL(N(0, I) || q_t) over standard normal draws ``z``, as E_z[r - 1 - log r] with r = q_t(z) / N(z; 0, I).

    Unbiased like the plain E_z[-log r] (E_z[r] = 1), but every term is >= 0 and its variance vanishes
    as q_t -> N(0, I), which is the regime of interest (KL down to 1e-6 nats)."""
    log_normal = -0.5 * (z**2).sum(1) - z.shape[1] / 2 * torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype))
    log_r = mixture_2d().vp(alpha_bar).log_prob(z) - log_normal
    return float((torch.expm1(log_r) - log_r).mean())


def make(out: Path, preset: str) -> None:
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig, (ax_bar, ax_kl) = subplots(1, 2, figsize=(7, 3.6))
    for name, label, color in (("linear", "线性", "C0"), ("cosine", "余弦", "C1")):
        schedule = make_schedule(name, 1000)
        T = schedule.T
        ax_bar.plot(torch.arange(1, T + 1) / T, schedule.alpha_bar, color=color, label=label)
        starts = [round((1 - f) * T) - 1 for f in FRACTIONS]  # code timestep where sampling starts
        kls = [kl_prior_to_marginal(float(schedule.alpha_bar[t]), z) for t in starts]
        ax_kl.plot([100 * f for f in FRACTIONS], kls, "o-", color=color, label=label)
    # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
    ax_bar.set_xlabel("t / T")
    ax_bar.set_ylabel(r"$\bar\alpha_t$", fontsize=11)
    ax_bar.set_title(r"$\bar\alpha_t$, T = 1000", fontsize=11)
    ax_kl.set(xlabel="跳过最嘈杂的 f（占 T 的 %）", yscale="log",
              title="从 t = (1 − f) T 起步的代价\n（二维高斯混合）")
    ax_kl.set_ylabel(r"KL$(\mathrm{N}(0, I)\,\|\,q_t)$ (nats)", fontsize=11)
    for ax in (ax_bar, ax_kl):
        ax.tick_params(which="both", labelsize=11)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "iddpm_schedules.svg")
