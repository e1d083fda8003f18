"""Sample quality against model evaluations for every sampler: the closed-form benchmark, a trained 2-D
model and the digits model. Draws solvers_nfe.svg and writes the solvers page's 复现 table
(solvers_repro.md/.json): the NFE each sampler needs to reach the quality of 1000-step DDPM.
"""

import json
from pathlib import Path

import torch

from figures.lib.closed_form import Benchmark, fewest
from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from refimpl.core import pick_device
from refimpl.ddpm import load_for_sampling
from refimpl.digits_eval import evaluate
from refimpl.plots import save, subplots
from refimpl.solvers import SAMPLERS, nfe

PAGE = "efficient-sampling/solvers.md"
OUTPUTS = ("solvers_nfe.svg", "solvers_repro.md", "solvers_repro.json")
#: (label, sampler, spacing, eta or None, steps); karras spacing allows at most 78 steps (linear schedule)
RUNS = (
    ("DDIM η=0", "ddim", "uniform", 0.0, (5, 10, 20, 50, 100, 200)),
    ("DDIM η=0.5", "ddim", "uniform", 0.5, (10, 20, 50, 100, 200)),
    ("DDIM η=1", "ddim", "uniform", 1.0, (10, 20, 50, 100, 200)),
    ("DPM-Solver++(2M), uniform", "dpmpp-2m", "uniform", None, (5, 10, 20, 50, 100)),
    ("DPM-Solver++(2M), karras", "dpmpp-2m", "karras", None, (5, 8, 10, 15, 20, 30, 50, 78)),
    ("EDM Heun, karras", "heun", "karras", None, (3, 4, 5, 8, 10, 15, 20, 30, 50, 78)),
)
STYLE = {"ddim": "o-", "dpmpp-2m": "s-", "heun": "^-"}


def run(sampler: str, spacing: str, eta, steps: int) -> dict:
    """Keyword arguments of one sampler call (eta only for DDIM)."""
    return {"steps": steps, "spacing": spacing} | ({"eta": eta} if sampler == "ddim" else {})


def closed_form() -> dict:
    bench = Benchmark()
    curves = {label: {nfe(sampler, steps): bench.run(SAMPLERS[sampler].sample, **run(sampler, spacing, eta, steps))
                      for steps in steps_list}
              for label, sampler, spacing, eta, steps_list in RUNS}
    return {"floor": bench.floor, "ddpm_1000": bench.ddpm_1000, "reach": bench.reach, "curves": curves}


def trained_2d(preset: str) -> dict:
    """Deterministic samplers on the trained swiss-roll model: mean distance to the model's own ODE solution
    from the same x_T (Heun with 500 uniform steps, NFE 999, as the reference): discretisation error only."""
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("swissroll", preset), device)
    x_T = torch.randn(2000, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    reference = SAMPLERS["heun"].sample(model, x_T, schedule, steps=500, spacing="uniform", disable=True)
    curves = {}
    for label, sampler, spacing, eta, steps_list in RUNS:
        if eta not in (None, 0.0):
            continue  # stochastic: no pathwise reference
        curves[label] = {nfe(sampler, steps): float((SAMPLERS[sampler].sample(
            model, x_T, schedule, disable=True, **run(sampler, spacing, eta, steps)) - reference).norm(dim=1).mean())
            for steps in steps_list}
    return curves


def digits(preset: str) -> dict:
    """Classifier score of 256 digits from the same x_T (seed 0, as DDPM's cached samples) at about 10 and 20 NFE."""
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("digits", preset), device)
    x_T = torch.randn((256, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    settings = {"DDIM η=0": ("ddim", "uniform", (10, 20)), "DPM-Solver++(2M), karras": ("dpmpp-2m", "karras", (10, 20)),
                "EDM Heun, karras": ("heun", "karras", (5, 10))}
    scores = {label: {nfe(sampler, steps): evaluate(SAMPLERS[sampler].sample(
        model, x_T, schedule, steps=steps, spacing=spacing, disable=True).cpu()).classifier_score for steps in steps_list}
        for label, (sampler, spacing, steps_list) in settings.items()}
    return {"scores": scores, "ddpm_1000": evaluate(ddpm_samples("digits", preset, n=256)["x0"]).classifier_score}


def make(out: Path, preset: str) -> None:
    cf, tr = closed_form(), trained_2d(preset)
    fig, (ax_cf, ax_tr) = subplots(2, 1, figsize=(7, 7.6))
    for i, (label, sampler, *_rest) in enumerate(RUNS):
        xs = sorted(cf["curves"][label])
        ax_cf.plot(xs, [cf["curves"][label][x] for x in xs], STYLE[sampler], color=f"C{i}", ms=4, label=label)
        if label in tr:
            ax_tr.plot(xs, [tr[label][x] for x in xs], STYLE[sampler], color=f"C{i}", ms=4, label=label)
    ax_cf.axhline(cf["ddpm_1000"], color="0.3", ls="--", lw=1, label="DDPM，1000 步")
    ax_cf.axhline(cf["floor"], color="0.6", ls=":", lw=1, label="蒙特卡洛标准误差")
    # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
    ax_cf.set_ylabel(r"$|\mathrm{E}\log p(x_{gen}) - \mathrm{E}\log p(x_{data})|$ (nats)", fontsize=11)
    ax_cf.set_title("高斯混合的闭式最优噪声预测")
    ax_tr.set(ylabel="到模型自身 ODE 解的平均距离", title="训练好的瑞士卷模型（quick）")
    for ax in (ax_cf, ax_tr):
        ax.set(xscale="log", yscale="log", xlabel="网络调用次数 (NFE)")
        ax.tick_params(which="both", labelsize=11)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "solvers_nfe.svg")

    dg = digits(preset)
    (out / "solvers_repro.json").write_text(json.dumps({"closed_form": cf, "trained_2d": tr, "digits": dg,
                                                        "preset": preset}, indent=2, sort_keys=True) + "\n")
    rows = ["| 采样器 | 达到 DDPM 1000 步质量所需的 NFE（闭式基准） | 该 NFE 下的误差 | 试过的最大 NFE |",
            "| --- | --- | --- | --- |"]
    for label, *_rest in RUNS:
        curve = cf["curves"][label]
        need = fewest(curve, cf["reach"])
        rows.append(f"| {label} | {'未达到' if need is None else need} | "
                    f"{'—' if need is None else f'{curve[need]:.4f}'} | {max(curve)} |")
    rows += ["", f"闭式基准误差的定义与 DDIM 页相同（nats，越小越好）。DDPM 1000 步的误差为 {cf['ddpm_1000']:.4f}，"
             f"蒙特卡洛标准误差为 {cf['floor']:.4f}；“达到”指误差不超过 DDPM 1000 步 + 2 倍标准误差（{cf['reach']:.4f}），"
             "只在图中画出的步数里找。EDM Heun 的 NFE 是 2 × 步数 − 1。", "",
             "| 采样器（digits 模型，η = 0 或确定性） | NFE | digits 分类器分数 |", "| --- | --- | --- |"]
    for label, scores in dg["scores"].items():
        rows += [f"| {label} | {n} | {score:.2f} |" for n, score in scores.items()]
    rows.append(f"| DDPM（祖先采样） | 1000 | {dg['ddpm_1000']:.2f} |")
    (out / "solvers_repro.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
