"""Accuracy of the noisy digits classifier p_phi(y | x_t, t) on held-out digits against the timestep, with chance."""

from pathlib import Path

import torch

from figures.zoo.adm import classifier_checkpoint
from refimpl.adm import load_classifier, noisy_accuracy
from refimpl.data import digits
from refimpl.digits_eval import HOLDOUT
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule

PAGE = "guidance/classifier-guidance.md"
OUTPUTS = ("adm_classifier_accuracy.svg",)
DRAWS = 4  # noise draws per held-out digit and timestep


def make(out: Path, preset: str) -> None:
    schedule = make_schedule("linear", 1000)
    classifier = load_classifier(classifier_checkpoint(preset), schedule)
    images, labels = digits()
    x0, y = images[-HOLDOUT:].repeat(DRAWS, 1, 1, 1), labels[-HOLDOUT:].repeat(DRAWS)
    steps = list(range(0, 1000, 50)) + [999]
    acc = noisy_accuracy(classifier, x0, y, schedule, steps, torch.Generator().manual_seed(0))
    fig, ax = subplots(figsize=(5.5, 3.2))
    ax.plot(steps, acc.numpy(), marker="o", ms=3, label="带噪分类器，留出数字")
    ax.axhline(0.1, color="gray", ls="--", lw=1, label="随机猜测 (1/10)")
    ax.set(xlabel="时间步 t (代码，0..999)", ylabel="准确率", ylim=(0, 1.02))
    twin = ax.twiny()
    twin.set(xlim=ax.get_xlim(), xticks=[0, 250, 500, 750, 999],
             xticklabels=[f"{schedule.alpha_bar[t].sqrt():.2f}" for t in (0, 250, 500, 750, 999)],
             xlabel="√ᾱₜ (xₜ 中图像的权重)")  # plain text: mathtext would not draw the Chinese
    ax.legend(loc="upper right", frameon=False)
    save(fig, out / "adm_classifier_accuracy.svg")
