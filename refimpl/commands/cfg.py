"""``python -m refimpl cfg ...``: train a conditional/unconditional network and sample guided digits."""

from __future__ import annotations

import torch

from refimpl import cfg
from refimpl.cli import add_sample_command, add_train_command, digit, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl cfg train|sample``."""
    def p_uncond(cmd):
        cmd.add_argument("--p-uncond", type=float, default=cfg.P_UNCOND,
                         help=f"probability of dropping the label (default {cfg.P_UNCOND})")

    add_train_command(commands, _run_train, help="train one network as a conditional and an unconditional "
                                                 "model on digits (Algorithm 1); reruns resume", options=p_uncond)

    sample_cmd = add_sample_command(commands, _run_sample, help="sample guided digits of one class into a PNG", n=64)
    sample_cmd.add_argument("--label", type=digit, default=0, help="the digit to draw, 0-9 (default 0)")
    sample_cmd.add_argument("--guidance-scale", type=float, default=3.0,
                            help="diffusers' guidance_scale s = 1 + w of Eq. (6): 0 unconditional, 1 conditional "
                                 "(no guidance), > 1 guided (default 3.0)")
    sample_cmd.add_argument("--sampler", choices=cfg.SAMPLERS, default="ddim",
                            help="ddim (eta = 0, --steps steps) or ddpm (ancestral, all T = 1000 steps)")
    sample_cmd.add_argument("--steps", type=positive_int, help="DDIM steps (default 50; not for --sampler ddpm)")


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = cfg.train_config(args.preset, p_uncond=args.p_uncond, steps=args.steps, seed=args.seed)
    _, history = cfg.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained cfg on digits for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    if args.sampler == "ddpm" and args.steps is not None:
        raise LineageError("--steps is for --sampler ddim; the ddpm sampler always runs all T steps")
    net, schedule = cfg.load_for_sampling(args.ckpt, pick_device(args.device))
    labels = torch.full((args.n,), args.label, dtype=torch.long)
    x0 = cfg.sample(net, schedule, labels, guidance_scale=args.guidance_scale, sampler=args.sampler,
                    steps=args.steps or 50, seed=args.seed, disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples of digit {args.label} (guidance scale {args.guidance_scale}, {args.sampler}) "
          f"to {args.out}")
    return 0
