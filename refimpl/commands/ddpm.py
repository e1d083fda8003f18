"""``python -m refimpl ddpm ...``: train and sample."""

from __future__ import annotations

from refimpl import ddpm
from refimpl.cli import add_sample_command, add_train_command, positive_int
from refimpl.core import pick_device
from refimpl.data import DATASETS


def add_commands(commands) -> None:
    """``python -m refimpl ddpm train|sample``."""
    def schedule(cmd):
        cmd.add_argument("--schedule", choices=("linear", "cosine"), default="linear",
                         help="beta schedule (DDPM: linear)")

    def n_and_variance(cmd):  # --n comes before --variance
        cmd.add_argument("--n", type=positive_int, default=1000, help="number of samples")
        cmd.add_argument("--variance", choices=ddpm.VARIANCES, default="fixed_small",
                         help="sigma_t^2 = beta_tilde_t (fixed_small) or beta_t (fixed_large)")

    add_train_command(commands, _run_train, help="train a DDPM (Algorithm 1); reruns resume", data=DATASETS,
                      options=schedule)
    add_sample_command(commands, _run_sample, help="sample a trained DDPM (Algorithm 2) into a PNG",
                       options=n_and_variance, n=None)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = ddpm.train_config(args.data, args.preset, steps=args.steps, seed=args.seed, schedule=args.schedule)
    _, history = ddpm.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained ddpm on {args.data} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    out = args.out
    device = pick_device(args.device)
    x0 = ddpm.sample_from_checkpoint(args.ckpt, args.n, variance=args.variance, seed=args.seed,
                                     device=device, disable=args.quiet)
    save_samples(x0.cpu(), out)
    print(f"wrote {args.n} samples to {out}")
    return 0
