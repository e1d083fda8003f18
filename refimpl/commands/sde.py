"""``python -m refimpl sde ...``: train, sample and measure likelihood with the probability-flow ODE."""

from __future__ import annotations

import math

import torch

from refimpl import sde
from refimpl.cli import add_common, add_sample_command, add_train_command, positive_int
from refimpl.core import pick_device
from refimpl.data import TOY_2D, toy_2d


def add_commands(commands) -> None:
    """``python -m refimpl sde train|sample|likelihood``."""
    train_cmd = add_train_command(commands, _run_train, data=TOY_2D,
                                  help="train a score model by denoising score matching; reruns resume")
    train_cmd.add_argument("--sde", choices=tuple(sde.SDES), default="vp")
    sample_cmd = add_sample_command(commands, _run_sample, help="sample a trained score model into a PNG")
    sample_cmd.add_argument("--sampler", choices=tuple(sde.SAMPLERS), default="em",
                            help="em: reverse SDE; pc: predictor-corrector; ode: probability flow (RK4)")
    sample_cmd.add_argument("--steps", type=positive_int, default=1000, help="steps from t = 1 to eps")

    nll_cmd = commands.add_parser("likelihood", help="NLL of fresh data by the probability-flow ODE")
    nll_cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    nll_cmd.add_argument("--n", type=positive_int, default=256, help="number of fresh data points")
    nll_cmd.add_argument("--steps", type=positive_int, default=100, help="RK4 steps from eps to 1")
    nll_cmd.add_argument("--hutchinson", action="store_true", help="Hutchinson trace estimate instead of exact")
    add_common(nll_cmd)
    nll_cmd.set_defaults(run=_run_likelihood)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = sde.train_config(args.sde, args.data, args.preset, steps=args.steps, seed=args.seed)
    _, history = sde.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained a {args.sde} score model on {args.data} for {config['steps']} steps on {device}{last}; "
          f"checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    x = sde.sample_from_checkpoint(args.ckpt, args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                   device=pick_device(args.device), disable=args.quiet)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples ({args.sampler}, {args.steps} steps) to {args.out}")
    return 0


def _run_likelihood(args) -> int:
    device = pick_device(args.device)
    model, process, config = sde.load_for_sampling(args.ckpt, device)
    data = config["data"]
    generator = torch.Generator().manual_seed(args.seed)
    x = toy_2d(data, args.n, generator).to(device)
    log_p = sde.log_likelihood(model, x, process, steps=args.steps,
                               divergence="hutchinson" if args.hutchinson else "exact",
                               generator=generator, disable=args.quiet)
    nll = float(-log_p.mean())
    print(f"{data}: NLL {nll:.4f} nats per sample, {nll / (2 * math.log(2)):.4f} bits/dim "
          f"({args.n} fresh points, {'Hutchinson' if args.hutchinson else 'exact'} divergence)")
    return 0
