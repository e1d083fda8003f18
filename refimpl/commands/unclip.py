"""``python -m refimpl unclip ...``: train the prior and the decoder on a frozen CLIP, text to image, variations."""

from __future__ import annotations

import torch

from refimpl import unclip
from refimpl.cli import add_common, add_preset, nonnegative_float, png_path, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl unclip train|sample|variations``."""
    cmd = commands.add_parser("train", help="train the diffusion prior and the decoder on a frozen CLIP; reruns resume")
    add_preset(cmd)
    cmd.add_argument("--clip", required=True, help="CLIP checkpoint directory (python -m refimpl clip train --out)")
    cmd.add_argument("--steps", type=positive_int, help="decoder training steps (default: the preset's)")
    cmd.add_argument("--prior-steps", type=positive_int, help="prior training steps (default: the preset's)")
    cmd.add_argument("--out", required=True, help="run directory (clip/, prior/, decoder/)")
    add_common(cmd)
    cmd.set_defaults(run=_run_train)

    for name, run, what in (("sample", _run_sample, "text to image: caption -> prior -> decoder, into a PNG"),
                            ("variations", _run_variations, "variations of one held-out digit (first tile: the "
                                                            "input), into a PNG")):
        cmd = commands.add_parser(name, help=what)
        cmd.add_argument("--ckpt", required=True, help="run directory written by train")
        if run is _run_sample:
            cmd.add_argument("--caption", required=True, help='e.g. "the number three" or "数字三"')
            cmd.add_argument("--prior-scale", type=nonnegative_float, default=1.0,
                             help="prior guidance scale (default 1: no guidance)")
        else:
            cmd.add_argument("--index", type=int, default=0, help="which held-out digit (0-based, default 0)")
            cmd.add_argument("--eta", type=nonnegative_float, default=1.0,
                             help="DDIM eta from the inverted x_T (default 1; 0 reconstructs the input)")
        cmd.add_argument("--decoder-scale", type=nonnegative_float, default=3.0,
                         help="decoder guidance scale (default 3; 1 = no guidance)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps per stage (default 50)")
        cmd.add_argument("--n", type=positive_int, default=16, help="number of samples")
        cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png)")
        add_common(cmd)
        cmd.set_defaults(run=run)


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
