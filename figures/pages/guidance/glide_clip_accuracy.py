"""Zero-shot accuracy of the noised CLIP (caption "the digit k" with the highest f(x_t, t) . g(c)) against t."""

from pathlib import Path

import torch

from figures.zoo.glide import clip_checkpoint
from refimpl import glide
from refimpl.data import digits
from refimpl.digits_eval import HOLDOUT
from refimpl.plots import save, subplots

PAGE = "guidance/glide.md"
OUTPUTS = ("glide_clip_accuracy.svg",)
STEPS = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def make(out: Path, preset: str) -> None:
    clip, schedule = glide.load(clip_checkpoint(preset), "glide-clip")
    images, labels = (a[-HOLDOUT:] for a in digits())
    accuracy = [glide.zero_shot_accuracy(clip, schedule, images, labels, t, torch.Generator().manual_seed(t))
                for t in STEPS]
    fig, ax = subplots(figsize=(5.0, 3.0))
    ax.plot(STEPS, accuracy, marker="o", label="加噪 CLIP，零样本")
    ax.axhline(0.1, color="0.5", linestyle="--", label="随机猜测 (1/10)")
    ax.set_xlabel("代码时间步 t (0 = 无噪声)")
    ax.set_ylabel("准确率")
    ax.set_ylim(0, 1)
    ax.legend()
    save(fig, out / "glide_clip_accuracy.svg")
