"""``python -m refimpl dreambooth ...``: fine-tune the LDM on the subject, sample (shared with textual-inversion)."""

from __future__ import annotations

from refimpl import dreambooth, personalization
from refimpl.cli import (
    add_sample_command,
    add_train_command,
    nonnegative_float,
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
    def sample_options(cmd):
        cmd.add_argument("--caption", required=True, help=f'e.g. "{example}"')
        cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="s (default 3; 1 = no guidance)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")

    train_parser = add_train_command(commands, run_train, help=help + "; reruns resume",
                                     inputs={"--base": "the base LDM run directory (python -m refimpl ldm train)"},
                                     steps={"--steps": "fine-tuning steps"})
    add_sample_command(commands, lambda args: run_sample(args, name),
                       help="sample digits for a caption that may use the new word, into a PNG",
                       inputs={"--base": "the base LDM run directory"}, options=sample_options, n=16)
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
