"""``python -m refimpl iddpm ...``: train, sample (strided) and measure bits/dim."""

from __future__ import annotations

from refimpl import iddpm
from refimpl.cli import add_common, add_sample_command, add_train_command, positive_int
from refimpl.core import pick_device
from refimpl.data import DATASETS
from refimpl.schedules import SPACINGS


def add_commands(commands) -> None:
    """``python -m refimpl iddpm train|sample|nll``."""
    def schedule(cmd):
        cmd.add_argument("--schedule", choices=("linear", "cosine"), default="cosine",
                         help="beta schedule (improved DDPM: cosine, Eq. 17)")

    def sample_options(cmd):
        cmd.add_argument("--steps", type=positive_int, help="sampling steps (default: all T)")
        cmd.add_argument("--spacing", choices=SPACINGS, default="uniform",
                         help="sub-sequence of timesteps (default uniform)")
        cmd.add_argument("--variance", choices=iddpm.VARIANCES,
                         help="reverse variance (default: learned for iDDPM, fixed_small for DDPM)")

    add_train_command(commands, _run_train, help="train an improved DDPM (L_hybrid, Eq. 16); reruns resume",
                      data=DATASETS, default="digits", options=schedule)
    add_sample_command(commands, _run_sample, help="sample an iDDPM (or DDPM) checkpoint, strided (Sec. 4), to PNG",
                       ckpt_help="checkpoint directory of 'iddpm train' or 'ddpm train'", options=sample_options)

    nll_cmd = commands.add_parser("nll", help="bits/dim (the full variational bound, Eqs. 4-7) on held-out digits")
    nll_cmd.add_argument("--ckpt", required=True, help="a digits checkpoint written by 'iddpm train' or 'ddpm train'")
    nll_cmd.add_argument("--n", type=positive_int, default=64,
                         help="number of held-out digits, at most 297 (default 64: standard error ~0.05 bits/dim)")
    nll_cmd.add_argument("--variance", choices=iddpm.VARIANCES,
                         help="reverse variance (default: learned for iDDPM, fixed_small for DDPM)")
    nll_cmd.add_argument("--batch-size", type=positive_int, default=512, help="images per model call (default 512)")
    add_common(nll_cmd)
    nll_cmd.set_defaults(run=_run_nll)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = iddpm.train_config(args.data, args.preset, steps=args.steps, seed=args.seed, schedule=args.schedule)
    _, history = iddpm.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained iddpm on {args.data} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    x0 = iddpm.sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, spacing=args.spacing,
                                      variance=args.variance, seed=args.seed, device=device, disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    steps = f"{args.steps} {args.spacing}" if args.steps else "all"
    print(f"wrote {args.n} samples ({steps} steps) to {args.out}")
    return 0


def _run_nll(args) -> int:
    device = pick_device(args.device)
    result, variance = iddpm.nll_from_checkpoint(args.ckpt, args.n, variance=args.variance, seed=args.seed,
                                                 device=device, batch_size=args.batch_size, disable=args.quiet)
    n = result.total.shape[0]
    print(f"{result.total.mean().item():.4f} bits/dim on {n} held-out digits ({variance} variance): "
          f"L_T {result.prior.mean().item():.4f}, L_0 {result.terms[:, 0].mean().item():.4f}, "
          f"L_1..L_(T-1) {result.terms[:, 1:].sum(1).mean().item():.4f} (digits seen in training, see the docs)")
    return 0
