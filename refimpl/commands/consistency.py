"""``python -m refimpl consistency ...``: distil a trained DDPM into a consistency model and sample it in 1-50 calls."""

from __future__ import annotations

from refimpl import consistency
from refimpl.cli import add_sample_command, add_train_command, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl consistency distill|sample``."""
    def sample_options(cmd):
        cmd.add_argument("--steps", type=positive_int, default=1,
                         help=f"network calls, 1..{consistency.GRID} (default 1: one-step generation)")

    add_train_command(commands, _run_distill, name="distill",
                      inputs={"--teacher": "checkpoint directory of the DDPM to distil (written by 'ddpm train')"},
                      help="consistency distillation of a DDPM (one DDIM step of the teacher per pair, LCM's "
                           "skipping step); the student starts from the teacher's weights; reruns resume")
    add_sample_command(commands, _run_sample, help="sample a consistency model into a PNG",
                       ckpt_help="checkpoint directory written by 'consistency distill'", options=sample_options)


def _run_distill(args) -> int:
    from refimpl.checkpoint import weights_digest
    from refimpl.training import load_model

    device = pick_device(args.device)
    teacher, checkpoint = load_model(args.teacher, "ddpm")
    config = consistency.distill_config(checkpoint.config, weights_digest(teacher), args.preset, steps=args.steps,
                                        seed=args.seed)
    _, history = consistency.distill(args.teacher, config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.2e}" if history else ""
    print(f"distilled {args.teacher} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    x = consistency.sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, seed=args.seed,
                                           device=pick_device(args.device))
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples ({args.steps} network call{'s' if args.steps > 1 else ''}) of the consistency "
          f"model to {args.out}")
    return 0
