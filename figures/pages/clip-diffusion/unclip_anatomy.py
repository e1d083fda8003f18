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
    fig, ax = subplots(figsize=(11.5, 3.4))
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 3.4)
    ax.axis("off")

    def box(x, y, text, color, w=1.55, h=0.8):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="#333333"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)

    def arrow(x0, y0, x1, y1, label=""):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "#333333"})
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.1, label, ha="center", va="bottom", fontsize=7.5,
                    color="#444444")

    top, middle, bottom = 2.5, 1.65, 0.8
    box(0.8, top, "caption y\n\"the number 3\"\n(EN or ZH)", DATA)
    box(3.1, top, "CLIP text\nencoder (frozen)", FROZEN)
    box(5.6, top, f"diffusion prior\npredicts z_i\n({prior_steps} steps)", TRAINED)
    box(8.3, middle, f"decoder (U-Net)\nz_i -> time emb.\n({decoder_steps} steps)", TRAINED, h=0.95)
    box(10.7, middle, "digit x\n1 x 8 x 8", DATA, w=1.2)
    box(0.8, bottom, "input image x\n1 x 8 x 8", DATA)
    box(3.1, bottom, "CLIP image\nencoder (frozen)", FROZEN)
    arrow(1.6, top, 2.3, top, "tokens")
    arrow(3.9, top, 4.8, top, f"z_t ({dim})")
    arrow(6.4, top, 7.5, 2.05, f"z_i ({dim})")
    arrow(1.6, bottom, 2.3, bottom)
    arrow(3.9, bottom, 7.5, 1.3, f"z_i ({dim}): image variations")
    arrow(9.1, middle, 10.08, middle, "DDIM+CFG")
    ax.text(5.6, 3.15, "stage 1: prior P(z_i | y)", ha="center", fontsize=9, weight="bold")
    ax.text(8.3, 0.95, "stage 2: decoder P(x | z_i)", ha="center", va="top", fontsize=9, weight="bold")
    save(fig, out / "unclip_anatomy.svg")
