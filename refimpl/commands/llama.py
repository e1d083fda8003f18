"""``python -m refimpl llama ...``: train a character-level LLaMA on the notes and continue a prompt (greedy, with
or without the KV cache)."""

from __future__ import annotations

import sys
import time

from refimpl import llama
from refimpl.cli import add_common, add_train_command, positive_int
from refimpl.commands.gpt import train_on_notes
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl llama train|generate``."""
    add_train_command(commands, _run_train,
                      help="train a character-level LLaMA (RMSNorm, SwiGLU, RoPE, GQA) on the notes; reruns resume")

    cmd = commands.add_parser("generate", help="continue a prompt by greedy decoding, with the KV cache by default")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--prompt", required=True, help='the start of the text, e.g. "扩散"')
    cmd.add_argument("--tokens", type=positive_int, default=64, help="characters to generate (default 64)")
    cmd.add_argument("--no-cache", action="store_true",
                     help="recompute the whole sequence at every step instead of keeping keys and values")
    add_common(cmd)
    cmd.set_defaults(run=_run_generate)


def _run_train(args) -> int:
    return train_on_notes(llama, args)


def _run_generate(args) -> int:
    model, tok, _ = llama.load(args.ckpt)
    if not args.prompt:
        raise LineageError("--prompt is empty")
    prompt = tok.encode(args.prompt, strict=True)
    device = pick_device(args.device)
    model.to(device)
    start = time.perf_counter()
    ids, _ = llama.generate(model, prompt[None].to(device), args.tokens, cache=not args.no_cache)
    seconds = time.perf_counter() - start
    print(tok.decode(ids[0]))
    print(f"{args.tokens} characters in {seconds:.2f} s on {device} ({'without' if args.no_cache else 'with'} "
          f"the KV cache)", file=sys.stderr)
    return 0
