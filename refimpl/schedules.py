"""Noise schedules and the quantities derived from them.

A schedule is a sequence of betas; everything else follows (DDPM Sec. 2):
``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s`` (Eq. 4) and the
posterior variance ``beta_tilde_t`` (Eq. 7).

Timesteps in code are 0-indexed like diffusers: index ``t`` in ``0..T-1`` is the
paper's timestep ``t + 1``. So ``alpha_bar[0]`` is the paper's alpha_bar_1 and
``alpha_bar_prev[0] = 1`` is the paper's alpha_bar_0.
"""

from __future__ import annotations

import math

import torch

from refimpl.core import LineageError

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DDPM Sec. 4: betas rising linearly from beta_1 = 1e-4 to beta_T = 0.02.

    With the default float32 this is exactly how diffusers' ``DDPMScheduler(beta_schedule="linear")``
    builds it (a float32 ``torch.linspace``, then a float32 cumprod in ``Schedule``), so that our
    schedule and theirs agree bit for bit.
    """
    return torch.linspace(beta_start, beta_end, T, dtype=dtype)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021) Eq. (17): alpha_bar(t) = f(t) / f(0),
    f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    clipped at ``max_beta`` (0.999) so that the last step is not a pure-noise jump.

    Computed in float64 and returned in ``dtype``; the default float32 equals diffusers'
    "squaredcos_cap_v2" betas bit for bit.
    """

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64).to(dtype)


class Schedule:
    """The DDPM forward process for a sequence of betas (DDPM Eqs. 2, 4, 7).

    Attributes (all tensors of shape (T,), in the betas' dtype, code index t = paper t+1):
    ``betas``, ``alphas`` = 1 - beta, ``alpha_bar`` (Eq. 4, cumulative product, computed in
    the betas' dtype like diffusers' ``alphas_cumprod``), ``alpha_bar_prev`` (alpha_bar one
    step earlier, 1 at the first step), ``beta_tilde`` (posterior variance, Eq. 7) and
    ``snr`` = alpha_bar / (1 - alpha_bar).
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas)
        if betas.ndim != 1 or betas.numel() == 0:
            raise LineageError("betas must be a non-empty 1-D tensor")
        if not torch.is_floating_point(betas):
            betas = betas.to(torch.float32)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise LineageError("every beta must lie in (0, 1)")
        self.T = betas.numel()
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones_like(self.alpha_bar[:1]), self.alpha_bar[:-1]])
        self.beta_tilde = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * betas
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with every tensor on ``device``."""
        out = Schedule.__new__(Schedule)
        for key, value in vars(self).items():
            setattr(out, key, value.to(device) if isinstance(value, torch.Tensor) else value)
        return out

    def __repr__(self) -> str:
        return f"Schedule(T={self.T}, beta_1={self.betas[0].item():.3g}, beta_T={self.betas[-1].item():.3g})"


def make_schedule(name: str, T: int) -> Schedule:
    """A schedule by name: "linear" (DDPM) or "cosine" (improved DDPM)."""
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise LineageError(f"the number of timesteps T must be a positive integer, got {T!r}")
    if name == "linear":
        return Schedule(linear_betas(T))
    if name == "cosine":
        return Schedule(cosine_betas(T))
    raise LineageError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)})")


def gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` for int64 timesteps ``t`` of shape (B,), shaped (B, 1, ..., 1) to
    broadcast against ``x`` and cast to x's device and dtype."""
    out = values.to(x.device)[t.to(x.device)]
    return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)
