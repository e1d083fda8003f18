"""Flow matching and reflow on the swiss roll, against DDPM's eps model with DDIM and DPM-Solver++ at equal NFE (the
flow-matching page): flow_paths.svg (straight-line pairs, the first flow's paths, the reflowed paths),
flow_nfe.svg (sample distance against model calls), flow_samples.svg, and flow_repro.md/.json."""

import json
from pathlib import Path

import torch

from figures.lib.nfe import distances, nfe_figure
from figures.zoo.ddpm import ddpm_checkpoint
from figures.zoo.flow import flows as quick_flows
from refimpl import ddim, flow, solvers
from refimpl.data import toy_2d
from refimpl.plots import save, scatter_2d, subplots

PAGE = "modern/flow-matching.md"
OUTPUTS = ("flow_paths.svg", "flow_nfe.svg", "flow_samples.svg", "flow_repro.md", "flow_repro.json")
NFE = (1, 2, 4, 8, 16, 32)
N = 2000  # samples per sampler and NFE, from the same noise
PATHS = 60  # trajectories drawn
FINE = 100  # Euler steps of the drawn trajectories and of the straightness estimate
LABELS = {"flow": "第一个流（独立配对），欧拉法", "reflow": "reflow 之后（2-rectified flow），欧拉法",
          "ddim": "DDPM 的 ε 模型，DDIM", "dpmpp": "DDPM 的 ε 模型，DPM-Solver++(2M)"}
SHORT = {"flow": "第一个流", "reflow": "reflow 之后", "ddim": "ε 模型 + DDIM", "dpmpp": "ε 模型 + DPM-Solver++"}
PATH_TITLES = {"flow": "第一个流 (1-rectified flow)", "reflow": "reflow 之后 (2-rectified flow)"}


def samples(flows: dict[str, flow.Velocity], preset: str, noise: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """Samples of the four samplers at each NFE; the flows start from ``noise``, the DDPM samplers from their own
    seed-0 noise (refimpl's sample_from_checkpoint)."""
    out = {}
    with torch.no_grad():
        for name, velocity in flows.items():
            for n in NFE:
                out[(name, n)] = flow.euler_sample(velocity, noise, flow.time_grid(n))
    ckpt = ddpm_checkpoint("swissroll", preset)
    for n in NFE:  # DPM-Solver++(2M) and DDIM call the model once per step
        out[("ddim", n)] = ddim.sample_from_checkpoint(ckpt, N, steps=n, seed=0, disable=True)
        out[("dpmpp", n)] = solvers.sample_from_checkpoint(ckpt, N, sampler="dpmpp-2m", steps=n, seed=0,
                                                           disable=True)
    return out


def make(out: Path, preset: str) -> None:
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    flows = quick_flows("swissroll", preset)
    grid = flow.time_grid(FINE)
    with torch.no_grad():
        paths = {name: flow.euler_sample(v, noise, grid, trajectory=True) for name, v in flows.items()}
    straightness = {name: flow.straightness(path, grid) for name, path in paths.items()}

    fig, axes = subplots(1, 3, figsize=(9, 3.6))
    data = toy_2d("swissroll", N, torch.Generator().manual_seed(1))
    ends = {"pairs": data, "flow": paths["flow"][-1], "reflow": paths["reflow"][-1]}
    lines = {"pairs": torch.stack([noise, data])[:, :PATHS], "flow": paths["flow"][:, :PATHS],
             "reflow": paths["reflow"][:, :PATHS]}
    titles = {"pairs": "训练配对 (ε, x)\n彼此交叉的直线",
              **{name: f"{PATH_TITLES[name]}\nODE 轨迹，S = {straightness[name]:.3f}" for name in flows}}
    for i, (ax, name) in enumerate(zip(axes, ("pairs", "flow", "reflow"))):
        ax.scatter(ends[name][:, 0], ends[name][:, 1], s=1, color="0.8", rasterized=True, linewidths=0)
        ax.plot(lines[name][:, :, 0], lines[name][:, :, 1], color=f"C{i}", lw=0.6, alpha=0.7)
        ax.scatter(noise[:PATHS, 0], noise[:PATHS, 1], s=5, color="0.3", zorder=3)
        ax.scatter(lines[name][-1, :, 0], lines[name][-1, :, 1], s=5, color=f"C{i}", zorder=3)
        ax.set_title(titles[name])
        ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xticks=[], yticks=[])
    fig.tight_layout()
    save(fig, out / "flow_paths.svg")

    drawn = samples(flows, preset, noise)
    distance, floor, gaussian_distance = distances(drawn, N)
    fig = nfe_figure(NFE, {LABELS[name]: [distance[(name, n)] for n in NFE] for name in LABELS}, [], floor,
                     gaussian_distance, f"瑞士卷，每个点 {N} 个样本")
    save(fig, out / "flow_nfe.svg")

    shown = (1, 2, 8)
    fig, axes = subplots(len(LABELS), len(shown), figsize=(2.7 * len(shown), 2.5 * len(LABELS)))
    for row, name in enumerate(LABELS):
        for col, n in enumerate(shown):
            scatter_2d(drawn[(name, n)], ax=axes[row, col], title=f"{SHORT[name]}，NFE {n}")
    fig.tight_layout()
    save(fig, out / "flow_samples.svg")

    table = {"preset": preset, "n": N, "floor": floor, "gaussian": gaussian_distance, "straightness": straightness,
             "sliced_wasserstein": {f"{name}/{n}": distance[(name, n)] for name in LABELS for n in NFE}}
    (out / "flow_repro.json").write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    rows = ["| 采样 | 直度 S | " + " | ".join(f"NFE {n}" for n in NFE) + " |",
            "| --- | --- |" + " --- |" * len(NFE)]
    for name in LABELS:
        s = f"{straightness[name]:.3f}" if name in straightness else "—"
        rows.append(f"| {LABELS[name]} | {s} | " + " | ".join(f"{distance[(name, n)]:.3f}" for n in NFE) + " |")
    rows += ["", f"瑞士卷，{preset} 预设；表中是与新抽的数据之间的切片 Wasserstein 距离（每格 {N} 个样本，越小越好），"
             f"两份独立数据之间的距离（噪声底）是 {floor:.3f}，"
             f"与数据同均值同协方差的高斯是 {gaussian_distance:.3f}。直度 S 用 {FINE} 步欧拉轨迹估计，0 表示每条路径都是匀速直线。"
             "两个流从同一批噪声出发；DDPM 的两个采样器用它们自己的种子 0 噪声。"]
    (out / "flow_repro.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
