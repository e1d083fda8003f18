"""``python -m refimpl flow ...``: train a flow on the straight path, reflow it, and sample it with Euler steps."""

from __future__ import annotations

from refimpl import flow
from refimpl.cli import add_sample_command, add_train_command, positive_float, positive_int
from refimpl.core import pick_device
from refimpl.data import DATASETS


def add_commands(commands) -> None:
    """``python -m refimpl flow train|reflow|sample``."""
    def sample_options(cmd):
        cmd.add_argument("--steps", type=positive_int, default=50, help="Euler steps = model calls (default 50)")
        cmd.add_argument("--shift", type=positive_float, default=1.0,
                         help="time shift s of t -> s t / (1 + (s - 1) t); > 1 spends more steps near the noise "
                              "(default 1: uniform)")

    add_train_command(commands, _run_train, data=DATASETS, help="train a velocity field on x_t = (1 - t) x + t eps "
                      "(flow matching / rectified flow; DDPM's network and optimiser); reruns resume")
    add_train_command(commands, _run_reflow, name="reflow", inputs={"--parent": "checkpoint directory of the flow "
                      "to straighten (written by 'flow train')"},
                      steps={"--steps": "training steps on the pairs", "--pairs": "noise samples the parent maps "
                             "to data, the training pairs"},
                      help="reflow: pair noise with where the parent flow takes it and train again from the "
                           "parent's weights (the 2-rectified flow); reruns resume")
    add_sample_command(commands, _run_sample, help="sample a trained flow with Euler steps into a PNG",
                       ckpt_help="checkpoint directory written by 'flow train' or 'flow reflow'",
                       options=sample_options)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = flow.train_config(args.data, args.preset, steps=args.steps, seed=args.seed)
    _, history = flow.train(config, args.out, device=device, progress=not args.quiet)
    print(f"trained a flow on {args.data} for {config['steps']} steps on {device}{_last(history)}; "
          f"checkpoint: {args.out}")
    return 0


def _run_reflow(args) -> int:
    from refimpl.checkpoint import weights_digest

    device = pick_device(args.device)
    parent, parent_config = flow.load_model(args.parent)
    config = flow.reflow_config(parent_config, weights_digest(parent), args.preset, steps=args.steps,
                                pairs=args.pairs, seed=args.seed)
    _, history = flow.reflow(args.parent, config, args.out, device=device, progress=not args.quiet)
    print(f"reflowed {args.parent} on {config['reflow']['pairs']} pairs for {config['steps']} steps on "
          f"{device}{_last(history)}; checkpoint: {args.out}")
    return 0


def _last(history) -> str:
    return f", final loss {history[-1][1]:.4f}" if history else ""


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    x = flow.sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, shift=args.shift, seed=args.seed,
                                    device=device, disable=args.quiet)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples ({args.steps} Euler steps, shift {args.shift:g}) of the flow to {args.out}")
    return 0
