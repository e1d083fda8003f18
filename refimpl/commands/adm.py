"""``python -m refimpl adm ...``: train the noisy classifier and sample classifier-guided digits."""

from __future__ import annotations

import torch

from refimpl import adm
from refimpl.cli import add_sample_command, add_train_command, digit, nonnegative_float, positive_int
from refimpl.core import LineageError, pick_device
from refimpl.ddpm import load_for_sampling


def add_commands(commands) -> None:
    """``python -m refimpl adm train|sample``."""
    add_train_command(commands, _run_train, help="train the noisy digits classifier p(y | x_t, t); reruns resume",
                      data=("digits",), default="digits")
    cmd = add_sample_command(commands, _run_sample, help="classifier-guided digits from a DDPM checkpoint into a PNG",
                             n=16)
    cmd.add_argument("--classifier", required=True, help="noisy-classifier checkpoint directory (adm train)")
    cmd.add_argument("--label", type=digit, required=True, help="the digit to generate, 0-9")
    cmd.add_argument("--guidance-scale", type=nonnegative_float, default=1.0,
                     help="gradient scale s >= 0 (default 1; 0: unguided)")
    cmd.add_argument("--sampler", choices=adm.SAMPLERS, default="ddim",
                     help="ddim: Algorithm 2, --steps steps (default); ddpm: Algorithm 1, all T steps")
    cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = adm.train_config(args.preset, steps=args.steps, seed=args.seed)
    _, history = adm.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained the noisy classifier for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    model, schedule, shape = load_for_sampling(args.ckpt, device)
    if shape != (1, 8, 8):
        raise LineageError(f"{args.ckpt} is not a digits model: classifier guidance here needs DDPM digits")
    classifier = adm.load_classifier(args.classifier, schedule, device)
    generator = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((args.n, *shape), generator=generator).to(device)
    x0 = adm.guided_sample(model, adm.classifier_grad_fn(classifier, args.label), x_T, schedule,
                           scale=args.guidance_scale, sampler=args.sampler, steps=args.steps, generator=generator,
                           disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples of digit {args.label} (scale {args.guidance_scale}, {args.sampler}) to {args.out}")
    return 0
