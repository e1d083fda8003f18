"""NCSN's cached artifacts (library module, no OUTPUTS): the noise conditional score network of the 2-D toys."""

from __future__ import annotations

from pathlib import Path

from figures.builder import cached
from refimpl import ncsn
from refimpl.core import pick_device


def ncsn_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of a noise conditional score network trained on the 2-D toy ``data`` with
    ``preset`` (sigma^2-weighted denoising score matching)."""
    config = ncsn.train_config(data, preset)

    def produce(out: Path) -> None:
        ncsn.train(config, out, device=pick_device(), progress=False)

    return cached(f"ncsn-{data}", ["refimpl.ncsn"], produce, preset=preset, config=config)
