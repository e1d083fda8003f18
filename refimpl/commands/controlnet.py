"""``python -m refimpl controlnet ...``: train a ControlNet on a locked LDM and sample from edge maps."""

from __future__ import annotations

import torch

from refimpl import controlnet
from refimpl.captions import tokenize
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl controlnet train|sample``."""
    add_train_command(commands, _run_train, help="train a ControlNet (edge maps) on a locked LDM; reruns resume",
                      inputs={"--base": "LDM run directory written by `ldm train`"},
                      out_help="checkpoint directory (ControlNet weights only)")

    def sample_options(cmd):
        cmd.add_argument("--caption", default="", help='caption (default: empty, the control map alone)')
        cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="CFG scale (default 3)")
        cmd.add_argument("--conditioning-scale", type=nonnegative_float, default=1.0,
                         help="weight of the ControlNet residuals (default 1; 0 = the base model)")

    add_sample_command(commands, _run_sample, help="digits following the edge maps of held-out digits, into a PNG",
                       inputs={"--base": "the LDM run the ControlNet was trained on"},
                       ckpt_help="checkpoint directory written by `controlnet train`", options=sample_options,
                       n=16, n_help="number of samples (one per held-out edge map)",
                       out_help="output picture (.png): maps above samples")


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = controlnet.train_config(args.base, args.preset, steps=args.steps, seed=args.seed)
    model, (autoencoder, schedule, scale), history = controlnet.train(config, args.base, args.out, device=device,
                                                                      progress=not args.quiet)
    accuracy = controlnet.control_accuracy(model, autoencoder, schedule, scale, device=device)
    loss = f"; loss {history[-1][1]:.4f}" if history else ""  # none logged in runs shorter than 10 steps
    print(f"trained a ControlNet ({sum(p.numel() for p in model.control.parameters())} parameters, "
          f"{config['steps']} steps) on {device}{loss}; empty caption: the classifier reads "
          f"the control map's digit in {accuracy:.0%} of 100 samples; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import image_grid, save  # matplotlib: only when a picture is written

    tokenize([args.caption])  # refuse unknown words before loading anything
    model, (autoencoder, schedule, scale) = controlnet.load(args.ckpt, args.base)
    conditions, _ = controlnet.control_maps(args.n)
    x = controlnet.sample(model, autoencoder, schedule, scale, [args.caption] * args.n, conditions,
                          guidance_scale=args.guidance_scale, conditioning_scale=args.conditioning_scale,
                          seed=args.seed, device=pick_device(args.device))
    grid = torch.stack([conditions * 2 - 1, x.cpu()])  # row 0: the maps (0..1 shown as -1..1), row 1: samples
    save(image_grid(grid, row_titles=["edges", "sample"], size=0.6), args.out)
    print(f"wrote {args.n} edge maps (top) and the samples they controlled (bottom) to {args.out}")
    return 0
