"""``python -m refimpl t5 ...``: span-corruption pre-training on the notes and filling missing spans."""

from __future__ import annotations

from refimpl import t5
from refimpl.cli import add_common, add_train_command, positive_int
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl t5 train|fill|from-pretrained``."""
    add_train_command(commands, _run_train,
                      help="pre-train a small T5 with span corruption on the notes; reruns resume")

    fill_cmd = commands.add_parser("fill", help="fill the spans marked <> in a text (greedy decoding)")
    fill_cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    fill_cmd.add_argument("--text", required=True, help="text with each missing span written <>")
    fill_cmd.add_argument("--max-new-tokens", type=positive_int, default=64, help="decoding limit (default 64)")
    add_common(fill_cmd)
    fill_cmd.set_defaults(run=_run_fill)

    cmd = commands.add_parser("from-pretrained", help="text to text (translate, summarize, fill <> spans) with released "
                                                      "T5 weights in this page's T5 (local directory or Hugging Face "
                                                      "cache; never downloads)")
    cmd.add_argument("name", metavar="PATH_OR_NAME", help="checkpoint directory, or a model name in the local "
                                                          "Hugging Face cache (e.g. t5-small)")
    cmd.add_argument("--text", required=True, help='the input, e.g. "translate English to German: The house is '
                                                   'wonderful." or a text with <> spans to fill')
    cmd.add_argument("--max-new-tokens", type=positive_int, default=64, help="decoding limit (default 64)")
    add_common(cmd)
    cmd.set_defaults(run=_run_from_pretrained)


def _run_train(args) -> int:
    device = pick_device(args.device)
    data = t5.text_data()
    config = t5.train_config(args.preset, steps=args.steps, seed=args.seed, data=data)
    model, history = t5.train(config, args.out, data=data, device=device, progress=not args.quiet)
    scores = t5.evaluate(model, config, data=data)
    print(f"trained t5 for {config['steps']} steps on {device}; held-out loss on the corrupted characters "
          f"{scores['span']:.3f} nats (unigram {scores['unigram']:.3f}); checkpoint: {args.out}")
    return 0


def _run_fill(args) -> int:
    model, tokenizer = t5.load(args.ckpt)
    filled, generated = t5.fill(model.to(pick_device(args.device)), tokenizer, args.text,
                                max_new_tokens=args.max_new_tokens)
    print(f"targets: {generated}\nfilled:  {filled}")
    return 0


def _run_from_pretrained(args) -> int:
    from refimpl import pretrained

    device = pick_device(args.device)
    pre = pretrained.load("t5", args.name)
    pre.model.to(device)
    output, filled = pretrained.text_to_text(pre, args.text, max_new_tokens=args.max_new_tokens)
    print(f"output: {output}" if filled is None else f"targets: {output}\nfilled:  {filled}")
    return 0
