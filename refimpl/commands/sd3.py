"""``python -m refimpl sd3 ...``: where logit-normal timestep sampling trains, and the shapes through a tiny SD3."""

from __future__ import annotations

import math

import torch

from refimpl import sd3
from refimpl.cli import add_common, positive_float, positive_int


def add_commands(commands) -> None:
    """``python -m refimpl sd3 timesteps|anatomy``."""
    cmd = commands.add_parser("timesteps", help="draw training timesteps t from a logit-normal and print their "
                                                "quantiles, in t and in log-SNR")
    cmd.add_argument("--mean", type=float, default=0.0, help="m, the mean of logit(t) (default 0)")
    cmd.add_argument("--std", type=positive_float, default=1.0, help="s, the std of logit(t) (default 1)")
    cmd.add_argument("--shift", type=positive_float, default=1.0,
                     help="timestep shift a: t -> a t / (1 + (a - 1) t) (default 1: none)")
    cmd.add_argument("--n", type=positive_int, default=10000, help="timesteps to draw (default 10000)")
    add_common(cmd)
    cmd.set_defaults(run=_run_timesteps)
    cmd = commands.add_parser("anatomy", help="print the tensor shapes through a tiny diffusers SD3 transformer")
    add_common(cmd)
    cmd.set_defaults(run=_run_anatomy)


def _run_timesteps(args) -> int:
    t = sd3.sample_logit_normal(args.n, args.mean, args.std, torch.Generator().manual_seed(args.seed)).double()
    t = args.shift * t / (1 + (args.shift - 1) * t)
    quantiles = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    print(f"{args.n} timesteps, logit(t) ~ N({args.mean + math.log(args.shift):g}, {args.std:g}^2) "
          f"(mean {args.mean:g} + log shift {args.shift:g})")
    for name, values in (("t", t), ("log-SNR", sd3.log_snr(t))):
        print(f"  {name:8s}" + "  ".join(f"q{q:.2f} {v:+.3f}" for q, v in zip(quantiles.tolist(),
                                                                           values.quantile(quantiles).tolist())))
    return 0


def _run_anatomy(args) -> int:
    for name, shape in sd3.trace_sd3_transformer(seed=args.seed):
        print(f"{name}: {' x '.join(map(str, shape))}")
    return 0
