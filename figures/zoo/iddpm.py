"""Improved DDPM's cached artifacts (library module, no OUTPUTS): the digits models with learned variance."""

from __future__ import annotations

from pathlib import Path

from figures.builder import cached
from refimpl import iddpm
from refimpl.core import pick_device


def iddpm_checkpoint(data: str, preset: str, schedule: str = "cosine") -> Path:
    """The checkpoint directory of an improved DDPM trained on ``data`` with ``preset`` (L_hybrid, learned
    variance; the paper's cosine schedule unless ``schedule`` says "linear")."""
    config = iddpm.train_config(data, preset, schedule=schedule)

    def produce(out: Path) -> None:
        iddpm.train(config, out, device=pick_device(), progress=False)

    name = f"iddpm-{data}" if schedule == "cosine" else f"iddpm-{schedule}-{data}"
    return cached(name, ["refimpl.iddpm"], produce, preset=preset, config=config)
