"""Stable Diffusion 3's two changes, drawn and traced (the SD3 page): sd3_logit_normal.svg (where logit-normal timestep
sampling puts the training, over t and over log-SNR, against uniform t and with the timestep shift) and
sd3_anatomy.md (the shapes through a tiny, randomly initialised diffusers SD3Transformer2DModel)."""

import math
from pathlib import Path

import torch

from refimpl import sd3
from refimpl.plots import save, subplots

PAGE = "modern/sd3.md"
OUTPUTS = ("sd3_logit_normal.svg", "sd3_anatomy.md")
N = 20000   # timesteps drawn to check the density by a histogram
SHIFT = 3.0  # a timestep shift (refimpl.flow.time_grid), to show what shifting does to the distribution


NAMES = {"latents": "潜变量", "text embeddings (CLIP and T5, concatenated)": "文本嵌入（CLIP 与 T5 拼接）",
         "pooled text embedding": "池化文本嵌入", "image tokens": "图像 token", "text tokens": "文本 token",
         "conditioning vector (timestep + pooled text)": "条件向量（时间步 + 池化文本）",
         "output: velocity v": "输出：速度 v"}


def chinese(name: str) -> str:
    """The page's name of a traced position."""
    if name.startswith("joint attention sequence, block "):
        return f"第 {name.rsplit(' ', 1)[1]} 块的联合注意力序列"
    return NAMES[name]


def make(out: Path, preset: str) -> None:
    t = torch.linspace(1e-4, 1 - 1e-4, 2001, dtype=torch.float64)
    lam = torch.linspace(-12, 12, 2001, dtype=torch.float64)
    drawn = sd3.sample_logit_normal(N, generator=torch.Generator().manual_seed(0)).double()
    curves = [("logit-normal(0, 1)", 0.0, 1.0, "C0", "-"),
              (f"同上，时间步平移 {SHIFT:g} 倍：logit-normal(ln {SHIFT:g}, 1)", math.log(SHIFT), 1.0, "C1", "--")]

    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.6))
    left.hist(drawn.numpy(), bins=50, range=(0, 1), density=True, color="C0", alpha=0.25, label=f"抽样 {N} 个")
    for label, m, s, color, style in curves:
        left.plot(t, sd3.logit_normal_density(t, m, s), color=color, ls=style, label=label)
        # over lambda = -2 logit(t) the logit-normal is a Gaussian N(-2m, (2s)^2)
        right.plot(lam, torch.exp(-0.5 * ((lam + 2 * m) / (2 * s)) ** 2) / (2 * s * math.sqrt(2 * math.pi)),
                   color=color, ls=style)
    left.axhline(1.0, color="0.4", lw=1, ls=":", label="均匀 U(0, 1)")
    # uniform t over lambda: t = sigmoid(-lambda / 2), density |dt/dlambda| = t (1 - t) / 2
    tu = torch.sigmoid(-lam / 2)
    right.plot(lam, tu * (1 - tu) / 2, color="0.4", lw=1, ls=":")
    left.set(xlabel="t（0 为数据，1 为噪声）", ylabel="训练时抽到 t 的密度", xlim=(0, 1))
    right.set(xlabel="对数信噪比 λ = log((1 − t)² / t²)", ylabel="λ 的密度")
    fig.legend(*left.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    save(fig, out / "sd3_logit_normal.svg")

    rows = ["| 位置 | 形状 |", "| --- | --- |"]
    rows += [f"| {chinese(name)} | {' × '.join(map(str, shape))} |" for name, shape in sd3.trace_sd3_transformer()]
    rows += ["", "diffusers 的 `SD3Transformer2DModel`，随机权重，极小配置（16×16×16 的潜变量，patch 2，每头宽 8、2 头，"
             "2 块，12 个文本 token）：形状由前向钩子在一次真实的前向里记录，不是手写的。"]
    (out / "sd3_anatomy.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
