"""Observed order of the ODE samplers on Gaussian data, where the probability-flow ODE is solved exactly.

Data N(mu, s^2 I) with its exact eps: the error of a sampler is pure discretisation error. It is
measured on the sample that lands on code t = 0 (the last sub-sequence level), against the exact flow
from that run's own start level: the final step from sigma(code 0) = 0.01 to 0 is first order in every
sampler and leaves a floor that does not shrink with the steps (tests/test_solvers.py pins both).
"""

from pathlib import Path

import torch

from refimpl.mixture import GaussianMixture, eps_model, gaussian_flow
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule
from refimpl.solvers import SAMPLERS, nfe, sub_sequence

PAGE = "efficient-sampling/solvers.md"
OUTPUTS = ("solvers_order.svg",)
MU, S = (0.7, -1.3), 0.5
RUNS = (  # (sampler, spacing, steps): karras spacing allows at most 78 steps on the linear schedule
    ("ddim", "uniform", (5, 10, 20, 40, 80, 160, 320)),
    ("dpmpp-2m", "uniform", (5, 10, 20, 40, 80, 160, 320)),
    ("dpmpp-2m", "karras", (5, 10, 20, 39, 78)),
    ("heun", "uniform", (3, 5, 10, 20, 40, 80, 160)),
    ("heun", "karras", (3, 5, 10, 20, 39, 78)),
)
LABELS = {"ddim": r"DDIM ($\eta=0$)", "dpmpp-2m": "DPM-Solver++(2M)", "heun": "EDM Heun"}


def error_at_code_0(name: str, spacing: str, steps: int, model, x_T, schedule) -> float:
    """Mean distance between the sample landing on code 0 and the exact flow to that level."""
    landed = []
    SAMPLERS[name].sample(model, x_T, schedule, steps=steps, spacing=spacing, disable=True,
                          callback=lambda t, x, x0: landed.append(x))
    start = schedule.alpha_bar[sub_sequence(schedule, steps, spacing)[-1]]
    exact = gaussian_flow(x_T, start, schedule.alpha_bar[0], MU, S)
    return float((landed[-2] - exact).norm(dim=1).mean())


def make(out: Path, preset: str) -> None:
    schedule = make_schedule("linear", 1000)
    model = eps_model(GaussianMixture.single(MU, S**2 * torch.eye(2, dtype=torch.float64)), schedule)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fig, ax = subplots(figsize=(6.5, 5.6))
    styles = {"uniform": "o-", "karras": "s--"}
    colors = {"ddim": "C0", "dpmpp-2m": "C2", "heun": "C3"}
    for name, spacing, steps_list in RUNS:
        errors = [error_at_code_0(name, spacing, steps, model, x_T, schedule) for steps in steps_list]
        ax.plot([nfe(name, s) for s in steps_list], errors, styles[spacing], color=colors[name], ms=4,
                label=f"{LABELS[name]}, {spacing}")
    n = torch.tensor([10.0, 300.0])
    ax.plot(n, 2.0 / n, color="0.5", lw=1, ls=":", label="斜率 −1（一阶）")
    ax.plot(n, 20.0 / n**2, color="0.2", lw=1, ls=":", label="斜率 −2（二阶）")
    ax.set(xscale="log", yscale="log", xlabel="网络调用次数 (NFE)", ylabel="代码 t = 0 处 |x − 精确 ODE 解| 的平均")
    ax.set_title("高斯数据 N(μ, 0.5² I)，精确的 ε*")  # no mathtext: it cannot draw Chinese
    # 11 pt: mathtext (the log axis's powers of ten) draws exponents at 70%
    ax.tick_params(which="both", labelsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "solvers_order.svg")
