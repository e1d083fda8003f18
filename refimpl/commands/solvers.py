"""``python -m refimpl solvers ...``: sample a DDPM checkpoint with a fast ODE solver."""

from __future__ import annotations

import argparse

from refimpl import solvers
from refimpl.cli import add_sample_command, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl solvers sample``: DDIM, DPM-Solver++(2M) or EDM Heun on a ``ddpm train`` checkpoint."""
    def sample_options(cmd):
        cmd.add_argument("--sampler", choices=tuple(solvers.SAMPLERS), default="dpmpp-2m",
                         help="ddim (eta = 0), dpmpp-2m (DPM-Solver++ Algorithm 2) or heun (EDM Algorithm 1); "
                              "default dpmpp-2m")
        cmd.add_argument("--steps", type=positive_int, default=20, help="sampling steps (default 20)")
        cmd.add_argument("--spacing", choices=solvers.SPACINGS, default=None,
                         help="timestep sub-sequence (default: uniform for ddim, karras for dpmpp-2m and heun)")

    add_sample_command(commands, _run_sample, help="sample a trained DDPM with a fast ODE solver into a PNG",
                       ckpt_help="checkpoint directory written by 'ddpm train'", options=sample_options,
                       n=64, n_help="number of samples (default 64)")


def _run_sample(args: argparse.Namespace) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    spacing = args.spacing or solvers.SAMPLERS[args.sampler].spacing
    x0 = solvers.sample_from_checkpoint(args.ckpt, args.n, sampler=args.sampler, steps=args.steps, spacing=spacing,
                                        seed=args.seed, device=device, disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} {args.sampler} samples ({args.steps} {spacing} steps, "
          f"{solvers.nfe(args.sampler, args.steps)} model evaluations) to {args.out}")
    return 0
