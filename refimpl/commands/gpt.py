"""``python -m refimpl gpt ...``: train a character-level GPT and continue a prompt."""

from __future__ import annotations

import torch

from refimpl import gpt
from refimpl.cli import add_common, add_train_command, positive_float, positive_int
from refimpl.core import LineageError, pick_device
from refimpl.text import unigram_nll


def add_commands(commands) -> None:
    """``python -m refimpl gpt train|sample|from-pretrained``."""
    add_train_command(commands, _run_train, help="train a character-level GPT on the repository's notes; reruns resume")

    cmd = commands.add_parser("sample", help="continue a prompt with temperature / top-k sampling")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--prompt", required=True, help='the start of the text, e.g. "扩散模型"')
    cmd.add_argument("--tokens", type=positive_int, default=100, help="characters to generate (default 100)")
    cmd.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature (default 1)")
    cmd.add_argument("--top-k", type=positive_int, help="sample among the k most likely characters (default: all)")
    add_common(cmd)
    cmd.set_defaults(run=_run_sample)

    cmd = commands.add_parser("from-pretrained", help="continue a prompt with released GPT-2 weights in this page's "
                                                      "GPT (local directory or Hugging Face cache; never downloads)")
    cmd.add_argument("name", metavar="PATH_OR_NAME", help="checkpoint directory, or a model name in the local "
                                                          "Hugging Face cache (e.g. gpt2)")
    cmd.add_argument("--prompt", required=True, help='the start of the text, e.g. "The diffusion model"')
    cmd.add_argument("--tokens", type=positive_int, default=40, help="tokens to generate (default 40)")
    cmd.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature (default 1)")
    cmd.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens (default: all; "
                                                       "1: greedy)")
    add_common(cmd)
    cmd.set_defaults(run=_run_from_pretrained)


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


def _run_from_pretrained(args) -> int:
    from refimpl import pretrained

    device = pick_device(args.device)
    pre = pretrained.load("gpt", args.name)
    pre.model.to(device)
    print(pretrained.generate_text(pre, args.prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                                   generator=torch.Generator().manual_seed(args.seed)))
    return 0
