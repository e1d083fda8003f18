"""Trained models and samples that several figures share, cached once per key.

Each is a :func:`figures.builder.cached` artifact keyed by the source of the modules that
produce it (transitively), the preset and the run's config: editing ``refimpl/ddpm.py``
retrains, editing an unrelated paper does not. Parallel figure scripts train it once.
"""

from __future__ import annotations

import importlib
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


def iddpm_checkpoint(data: str, preset: str, schedule: str = "cosine") -> Path:
    """The checkpoint directory of an improved DDPM trained on ``data`` with ``preset`` (L_hybrid, learned
    variance; the paper's cosine schedule unless ``schedule`` says "linear").

    refimpl.iddpm is imported by name, not by an import statement: the cache keys follow the import
    statements of this module, and a static import would make every DDPM artifact (and figure) depend
    on refimpl/iddpm.py. This artifact's key names the module explicitly instead."""
    iddpm = importlib.import_module("refimpl.iddpm")
    config = iddpm.train_config(data, preset, schedule=schedule)

    def produce(out: Path) -> None:
        iddpm.train(config, out, device=pick_device(), progress=False)

    name = f"iddpm-{data}" if schedule == "cosine" else f"iddpm-{schedule}-{data}"
    return cached(name, ["refimpl.iddpm"], produce, preset=preset, config=config)


# --- Score SDE (refimpl.sde) -----------------------------------------------------------

def sde_checkpoint(sde: str, data: str, preset: str) -> Path:
    """The checkpoint directory of a Score SDE score model (``sde`` "vp", "ve" or "subvp") trained on ``data``
    with ``preset`` by denoising score matching. refimpl.sde is imported by name, like refimpl.iddpm above, so
    that no other artifact's cache key depends on refimpl/sde.py."""
    sde_module = importlib.import_module("refimpl.sde")
    config = sde_module.train_config(sde, data, preset)

    def produce(out: Path) -> None:
        sde_module.train(config, out, device=pick_device(), progress=False)

    return cached(f"sde-{sde}-{data}", ["refimpl.sde"], produce, preset=preset, config=config)


# --- NCSN (refimpl.ncsn) ---------------------------------------------------------------

def ncsn_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of a noise conditional score network trained on the 2-D toy ``data`` with
    ``preset`` (sigma^2-weighted denoising score matching). refimpl.ncsn is imported by name, like refimpl.iddpm
    above, so that no other artifact's cache key depends on refimpl/ncsn.py."""
    ncsn = importlib.import_module("refimpl.ncsn")
    config = ncsn.train_config(data, preset)

    def produce(out: Path) -> None:
        ncsn.train(config, out, device=pick_device(), progress=False)

    return cached(f"ncsn-{data}", ["refimpl.ncsn"], produce, preset=preset, config=config)
