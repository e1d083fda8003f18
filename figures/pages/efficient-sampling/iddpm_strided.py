"""Strided sampling (improved DDPM Sec. 4): the same x_T with 25, 50, 100 and 1000 respaced steps, learned
variance (iDDPM) against DDPM's fixed variances. Draws iddpm_strided.svg; writes iddpm_strided.md/.json
(digits classifier score of N = 128 samples for every model and step count).

DDPM with fixed_small at all 1000 steps is Algorithm 2 itself, drawn from the same seed (so the same x_T):
that cell reads the first N samples of the DDPM sample bank (figures.zoo.ddpm.ddpm_samples, 256 samples) that
the DDPM, DDIM and solver figures share instead of drawing it again: the bank's first N rows of x_T are the x_T
every other cell starts from.
"""

import json
from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from figures.zoo.iddpm import iddpm_checkpoint
from refimpl.core import pick_device
from refimpl.digits_eval import evaluate
from refimpl.iddpm import sample_from_checkpoint
from refimpl.plots import image_grid, save

PAGE = "efficient-sampling/iddpm.md"
OUTPUTS = ("iddpm_strided.svg", "iddpm_strided.md", "iddpm_strided.json")
STEPS = (25, 50, 100, 1000)
RUNS = (("iDDPM, learned", "iddpm", "learned"), ("DDPM, fixed_small", "ddpm", "fixed_small"),
        ("DDPM, fixed_large", "ddpm", "fixed_large"))
N, COLUMNS = 128, 10  # the two 1000-step cells are ~80% of the script's CPU
BANKED = ("ddpm", "fixed_small", 1000)  # Algorithm 2: the DDPM sample bank


def make(out: Path, preset: str) -> None:
    device = pick_device()
    ckpts = {"ddpm": ddpm_checkpoint("digits", preset), "iddpm": iddpm_checkpoint("digits", preset)}

    def draw(kind: str, variance: str, steps: int) -> torch.Tensor:
        if (kind, variance, steps) == BANKED:
            return ddpm_samples("digits", preset, n=256, seed=0)["x0"][:N]
        return sample_from_checkpoint(ckpts[kind], N, steps=steps, variance=variance, seed=0, device=device,
                                      disable=True).cpu()

    samples = {(label, steps): draw(kind, variance, steps) for label, kind, variance in RUNS for steps in STEPS}
    shown = [key for key in samples if key[0] != "DDPM, fixed_large"]
    fig = image_grid(torch.stack([samples[key][:COLUMNS] for key in shown]),
                     row_titles=[f"{label.split(',')[0]}，{steps} 步" for label, steps in shown], size=0.6)
    save(fig, out / "iddpm_strided.svg")

    scores = {label: {steps: evaluate(samples[(label, steps)]).classifier_score for steps in STEPS}
              for label, *_rest in RUNS}
    (out / "iddpm_strided.json").write_text(json.dumps({"preset": preset, "n": N, "scores": scores},
                                                       indent=2, sort_keys=True) + "\n")
    rows = ["| 模型与方差 | " + " | ".join(f"{s} 步" for s in STEPS) + " |", "| --- |" + " --- |" * len(STEPS)]
    rows += [f"| {label} | " + " | ".join(f"{scores[label][s]:.2f}" for s in STEPS) + " |" for label in scores]
    rows += ["", f"digits 分类器分数（满分 10，越高越好），每格 {N} 张，同一批 x_T；跳步用均匀子序列，β 按第 4 节重新计算。"]
    (out / "iddpm_strided.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
