"""``python -m refimpl vpred ...``: train a v-prediction model and sample it with DDIM."""

from __future__ import annotations

from refimpl import vpred
from refimpl.cli import add_sample_command, add_train_command, nonnegative_float, positive_int
from refimpl.core import pick_device
from refimpl.data import DATASETS


def add_commands(commands) -> None:
    """``python -m refimpl vpred train|sample``."""
    def sample_options(cmd):
        cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
        cmd.add_argument("--eta", type=nonnegative_float, default=0.0,
                         help="DDIM noise scale eta >= 0: 0 = deterministic (default 0)")

    add_train_command(commands, _run_train, data=DATASETS, help="train a DDPM-sized network to predict "
                      "v = alpha_t eps - sigma_t x_0 (Progressive Distillation, Sec. 4); reruns resume")
    add_sample_command(commands, _run_sample, help="sample a trained v-prediction model with DDIM into a PNG",
                       ckpt_help="checkpoint directory written by 'vpred train'", options=sample_options)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = vpred.train_config(args.data, args.preset, steps=args.steps, seed=args.seed)
    _, history = vpred.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained a v-prediction model on {args.data} for {config['steps']} steps on {device}{last}; "
          f"checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.plots import save_samples

    device = pick_device(args.device)
    x0 = vpred.sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, eta=args.eta, seed=args.seed,
                                      device=device, disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} DDIM samples ({args.steps} steps, eta={args.eta:g}) of the v-prediction model to {args.out}")
    return 0
