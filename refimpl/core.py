"""Shared plumbing: user-facing errors, device choice, seeding, progress bars."""

from __future__ import annotations

import os
import random
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")

PRESETS = ("quick", "full")


class LineageError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits 2."""


def pick_device(name: str | None = None) -> torch.device:
    """CUDA if available, else MPS, else CPU; ``name`` ("cpu", "cuda", "cuda:1", "mps") overrides."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LineageError(f"unknown device {name!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LineageError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LineageError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise LineageError(f"device {name!r} requested but MPS is not available on this machine")
    elif device.type != "cpu":
        raise LineageError(f"unsupported device {name!r} (use cpu, cuda, cuda:N or mps)")
    return device


def conv_layout(module: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``module`` (in place) with its 4-D convolution weights in channels_last order when ``device`` is the CPU:
    oneDNN's CPU convolutions run the 8x8 digits U-Net about 10% faster in training and 15-20% faster in sampling
    in that order (batch 64 and 256, one thread). The values are unchanged, only the order of the sums inside a
    convolution; saved weights are contiguous either way (:func:`refimpl.checkpoint.save`)."""
    if torch.device(device).type == "cpu":
        module.to(memory_format=torch.channels_last)
    return module


def autocast(device: torch.device):
    """bf16 autocast on CUDA (safe for these small convnets/MLPs); a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def column(v, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) coefficient shaped to broadcast against ``like`` (B, ...), in its dtype and device."""
    v = torch.as_tensor(v, dtype=torch.float64)
    v = v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v
    return v.to(device=like.device, dtype=like.dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I) of x's shape and dtype on x's device, drawn from ``generator`` on the generator's own
    device (so a CPU generator gives the same noise on every device, and samplers can match diffusers')."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str | None = None,
             disable: bool = False) -> Iterator[T]:
    """A tqdm progress bar; silenced by ``disable`` or by LINEAGE_NO_PROGRESS=1 (tests, figure builds)."""
    disable = disable or os.environ.get("LINEAGE_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)
