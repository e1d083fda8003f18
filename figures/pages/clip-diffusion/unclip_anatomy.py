"""The two stages of unCLIP with the tensor shapes of our quick run: caption -> CLIP text embedding z_t -> diffusion
prior -> image embedding z_i -> decoder -> 8x8 digit; and the variations path, image -> CLIP image embedding z_i."""

from pathlib import Path

from matplotlib.patches import FancyBboxPatch

from refimpl import clip, unclip
from refimpl.plots import save, subplots

PAGE = "clip-diffusion/unclip.md"
OUTPUTS = ("unclip_anatomy.svg",)
FROZEN, TRAINED, DATA = "#dddddd", "#cfe3f7", "#ffffff"


def make(out: Path, preset: str) -> None:
    dim = clip.train_config(preset)["model"]["dim"]
    prior_steps = unclip.train_config(preset)["prior"]["steps"]
    decoder_steps = unclip.train_config(preset)["decoder"]["steps"]
    fig, ax = subplots(figsize=(7.1, 3.2))  # data units are inches: every font is shown at its own size
    ax.set_xlim(0, 7.1)
    ax.set_ylim(0, 3.2)
    ax.axis("off")

    def box(x, y, text, color, w=0.95, h=0.75):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="#333333"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1, label="", below=False):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "#333333"})
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (-0.08 if below else 0.08), label, ha="center",
                    va="top" if below else "bottom", fontsize=8, color="#444444")

    top, middle, bottom = 2.45, 1.6, 0.75
    box(0.6, top, "描述 y\n\"the number 3\"\n(英文或中文)", DATA, w=1.1)
    box(2.2, top, "CLIP\n文本编码器\n(冻结)", FROZEN)
    box(3.8, top, f"扩散先验\n预测 z_i\n({prior_steps} 步)", TRAINED)
    box(5.15, middle, f"解码器 (U-Net)\nz_i → 时间步嵌入\n({decoder_steps} 步)", TRAINED, w=1.15, h=0.95)
    box(6.65, middle, "数字 x\n1 × 8 × 8", DATA, w=0.75)
    box(0.6, bottom, "输入图像 x\n1 × 8 × 8", DATA, w=1.1)
    box(2.2, bottom, "CLIP\n图像编码器\n(冻结)", FROZEN)
    arrow(1.2, top, 1.68, top, "词元")
    arrow(2.72, top, 3.28, top, f"z_t ({dim})")
    arrow(4.32, top, 4.75, 2.12)
    ax.text(4.6, 2.4, f"z_i ({dim})", ha="left", va="bottom", fontsize=8, color="#444444")
    arrow(1.2, bottom, 1.68, bottom)
    arrow(2.72, bottom, 4.55, 1.08, f"z_i ({dim})：图像变体")
    arrow(5.77, middle, 6.23, middle, "DDIM\n+CFG", below=True)
    ax.text(3.0, 3.05, "阶段 1：先验 P(z_i | y)", ha="center", fontsize=9, weight="bold")
    ax.text(5.15, 0.88, "阶段 2：解码器 P(x | z_i)", ha="center", va="top", fontsize=9, weight="bold")
    save(fig, out / "unclip_anatomy.svg")
