"""LDM's cached artifacts (library module, no OUTPUTS): the trained quick run (autoencoder + latent diffusion model,
the layout of ``python -m refimpl ldm train --out``) and guided samples from it, shared by the LDM figures and
tests/test_ldm.py. Only the LDM figures import this module, so it imports refimpl.ldm statically."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import ldm
from refimpl.core import pick_device

MODULES = ["refimpl.ldm"]
CAPTION = "the digit {w}"
SCALES = (1.0, 3.0)  # classifier-free guidance scales compared (s = 1: the plain conditional model)
PER_DIGIT = 10  # samples per digit and scale, from the same z_T for every scale


def ldm_checkpoint(preset: str) -> Path:
    """The run directory (autoencoder/ and diffusion/ checkpoints) of the preset's LDM."""
    config = ldm.train_config(preset)

    def produce(out: Path) -> None:
        ldm.train(config, out, device=pick_device(), progress=False)

    return cached("ldm", MODULES, produce, preset=preset, config=config)


def captions() -> list[str]:
    """Digit-major: PER_DIGIT copies of "the digit zero", then of "one", ..."""
    from refimpl.captions import NUMBER_WORDS

    return [CAPTION.format(w=w) for w in NUMBER_WORDS for _ in range(PER_DIGIT)]


def guided_samples(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """DDIM (eta 0, 50 steps) samples for :func:`captions` at every scale of SCALES, all from the same z_T:
    keys ``cfg_<s>`` (10 * PER_DIGIT, 1, 8, 8) and ``labels``."""
    run = ldm_checkpoint(preset)

    def produce(out: Path) -> None:
        autoencoder, model, schedule, scale = ldm.load(run)
        result = {f"cfg_{s:g}": ldm.sample(autoencoder, model, captions(), schedule, scale, guidance_scale=s,
                                           seed=seed, device=pick_device()).float().cpu().contiguous()
                  for s in SCALES}
        result["labels"] = torch.arange(10).repeat_interleave(PER_DIGIT)
        save_file(result, str(out / "samples.safetensors"))

    config = {"seed": seed, "captions": captions(), "scales": SCALES, "run": run.parent.name + "/" + run.name}
    path = cached("ldm-samples", MODULES, produce, preset=preset, config=config)
    return load_file(str(path / "samples.safetensors"))


def accuracy(samples: dict[str, torch.Tensor], key: str) -> float:
    """Share of the samples ``key`` that refimpl.digits_eval.classifier() reads as the captioned digit."""
    from refimpl.digits_eval import classifier

    with torch.no_grad():
        predicted = classifier()(samples[key].clamp(-1, 1)).argmax(1)
    return (predicted == samples["labels"]).float().mean().item()
