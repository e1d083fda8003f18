"""``python -m refimpl imagen ...``: train the base and super-resolution models on a frozen T5, sample the cascade."""

from __future__ import annotations

import torch

from refimpl import imagen
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl imagen train|sample``."""
    add_train_command(commands, _run_train, help="train the base model and the 8x8 -> 16x16 super-resolution model "
                                                 "on frozen T5 caption embeddings; reruns resume",
                      inputs={"--t5": "checkpoint of 'python -m refimpl t5 train' (the frozen encoder)"},
                      steps={"--base-steps": "base model steps", "--sr-steps": "super-resolution steps"},
                      out_help="run directory (base/ and sr/ checkpoints)")

    def sample_options(cmd):
        cmd.add_argument("--t5", required=True, help="the T5 checkpoint the run was trained with")
        cmd.add_argument("--caption", required=True, help='e.g. "the number three" or "数字三"')
        cmd.add_argument("--guidance", type=nonnegative_float, default=5.0, help="w of Eq. 2 (default 5; 1 = none)")
        cmd.add_argument("--thresholding", choices=imagen.THRESHOLDS, default="dynamic",
                         help="x_0 thresholding (default dynamic)")
        cmd.add_argument("--aug-level", type=nonnegative_float, default=imagen.AUG_SAMPLE,
                         help=f"noise conditioning aug level of the SR stage, in [0, 1] (default {imagen.AUG_SAMPLE})")

    add_sample_command(commands, _run_sample,
                       help="sample 8x8 digits for a caption and super-resolve them to 16x16 (PNG)",
                       ckpt_help="run directory written by train", options=sample_options,
                       n=8, n_help="number of samples (default 8)",
                       out_help="output picture (.png): 8x8 row over 16x16 row")


def _run_train(args) -> int:
    device = pick_device(args.device)
    encoder = imagen.load_encoder(args.t5)
    config = imagen.train_config(encoder, args.preset, base_steps=args.base_steps, sr_steps=args.sr_steps,
                                 seed=args.seed)
    _, history = imagen.train(config, imagen.embed_captions(encoder, imagen.caption_texts()), args.out,
                              device=device, progress=not args.quiet)
    losses = ", ".join(f"{stage} loss {h[-1][1]:.4f}" for stage, h in history.items() if h)
    print(f"trained the base model ({config['base']['steps']} steps) and the super-resolution model "
          f"({config['sr']['steps']} steps) on {device} with the frozen T5 encoder {config['base']['text_encoder']}; "
          f"{losses}; checkpoints: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    if args.aug_level > 1:
        raise LineageError(f"the aug level must lie in [0, 1], got {args.aug_level}")
    encoder = imagen.load_encoder(args.t5)
    embeddings, padding = encoder([args.caption] * args.n)
    base, schedule, config = imagen.load(args.ckpt, "base")
    sr, sr_schedule, _ = imagen.load(args.ckpt, "sr")
    if config["text_encoder"] != encoder.digest():
        raise LineageError(f"{args.ckpt} was trained with another T5 encoder than {args.t5}")
    device = pick_device(args.device)
    low = imagen.generate(base, embeddings, padding, schedule, w=args.guidance, thresholding=args.thresholding,
                          seed=args.seed, device=device, disable=args.quiet).cpu()
    high = imagen.upsample(sr, low, embeddings, padding, sr_schedule, aug_level=args.aug_level, seed=args.seed,
                           device=device, disable=args.quiet).cpu()
    save_samples(torch.cat([imagen.high_res(low.clamp(-1, 1)), high]), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} (w = {args.guidance}, {args.thresholding} thresholding; "
          f"first the 8x8 samples upsampled bicubically, then the super-resolution model's) to {args.out}")
    return 0
