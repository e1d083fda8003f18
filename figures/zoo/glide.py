"""GLIDE's cached artifacts (library module, no OUTPUTS): the text-conditional diffusion model, the noised CLIP,
and guided samples of both guidances from the same seeds, shared by the GLIDE figures and tests/test_glide.py.

Only the GLIDE figures import this module, so it imports refimpl.glide statically: the keys of the artifacts and
of the figures that use them follow refimpl/glide.py (and refimpl/transformer.py, which it imports).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import glide
from refimpl.core import pick_device

MODULES = ["refimpl.glide"]
CAPTION = "the digit {w}"  # the caption of every comparison, w = the number word
#: guidance scales compared (CFG: s = 1 is no guidance; CLIP: s = 0 is no guidance, the same conditional model)
CFG_SCALES = (1.0, 2.0, 3.0, 5.0)
CLIP_SCALES = (0.0, 10.0, 30.0, 100.0)
PER_DIGIT = 10  # samples per digit and setting (seeded: the same x_T for every setting)


def glide_checkpoint(preset: str) -> Path:
    """The checkpoint directory of the text-conditional diffusion model (20% empty captions)."""
    config = glide.train_config(preset)

    def produce(out: Path) -> None:
        glide.train(config, out, device=pick_device(), progress=False)

    return cached("glide", MODULES, produce, preset=preset, config=config)


def clip_checkpoint(preset: str) -> Path:
    """The checkpoint directory of the noised CLIP model."""
    config = glide.clip_config(preset)

    def produce(out: Path) -> None:
        glide.train_clip(config, out, device=pick_device(), progress=False)

    return cached("glide-clip", MODULES, produce, preset=preset, config=config)


def captions() -> list[str]:
    """The comparison captions, digit-major: PER_DIGIT copies of "the digit zero", then of "one", ..."""
    return [CAPTION.format(w=w) for w in glide.NUMBER_WORDS for _ in range(PER_DIGIT)]


def guided_samples(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """DDIM (eta 0, 50 steps) samples for :func:`captions` under every scale of both guidances, all from the same
    x_T (``seed``): keys ``cfg_<s>`` and ``clip_<s>``, each (10 * PER_DIGIT, 1, 8, 8); ``labels`` the digits."""
    model_dir, clip_dir = glide_checkpoint(preset), clip_checkpoint(preset)

    def produce(out: Path) -> None:
        model, schedule = glide.load(model_dir, "glide")
        clip = glide.load(clip_dir, "glide-clip")[0]
        texts, result = captions(), {}
        for guidance, scales in (("cfg", CFG_SCALES), ("clip", CLIP_SCALES)):
            for s in scales:
                x0 = glide.sample(model, texts, schedule, guidance=guidance, scale=s, clip=clip, seed=seed,
                                  device=pick_device())
                result[f"{guidance}_{s:g}"] = x0.float().cpu().contiguous()
        result["labels"] = torch.arange(10).repeat_interleave(PER_DIGIT)
        save_file(result, str(out / "samples.safetensors"))

    config = {"seed": seed, "captions": captions(), "cfg": CFG_SCALES, "clip": CLIP_SCALES,
              "checkpoints": [d.parent.name + "/" + d.name for d in (model_dir, clip_dir)]}
    path = cached("glide-samples", MODULES, produce, preset=preset, config=config)
    return load_file(str(path / "samples.safetensors"))


def sample_metrics(samples: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per setting (``cfg_<s>``, ``clip_<s>``): ``accuracy`` (refimpl.digits_eval.classifier() reads the captioned
    digit), ``diversity`` (mean pairwise distance of the classifier's 32-d features between samples of the same
    caption, averaged over the 10 captions) and ``frechet`` (digits_eval's Frechet distance to held-out digits)."""
    from refimpl.digits_eval import classifier, evaluate

    labels, result = samples["labels"], {}
    with torch.no_grad():
        for key, images in samples.items():
            if key == "labels":
                continue
            images = images.clamp(-1, 1)
            features = classifier().features(images)
            spread = [torch.pdist(features[labels == k]).mean() for k in range(10)]
            result[key] = {"accuracy": (classifier()(images).argmax(1) == labels).float().mean().item(),
                           "diversity": torch.stack(spread).mean().item(),
                           "frechet": evaluate(images).frechet_distance}
    return result
