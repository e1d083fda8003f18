"""DDPM's cached artifacts (library module, no OUTPUTS): the trained models and the Algorithm 2 sample banks that
the DDPM, DDIM, solver and iDDPM figures share, each trained or sampled once per key (figures.builder.cached).

Each paper's artifacts live in its own ``figures/zoo/<paper>.py``: an artifact's key covers the source of the
module that produces it, so editing ``refimpl/ddpm.py`` retrains DDPM's models and nobody else's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import ddpm
from refimpl.core import pick_device
from refimpl.training import load_model

#: code timesteps at which the reverse-process figures take snapshots (0 = the final x_0)
SNAPSHOTS = (999, 600, 300, 150, 50, 0)
PATHS = 25  # samples whose whole reverse path is kept


def ddpm_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of a DDPM trained on ``data`` with ``preset`` (Algorithm 1)."""
    config = ddpm.train_config(data, preset)

    def produce(out: Path) -> None:
        ddpm.train(config, out, device=pick_device(), progress=False)

    return cached(f"ddpm-{data}", ["refimpl.ddpm"], produce, preset=preset, config=config)


def ddpm_samples(data: str, preset: str, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Algorithm 2 samples of that model: ``x0`` (n, ...), ``x_<t>`` snapshots at :data:`SNAPSHOTS`,
    and ``paths`` (steps, PATHS, ...): the first PATHS samples every 10 steps."""
    checkpoint = ddpm_checkpoint(data, preset)

    def produce(out: Path) -> None:
        snapshots: dict[str, torch.Tensor] = {}
        paths: list[torch.Tensor] = []

        def keep(t, x, x0_pred):
            if t in SNAPSHOTS:
                snapshots[f"x_{t}"] = x.float().cpu()
            if t % 10 == 0:
                paths.append(x[:PATHS].float().cpu())

        x0 = ddpm.sample_from_checkpoint(checkpoint, n, seed=seed, device=pick_device(),
                                         callback=keep, disable=True)
        save_file({**snapshots, "x0": x0.float().cpu().clone(), "paths": torch.stack(paths)}, str(out / "samples.safetensors"))

    path = cached(f"ddpm-samples-{data}", ["refimpl.ddpm"], produce, preset=preset,
                  config={"n": n, "seed": seed, "checkpoint": checkpoint.parent.name + "/" + checkpoint.name})
    return load_file(str(path / "samples.safetensors"))


def ddpm_history(data: str, preset: str) -> list[tuple[int, float]]:
    """The training-loss history recorded in the checkpoint."""
    _, checkpoint = load_model(ddpm_checkpoint(data, preset), "ddpm")
    return [(int(step), float(loss)) for step, loss in checkpoint.extra["history"]]
