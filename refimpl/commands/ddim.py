"""``python -m refimpl ddim ...``: DDIM sampling of a DDPM checkpoint."""

from __future__ import annotations

import argparse
import math

from refimpl import ddim, schedules
from refimpl.cli import add_sample_command, positive_int
from refimpl.core import pick_device


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_commands(commands) -> None:
    """``python -m refimpl ddim sample``: DDIM sampling of a checkpoint written by ``ddpm train``."""
    def sample_options(cmd):
        cmd.add_argument("--steps", type=positive_int, default=50, help="sampling steps S = len(tau) (default 50)")
        cmd.add_argument("--eta", type=_non_negative_float, default=0.0,
                         help="noise scale eta >= 0 of Eq. (16): 0 = deterministic DDIM, 1 = DDPM-like (default 0)")
        cmd.add_argument("--spacing", choices=schedules.SPACINGS, default="uniform",
                         help="sub-sequence tau: floor(c i) or floor(c i^2) (Appendix D.2; default uniform)")

    add_sample_command(commands, _run_sample, help="sample a trained DDPM with DDIM (Eq. 12) into a PNG",
                       ckpt_help="checkpoint directory written by 'ddpm train'", options=sample_options)


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    out = args.out
    device = pick_device(args.device)
    x0 = ddim.sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, eta=args.eta, spacing=args.spacing,
                                     seed=args.seed, device=device, disable=args.quiet)
    save_samples(x0.cpu(), out)
    print(f"wrote {args.n} DDIM samples ({args.steps} {args.spacing} steps, eta={args.eta:g}) to {out}")
    return 0
