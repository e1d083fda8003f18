"""Imagen's cached artifacts (library module, no OUTPUTS): the quick run (base + super-resolution model, the layout
of ``python -m refimpl imagen train --out``), a super-resolution model trained without noise conditioning
augmentation, and the samples that the Imagen figures and tests/test_imagen.py share.

The frozen text encoder is the site's quick T5 (figures.zoo.t5.t5_checkpoint); the runs' configs record its
weight digest, so a retrained T5 (the notes changed) retrains these models too. Only the Imagen figures import
this module, so it imports refimpl.imagen statically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.t5 import t5_checkpoint
from refimpl import imagen
from refimpl.core import pick_device

MODULES = ["refimpl.imagen"]
WEIGHTS = (1.0, 3.0, 8.0)  # guidance weights w of Imagen Eq. (2) compared (w = 1: no guidance)
HIGH_W = 8.0                # the high guidance weight of the thresholding comparison
PER_DIGIT = 5               # samples per digit, cycling through the 8 caption templates


def encoder(preset: str) -> imagen.FrozenTextEncoder:
    """The frozen text encoder: the quick (or full) T5 trained on the notes."""
    return imagen.load_encoder(t5_checkpoint(preset))


def _train(preset: str, name: str, stages: tuple[str, ...], aug_max: float) -> Path:
    enc = encoder(preset)
    config = imagen.train_config(enc, preset, aug_max=aug_max)

    def produce(out: Path) -> None:
        table = imagen.embed_captions(enc, imagen.caption_texts())  # computed once: the encoder is frozen
        imagen.train(config, table, out, device=pick_device(), progress=False, stages=stages)

    return cached(name, MODULES, produce, preset=preset, config={stage: config[stage] for stage in stages})


def imagen_checkpoint(preset: str) -> Path:
    """The run directory (base/ and sr/ checkpoints) of the preset, as ``imagen train --t5 <T5> --out`` writes it."""
    return _train(preset, "imagen", ("base", "sr"), imagen.AUG_MAX)


def no_aug_checkpoint(preset: str) -> Path:
    """A run directory with only sr/: the same super-resolution model trained without augmentation (aug_max = 0)."""
    return _train(preset, "imagen-noaug", ("sr",), 0.0)


def prompts() -> tuple[list[str], torch.Tensor]:
    """Digit-major captions, PER_DIGIT per digit cycling through the templates (English and Chinese), and labels."""
    texts = imagen.caption_texts()
    per_digit = len(texts) // 10
    pick = [k * per_digit + j % per_digit for k in range(10) for j in range(PER_DIGIT)]
    return [texts[i] for i in pick], torch.arange(10).repeat_interleave(PER_DIGIT)


def samples(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Base samples for :func:`prompts` at every w of WEIGHTS and every thresholding (keys ``w<w>_<kind>``, all
    from the same x_T and noise), and the cascade: the w = 3 dynamic samples super-resolved by the augmented model
    at aug level AUG_SAMPLE (``sr_aug``) and by the model trained without augmentation at level 0 (``sr_noaug``);
    the same two for the held-out real digits (``real_aug``, ``real_noaug``; the inputs are ``real_low``)."""
    run, no_aug = imagen_checkpoint(preset), no_aug_checkpoint(preset)

    def produce(out: Path) -> None:
        device = pick_device()
        texts, labels = prompts()
        emb, pad = encoder(preset)(texts)
        base, schedule, _ = imagen.load(run, "base")
        result = {"labels": labels}
        for w in WEIGHTS:
            for kind in imagen.THRESHOLDS:
                result[f"w{w:g}_{kind}"] = imagen.generate(base, emb, pad, schedule, w=w, thresholding=kind,
                                                           seed=seed, device=device).cpu()
        from refimpl.data import held_out_digits

        real = held_out_digits()[0][: len(texts)]
        result["real_low"] = real
        for name, path, level in (("aug", run, imagen.AUG_SAMPLE), ("noaug", no_aug, 0.0)):
            sr, sr_schedule, _ = imagen.load(path, "sr")
            for key, low in (("sr", result["w3_dynamic"]), ("real", real)):
                result[f"{key}_{name}"] = imagen.upsample(sr, low, emb, pad, sr_schedule, aug_level=level, seed=seed,
                                                          device=device).cpu()
        save_file({k: v.float().contiguous() if k != "labels" else v for k, v in result.items()},
                  str(out / "samples.safetensors"))

    config = {"seed": seed, "weights": WEIGHTS, "per_digit": PER_DIGIT, "aug_sample": imagen.AUG_SAMPLE,
              "runs": [p.parent.name + "/" + p.name for p in (run, no_aug)]}
    path = cached("imagen-samples", MODULES, produce, preset=preset, config=config)
    return load_file(str(path / "samples.safetensors"))


def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of 8x8 ``images`` that refimpl.digits_eval.classifier() reads as ``labels``."""
    from refimpl.digits_eval import classifier

    with torch.no_grad():
        return (classifier()(images.clamp(-1, 1)).argmax(1) == labels).float().mean().item()


def saturation(images: torch.Tensor, level: float = 0.98) -> float:
    """Share of pixels with |x| > level: saturated at the edge of the data range [-1, 1]."""
    return (images.abs() > level).float().mean().item()
