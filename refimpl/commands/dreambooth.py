"""``python -m refimpl dreambooth ...``: fine-tune the LDM on the subject, sample (shared with textual-inversion)."""

from __future__ import annotations

from refimpl import dreambooth, personalization
from refimpl.cli import (
    add_common,
    add_preset,
    nonnegative_float,
    png_path,
    positive_int,
)
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl dreambooth train|sample``."""
    train_parser = add_train_sample(commands, _run_train, "dreambooth", "fine-tune the whole LDM on the subject "
                                    "(prior preservation, lambda = 1)", dreambooth.INSTANCE_PROMPT)
    train_parser.add_argument("--prior-weight", type=nonnegative_float, default=dreambooth.PRIOR_WEIGHT,
                              help="lambda (default 1; 0 = no prior preservation)")


def add_train_sample(commands, run_train, name: str, help: str, example: str):
    """The train and sample commands both fine-tuning methods have (``name``: the checkpoint's model name).
    Returns the train parser, for a method's own options."""
    train_parser = commands.add_parser("train", help=help + "; reruns resume")
    add_preset(train_parser)
    train_parser.add_argument("--base", required=True, help="the base LDM run directory (python -m refimpl ldm train)")
    train_parser.add_argument("--steps", type=positive_int, help="fine-tuning steps (default: the preset's)")
    train_parser.add_argument("--out", required=True, help="checkpoint directory")
    add_common(train_parser)
    train_parser.set_defaults(run=run_train)

    cmd = commands.add_parser("sample", help="sample digits for a caption that may use the new word, into a PNG")
    cmd.add_argument("--base", required=True, help="the base LDM run directory")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--caption", required=True, help=f'e.g. "{example}"')
    cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="s (default 3; 1 = no guidance)")
    cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    cmd.add_argument("--n", type=positive_int, default=16, help="number of samples")
    cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png)")
    add_common(cmd)
    cmd.set_defaults(run=lambda args: run_sample(args, name))
    return train_parser


def run_sample(args, name: str) -> int:
    """The sample command of both fine-tuning methods."""
    from refimpl.plots import save_samples  # matplotlib: only when a picture is written
    from refimpl.styles import skew

    autoencoder, model, schedule, scale, words = personalization.load(args.ckpt, args.base, name)
    x = personalization.sample(autoencoder, model, [args.caption] * args.n, schedule, scale, words,
                          guidance_scale=args.guidance_scale, steps=args.steps, seed=args.seed,
                          device=pick_device(args.device))
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} to {args.out}; mean skew {skew(x.cpu()).mean():+.3f}")
    return 0


def _run_train(args) -> int:
    config = dreambooth.train_config(args.preset, steps=args.steps, prior_weight=args.prior_weight, seed=args.seed)
    *_, history = dreambooth.train(config, args.base, args.out, device=pick_device(args.device),
                                   progress=not args.quiet)
    print(f"fine-tuned {config['steps']} steps (lambda = {config['prior_weight']:g}); final loss "
          f"{history[-1][1]:.4f}; checkpoint: {args.out}")
    return 0
