"""``python -m refimpl glide ...``: train the text-conditional model and a noised CLIP, sample with guidance."""

from __future__ import annotations

from refimpl import glide
from refimpl.captions import tokenize
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl glide train|train-clip|sample``."""
    for name, run, what in (("train", _run_train, "the text-conditional diffusion model (20%% empty captions)"),
                            ("train-clip", _run_train, "a noised CLIP model for CLIP guidance")):
        cmd = add_train_command(commands, run, name=name, help=f"train {what}; reruns resume")
        cmd.set_defaults(kind="glide" if name == "train" else "glide-clip")

    def sample_options(cmd):
        cmd.add_argument("--caption", required=True, help='e.g. "the digit three"')
        cmd.add_argument("--guidance", choices=glide.GUIDANCE, default="cfg")
        cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0,
                         help="s (default 3; cfg: 1 = no guidance)")
        cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
        cmd.add_argument("--clip", help="noised CLIP checkpoint written by train-clip (for --guidance clip)")
        cmd.add_argument("--sampler", choices=glide.SAMPLERS, default="ddim", help="ddim (eta 0) or ddpm (ancestral)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")

    add_sample_command(commands, _run_sample, help="sample digits for a caption with CFG or CLIP guidance into a PNG",
                       ckpt_help=None, options=sample_options, n=16)  # --ckpt after the caption and guidance


def _run_train(args) -> int:
    device = pick_device(args.device)
    make, fit = (glide.train_config, glide.train) if args.kind == "glide" else (glide.clip_config, glide.train_clip)
    config = make(args.preset, steps=args.steps, seed=args.seed)
    _, history = fit(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained {args.kind} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    tokenize([args.caption])  # refuse unknown words before loading anything
    if args.guidance == "clip" and not args.clip:
        raise LineageError("--guidance clip needs --clip CKPT (a model written by train-clip)")
    model, schedule = glide.load(args.ckpt, "glide")
    clip = glide.load(args.clip, "glide-clip")[0] if args.guidance == "clip" else None
    x0 = glide.sample(model, [args.caption] * args.n, schedule, guidance=args.guidance, scale=args.guidance_scale,
                      clip=clip, sampler=args.sampler, steps=args.steps, seed=args.seed,
                      device=pick_device(args.device), disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} ({args.guidance} guidance, s = {args.guidance_scale}) "
          f"to {args.out}")
    return 0
