"""``python -m refimpl dit ...``: train one member of the miniature DiT family on digits and sample guided digits."""

from __future__ import annotations

import torch

from refimpl import dit
from refimpl.cli import add_sample_command, add_train_command, digit, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl dit train|sample``."""
    def sizes(cmd):
        cmd.add_argument("--size", choices=tuple(dit.SIZES), default="B",
                         help="depth, width, heads: " + ", ".join(f"{name} {d}x{w}, {h} heads"
                                                                  for name, (d, w, h) in dit.SIZES.items())
                              + " (default B)")
        cmd.add_argument("--patch", type=int, choices=(1, 2, 4, 8), default=2,
                         help="patch size p: (8/p)^2 tokens per 8x8 digit (default 2: 16 tokens)")

    add_train_command(commands, _run_train, help="train a class-conditional DiT on the training digits (DDPM's "
                                                 "L_simple, labels dropped with p = 0.1); reruns resume",
                      options=sizes)
    sample_cmd = add_sample_command(commands, _run_sample, help="sample digits of one class into a PNG (DDIM)", n=64)
    sample_cmd.add_argument("--label", type=digit, default=0, help="the digit to draw, 0-9 (default 0)")
    sample_cmd.add_argument("--guidance-scale", type=float, default=1.0,
                            help="classifier-free guidance scale (diffusers' convention; 1: none, the default)")
    sample_cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = dit.train_config(args.size, args.patch, args.preset, steps=args.steps, seed=args.seed)
    _, history = dit.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained DiT-{args.size}/{args.patch} ({dit.forward_gflops(config['model']) * 1e3:.2f} Mflops per "
          f"forward) on digits for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.cfg import sample
    from refimpl.plots import save_samples

    model, schedule, _ = dit.load(args.ckpt, pick_device(args.device))
    labels = torch.full((args.n,), args.label, dtype=torch.long)
    x0 = sample(model, schedule, labels, guidance_scale=args.guidance_scale, steps=args.steps, seed=args.seed,
                disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples of digit {args.label} (guidance scale {args.guidance_scale}, {args.steps} DDIM "
          f"steps) to {args.out}")
    return 0
