"""DDIM quality against the number of steps: the closed-form benchmark and the digits model.

Draws ddim_steps_error.svg and writes the DDIM page's 复现 table (ddim_repro.md/.json).
"""

import json
from pathlib import Path

import torch

from figures.lib.closed_form import Benchmark, fewest
from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from refimpl.core import pick_device
from refimpl.ddim import ddim_sample
from refimpl.ddpm import load_for_sampling
from refimpl.digits_eval import evaluate
from refimpl.plots import save, subplots

PAGE = "efficient-sampling/ddim.md"
OUTPUTS = ("ddim_steps_error.svg", "ddim_repro.md", "ddim_repro.json")
STEPS = (10, 20, 50, 100, 200, 1000)
ETAS = (0.0, 0.5, 1.0)


def closed_form() -> dict:
    """The closed-form benchmark's gap (figures.lib.closed_form) for DDIM at each (eta, steps) and for DDPM."""
    bench = Benchmark()
    ddim = {eta: {steps: bench.run(ddim_sample, steps=steps, eta=eta) for steps in STEPS} for eta in ETAS}
    return {"floor": bench.floor, "ddpm_1000": bench.ddpm_1000, "ddim": ddim}


def digits_scores(preset: str) -> dict:
    """Classifier score (Inception-Score formula, our classifier) of 256 digits per step count, eta = 0."""
    device = pick_device()
    model, schedule, shape = load_for_sampling(ddpm_checkpoint("digits", preset), device)
    x_T = torch.randn(256, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    scores = {steps: evaluate(ddim_sample(model, x_T, schedule, steps=steps, eta=0.0, disable=True)).classifier_score
              for steps in (10, 20, 50, 100)}
    ddpm = evaluate(ddpm_samples("digits", preset, n=256)["x0"]).classifier_score
    return {"ddim_eta0": scores, "ddpm_1000": ddpm}


def fewest_steps(errors: dict, target: float) -> str:
    found = fewest(errors, target)
    return "未达到" if found is None else str(found)


def make(out: Path, preset: str) -> None:
    cf = closed_form()
    fig, ax = subplots(figsize=(6, 4.6))
    for i, eta in enumerate(ETAS):
        ax.plot(STEPS, [cf["ddim"][eta][s] for s in STEPS], "o-", color=f"C{i}", label=rf"DDIM $\eta={eta:g}$")
    ax.axhline(cf["ddpm_1000"], color="0.3", ls="--", lw=1, label="DDPM，1000 步")
    ax.axhline(cf["floor"], color="0.6", ls=":", lw=1, label="蒙特卡洛标准误差")
    ax.set(xscale="log", yscale="log", xlabel="采样步数 S", title="高斯混合的闭式最优噪声预测")
    # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
    ax.set_ylabel(r"$|\mathrm{E}\log p(x_{gen}) - \mathrm{E}\log p(x_{data})|$ (nats)", fontsize=11)
    ax.tick_params(which="both", labelsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "ddim_steps_error.svg")

    digits = digits_scores(preset)
    (out / "ddim_repro.json").write_text(json.dumps({"closed_form": cf, "digits": digits, "preset": preset},
                                                    indent=2, sort_keys=True) + "\n")
    reach = cf["ddpm_1000"] + 2 * cf["floor"]
    rows = ["| 步数 S | 闭式基准误差，η = 0 | 闭式基准误差，η = 0.5 | 闭式基准误差，η = 1 | digits 分类器分数，η = 0 |",
            "| --- | --- | --- | --- | --- |"]
    for steps in STEPS:
        score = digits["ddim_eta0"].get(steps)
        rows.append(f"| {steps} | {cf['ddim'][0.0][steps]:.4f} | {cf['ddim'][0.5][steps]:.4f} | {cf['ddim'][1.0][steps]:.4f} | "
                    f"{'—' if score is None else f'{score:.2f}'} |")
    rows += ["", "闭式基准误差：样本在真实密度下的平均对数密度与真实数据的平均对数密度之差的绝对值（nats，越小越好）。",
             f"参照：DDPM 1000 步为 {cf['ddpm_1000']:.4f}；蒙特卡洛标准误差为 {cf['floor']:.4f}；"
             f"DDPM 1000 步采样的 digits 分类器分数为 {digits['ddpm_1000']:.2f}（满分 10）。"
             f"误差不超过“DDPM 1000 步 + 2 倍标准误差”（{reach:.4f}）所需的最少步数："
             f"η = 0 为 {fewest_steps(cf['ddim'][0.0], reach)}，η = 0.5 为 {fewest_steps(cf['ddim'][0.5], reach)}，"
             f"η = 1 为 {fewest_steps(cf['ddim'][1.0], reach)}（只在表中的步数里找）。"]
    (out / "ddim_repro.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
