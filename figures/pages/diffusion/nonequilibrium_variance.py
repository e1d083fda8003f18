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
    fig, ax = subplots(figsize=(6.4, 4))
    ax.fill_between(paper_t, q[:, 0], q[:, 2], color="C3", alpha=0.25, lw=0,
                    label=r"learned $f_\Sigma$: 10%-90% over $x^{(t)} \sim q$")
    ax.plot(paper_t, q[:, 1], "o-", color="C3", ms=3, label=r"learned $f_\Sigma$: median")
    ax.plot(paper_t, schedule.betas[1:], "--", color="C0", label=r"forward $\beta_t$")
    ax.plot(paper_t, schedule.beta_tilde[1:], ":", color="k", label=r"posterior $\tilde\beta_t$ of $q(x^{(t-1)}|x^{(t)},x^{(0)})$")
    ax.set(yscale="log", xlabel="t (the paper's numbering; t = 1 is fixed)", ylabel="variance per coordinate",
           title="reverse-kernel variance, swiss roll, T = %d" % schedule.T)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "nonequilibrium_variance.svg")
