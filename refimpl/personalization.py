"""The personalisation setting that Textual Inversion and DreamBooth share, on the site's quick LDM (refimpl.ldm).

- The subject: one writer who slants his threes, the first SUBJECT_SIZE training images of digit SUBJECT_DIGIT
  sheared by refimpl.styles.shear (:func:`subject_images`).
- New words in the caption vocabulary (:class:`ExtendedEmbedding`, :func:`add_words`, :func:`tokenize`): Textual
  Inversion's pseudo-word S* and DreamBooth's identifier [V] are both extra rows of the caption encoder's token
  embedding.
- A fine-tuned run on its base: :func:`start` names the base LDM by its weights' digests, :func:`load` refuses
  another base; :func:`sample` is refimpl.ldm.sample with the extended vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from refimpl import ldm
from refimpl.captions import VOCAB
from refimpl.captions import tokenize as base_tokenize
from refimpl.checkpoint import weights_digest
from refimpl.core import LineageError
from refimpl.schedules import Schedule

SUBJECT_DIGIT, SUBJECT_SIZE = 3, 5  # the writer's subject: five of his threes


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


def load(ckpt, base, model_name: str = "dreambooth"):
    """Rebuild a fine-tuned run (``model_name``: "dreambooth" or "textual-inversion") on its base LDM run:
    (autoencoder, model, schedule, scale, words). Refuses a base other than the one it was trained on."""
    from refimpl import checkpoint

    built: dict = {}

    def build(data):
        autoencoder, model, schedule, scale = ldm.load(base)
        config = data.config
        if config.get("autoencoder") != weights_digest(autoencoder) or config.get("base") != weights_digest(model):
            raise LineageError(f"{ckpt} was fine-tuned from another LDM than {base}")
        built["words"] = words = tuple(config["words"])
        built["rest"] = autoencoder, schedule, scale
        return add_words(model, torch.zeros(len(words), model.config["width"]))

    model, _ = checkpoint.load_module(Path(ckpt), expect_model=model_name, build=build)
    autoencoder, schedule, scale = built["rest"]
    return autoencoder, model, schedule, scale, built["words"]
