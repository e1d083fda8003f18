"""``python -m refimpl bert ...``: masked-LM pre-training on the notes and filling masked characters."""

from __future__ import annotations

from refimpl import bert
from refimpl.bert import PLACEHOLDER
from refimpl.cli import add_common, add_train_command, positive_int
from refimpl.core import LineageError, pick_device


def add_commands(commands) -> None:
    """``python -m refimpl bert train|fill|from-pretrained``."""
    add_train_command(commands, _run_train, help="masked-LM pre-training on the notes; reruns resume")

    cmd = commands.add_parser("fill", help=f"predict each {PLACEHOLDER} in a text (top-k characters)")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--text", required=True, help=f'text with {PLACEHOLDER} placeholders, e.g. "扩散{PLACEHOLDER}型"')
    cmd.add_argument("--top-k", type=positive_int, default=5, help="candidates per placeholder (default 5)")
    add_common(cmd)
    cmd.set_defaults(run=_run_fill)

    cmd = commands.add_parser("from-pretrained", help="fill [MASK] tokens with released BERT weights in this page's "
                                                      "BERT (local directory or Hugging Face cache; never downloads)")
    cmd.add_argument("name", metavar="PATH_OR_NAME", help="checkpoint directory, or a model name in the local "
                                                          "Hugging Face cache (e.g. bert-base-uncased)")
    cmd.add_argument("--text", required=True, help='text with [MASK] tokens, e.g. "Paris is the [MASK] of France."')
    cmd.add_argument("--top-k", type=positive_int, default=5, help="candidates per mask (default 5)")
    add_common(cmd)
    cmd.set_defaults(run=_run_from_pretrained)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = bert.train_config(args.preset, steps=args.steps, seed=args.seed)
    model, history = bert.train(config, args.out, device=device, progress=not args.quiet)
    tokenizer, train_ids, held_ids = bert.text_data(config["chars"])
    scores = bert.held_out_scores(model, tokenizer, train_ids, held_ids)
    last = f", final training loss {history[-1][1]:.3f}" if history else ""
    print(f"trained bert for {config['steps']} steps on {device}{last}; held-out masked-token loss "
          f"{scores['model']:.3f} nats (unigram baseline {scores['unigram']:.3f}); checkpoint: {args.out}")
    return 0


def _run_fill(args) -> int:
    if PLACEHOLDER not in args.text:
        raise LineageError(f"--text has no {PLACEHOLDER} to fill")
    model, tokenizer = bert.load(args.ckpt)
    candidates = bert.fill(model.to(pick_device(args.device)), tokenizer, args.text, k=args.top_k)
    filled = args.text
    for i, cands in enumerate(candidates, 1):
        filled = filled.replace(PLACEHOLDER, cands[0][0], 1)
        print(f"{PLACEHOLDER} #{i}: " + "  ".join(f"{ch!r} {p:.3f}" for ch, p in cands))
    print(f"greedy: {filled}")
    return 0


def _run_from_pretrained(args) -> int:
    from refimpl import pretrained

    device = pick_device(args.device)
    pre = pretrained.load("bert", args.name)
    pre.model.to(device)
    candidates, filled = pretrained.fill_masks(pre, args.text, k=args.top_k)
    for i, cands in enumerate(candidates, 1):
        print(f"{pre.tokenizer.mask_token} #{i}: " + "  ".join(f"{t!r} {p:.3f}" for t, p in cands))
    print(f"greedy: {filled}")
    return 0
