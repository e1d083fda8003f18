"""Cosine similarity of one held-out image per digit with every digit's ensembled prompt embedding."""

from pathlib import Path

from figures.zoo.clip import clip_checkpoint
from refimpl import clip
from refimpl.plots import save, subplots

PAGE = "clip-diffusion/clip.md"
OUTPUTS = ("clip_similarity.svg",)


def make(out: Path, preset: str) -> None:
    model, tok, _ = clip.load(clip_checkpoint(preset))
    matrix = clip.similarity(model, tok, "both").numpy()
    fig, ax = subplots(figsize=(6.0, 5.0))
    shown = ax.imshow(matrix, cmap="viridis", vmin=-1, vmax=1)
    for i in range(10):
        for j in range(10):
            ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[i, j] > 0.3 else "white")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("数字 j 的提示词集成 (英文 + 中文)")
    ax.set_ylabel("数字 i 的留出图像")
    fig.colorbar(shown, ax=ax, label="余弦相似度")
    save(fig, out / "clip_similarity.svg")
