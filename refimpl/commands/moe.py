"""``python -m refimpl moe ...``: train a character-level mixture-of-experts LLaMA on the notes and continue a prompt
(greedy), printing how the generated tokens were shared among the experts."""

from __future__ import annotations

import sys

import torch

from refimpl import llama, moe
from refimpl.cli import add_common, add_train_command, positive_int
from refimpl.commands.gpt import train_on_notes
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl moe train|generate``."""
    add_train_command(commands, _run_train,
                      help="train a character-level MoE LLaMA (top-k routing, load-balancing loss) on the notes; "
                           "reruns resume")

    cmd = commands.add_parser("generate", help="continue a prompt by greedy decoding and print each expert's share")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--prompt", required=True, help='the start of the text, e.g. "扩散"')
    cmd.add_argument("--tokens", type=positive_int, default=64, help="characters to generate (default 64)")
    add_common(cmd)
    cmd.set_defaults(run=_run_generate)


def _run_train(args) -> int:
    return train_on_notes(moe, args)


def _run_generate(args) -> int:
    model, tok, config = moe.load(args.ckpt)
    if not args.prompt:
        raise LineageError("--prompt is empty")
    prompt = tok.encode(args.prompt, strict=True)
    device = pick_device(args.device)
    model.to(device)
    ids, _ = llama.generate(model, prompt[None].to(device), args.tokens)
    print(tok.decode(ids[0]))
    with torch.no_grad():  # route the whole text once more: every position's choices, layer by layer
        model(ids)
    n = config["model"]["experts"]
    shares = ["layer {}: {}".format(i + 1, " ".join(f"{s:.2f}" for s in moe.expert_load(r["index"].cpu(), n)))
              for i, r in enumerate(model.routings())]
    print(f"share of the {n} experts (top-{config['model']['top_k']} choices of every position): "
          + "; ".join(shares), file=sys.stderr)
    return 0
