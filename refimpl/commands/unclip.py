"""``python -m refimpl unclip ...``: train the prior and the decoder on a frozen CLIP, text to image, variations."""

from __future__ import annotations

import torch

from refimpl import unclip
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl unclip train|sample|variations``."""
    add_train_command(commands, _run_train,
                      help="train the diffusion prior and the decoder on a frozen CLIP; reruns resume",
                      inputs={"--clip": "CLIP checkpoint directory (python -m refimpl clip train --out)"},
                      steps={"--steps": "decoder training steps", "--prior-steps": "prior training steps"},
                      out_help="run directory (clip/, prior/, decoder/)")

    def decoder_options(cmd):
        cmd.add_argument("--decoder-scale", type=nonnegative_float, default=3.0,
                         help="decoder guidance scale (default 3; 1 = no guidance)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps per stage (default 50)")

    def text_options(cmd):
        cmd.add_argument("--caption", required=True, help='e.g. "the number three" or "数字三"')
        cmd.add_argument("--prior-scale", type=nonnegative_float, default=1.0,
                         help="prior guidance scale (default 1: no guidance)")
        decoder_options(cmd)

    def variation_options(cmd):
        cmd.add_argument("--index", type=int, default=0, help="which held-out digit (0-based, default 0)")
        cmd.add_argument("--eta", type=nonnegative_float, default=1.0,
                         help="DDIM eta from the inverted x_T (default 1; 0 reconstructs the input)")
        decoder_options(cmd)

    add_sample_command(commands, _run_sample, help="text to image: caption -> prior -> decoder, into a PNG",
                       ckpt_help="run directory written by train", options=text_options, n=16)
    add_sample_command(commands, _run_variations, name="variations",
                       help="variations of one held-out digit (first tile: the input), into a PNG",
                       ckpt_help="run directory written by train", options=variation_options, n=16)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = unclip.train_config(args.preset, steps=args.steps, prior_steps=args.prior_steps, seed=args.seed)
    _, _, history = unclip.train(config, args.clip, args.out, device=device, progress=not args.quiet)
    losses = ", ".join(f"{k} {v[-1][1]:.4f}" for k, v in history.items() if v)
    print(f"trained the unCLIP prior and decoder on {device} (final losses: {losses or 'none'}); run: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl import clip as clip_module
    from refimpl.plots import save_samples

    model = unclip.load(args.ckpt)
    clip_module.tokenize(model.tok, [args.caption], model.clip.text.max_len)  # refuse unknown characters first
    model.to(pick_device(args.device))
    x = model.text_to_image([args.caption] * args.n, prior_scale=args.prior_scale, decoder_scale=args.decoder_scale,
                            steps=args.steps, seed=args.seed)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} to {args.out}")
    return 0


def _run_variations(args) -> int:
    from refimpl.plots import save_samples

    images, labels = unclip.held_out()
    if not 0 <= args.index < len(images):
        raise LineageError(f"--index must lie in 0..{len(images) - 1}, got {args.index}")
    model = unclip.load(args.ckpt).to(pick_device(args.device))
    x = model.variations(images[args.index:args.index + 1].expand(args.n, -1, -1, -1), eta=args.eta,
                         decoder_scale=args.decoder_scale, steps=args.steps, seed=args.seed)
    save_samples(torch.cat([images[args.index:args.index + 1], x.cpu()]), args.out)
    print(f"wrote the held-out digit {args.index} (a {int(labels[args.index])}) and {args.n} variations to {args.out}")
    return 0
