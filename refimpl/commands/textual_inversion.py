"""``python -m refimpl textual-inversion ...``: learn one new word for the subject and sample with it."""

from __future__ import annotations

from refimpl import textual_inversion
from refimpl.commands.dreambooth import add_train_sample
from refimpl.core import pick_device
from refimpl.textual_inversion import PLACEHOLDER


def add_commands(commands) -> None:
    """``python -m refimpl textual-inversion train|sample``."""
    add_train_sample(commands, _run_train, "textual-inversion", "learn one new word S* for the subject, "
                     "the LDM frozen", f"the digit {PLACEHOLDER}")


def _run_train(args) -> int:
    config = textual_inversion.train_config(args.preset, steps=args.steps, seed=args.seed)
    *_, history = textual_inversion.train(config, args.base, args.out, device=pick_device(args.device),
                                          progress=not args.quiet)
    print(f"learned the embedding of {PLACEHOLDER!r} in {config['steps']} steps; final loss {history[-1][1]:.4f}; "
          f"checkpoint: {args.out}")
    return 0
