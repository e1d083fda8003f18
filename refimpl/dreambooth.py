"""DreamBooth: Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven Generation"
(CVPR 2023), arXiv 2208.12242, on our quick latent diffusion model (refimpl.ldm).

- The subject (Sec. 4): a handful of images of one subject; here one writer who slants his threes: the first
  SUBJECT_SIZE training images of digit 3, sheared by refimpl.styles.shear.
- A unique identifier (Sec. 4.1): the subject is bound to a word [V] placed before the class noun, prompt
  "a [V] dog"; here "the digit sks three". The paper picks a rare token of the existing vocabulary (weak prior);
  our 26-word vocabulary has no rare tokens, so we add one new token row, drawn at random (no prior at all).
- Fine-tuning (Sec. 4): all weights of the denoiser and of the caption encoder are trained on the subject images
  with L_simple (refimpl.ddpm.loss_simple, in latent space).
- Class-specific prior-preservation loss (Sec. 4.2, Eq. 2): before fine-tuning, the frozen model generates
  class images x_pr from the class prompt ("the digit three"); training adds lambda * L_simple on them, lambda = 1.

The vocabulary extension (:class:`ExtendedEmbedding`, :func:`add_words`, :func:`tokenize`) and the fine-tuned
sampler are shared with refimpl.textual_inversion, which imports them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from refimpl import ldm
from refimpl.checkpoint import weights_digest
from refimpl.core import LineageError
from refimpl.glide import VOCAB, fit_config
from refimpl.glide import tokenize as base_tokenize
from refimpl.schedules import Schedule

SUBJECT_DIGIT, SUBJECT_SIZE = 3, 5  # the writer's subject: five of his threes
IDENTIFIER = "sks"  # the unique identifier [V] (the word the diffusers DreamBooth example uses)
CLASS_PROMPT = "the digit three"  # "a [class noun]"
INSTANCE_PROMPT = "the digit sks three"  # "a [V] [class noun]"


# --8<-- [start:vocabulary]
class ExtendedEmbedding(nn.Module):
    """A token embedding with new rows: ids < V read the base nn.Embedding (V, width), ids >= V read
    ``new[id - V]``, a separate parameter (k, width). Keeping the new rows apart lets Textual Inversion train
    them alone (``requires_grad`` off everywhere else) and save them as a tiny file."""

    def __init__(self, base: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new = nn.Parameter(rows.detach().clone().reshape(-1, base.embedding_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        size = self.base.num_embeddings
        added = (ids >= size)[..., None]
        return torch.where(added, self.new[(ids - size).clamp(min=0)], self.base(ids.clamp(max=size - 1)))


def add_words(model: ldm.LatentDenoiser, rows: torch.Tensor) -> ldm.LatentDenoiser:
    """Give the caption encoder ``len(rows)`` new words, ids V, V+1, ... (V = len(VOCAB)), embedded as ``rows``."""
    model.text.token = ExtendedEmbedding(model.text.token, rows)
    return model


def tokenize(texts: list[str], words: tuple[str, ...] = ()) -> torch.Tensor:
    """refimpl.glide.tokenize over the vocabulary VOCAB + ``words``: the i-th new word gets id len(VOCAB) + i."""
    clash = [w for w in words if w in VOCAB or w != w.lower() or not w or len(w.split()) != 1]
    if clash:
        raise LineageError(f"new word {clash[0]!r} must be one lower-case word that is not in the vocabulary")
    split = [text.lower().split() for text in texts]
    for text, row in zip(texts, split):
        unknown = [w for w in row if w not in VOCAB[2:] + words]
        if unknown:
            raise LineageError(f"unknown word {unknown[0]!r} in caption {text!r} (known words: "
                               f"{' '.join(VOCAB[2:] + words)})")
    # tokenize with a known stand-in word, so glide's length check applies; then put the new words' ids in
    tokens = base_tokenize([" ".join("the" if w in words else w for w in row) for row in split])
    for i, row in enumerate(split):
        for position, word in enumerate(row, start=1):
            if word in words:
                tokens[i, position] = len(VOCAB) + words.index(word)
    return tokens


def detokenize(tokens: torch.Tensor, words: tuple[str, ...] = ()) -> list[str]:
    """Inverse of :func:`tokenize`."""
    vocab = (*VOCAB, *words)
    return [" ".join(vocab[i] for i in row.tolist() if i > 1) for row in tokens]
# --8<-- [end:vocabulary]


def subject_images(digit: int = SUBJECT_DIGIT, size: int = SUBJECT_SIZE) -> torch.Tensor:
    """The subject: the first ``size`` training images of ``digit``, sheared by refimpl.styles.shear (B, 1, 8, 8)."""
    from refimpl.styles import shear

    images, labels = ldm.training_digits()
    return shear(images[labels == digit][:size])


@torch.no_grad()
def sample(autoencoder: ldm.Autoencoder, model: ldm.LatentDenoiser, texts: list[str], schedule: Schedule,
           scale: float, words: tuple[str, ...] = (), *, guidance_scale: float = 3.0, steps: int = 50, seed: int = 0,
           device=None) -> torch.Tensor:
    """refimpl.ldm.sample with the extended vocabulary: the same z_T for the same ``seed`` (so a base model and
    its fine-tuned copy start from the same noise), DDIM with classifier-free guidance, decoded to pixels."""
    return ldm.sample(autoencoder, model, tokenize(texts, words), schedule, scale, guidance_scale=guidance_scale,
                      steps=steps, seed=seed, device=device)


# --8<-- [start:loss]
def dreambooth_loss(model, instance: tuple[torch.Tensor, torch.Tensor], prior: tuple[torch.Tensor, torch.Tensor],
                    schedule: Schedule, prior_weight: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DreamBooth Eq. (2) in eps-form: L_simple(x, c) + lambda * L_simple(x_pr, c_pr) with (latents, tokens) pairs
    ``instance`` (subject images, "a [V] three") and ``prior`` (the frozen model's class images, "a three"); each
    term draws its own t and eps (t, eps for the instance batch first). ``prior_weight`` = 0: the plain fine-tuning
    the paper compares against."""
    from refimpl.ddpm import loss_simple

    (z, tokens), (z_pr, tokens_pr) = instance, prior
    loss = loss_simple(lambda z_t, t: model(z_t, t, tokens), z, schedule, generator)
    if prior_weight == 0:
        return loss
    return loss + prior_weight * loss_simple(lambda z_t, t: model(z_t, t, tokens_pr), z_pr, schedule, generator)
