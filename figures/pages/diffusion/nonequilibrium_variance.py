"""The learned reverse variance f_Sigma(x^(t), t) of the swiss-roll model against the forward beta_t and the
posterior variance beta_tilde_t of q(x^(t-1) | x^(t), x^(0))."""

from pathlib import Path

import torch

from figures.zoo.nonequilibrium import checkpoint
from refimpl import nonequilibrium
from refimpl.data import toy_2d
from refimpl.schedules import q_sample
from refimpl.plots import save, subplots

PAGE = "diffusion/nonequilibrium.md"
OUTPUTS = ("nonequilibrium_variance.svg",)


def make(out: Path, preset: str) -> None:
    kernel, schedule, _ = nonequilibrium.load(checkpoint(preset))
    x0 = toy_2d("swissroll", 4000, torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(3)
    paper_t = list(range(2, schedule.T + 1))  # the learned kernels; code t = paper t - 1
    quantiles = []
    with torch.no_grad():
        for t in paper_t:
            code = torch.full((len(x0),), t - 1)
            x_t = q_sample(x0, code, torch.randn(x0.shape, generator=generator), schedule)
            _, variance = kernel(x_t, code)
            quantiles.append(torch.quantile(variance.flatten(), torch.tensor([0.1, 0.5, 0.9])))
    q = torch.stack(quantiles)
    fig, ax = subplots(figsize=(6.8, 4.4))
    # Unicode symbols: mathtext has no CJK glyphs
    ax.fill_between(paper_t, q[:, 0], q[:, 2], color="C3", alpha=0.25, lw=0,
                    label="学到的 f_Σ：x⁽ᵗ⁾ ~ q 上的 10%–90% 区间")
    ax.plot(paper_t, q[:, 1], "o-", color="C3", ms=3, label="学到的 f_Σ：中位数")
    ax.plot(paper_t, schedule.betas[1:], "--", color="C0", label="前向 βₜ")
    ax.plot(paper_t, schedule.beta_tilde[1:], ":", color="k", label="q(x⁽ᵗ⁻¹⁾ | x⁽ᵗ⁾, x⁽⁰⁾) 的后验方差 β̃ₜ")
    ax.set(yscale="log", xlabel="t（论文的编号；t = 1 固定）", ylabel="每个坐标的方差",
           title="反向核的方差，瑞士卷，T = %d" % schedule.T)
    ax.tick_params(axis="y", which="both", labelsize=11)  # 11 pt: the powers of ten are mathtext
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "nonequilibrium_variance.svg")
