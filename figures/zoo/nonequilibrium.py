"""The trained diffusion probabilistic model (Sohl-Dickstein et al. 2015) that the nonequilibrium figures and
tests share, its reverse-diffusion samples, and the exact swiss-roll density they are measured against
(a library module: no OUTPUTS).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import nonequilibrium
from refimpl.core import pick_device
from refimpl.data import _SWISSROLL_MEAN, _SWISSROLL_SCALE


def checkpoint(preset: str) -> Path:
    """The checkpoint directory of the swiss-roll model of ``preset`` (trained on K, Eq. 14)."""
    config = nonequilibrium.train_config(preset)

    def produce(out: Path) -> None:
        nonequilibrium.train(config, out, device=pick_device(), progress=False)

    return cached("nonequilibrium-swissroll", ["refimpl.nonequilibrium"], produce, preset=preset, config=config)


def samples(preset: str, n: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """The reverse trajectory of ``n`` samples of that model (seeded like ``sample_from_checkpoint``), on CPU:
    ``x<t>`` is the paper's x^(t) for t = 0..T (x<T> the start, drawn from N(0, I)); ``x0`` is the sample."""
    ckpt = checkpoint(preset)

    def produce(out: Path) -> None:
        kernel, schedule, _ = nonequilibrium.load(ckpt, pick_device())
        generator = torch.Generator().manual_seed(seed)
        x_T = torch.randn((n, 2), generator=generator).to(schedule.device)
        states = {f"x{schedule.T}": x_T.cpu()}

        def keep(t, x, mean):  # after the step at code t the sample is the paper's x^(t)
            states[f"x{t}"] = x.float().cpu()

        nonequilibrium.sample(kernel, x_T, schedule, generator=generator, callback=keep, disable=True)
        save_file(states, str(out / "samples.safetensors"))

    path = cached("nonequilibrium-samples", ["refimpl.nonequilibrium"], produce, preset=preset,
                  config={"n": n, "seed": seed, "checkpoint": ckpt.parent.name + "/" + ckpt.name})
    return load_file(str(path / "samples.safetensors"))


def swissroll_log_density(x: torch.Tensor, points: int = 20_000) -> torch.Tensor:
    """log q(x) of refimpl.data's standardised swiss roll, per point, in nats: the curve c(u) = (u cos u, u sin u),
    u ~ U[1.5 pi, 4.5 pi], plus N(0, 0.5^2 I), shifted and scaled like the data. The mixture over u is
    integrated by the midpoint rule on ``points`` nodes (spacing 3 pi / 20000 = 5e-4 in u: the curve moves at
    most 4.5 pi * 5e-4 / 6.8 = 1e-3 between nodes, 1/70 of the noise's standard deviation 0.5 / 6.8).
    E log q over the data is the largest value any model's log likelihood, or K, can take on average."""
    u = 1.5 * math.pi * (1 + 2 * (torch.arange(points, dtype=torch.float64) + 0.5) / points)
    centres = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1)
    centres = (centres - torch.tensor(_SWISSROLL_MEAN, dtype=torch.float64)) / _SWISSROLL_SCALE
    sigma2 = (0.5 / _SWISSROLL_SCALE) ** 2
    d2 = torch.cdist(x.double(), centres) ** 2
    return torch.logsumexp(-d2 / (2 * sigma2), dim=1) - math.log(points) - math.log(2 * math.pi * sigma2)