# --8<-- [end:loss]


# --- training, loading and command line ----------------------------------------------------------

#: a preset changes sizes, never the algorithm (lambda = 1, one new identifier row, whole model trained)
PRESETS = {
    "quick": {"steps": 200, "batch_size": 16, "lr": 1e-4, "prior_samples": 200},
    "full": {"steps": 1000, "batch_size": 16, "lr": 2e-5, "prior_samples": 1000},
}
PRIOR_WEIGHT = 1.0  # lambda (Sec. 4.2)


def train_config(preset: str = "quick", *, steps: int | None = None, prior_weight: float = PRIOR_WEIGHT,
                 seed: int = 0) -> dict:
    """The JSON config of a DreamBooth run (the base LDM is named by its weights' digest when training starts)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if not prior_weight >= 0:
        raise LineageError(f"prior weight must be >= 0, got {prior_weight}")
    p = PRESETS[preset]
    return {"seed": seed, "steps": steps or p["steps"], "batch_size": p["batch_size"], "lr": p["lr"],
            "prior_samples": p["prior_samples"], "prior_weight": prior_weight, "words": [IDENTIFIER],
            "instance_prompt": INSTANCE_PROMPT, "class_prompt": CLASS_PROMPT, "subject_digit": SUBJECT_DIGIT,
            "subject_size": SUBJECT_SIZE, "guidance_scale": 3.0}


def start(base, config: dict) -> tuple[ldm.Autoencoder, ldm.LatentDenoiser, Schedule, float, dict]:
    """Load the base LDM run ``base`` (refimpl.ldm.load) and complete ``config`` with what names it: the base
    model's hyperparameters and the digests of its autoencoder and denoiser."""
    autoencoder, model, schedule, scale = ldm.load(base)
    autoencoder.requires_grad_(False)
    config = {**config, "model": model.config, "autoencoder": weights_digest(autoencoder), "base": weights_digest(model)}
    return autoencoder, model, schedule, scale, config


def latents(autoencoder: ldm.Autoencoder, images: torch.Tensor, scale: float, generator: torch.Generator | None):
    """Scaled latents z = scale * E(x), one reparameterised draw (as refimpl.ldm.train does every step)."""
    with torch.no_grad():
        return scale * ldm.sample_latent(*autoencoder.encode(images), generator)


