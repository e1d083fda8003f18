"""Accuracy on the captioned digit against within-caption diversity for both guidances over their scales, and the
GLIDE page's 复现 table (the paper's human evaluation beside what the quick models measure)."""

import json
from pathlib import Path

import torch

from figures.zoo.glide import CFG_SCALES, CLIP_SCALES, PER_DIGIT, clip_checkpoint, glide_checkpoint, guided_samples, \
    sample_metrics
from refimpl.data import digits
from refimpl.digits_eval import HOLDOUT
from refimpl.plots import save, subplots

PAGE = "guidance/glide.md"
OUTPUTS = ("glide_tradeoff.svg", "glide_repro.md", "glide_repro.json")
#: GLIDE Table 1: human-evaluation Elo (photorealism, caption similarity), MS-COCO prompts, 256x256
PAPER = {"unguided": ("-88.6", "-106.2"), "cfg": ("82.7", "110.9"), "clip": ("-73.2", "29.3")}
COMPARED = {"unguided": "cfg_1", "cfg": "cfg_3", "clip": "clip_30"}  # the page's settings (glide_compare.svg)


def make(out: Path, preset: str) -> None:
    metrics = sample_metrics(guided_samples(preset))
    fig, ax = subplots(figsize=(6.0, 3.8))
    # the guided points crowd near accuracy 1: CFG scales are written above their points, CLIP scales below
    for name, prefix, scales, color, dy, va in (("无分类器引导 (s 标在点上方)", "cfg", CFG_SCALES, "C0", 6, "bottom"),
                                                ("CLIP 引导 (s 标在点下方)", "clip", CLIP_SCALES, "C1", -6, "top")):
        points = [metrics[f"{prefix}_{s:g}"] for s in scales]
        ax.plot([p["diversity"] for p in points], [p["accuracy"] for p in points], marker="o", color=color,
                label=name)
        for s, p in zip(scales, points):
            ax.annotate(f"s={s:g}", (p["diversity"], p["accuracy"]), textcoords="offset points", xytext=(0, dy),
                        ha="center", va=va, color=color)
    ax.margins(x=0.08, y=0.15)  # room for the scale labels at the ends
    ax.set_xlabel("多样性 (同一描述内的平均特征距离)")
    ax.set_ylabel("认成所描述数字的比例")
    ax.legend(loc="lower left")
    save(fig, out / "glide_tradeoff.svg")

    # the reference: as many real training digits, PER_DIGIT of each class (the first ones), scored the same way
    images, labels = (a[:-HOLDOUT] for a in digits())
    index = torch.cat([torch.nonzero(labels == k)[:PER_DIGIT, 0] for k in range(10)])
    real = sample_metrics({"real": images[index], "labels": labels[index]})["real"]
    n = index.numel()
    steps = {name: json.loads((path / "config.json").read_text())["step"]
             for name, path in (("diffusion", glide_checkpoint(preset)), ("clip", clip_checkpoint(preset)))}
    (out / "glide_repro.json").write_text(json.dumps({"preset": preset, "metrics": metrics, "steps": steps,
                                                      "real": real}, indent=2, sort_keys=True) + "\n")

    def ours(key: str) -> str:
        m = metrics[key]
        return f"准确率 {m['accuracy']:.0%}，多样性 {m['diversity']:.2f}，Fréchet {m['frechet']:.2f}"

    rows = [
        ("无引导（CFG s=1，即 CLIP s=0）", "Elo 真实感 {}，贴合度 {}".format(*PAPER["unguided"]), ours(COMPARED["unguided"]),
         f"随机猜 10%；真实训练图 {n} 张：准确率 {real['accuracy']:.0%}，多样性 {real['diversity']:.2f}，"
         f"Fréchet {real['frechet']:.2f}"),
        ("无分类器引导", "s=3.0：Elo {}，{}".format(*PAPER["cfg"]), f"s=3：{ours(COMPARED['cfg'])}", "—"),
        ("CLIP 引导", "s=2.0：Elo {}，{}".format(*PAPER["clip"]), f"s=30：{ours(COMPARED['clip'])}", "—"),
        ("训练规模", "35 亿参数基模型 2.5M 步、batch 2048；另训 64×64 ViT-L 加噪 CLIP",
         f"{steps['diffusion']} 步 batch 64；加噪 CLIP {steps['clip']} 步（{preset} 预设）", "—"),
    ]
    lines = ["| 设置 | 论文报告（表 1，人类评估） | 我们测得（digits，每种设置 "
             f"{n} 个样本） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "glide_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
