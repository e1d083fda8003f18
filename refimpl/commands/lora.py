"""``python -m refimpl lora ...``: fine-tune the LDM (a slanted writer) or the GPT (Python source) with LoRA."""

from __future__ import annotations

import torch

from refimpl import lora
from refimpl.captions import tokenize
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float, positive_float, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl lora train|sample|train-gpt``."""
    def fine_tune_options(cmd):  # --steps comes after the LoRA options
        cmd.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (the comparison)")
        cmd.add_argument("--rank", type=positive_int, help="LoRA rank r (default: the preset's)")
        cmd.add_argument("--alpha", type=positive_float, help="LoRA alpha; the update is scaled by alpha / r (default r)")
        cmd.add_argument("--steps", type=positive_int, help="fine-tuning steps (default: the preset's)")

    def sample_options(cmd):  # --n comes before --merge
        cmd.add_argument("--caption", required=True, help='e.g. "the digit three"')
        cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="CFG scale (default 3)")
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
        cmd.add_argument("--n", type=positive_int, default=16, help="number of samples")
        cmd.add_argument("--merge", action="store_true", help="merge W0 + (alpha/r) B A before sampling")

    add_train_command(commands, _run_train, help="teach the LDM a slanted writer with LoRA (or --full); reruns resume",
                      inputs={"--base": "LDM run directory written by `ldm train`"}, steps={},
                      options=fine_tune_options)
    add_sample_command(commands, _run_sample, help="sample captioned digits from the fine-tuned LDM into a PNG",
                       inputs={"--base": "the LDM run the fine-tune started from"},
                       ckpt_help="checkpoint directory written by `lora train`", options=sample_options, n=None)
    add_train_command(commands, _run_train_gpt, name="train-gpt",
                      help="adapt the GPT to Python source with LoRA (or --full); prints "
                           "held-out loss before and after",
                      inputs={"--base": "GPT checkpoint directory written by `gpt train`"}, steps={},
                      options=fine_tune_options)


def _method(args) -> dict:
    if args.full and (args.rank or args.alpha):
        raise LineageError("--rank and --alpha are LoRA options; --full fine-tunes every weight")
    return {"method": "full" if args.full else "lora", "r": args.rank, "alpha": args.alpha, "steps": args.steps,
            "seed": args.seed}


def _last_loss(history) -> str:
    """"; loss X" for the last logged training loss (none logged in runs shorter than the log interval)."""
    return f"; loss {history[-1][1]:.4f}" if history else ""


def _run_train(args) -> int:
    from refimpl.digits_eval import classifier
    from refimpl.styles import skew

    device = pick_device(args.device)
    config = lora.style_config(args.base, args.preset, **_method(args))
    autoencoder, model, schedule, scale, history = lora.train_style(config, args.base, args.out, device=device,
                                                                    progress=not args.quiet)
    images, labels = lora.style_samples(autoencoder, model, schedule, scale, device=device)
    with torch.no_grad():
        accuracy = (classifier()(images.cpu().clamp(-1, 1)).argmax(1) == labels).float().mean().item()
    print(f"fine-tuned the LDM ({config['method']}, {lora.trainable_parameters(model)} trainable parameters, "
          f"{config['steps']} steps) on {device}{_last_loss(history)}; samples: mean skew "
          f"{skew(images.cpu()).mean().item():+.3f}, classifier accuracy {accuracy:.2f}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl import ldm
    from refimpl.plots import save_samples

    tokenize([args.caption])  # refuse unknown words before loading anything
    autoencoder, model, schedule, scale = lora.load_style(args.ckpt, args.base)
    if args.merge:
        lora.set_merged(model, True)
    x = ldm.sample(autoencoder, model, [args.caption] * args.n, schedule, scale, guidance_scale=args.guidance_scale,
                   steps=args.steps, seed=args.seed, device=pick_device(args.device), disable=args.quiet)
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} to {args.out}")
    return 0


def _run_train_gpt(args) -> int:
    device = pick_device(args.device)
    config = lora.gpt_config(args.base, args.preset, **_method(args))
    model, _, losses, _ = lora.train_gpt(config, args.base, args.out, device=device, progress=not args.quiet)
    print(f"adapted the GPT to Python source ({config['method']}, {lora.trainable_parameters(model)} trainable "
          f"parameters, {config['steps']} steps) on {device}; held-out loss {losses['before']:.3f} -> "
          f"{losses['after']:.3f} nats/char; checkpoint: {args.out}")
    return 0
