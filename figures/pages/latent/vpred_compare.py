"""v-prediction against eps-prediction on the swiss roll (the LDM page's Stable Diffusion 2 section): the same
network, data, schedule and optimiser (DDPM's quick config), only the target differs. Draws vpred_x0_error.svg (the
x0 prediction error against t) and vpred_samples.svg (few-step DDIM samples), and writes vpred_repro.md/.json."""

import json
from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint
from figures.zoo.vpred import N, TIMES, vpred_checkpoint, x0_errors
from refimpl import ddim, vpred
from refimpl.data import toy_2d
from refimpl.metrics import sliced_wasserstein
from refimpl.plots import save, scatter_2d, subplots

PAGE = "latent/ldm.md"
OUTPUTS = ("vpred_x0_error.svg", "vpred_samples.svg", "vpred_repro.md", "vpred_repro.json")
STEPS = (5, 20, 100)  # DDIM steps (eta = 0) of the sample figure and table; the first step at code t = 800, 950, 990
N_SAMPLES = 2000
LABELS = {"eps": "ε 预测（DDPM 的 quick 模型）", "v": "v 预测（同一配置，只换目标）"}


def samples(preset: str) -> dict[tuple[str, int], torch.Tensor]:
    """DDIM (eta = 0) samples of both models from the same x_T, for each of STEPS."""
    models = {"eps": ddim.sample_from_checkpoint, "v": vpred.sample_from_checkpoint}
    ckpts = {"eps": ddpm_checkpoint("swissroll", preset), "v": vpred_checkpoint("swissroll", preset)}
    return {(name, s): sample(ckpts[name], N_SAMPLES, steps=s, seed=0, disable=True)
            for name, sample in models.items() for s in STEPS}


def make(out: Path, preset: str) -> None:
    errors = x0_errors(preset)
    data = toy_2d("swissroll", 100_000, torch.Generator().manual_seed(3))
    spread = float(data.var(0).sum())  # squared error of always answering the data's mean

    fig, ax = subplots(figsize=(6, 3.6))
    for i, (name, label) in enumerate((("eps", "ε 预测"), ("v", "v 预测"))):
        ax.plot(TIMES, errors[name].mean(1), "o-", color=f"C{i}", ms=3, label=label)
    ax.axhline(spread, color="0.5", ls="--", lw=1, label="总是回答数据均值")
    ax.set(yscale="log", xlabel="代码时间步 t")
    # 11 pt: mathtext (subscripts, the log axis's powers of ten) draws scripts at 70%
    ax.set_ylabel(r"$E\,\|\hat x_0 - x_0\|^2$", fontsize=11)
    ax.set_title(f"由 zₜ 预测 x₀，瑞士卷，每个 t {N} 个点")  # no mathtext: it cannot draw Chinese
    ax.tick_params(which="both", labelsize=11)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out / "vpred_x0_error.svg")

    drawn = samples(preset)
    fig, axes = subplots(2, len(STEPS), figsize=(2.6 * len(STEPS), 5.4))
    for row, name in enumerate(("eps", "v")):
        for col, s in enumerate(STEPS):
            scatter_2d(drawn[(name, s)], ax=axes[row, col], title=f"{'ε' if name == 'eps' else 'v'} 预测，DDIM {s} 步")
    fig.tight_layout()
    save(fig, out / "vpred_samples.svg")

    reference = toy_2d("swissroll", N_SAMPLES, torch.Generator().manual_seed(11))
    distance = {key: sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(0))
                for key, x in drawn.items()}
    last = TIMES.index(999)
    table = {"preset": preset, "n": N, "spread": spread,
             "x0_mse_t999": {name: float(e[last].mean()) for name, e in errors.items()},
             "x0_mse_t500": {name: float(e[TIMES.index(500)].mean()) for name, e in errors.items()},
             "sliced_wasserstein": {f"{name}/{s}": value for (name, s), value in distance.items()}}
    (out / "vpred_repro.json").write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    rows = ["| 模型 | x̂₀ 的均方误差，t = 999 | x̂₀ 的均方误差，t = 500 | "
            + " | ".join(f"DDIM {s} 步，切片 Wasserstein" for s in STEPS) + " |",
            "| --- | --- | --- |" + " --- |" * len(STEPS)]
    rows += [f"| {LABELS[name]} | {table['x0_mse_t999'][name]:.3g} | {table['x0_mse_t500'][name]:.3g} | "
             + " | ".join(f"{distance[(name, s)]:.3f}" for s in STEPS) + " |" for name in ("eps", "v")]
    rows += ["", f"瑞士卷，{preset} 预设。x̂₀ 的误差在每个 t 上用 {N} 个新抽的点；参照：总是回答数据均值的均方误差"
             f"是 {spread:.2f}。采样两模型从同一批 x_T 出发（各 {N_SAMPLES} 个点），与新抽的数据比切片 Wasserstein 距离。"]
    (out / "vpred_repro.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
