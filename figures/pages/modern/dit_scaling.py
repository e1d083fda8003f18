"""DiT's scaling study in miniature (the DiT page): the quick family of two sizes x two patch sizes, trained alike
on the training digits. Draws dit_scaling.svg (held-out denoising loss and sample Fréchet distance against forward
Gflops) and dit_samples.svg (every member from the same x_T and label, ordered by compute); writes dit_repro.md/.json.
"""

import json
from pathlib import Path

import torch
from matplotlib.ticker import NullFormatter

from figures.zoo.dit import PER_CLASS, STEPS, measure, name
from refimpl import dit
from refimpl.data import HOLDOUT
from refimpl.plots import image_grid, save, subplots

PAGE = "modern/dit.md"
OUTPUTS = ("dit_scaling.svg", "dit_samples.svg", "dit_repro.md", "dit_repro.json")
MARKERS = {4: "s", 2: "o"}
TICKS = (0.1, 0.3, 1, 3)


def patch_note(rows: dict) -> str:
    """One sentence, from the measurements: does halving the patch improve the samples (Fréchet distance) at
    every size, as the paper finds at every stage of training?"""
    pairs = {size: (rows[name(size, 4)]["fd"], rows[name(size, 2)]["fd"]) for size in dit.SIZES}
    each = "；".join(f"{size}：p = 4 为 {a:.1f}，p = 2 为 {b:.1f}" for size, (a, b) in pairs.items())
    if all(b < a for a, b in pairs.values()):
        return f"减小 patch 在两种大小里都改善了样本（Fréchet 距离 {each}），与论文一致。"
    return (f"减小 patch 没有在每种大小里都改善样本（Fréchet 距离 {each}），尽管去噪损失都降低了：论文报告减小 patch "
            f"带来的 Gflops 同样一贯降低 FID（摘要：更多的输入 token），这里没有复现；每个模型只训练了 quick 预设的步数。")


def make(out: Path, preset: str) -> None:
    measured = measure(preset)
    rows, data = measured["rows"], measured["data"]

    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.0))
    for size in dit.SIZES:
        keys = [name(size, p) for p in dit.PATCHES]
        x = [rows[k]["mflops"] for k in keys]
        for ax, metric in ((left, "loss"), (right, "fd")):
            ax.plot(x, [rows[k][metric] for k in keys], "-", color="0.7", zorder=1)
            for k in keys:
                ax.scatter(rows[k]["mflops"], rows[k][metric], marker=MARKERS[rows[k]["patch"]], s=36, zorder=2,
                           color=f"C{list(dit.SIZES).index(size)}", label=f"DiT-{k}")
    for ax, title in ((left, "留出数字上的去噪损失"), (right, "样本的 Fréchet 距离")):
        ax.set_xscale("log")
        ax.set_xticks(TICKS, [f"{t:g}" for t in TICKS])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("每次前向的计算量（Mflops，对数）")
        ax.set_title(title)
    left.errorbar([r["mflops"] for r in rows.values()], [r["loss"] for r in rows.values()],
                  yerr=[2 * r["loss_se"] for r in rows.values()], fmt="none", ecolor="0.3", lw=0.8, zorder=3)
    right.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    save(fig, out / "dit_scaling.svg")

    order = sorted(rows, key=lambda k: rows[k]["mflops"])
    columns = torch.arange(10) * PER_CLASS  # the first sample of every digit: the same x_T and label per column
    grid = torch.stack([data[f"samples/{k}"][columns] for k in order])
    fig = image_grid(grid, row_titles=[f"DiT-{k}，{rows[k]['mflops']:.2f} Mflops" for k in order], size=0.55)
    save(fig, out / "dit_samples.svg")

    (out / "dit_repro.json").write_text(json.dumps({"preset": preset, "per_class": PER_CLASS, "steps": STEPS,
                                                    "rows": rows}, indent=2, sort_keys=True) + "\n")
    table = ["| 模型 | 深度 × 宽度 | patch | token 数 | 参数量 | Mflops | 留出去噪损失 | Fréchet 距离 | 读作所要数字 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in order:
        r = rows[k]
        depth, width, _ = dit.SIZES[r["size"]]
        table.append(f"| DiT-{k} | {depth} × {width} | {r['patch']} | {(8 // r['patch']) ** 2} | {r['params']:,} | "
                     f"{r['mflops']:.2f} | {r['loss']:.4f} ± {r['loss_se']:.4f} | {r['fd']:.2f} | "
                     f"{r['read_as_asked']:.0%} |")
    table += ["", f"8×8 数字，{preset} 预设，每个模型同样的训练步数与批大小；去噪损失是 {HOLDOUT} 张留出数字上、"
              f"10 个等距时间步、同一份噪声的 ‖ε − ε_θ‖²/D（± 为标准误）；样本是每个数字 {PER_CLASS} 张、"
              f"DDIM {STEPS} 步、不加引导，Fréchet 距离用数字分类器的特征对比留出数字（越小越好）。", "", patch_note(rows)]
    (out / "dit_repro.md").write_text("\n".join(table) + "\n", encoding="utf-8")