# --8<-- [start:train]
def train(config: dict, base, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """DreamBooth on the base LDM run ``base``: (1) the frozen model samples config["prior_samples"] class images
    for the class prompt; (2) a new identifier row, random with the spread of the existing rows; (3) every weight
    of the denoiser and caption encoder trained on :func:`dreambooth_loss` (subject images with the instance
    prompt, class images with the class prompt; batches drawn with replacement). Returns (autoencoder, model,
    schedule, scale, history); with ``out``, a resumable checkpoint of the fine-tuned denoiser."""
    device = torch.device(device or "cpu")
    autoencoder, model, schedule, scale, config = start(base, config)
    words = tuple(config["words"])
    autoencoder, schedule = autoencoder.to(device), schedule.to(device)
    class_images = sample(autoencoder, model, [config["class_prompt"]] * config["prior_samples"], schedule, scale,
                          guidance_scale=config["guidance_scale"], seed=config["seed"] + 1, device=device)
    subject = subject_images(config["subject_digit"], config["subject_size"]).to(device)
    embedding = model.text.token.weight.detach()
    rows = torch.randn(len(words), embedding.shape[1], generator=torch.Generator().manual_seed(config["seed"]))
    model = add_words(model, rows * embedding.std().item())  # rows on the CPU, like the model before fit
    instance_tokens = tokenize([config["instance_prompt"]] * config["batch_size"], words).to(device)
    class_tokens = tokenize([config["class_prompt"]] * config["batch_size"], words).to(device)

    def loss_fn(model, generator):
        pick = torch.randint(0, subject.shape[0], (config["batch_size"],), generator=generator)
        pick_pr = torch.randint(0, class_images.shape[0], (config["batch_size"],), generator=generator)
        instance = (latents(autoencoder, subject[pick], scale, generator), instance_tokens)
        prior = (latents(autoencoder, class_images[pick_pr], scale, generator), class_tokens)
        return dreambooth_loss(model, instance, prior, schedule, config["prior_weight"], generator)

    history = fit_config(model.train(), loss_fn, config, out, "dreambooth", device, resume, progress)
    return autoencoder, model.eval(), schedule, scale, history
# --8<-- [end:train]


def load(ckpt, base, model_name: str = "dreambooth"):
    """Rebuild a fine-tuned run (``model_name``: "dreambooth" or "textual-inversion") on its base LDM run:
    (autoencoder, model, schedule, scale, words). Refuses a base other than the one it was trained on."""
    from refimpl import checkpoint

    data = checkpoint.load(Path(ckpt), expect_model=model_name)
    autoencoder, model, schedule, scale = ldm.load(base)
    config = data.config
    if config.get("autoencoder") != weights_digest(autoencoder) or config.get("base") != weights_digest(model):
        raise LineageError(f"{ckpt} was fine-tuned from another LDM than {base}")
    words = tuple(config["words"])
    model = add_words(model, torch.zeros(len(words), model.config["width"]))
    model.load_state_dict(data.model_state, strict=True)
    return autoencoder, model.eval(), schedule, scale, words


def add_commands(commands) -> None:
    """``python -m refimpl dreambooth train|sample``."""
    from refimpl.cli import nonnegative_float

    train_parser = add_train_sample(commands, _run_train, "dreambooth", "fine-tune the whole LDM on the subject "
                                    "(prior preservation, lambda = 1)", INSTANCE_PROMPT)
    train_parser.add_argument("--prior-weight", type=nonnegative_float, default=PRIOR_WEIGHT,
                              help="lambda (default 1; 0 = no prior preservation)")


def add_train_sample(commands, run_train, name: str, help: str, example: str):
    """The train and sample commands both fine-tuning methods have (``name``: the checkpoint's model name).
    Returns the train parser, for a method's own options."""
    from refimpl.cli import add_common, add_preset, nonnegative_float, png_path, positive_int

    train_parser = commands.add_parser("train", help=help + "; reruns resume")
    add_preset(train_parser)
    train_parser.add_argument("--base", required=True, help="the base LDM run directory (python -m refimpl ldm train)")
    train_parser.add_argument("--steps", type=positive_int, help="fine-tuning steps (default: the preset's)")
    train_parser.add_argument("--out", required=True, help="checkpoint directory")
    add_common(train_parser)
    train_parser.set_defaults(run=run_train)

    cmd = commands.add_parser("sample", help="sample digits for a caption that may use the new word, into a PNG")
    cmd.add_argument("--base", required=True, help="the base LDM run directory")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--caption", required=True, help=f'e.g. "{example}"')
    cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="s (default 3; 1 = no guidance)")
    cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    cmd.add_argument("--n", type=positive_int, default=16, help="number of samples")
    cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png)")
    add_common(cmd)
    cmd.set_defaults(run=lambda args: run_sample(args, name))
    return train_parser


def run_sample(args, name: str) -> int:
    """The sample command of both fine-tuning methods."""
    from refimpl.core import pick_device
    from refimpl.plots import save_samples
    from refimpl.styles import skew

    autoencoder, model, schedule, scale, words = load(args.ckpt, args.base, name)
    x = sample(autoencoder, model, [args.caption] * args.n, schedule, scale, words,
               guidance_scale=args.guidance_scale, steps=args.steps, seed=args.seed, device=pick_device(args.device))
    save_samples(x.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} to {args.out}; mean skew {skew(x.cpu()).mean():+.3f}")
    return 0


def _run_train(args) -> int:
    from refimpl.core import pick_device

    config = train_config(args.preset, steps=args.steps, prior_weight=args.prior_weight, seed=args.seed)
    *_, history = train(config, args.base, args.out, device=pick_device(args.device), progress=not args.quiet)
    print(f"fine-tuned {config['steps']} steps (lambda = {config['prior_weight']:g}); final loss "
          f"{history[-1][1]:.4f}; checkpoint: {args.out}")
    return 0
