"""``python -m refimpl controlnet ...``: train a ControlNet on a locked LDM and sample from edge maps."""

from __future__ import annotations

import torch

from refimpl import controlnet
from refimpl.captions import tokenize
from refimpl.cli import add_common, add_preset, nonnegative_float, png_path, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl controlnet train|sample``."""
    cmd = commands.add_parser("train", help="train a ControlNet (edge maps) on a locked LDM; reruns resume")
    add_preset(cmd)
    cmd.add_argument("--base", required=True, help="LDM run directory written by `ldm train`")
    cmd.add_argument("--steps", type=positive_int, help="training steps (default: the preset's)")
    cmd.add_argument("--out", required=True, help="checkpoint directory (ControlNet weights only)")
    add_common(cmd)
    cmd.set_defaults(run=_run_train)

    cmd = commands.add_parser("sample", help="digits following the edge maps of held-out digits, into a PNG")
    cmd.add_argument("--base", required=True, help="the LDM run the ControlNet was trained on")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by `controlnet train`")
    cmd.add_argument("--caption", default="", help='caption (default: empty, the control map alone)')
    cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="CFG scale (default 3)")
    cmd.add_argument("--conditioning-scale", type=nonnegative_float, default=1.0,
                     help="weight of the ControlNet residuals (default 1; 0 = the base model)")
    cmd.add_argument("--n", type=positive_int, default=16, help="number of samples (one per held-out edge map)")
    cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png): maps above samples")
    add_common(cmd)
    cmd.set_defaults(run=_run_sample)


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
