"""The LDM page's 复现 table: what the paper reports beside what our quick run measures."""

import json
from pathlib import Path

import torch

from figures.zoo.ldm import SCALES, accuracy, guided_samples, ldm_checkpoint
from refimpl import ldm

PAGE = "latent/ldm.md"
OUTPUTS = ("ldm_repro.md",)


def make(out: Path, preset: str) -> None:
    run = ldm_checkpoint(preset)
    autoencoder, _, _, scale = ldm.load(run)
    images, _ = ldm.held_out()
    with torch.no_grad():
        error = (autoencoder.decode(autoencoder.encode(images)[0]) - images).abs().mean().item()
    samples = guided_samples(preset)
    acc = {s: accuracy(samples, f"cfg_{s:g}") for s in SCALES}
    steps = {sub: json.loads((run / sub / "config.json").read_text())["step"] for sub in ("autoencoder", "diffusion")}
    n = samples["labels"].numel()
    rows = [
        ("压缩", "f = 4–16 兼顾效率与质量（图 5：LDM-1 训练慢，LDM-32 质量受限）",
         "f = 2，c = 2：8×8×1 → 4×4×2（64 → 32 个数）", "SD v1：f = 8，c = 4（512×512×3 → 64×64×4，48 倍）"),
        ("自编码器重建", "KL-reg，权重 10⁻⁶，另加感知损失与对抗损失",
         f"留出 297 张：平均绝对误差 {error:.3f}（像素范围 [-1, 1]）", "一个灰度级 = 0.125"),
        ("潜变量缩放", "SD v1 / LDM 文生图配置：scale_factor 0.18215", f"1 / std(z) = {scale:.3f}", "—"),
        ("文本条件生成", "1.45B 参数，KL-reg，f = 8，LAION-400M（数据集与规模，见正文）",
         f"分类器读出所写数字：s = 1 时 {acc[1.0]:.0%}，CFG s = 3 时 {acc[3.0]:.0%}（各 {n} 个样本）", "随机猜测 10%"),
        ("训练规模", "—", f"自编码器 {steps['autoencoder']} 步 + 潜扩散 {steps['diffusion']} 步（{preset} 预设，CPU）",
         "—"),
    ]
    lines = ["| 项目 | 论文报告 | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "ldm_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
