"""The variational bound of the two digits models: per-timestep terms, the learned variance, bits/dim.

Draws iddpm_vlb_terms.svg and iddpm_variance.svg and writes the improved-DDPM page's likelihood table
(iddpm_nll.md/.json): DDPM (linear schedule, L_simple) with fixed_small and fixed_large variances, and
the iDDPM (cosine schedule, L_hybrid) with its learned variance, on the same digits and noise.

The DDPM's two rows differ only in the variance the bound assumes: with the same digits and the same noise
(the seed of refimpl.iddpm.nll_from_checkpoint) both bounds call the network on the same (x_t, t), so the
network runs once per call and its output is replayed to the second bound (:class:`Replay` checks the inputs).
"""

import json
from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint
from figures.zoo.iddpm import iddpm_checkpoint
from refimpl.core import pick_device
from refimpl import ddpm
from refimpl.data import held_out_digits
from refimpl.iddpm import BIN_WIDTH, bits_per_dim, load_for_sampling, nll_from_checkpoint, split_output
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule, q_sample

PAGE = "efficient-sampling/iddpm.md"
OUTPUTS = ("iddpm_vlb_terms.svg", "iddpm_variance.svg", "iddpm_nll.md", "iddpm_nll.json")
RUNS = (("DDPM（线性）, fixed_small", "ddpm", "fixed_small"), ("DDPM（线性）, fixed_large", "ddpm", "fixed_large"),
        ("iDDPM（线性）, learned", "iddpm-linear", "learned"), ("iDDPM（余弦）, learned", "iddpm", "learned"))
SEED = 0  # refimpl.iddpm.nll_from_checkpoint's default: the rows match `python -m refimpl iddpm nll`
N_NLL = 128  # of the 297 digits: standard errors ~0.03 bits/dim, well below the differences between rows
LEGEND = {label: label.replace("（线性）", " (linear)").replace("（余弦）", " (cosine)") for label, *_ in RUNS}
FRAC_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 999)  # denser where beta and beta_tilde differ


class Replay:
    """A model whose first pass over a sequence of calls runs the network and records each output; ``replay()``
    then answers the same sequence of calls from the record, refusing a call whose inputs differ."""

    def __init__(self, model):
        self.model, self.calls, self.replaying = model, [], False

    def replay(self) -> None:
        self.replaying, self.calls = True, iter(self.calls)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.replaying:
            self.calls.append((x_t, t, self.model(x_t, t)))
            return self.calls[-1][2]
        x_seen, t_seen, output = next(self.calls)
        if not (torch.equal(x_t, x_seen) and torch.equal(t, t_seen)):
            raise RuntimeError("the second bound called the network on other inputs than the first")
        return output


@torch.no_grad()
def ddpm_bounds(ckpt: Path, device) -> dict[str, object]:
    """bits_per_dim of the DDPM with fixed_small and with fixed_large, as nll_from_checkpoint computes each, from
    one run of the network."""
    model, schedule, _ = ddpm.load_for_sampling(ckpt, device)
    x0 = held_out_digits()[0][:N_NLL].to(device)
    shared, results = Replay(model), {}
    for variance in ("fixed_small", "fixed_large"):
        results[variance] = bits_per_dim(shared, x0, schedule, variance=variance, bin_width=BIN_WIDTH,
                                         generator=torch.Generator().manual_seed(SEED), disable=True)
        shared.replay()
    return results


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
    device = pick_device()
    ckpts = {"ddpm": ddpm_checkpoint("digits", preset), "iddpm": iddpm_checkpoint("digits", preset),
             "iddpm-linear": iddpm_checkpoint("digits", preset, schedule="linear")}
    fixed = ddpm_bounds(ckpts["ddpm"], device)
    results = {label: fixed[variance] if kind == "ddpm" else
               nll_from_checkpoint(ckpts[kind], N_NLL, variance=variance, seed=SEED, device=device, disable=True)[0]
               for label, kind, variance in RUNS}

    fig, ax = subplots(figsize=(6.5, 3.8))
    t = torch.arange(1, 1001)
    for i, (label, *_rest) in enumerate(RUNS):
        ax.plot(t, results[label].terms.mean(0).float().cpu(), color=f"C{i}", lw=1.2, label=LEGEND[label])
    ax.set(xscale="log", yscale="log", xlabel="paper timestep t (code t + 1)", ylabel="bits/dim",
           title=rf"Terms of the bound, mean over {N_NLL} digits ($L_0$ at t = 1)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "iddpm_vlb_terms.svg")

    fractions = learned_fraction(ckpts["iddpm"], device)
    fig, (ax_ratio, ax_frac) = subplots(1, 2, figsize=(10, 3.6))
    for name, color in (("linear", "C0"), ("cosine", "C1")):
        schedule = make_schedule(name, 1000)
        ax_ratio.plot(t, (schedule.beta_tilde / schedule.betas), color=color, label=name)
    ax_ratio.set(xscale="log", xlabel="paper timestep t", ylabel=r"$\tilde\beta_t / \beta_t$",
                 title=r"The two fixed variances, T = 1000")
    steps = [s + 1 for s in FRAC_STEPS]
    lo, mean, hi = zip(*(fractions[s] for s in FRAC_STEPS))
    ax_frac.fill_between(steps, lo, hi, color="C1", alpha=0.25, label="10-90% of pixels")
    ax_frac.plot(steps, mean, "o-", color="C1", ms=3, label="mean")
    ax_frac.set(ylim=(-0.05, 1.05), xscale="log", xlabel="paper timestep t", ylabel=r"frac (1 = $\beta_t$, 0 = $\tilde\beta_t$)",
                title="Learned interpolation of the digits iDDPM (cosine)")
    for ax in (ax_ratio, ax_frac):
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
