"""Score SDE's cached artifacts (library module, no OUTPUTS): the score models of the VP, VE and sub-VP SDEs."""

from __future__ import annotations

from pathlib import Path

from figures.builder import cached
from refimpl import sde as sde_module
from refimpl.core import pick_device


def sde_checkpoint(sde: str, data: str, preset: str) -> Path:
    """The checkpoint directory of a Score SDE score model (``sde`` "vp", "ve" or "subvp") trained on ``data``
    with ``preset`` by denoising score matching."""
    config = sde_module.train_config(sde, data, preset)

    def produce(out: Path) -> None:
        sde_module.train(config, out, device=pick_device(), progress=False)

    return cached(f"sde-{sde}-{data}", ["refimpl.sde"], produce, preset=preset, config=config)
