"""``python -m refimpl gpt ...``: train a character-level GPT and continue a prompt."""

from __future__ import annotations

import torch

from refimpl import gpt
from refimpl.cli import add_common, add_train_command, positive_float, positive_int
from refimpl.core import LineageError, pick_device
from refimpl.text import unigram_nll


def add_commands(commands) -> None:
    """``python -m refimpl gpt train|sample``."""
    add_train_command(commands, _run_train, help="train a character-level GPT on the repository's notes; reruns resume")

    cmd = commands.add_parser("sample", help="continue a prompt with temperature / top-k sampling")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--prompt", required=True, help='the start of the text, e.g. "扩散模型"')
    cmd.add_argument("--tokens", type=positive_int, default=100, help="characters to generate (default 100)")
    cmd.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature (default 1)")
    cmd.add_argument("--top-k", type=positive_int, help="sample among the k most likely characters (default: all)")
    add_common(cmd)
    cmd.set_defaults(run=_run_sample)


def train_on_notes(paper, args) -> int:
    """``train`` of a character-level language model on the notes: ``paper`` is refimpl.gpt or refimpl.llama (their
    text_data, train_config and train); prints the held-out loss beside the unigram baseline."""
    device = pick_device(args.device)
    data = paper.text_data()
    config = paper.train_config(args.preset, steps=args.steps, seed=args.seed, data=data)
    model, _ = paper.train(config, args.out, device=device, progress=not args.quiet, data=data)
    _, train_ids, held_ids, _ = data
    print(f"trained {paper.__name__.rsplit('.', 1)[-1]} for {config['steps']} steps on {device}; held-out loss "
          f"{gpt.held_out_loss(model, held_ids, context=config.get('context')):.3f} nats/char (unigram baseline "
          f"{unigram_nll(train_ids, held_ids[1:], config['model']['vocab_size']):.3f}); checkpoint: {args.out}")
    return 0


def _run_train(args) -> int:
    return train_on_notes(gpt, args)


def _run_sample(args) -> int:
    model, tok = gpt.load(args.ckpt)
    prompt = tok.encode(args.prompt, strict=True)
    if prompt.numel() == 0:
        raise LineageError("--prompt is empty")
    model.to(pick_device(args.device))
    ids = gpt.generate(model, prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                       generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(ids))
    return 0
