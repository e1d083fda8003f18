"""Textual Inversion: Gal et al., "An Image is Worth One Word: Personalizing Text-to-Image Generation using Textual
Inversion" (ICLR 2023), arXiv 2208.01618, on our quick latent diffusion model (refimpl.ldm).

- A pseudo-word S* (Sec. 3): one new row v* in the caption encoder's token embedding; everything else (denoiser,
  caption encoder, autoencoder) stays frozen. v* starts from the embedding of a single-word coarse descriptor of
  the concept; here "three".
- Inversion (Sec. 3, Eq. 2): v* = argmin_v E_{z, y, eps, t} || eps - eps_theta(z_t, t, c_theta(y)) ||^2, the LDM
  loss (refimpl.ddpm.loss_simple on the scaled latents) over the 3-5 concept images with prompts y drawn from
  templates that contain S*; here the caption templates of refimpl.glide with S* in place of the number word
  ("s*", "the digit s*", "a handwritten s*", "the number s*").

The concept is the slanted writer of refimpl.personalization (five of his threes), which also holds the vocabulary
extension, the sampler and loading that Textual Inversion shares with DreamBooth.
"""

from __future__ import annotations

import torch

from refimpl.personalization import (SUBJECT_DIGIT, SUBJECT_SIZE, add_words, latents, start, subject_images,
                             tokenize)
from refimpl.captions import TEMPLATES, VOCAB
from refimpl.core import LineageError
from refimpl.training import fit_config

PLACEHOLDER = "s*"  # S*
INIT_WORD = "three"  # the coarse descriptor v* starts from
PROMPTS = tuple(t.format(w=PLACEHOLDER) for t in TEMPLATES)

#: a preset changes sizes, never the algorithm (one new row, everything else frozen)
PRESETS = {
    "quick": {"steps": 800, "batch_size": 16, "lr": 5e-2},
    "full": {"steps": 3000, "batch_size": 16, "lr": 5e-3},
}


def train_config(preset: str = "quick", *, steps: int | None = None, lr: float | None = None, seed: int = 0) -> dict:
    """The JSON config of a Textual Inversion run (the base LDM is named by its digests when training starts)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    return {"seed": seed, "steps": steps or p["steps"], "batch_size": p["batch_size"], "lr": lr or p["lr"],
            "words": [PLACEHOLDER], "init_word": INIT_WORD, "prompts": list(PROMPTS),
            "subject_digit": SUBJECT_DIGIT, "subject_size": SUBJECT_SIZE}


# --8<-- [start:train]
def train(config: dict, base, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Textual Inversion on the base LDM run ``base``: freeze every weight, add v* = embedding of
    config["init_word"], and minimise L_simple on the subject images, each with a prompt drawn uniformly from
    config["prompts"], over v* alone. Returns (autoencoder, model, schedule, scale, history); with ``out``, a
    resumable checkpoint."""
    from refimpl.ddpm import loss_simple

    device = torch.device(device or "cpu")
    autoencoder, model, schedule, scale, config = start(base, config)
    words = tuple(config["words"])
    autoencoder, schedule = autoencoder.to(device), schedule.to(device)
    init = model.text.token.weight[VOCAB.index(config["init_word"])]
    model = add_words(model.requires_grad_(False), init[None])
    model.text.token.new.requires_grad_(True)  # v*: the only trainable tensor
    subject = subject_images(config["subject_digit"], config["subject_size"]).to(device)
    prompts = tokenize(config["prompts"], words).to(device)

    def loss_fn(model, generator):
        pick = torch.randint(0, subject.shape[0], (config["batch_size"],), generator=generator)
        tokens = prompts[torch.randint(0, prompts.shape[0], (config["batch_size"],), generator=generator)]
        z = latents(autoencoder, subject[pick], scale, generator)
        return loss_simple(lambda z_t, t: model(z_t, t, tokens), z, schedule, generator)

    history = fit_config(model.train(), loss_fn, config, out, "textual-inversion", device, resume, progress)
    return autoencoder, model.eval(), schedule, scale, history
# --8<-- [end:train]
