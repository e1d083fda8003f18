"""``python -m refimpl nonequilibrium ...``: train, sample and evaluate the bound K."""

from __future__ import annotations

import math

from refimpl import nonequilibrium
from refimpl.cli import add_common, add_sample_command, add_train_command, positive_int
from refimpl.core import pick_device
from refimpl.data import TOY_2D


def add_commands(commands) -> None:
    """``python -m refimpl nonequilibrium train|sample|bound``."""
    add_train_command(commands, _run_train, help="train a diffusion probabilistic model on K (Eq. 14); reruns resume",
                      data=TOY_2D)
    add_sample_command(commands, _run_sample, help="run the learned reverse diffusion (Eq. 5) into a PNG")

    bound_cmd = commands.add_parser("bound", help="the log-likelihood bound K (Eq. 14) in bits on fresh data")
    bound_cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    bound_cmd.add_argument("--n", type=positive_int, default=2000, help="number of fresh data points")
    add_common(bound_cmd)
    bound_cmd.set_defaults(run=_run_bound)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = nonequilibrium.train_config(args.preset, data=args.data, steps=args.steps, seed=args.seed)
    _, history = nonequilibrium.train(config, args.out, device=device, progress=not args.quiet)
    last = f", K estimate over the last 10 batches {-history[-1][1]:.3f} bits" if history else ""
    print(f"trained nonequilibrium on {args.data} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    x0 = nonequilibrium.sample_from_checkpoint(args.ckpt, args.n, seed=args.seed, device=pick_device(args.device),
                                               disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _run_bound(args) -> int:
    result, null = nonequilibrium.bound_from_checkpoint(args.ckpt, args.n, seed=args.seed,
                                                        device=pick_device(args.device), disable=args.quiet)
    k_bits, gain_bits = result.total / math.log(2), (result.total - null) / math.log(2)
    se = lambda v: v.std().item() / math.sqrt(v.numel())  # noqa: E731
    print(f"K = {k_bits.mean().item():.3f} ± {se(k_bits):.3f} bits per point on {args.n} fresh points; "
          f"K - L_null = {gain_bits.mean().item():.3f} ± {se(gain_bits):.3f} bits "
          f"(L_null: the isotropic Gaussian N(0, I))")
    return 0
