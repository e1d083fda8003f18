"""``python -m refimpl ncsn ...``: train and sample with annealed Langevin dynamics."""

from __future__ import annotations

from refimpl import ncsn
from refimpl.cli import add_sample_command, add_train_command, positive_float, positive_int
from refimpl.core import pick_device
from refimpl.data import TOY_2D


def add_commands(commands) -> None:
    """``python -m refimpl ncsn train|sample``."""
    add_train_command(commands, _run_train, help="train a noise conditional score network; reruns resume", data=TOY_2D)
    sample_cmd = add_sample_command(commands, _run_sample, help="annealed Langevin dynamics (Algorithm 1) into a PNG")
    sample_cmd.add_argument("--steps-per-level", type=positive_int, help="Langevin steps per noise level, T "
                            f"(default {ncsn.TOY['steps_per_level']})")
    sample_cmd.add_argument("--eps", type=positive_float, help=f"step size constant epsilon (default {ncsn.TOY['eps']})")


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = ncsn.train_config(args.data, args.preset, steps=args.steps, seed=args.seed)
    _, history = ncsn.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained ncsn on {args.data} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    x = ncsn.sample_from_checkpoint(args.ckpt, args.n, eps=args.eps, steps_per_level=args.steps_per_level,
                                    seed=args.seed, device=device, disable=args.quiet)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0
