"""``python -m refimpl clip ...``: contrastive pre-training, zero-shot accuracy, similarity matrix, and zero-shot
classification with released CLIP weights (``from-pretrained``)."""

from __future__ import annotations

from refimpl import clip
from refimpl.captions import TEMPLATE_SETS
from refimpl.cli import add_common, add_train_command
from refimpl.core import pick_device


def add_commands(commands) -> None:
    """``python -m refimpl clip train|zero-shot|similarity|from-pretrained``."""
    add_train_command(commands, _run_train, help="contrastive pre-training on captioned digits; reruns resume")
    for name, run, what in (("zero-shot", _run_zero_shot, "zero-shot accuracy on the 297 held-out digits"),
                            ("similarity", _run_similarity, "cosine similarity of one held-out image per digit "
                                                            "with each digit's prompts")):
        cmd = commands.add_parser(name, help=what)
        cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
        cmd.add_argument("--templates", choices=TEMPLATE_SETS, default=None if run is _run_zero_shot else "both",
                         help="prompt templates: en, zh or both (ensemble); zero-shot default: each in turn, "
                              "similarity default: both")
        cmd.set_defaults(run=run)

    cmd = commands.add_parser("from-pretrained", help="zero-shot classification of an image with released CLIP "
                                                      "weights in this page's CLIP (local directory or Hugging Face "
                                                      "cache; never downloads)")
    cmd.add_argument("name", metavar="PATH_OR_NAME", help="checkpoint directory, or a model name in the local "
                                                          "Hugging Face cache (e.g. openai/clip-vit-base-patch32)")
    cmd.add_argument("--image", default="sklearn:flower.jpg",
                     help="image file (any format PIL reads), or sklearn:flower.jpg / sklearn:china.jpg, the photos "
                          "bundled with scikit-learn (default: sklearn:flower.jpg)")
    cmd.add_argument("--labels", required=True, help='candidate texts separated by commas, e.g. '
                                                     '"a photo of a cat,a photo of a dog"')
    add_common(cmd)
    cmd.set_defaults(run=_run_from_pretrained)


def _run_train(args) -> int:
    device = pick_device(args.device)
    config = clip.train_config(args.preset, steps=args.steps, seed=args.seed)
    _, history = clip.train(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained clip for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_zero_shot(args) -> int:
    model, tok, _ = clip.load(args.ckpt)
    for which in [args.templates] if args.templates else TEMPLATE_SETS:
        print(f"zero-shot accuracy ({which} templates) on {len(clip.split()[1][1])} held-out digits: "
              f"{clip.held_out_accuracy(model, tok, which):.3f} (chance 0.100)")
    return 0


def _run_similarity(args) -> int:
    model, tok, _ = clip.load(args.ckpt)
    matrix = clip.similarity(model, tok, args.templates)
    print("image \\ prompt " + " ".join(f"{j:>5}" for j in range(10)))
    for k, row in enumerate(matrix.tolist()):
        print(f"digit {k:<9}" + " ".join(f"{v:5.2f}" for v in row))
    return 0


def _run_from_pretrained(args) -> int:
    from refimpl import pretrained

    image = pretrained.open_image(args.image)  # a bad image is refused before the weights are read
    pre = pretrained.load("clip", args.name)
    pre.model.to(pick_device(args.device))
    result = pretrained.zero_shot_labels(pre, image, [label.strip() for label in args.labels.split(",")])
    for label, p in sorted(result, key=lambda r: -r[1]):
        print(f"{p:.4f}  {label}")
    return 0
