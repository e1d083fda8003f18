"""``python -m refimpl ldm ...``: train the autoencoder and the latent diffusion model, sample, print the anatomy."""

from __future__ import annotations

from refimpl import ldm
from refimpl.captions import tokenize
from refimpl.cli import add_common, add_sample_command, add_train_command, nonnegative_float, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl ldm train|sample|anatomy``."""
    add_train_command(commands, _run_train,
                      help="train the autoencoder, then the latent diffusion model; reruns resume",
                      steps={"--ae-steps": "autoencoder steps", "--steps": "latent diffusion steps"},
                      out_help="run directory (autoencoder/ and diffusion/ checkpoints)")

    def sample_options(cmd):
        cmd.add_argument("--caption", required=True, help='e.g. "the digit three"')
        cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="s (default 3; 1 = no guidance)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")

    add_sample_command(commands, _run_sample, help="sample digits for a caption (DDIM in latent space, CFG) into a PNG",
                       ckpt_help="run directory written by train", options=sample_options, n=16)

    cmd = commands.add_parser("anatomy", help="print the tensor shapes through Stable Diffusion and through our LDM")
    cmd.add_argument("--ckpt", help="run directory written by train (default: random weights)")
    add_common(cmd)
    cmd.set_defaults(run=_run_anatomy)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = ldm.train_config(args.preset, steps=args.steps, ae_steps=args.ae_steps, seed=args.seed)
    _, _, scale, history = ldm.train(config, args.out, device=device, progress=not args.quiet)
    losses = ", ".join(f"{name} loss {h[-1][1]:.4f}" for name, h in history.items() if h)
    print(f"trained the autoencoder ({config['autoencoder']['steps']} steps) and the latent diffusion model "
          f"({config['diffusion']['steps']} steps) on {device}; scale factor {scale:.4f}; {losses}; "
          f"checkpoints: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    tokenize([args.caption])  # refuse unknown words before loading anything
    autoencoder, model, schedule, scale = ldm.load(args.ckpt)
    x = ldm.sample(autoencoder, model, [args.caption] * args.n, schedule, scale, guidance_scale=args.guidance_scale,
                   steps=args.steps, seed=args.seed, device=pick_device(args.device), disable=args.quiet)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} (s = {args.guidance_scale}) to {args.out}")
    return 0


def _run_anatomy(args) -> int:
    trained = ldm.load(args.ckpt) if args.ckpt else (None, None, None, 1.0)
    traces = ldm.anatomy(*trained)
    titles = {"sd_v1_512": "Stable Diffusion v1, 512x512 (documented)", "tiny_sd": "diffusers pipeline, tiny (traced)",
              "ours": "our LDM (traced)"}
    for key, trace in traces.items():
        print(titles[key])
        for stage, shape in trace:
            print(f"  {stage:16s} {tuple(shape)}")
    return 0
