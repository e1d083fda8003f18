"""LoRA on the LDM: digits "0".."9" from the base model, after LoRA and after full fine-tuning on the slanted
writer, every column from the same z_T."""

from pathlib import Path

import torch

from figures.zoo.lora import METHODS, style_samples
from refimpl.plots import image_grid, save

PAGE = "finetuning/lora.md"
OUTPUTS = ("lora_samples.svg",)
PER_DIGIT = 10  # as refimpl.lora.style_samples draws them: digit-major, 10 per caption
SHOWN = 2  # samples per digit shown


def make(out: Path, preset: str) -> None:
    samples = style_samples(preset)
    keys = ("base", *METHODS)
    pick = torch.tensor([k * PER_DIGIT + j for k in range(10) for j in range(SHOWN)])
    grid = torch.stack([samples[key][pick] for key in keys])
    titles = [f"“{k}”" if j == 0 else "" for k in range(10) for j in range(SHOWN)]
    fig = image_grid(grid, column_titles=titles, row_titles=["原模型", "LoRA", "全量微调"], size=0.31)
    save(fig, out / "lora_samples.svg")
