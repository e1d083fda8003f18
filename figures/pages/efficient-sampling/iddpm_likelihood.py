"""The variational bound of the digits models: per-timestep terms, the learned variance, bits/dim.

Draws iddpm_vlb_terms.svg and iddpm_variance.svg and writes the improved-DDPM page's likelihood table
(iddpm_nll.md/.json): DDPM (linear schedule, L_simple) with fixed_small and fixed_large variances, and the
iDDPM (L_hybrid, linear and cosine schedule) with its learned variance, on the same digits and noise. The bounds
are the cached artifact figures.zoo.iddpm.bounds, which tests/test_iddpm.py checks the page's claim on.
"""

import json
from pathlib import Path

import torch

from figures.zoo.iddpm import N_NLL, bounds, iddpm_checkpoint
from refimpl.core import pick_device
from refimpl.data import held_out_digits
from refimpl.iddpm import load_for_sampling, split_output
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule, q_sample

PAGE = "efficient-sampling/iddpm.md"
OUTPUTS = ("iddpm_vlb_terms.svg", "iddpm_variance.svg", "iddpm_nll.md", "iddpm_nll.json")
RUNS = (("DDPM（线性）, fixed_small", "ddpm_fixed_small"), ("DDPM（线性）, fixed_large", "ddpm_fixed_large"),
        ("iDDPM（线性）, learned", "iddpm-linear_learned"), ("iDDPM（余弦）, learned", "iddpm_learned"))
FRAC_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 999)  # denser where beta and beta_tilde differ


@torch.no_grad()
def learned_fraction(ckpt: Path, device) -> dict[int, list[float]]:
    """The iDDPM's interpolation frac = (v + 1) / 2 (Eq. 15; 1 = beta_t, 0 = beta_tilde_t) at each t in
    FRAC_STEPS, over the 297 digits and their pixels: [10th percentile, mean, 90th percentile]."""
    model, schedule, _ = load_for_sampling(ckpt, device)
    x0 = held_out_digits()[0].to(device)
    generator = torch.Generator().manual_seed(1)
    out = {}
    for t in FRAC_STEPS:
        t_batch = torch.full((x0.shape[0],), t, dtype=torch.long, device=device)
        x_t = q_sample(x0, t_batch, torch.randn(x0.shape, generator=generator).to(device), schedule)
        frac = ((split_output(model(x_t, t_batch), x_t)[1] + 1) / 2).flatten().float().cpu()
        out[t] = [float(frac.quantile(0.1)), float(frac.mean()), float(frac.quantile(0.9))]
    return out


def make(out: Path, preset: str) -> None:
    rows = bounds(preset)
    results = {label: rows[row] for label, row in RUNS}

    fig, ax = subplots(figsize=(6.5, 3.8))
    t = torch.arange(1, 1001)
    for i, (label, _) in enumerate(RUNS):
        ax.plot(t, results[label].terms.mean(0).float().cpu(), color=f"C{i}", lw=1.2, label=label)
    ax.set(xscale="log", yscale="log", xlabel="论文时间步 t（代码 t + 1）", ylabel="bits/dim")
    ax.set_title(f"变分界各项，{N_NLL} 张 digits 的平均（t = 1 处是 L₀）")  # no mathtext: it cannot draw Chinese
    # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
    ax.tick_params(which="both", labelsize=11)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "iddpm_vlb_terms.svg")

    fractions = learned_fraction(iddpm_checkpoint("digits", preset), pick_device())
    fig, (ax_ratio, ax_frac) = subplots(1, 2, figsize=(7, 3.6))
    for name, label, color in (("linear", "线性", "C0"), ("cosine", "余弦", "C1")):
        schedule = make_schedule(name, 1000)
        ax_ratio.plot(t, (schedule.beta_tilde / schedule.betas), color=color, label=label)
    ax_ratio.set(xscale="log", xlabel="论文时间步 t", title=r"两种固定方差之比，T = 1000")
    ax_ratio.set_ylabel(r"$\tilde\beta_t / \beta_t$", fontsize=11)
    steps = [s + 1 for s in FRAC_STEPS]
    lo, mean, hi = zip(*(fractions[s] for s in FRAC_STEPS))
    ax_frac.fill_between(steps, lo, hi, color="C1", alpha=0.25, label="10%–90% 的像素")
    ax_frac.plot(steps, mean, "o-", color="C1", ms=3, label="平均")
    ax_frac.set(ylim=(-0.05, 1.05), xscale="log", xlabel="论文时间步 t", title="digits iDDPM（余弦）\n学到的插值比例")
    ax_frac.set_ylabel(r"frac (1 = $\beta_t$, 0 = $\tilde\beta_t$)", fontsize=11)
    for ax in (ax_ratio, ax_frac):
        # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
        ax.tick_params(which="both", labelsize=11)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out / "iddpm_variance.svg")

    table = {label: {"bits_per_dim": float(r.total.mean()), "standard_error": float(r.total.std() / N_NLL ** 0.5),
                     "prior": float(r.prior.mean()), "decoder_L0": float(r.terms[:, 0].mean()),
                     "first_10": float(r.terms[:, :10].sum(1).mean()), "last": float(r.terms[:, -1].mean())}
             for label, r in results.items()}
    (out / "iddpm_nll.json").write_text(json.dumps({"preset": preset, "n": N_NLL, "results": table},
                                                   indent=2, sort_keys=True) + "\n")
    rows = ["| 模型与方差 | bits/dim（总界 ± 标准误差） | 其中 $L_0$ | 其中前 10 项 | 其中最后一项（代码 t = 999） | 其中先验项 $L_T$ |",
            "| --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {label} | {r['bits_per_dim']:.3f} ± {r['standard_error']:.3f} | {r['decoder_L0']:.1e} | "
             f"{r['first_10']:.3f} | {r['last']:.3g} | {r['prior']:.1e} |" for label, r in table.items()]
    rows += ["", f"在 held-out 划分的前 {N_NLL} 张 digits 上计算（这些图扩散模型训练时都见过，见上文），每张图每个时间步一份噪声，"
             "全部 1000 项逐项求和，不做 t 的抽样。17 个灰度级的均匀分布是 log2(17) ≈ 4.09 bits/dim。"]
    (out / "iddpm_nll.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
