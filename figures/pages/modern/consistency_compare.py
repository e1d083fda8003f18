"""The quick DDPM on the swiss roll distilled into a consistency model, against its teacher sampled with DDIM and
DPM-Solver++ at equal NFE (the consistency-models page): consistency_nfe.svg (sample distance against model calls),
consistency_samples.svg, and consistency_repro.md/.json."""

import json
from pathlib import Path

import torch

from figures.lib.nfe import distances, nfe_figure
from figures.zoo.consistency import NFE, compare
from refimpl import consistency as cm
from refimpl.data import toy_2d
from refimpl.plots import save, scatter_2d, subplots

PAGE = "modern/consistency-models.md"
OUTPUTS = ("consistency_nfe.svg", "consistency_samples.svg", "consistency_repro.md", "consistency_repro.json")
N = 2000  # samples per sampler and NFE, all from the same noise
LABELS = {"cm": "一致性模型（蒸馏自 DDPM）", "ddim": "教师（DDPM 的 ε 模型），DDIM",
          "dpmpp": "教师，DPM-Solver++(2M)"}
SHORT = {"cm": "一致性模型", "ddim": "教师 + DDIM", "dpmpp": "教师 + DPM-Solver++"}


def make(out: Path, preset: str) -> None:
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    drawn = compare(preset, noise)
    distance, floor, gaussian = distances(drawn, N)
    spread = toy_2d("swissroll", N, torch.Generator().manual_seed(11)).std(0).mean().item()  # the data's scale
    chain = drawn[("chain", cm.GRID)]
    # how far one call of the student lands from the teacher's 50-call chain, per sample, against one DDIM call
    paired = {name: (drawn[(name, 1)] - chain).norm(dim=1).mean().item() for name in ("cm", "ddim")}

    fig = nfe_figure(NFE, {LABELS[name]: [distance[(name, n)] for n in NFE] for name in LABELS},
                     [(distance[("chain", cm.GRID)], "C0", "-.", f"教师沿蒸馏网格的 {cm.GRID} 步 DDIM（蒸馏的目标）"),
                      (distance[("ddpm", 1000)], "C1", "-.", "教师的 DDPM 祖先采样（1000 步）")],
                     floor, gaussian, f"瑞士卷，每个点 {N} 个样本，同一批噪声")
    save(fig, out / "consistency_nfe.svg")

    panels = [("cm", 1), ("cm", 2), ("chain", cm.GRID), ("ddim", 1), ("ddim", 2), ("dpmpp", 2)]
    fig, axes = subplots(2, 3, figsize=(7.0, 5.0))
    for ax, (name, n) in zip(axes.flat, panels):
        title = f"{SHORT[name]}，NFE {n}" if name in SHORT else f"教师的 {n} 步 DDIM 链"
        scatter_2d(drawn[(name, n)], ax=ax, title=title)
    fig.tight_layout()
    save(fig, out / "consistency_samples.svg")

    table = {"preset": preset, "n": N, "floor": floor, "gaussian": gaussian,
             "chain": distance[("chain", cm.GRID)], "ddpm": distance[("ddpm", 1000)], "paired_to_chain": paired,
             "sliced_wasserstein": {f"{name}/{n}": distance[(name, n)] for name in LABELS for n in NFE}}
    (out / "consistency_repro.json").write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    rows = ["| 采样 | " + " | ".join(f"NFE {n}" for n in NFE) + " |", "| --- |" + " --- |" * len(NFE)]
    for name in LABELS:
        rows.append(f"| {LABELS[name]} | " + " | ".join(f"{distance[(name, n)]:.3f}" for n in NFE) + " |")
    rows += ["", f"瑞士卷，{preset} 预设；表中是与新抽的数据之间的切片 Wasserstein 距离（每格 {N} 个样本，越小越好），"
             f"两份独立数据之间的距离（噪声底）是 {floor:.3f}，与数据同均值同协方差的高斯是 "
             f"{gaussian:.3f}；教师沿蒸馏网格走完 {cm.GRID} 步 DDIM 是 {distance[('chain', cm.GRID)]:.3f}，"
             f"教师用 DDPM 的祖先采样走 1000 步是 {distance[('ddpm', 1000)]:.3f}。"
             f"逐个样本比：一致性模型一次调用落在离教师 {cm.GRID} 步结果平均 {paired['cm']:.3f} 的地方，"
             f"教师自己一步 DDIM 是 {paired['ddim']:.3f}（数据每一维的标准差约 {spread:.2f}）。"]
    (out / "consistency_repro.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
