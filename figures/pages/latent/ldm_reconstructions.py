"""Held-out digits and their reconstructions D(E(x)) by the LDM autoencoder (f = 2, c = 2), with the latent."""

from pathlib import Path

import torch

from figures.zoo.ldm import ldm_checkpoint
from refimpl import ldm
from refimpl.plots import image_grid, save

PAGE = "latent/ldm.md"
OUTPUTS = ("ldm_reconstructions.svg",)
COLUMNS = 12


def make(out: Path, preset: str) -> None:
    autoencoder, _, _, scale = ldm.load(ldm_checkpoint(preset))
    images, _ = ldm.held_out()
    x = images[:COLUMNS]
    with torch.no_grad():
        mean, _ = autoencoder.encode(x)
        recon = autoencoder.decode(mean)
    z = (scale * mean).clamp(-2.5, 2.5) / 2.5  # the scaled latent's two 4x4 channels, +-2.5 std mapped to [-1, 1]
    upsampled = z.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 4x4 shown at the 8x8 cell size
    rows = torch.stack([x[:, 0], upsampled[:, 0], upsampled[:, 1], recon[:, 0]])
    fig = image_grid(rows, row_titles=["原图 x", "潜变量 z[0]", "潜变量 z[1]", "重建 D(z)"], size=0.5)
    save(fig, out / "ldm_reconstructions.svg")
