"""CLIP's cached artifact (library module, no OUTPUTS): the quick contrastive model on captioned digits, shared by
the CLIP figures and tests/test_clip.py, and its held-out zero-shot numbers.

Only the CLIP figures import this module, so it imports refimpl.clip statically: the artifact's key follows
refimpl/clip.py (and what it imports: refimpl/transformer.py, refimpl/text.py, refimpl/nets.py, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch

from figures.builder import cached
from refimpl import clip
from refimpl.captions import TEMPLATE_SETS
from refimpl.core import pick_device


def clip_checkpoint(preset: str) -> Path:
    """The checkpoint directory of CLIP trained with ``preset`` (refimpl.clip.train)."""
    config = clip.train_config(preset)

    def produce(out: Path) -> None:
        clip.train(config, out, device=pick_device(), progress=False)

    return cached("clip", ["refimpl.clip"], produce, preset=preset, config=config)


def zero_shot_results(preset: str) -> dict:
    """Held-out zero-shot numbers: ``accuracy[which]`` for each template set, ``per_class[which]`` (10 accuracies),
    ``n`` held-out digits, ``scale`` the learned exp(logit_scale), ``steps`` trained."""
    model, tok, config = clip.load(clip_checkpoint(preset))
    _, (images, labels) = clip.split()
    accuracy, per_class = {}, {}
    for which in TEMPLATE_SETS:
        right = clip.zero_shot(model, tok, images, which).eq(labels).float()
        accuracy[which] = right.mean().item()
        per_class[which] = [right[labels == k].mean().item() for k in range(10)]
    with torch.no_grad():
        scale = model.scale().item()
    return {"accuracy": accuracy, "per_class": per_class, "n": int(labels.numel()), "scale": scale,
            "steps": config["steps"]}
