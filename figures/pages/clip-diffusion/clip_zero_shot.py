"""Zero-shot accuracy on the held-out digits per template set (en / zh / both) and per digit, plus the 复现 table."""

import json
from pathlib import Path

import numpy as np

from figures.zoo.clip import zero_shot_results
from refimpl.captions import TEMPLATE_SETS
from refimpl.plots import save, subplots

PAGE = "clip-diffusion/clip.md"
OUTPUTS = ("clip_zero_shot.svg", "clip_repro.md", "clip_repro.json")
LABELS = {"en": "英文模板", "zh": "中文模板", "both": "合并集成 (英文 + 中文)"}


def make(out: Path, preset: str) -> None:
    result = zero_shot_results(preset)
    fig, ax = subplots(figsize=(6.0, 3.0))
    width = 0.27
    for i, which in enumerate(TEMPLATE_SETS):
        ax.bar(np.arange(10) + (i - 1) * width, result["per_class"][which], width,
               label=f"{LABELS[which]}: {result['accuracy'][which]:.3f}")
    ax.axhline(0.1, color="0.5", linestyle="--", label="随机猜测 (1/10)")
    ax.set_xticks(range(10))
    ax.set_xlabel("数字")
    ax.set_ylabel("零样本准确率")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, out / "clip_zero_shot.svg")

    acc, n = result["accuracy"], result["n"]
    se = (acc["both"] * (1 - acc["both"]) / n) ** 0.5
    rows = [
        ("零样本分类", "ImageNet（1000 类）上与原版 ResNet-50 的准确率相当，没用它的 128 万张训练图",
         f"{n} 张留出的 8×8 数字（10 类）：英文模板 {acc['en']:.3f}，中文模板 {acc['zh']:.3f}，"
         f"合并 {acc['both']:.3f}（±{se:.3f}）", "随机猜测 0.100"),
        ("训练数据", "4 亿对（图像，文本）", f"1500 张数字 × 8 个模板，{result['steps']} 步、每步 10 对", "—"),
        ("温度", "exp(logit_scale) 初值 1/0.07 ≈ 14.3，上限 100",
         f"训练后 {result['scale']:.1f}", "初值 14.3"),
    ]
    lines = ["| 项目 | 论文 | 我们测得 | 参照 |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    (out / "clip_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "clip_repro.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
