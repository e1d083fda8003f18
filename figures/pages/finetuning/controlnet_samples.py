"""ControlNet on the LDM: held-out edge maps and the digits generated under them: the base model (conditioning
scale 0), the ControlNet with an empty caption, and with a caption naming another digit (CFG s = 1 and 3)."""

from pathlib import Path

import torch

from figures.zoo.controlnet import controlnet_samples
from refimpl.plots import image_grid, save

PAGE = "finetuning/controlnet.md"
OUTPUTS = ("controlnet_samples.svg",)
COLUMNS = 10
ROWS = (("maps", "边缘图"), ("zero", "原模型"), ("empty", "空描述"), ("mismatched_1", "s=1"), ("mismatched_3", "s=3"))


def make(out: Path, preset: str) -> None:
    samples = controlnet_samples(preset)
    samples = {**samples, "maps": samples["maps"] * 2 - 1}  # [0, 1] edge strength shown on the [-1, 1] scale
    grid = torch.stack([samples[key][:COLUMNS] for key, _ in ROWS])
    titles = [str(int(k)) for k in samples["labels"][:COLUMNS]]
    fig = image_grid(grid, column_titles=titles, row_titles=[title for _, title in ROWS], size=0.66)
    save(fig, out / "controlnet_samples.svg")
