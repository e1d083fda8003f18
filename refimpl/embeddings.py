"""Sinusoidal (Fourier) features of scalars in the ``[cos, sin]`` layout of DiT's and SDXL's code: DiT embeds
the timestep with them, SDXL also the image sizes and crop corner of its micro-conditioning.
(:func:`refimpl.nets.timestep_embedding` is DDPM's ``[sin, cos]`` layout, kept apart so that no model trained
with it changes.)"""

from __future__ import annotations

import math

import torch


def fourier_features(x: torch.Tensor, dim: int, freq_shift: int = 0, max_period: float = 10000.0) -> torch.Tensor:
    """Each scalar of ``x`` (N,) as ``[cos(x w_i), sin(x w_i)]`` with ``w_i = max_period^(-i / (dim/2 -
    freq_shift))``, i < dim / 2: (N, dim). DiT's and SDXL's code use freq_shift = 0; diffusers' ``Timesteps``
    with ``downscale_freq_shift=1`` (its DiTTransformer2DModel) uses 1: slightly different frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device)
                      / (half - freq_shift))
    args = x.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)
