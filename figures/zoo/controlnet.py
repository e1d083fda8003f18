"""ControlNet's cached artifacts (library module, no OUTPUTS): the quick ControlNet on the quick LDM (layout of
``python -m refimpl controlnet train --out``) and the samples the ControlNet figures and tests/test_controlnet.py
share."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.ldm import ldm_checkpoint
from refimpl import controlnet
from refimpl.core import pick_device

MODULES = ["refimpl.controlnet"]
N = 100  # held-out edge maps


def controlnet_checkpoint(preset: str) -> Path:
    """The checkpoint directory of ``controlnet train --base <the preset's LDM>``."""
    base = ldm_checkpoint(preset)
    config = controlnet.train_config(base, preset)

    def produce(out: Path) -> None:
        controlnet.train(config, base, out, device=pick_device(), progress=False)

    return cached("controlnet", MODULES, produce, preset=preset, config=config)


def mismatched(labels: torch.Tensor) -> list[str]:
    """Captions naming the next digit, "the digit (k + 1) mod 10", for control maps of digits k."""
    from refimpl.captions import NUMBER_WORDS

    return [f"the digit {NUMBER_WORDS[(int(k) + 1) % 10]}" for k in labels]


def controlnet_samples(preset: str) -> dict[str, torch.Tensor]:
    """Samples for the N held-out edge maps, all from the same z_T (seed 0): ``zero`` (conditioning scale 0: the
    base LDM, empty caption), ``empty`` (ControlNet, empty caption), ``mismatched_1`` / ``mismatched_3`` (ControlNet,
    a caption naming another digit, CFG scale 1 / 3); ``maps`` and ``labels``."""
    base, run = ldm_checkpoint(preset), controlnet_checkpoint(preset)

    def produce(out: Path) -> None:
        model, (autoencoder, schedule, scale) = controlnet.load(run, base)
        maps, labels = controlnet.control_maps(N)
        device = pick_device()

        def draw(texts, **kw):
            return controlnet.sample(model, autoencoder, schedule, scale, texts, maps, device=device,
                                     **kw).float().cpu().contiguous()

        result = {"zero": draw([""] * N, conditioning_scale=0.0), "empty": draw([""] * N),
                  "mismatched_1": draw(mismatched(labels), guidance_scale=1.0),
                  "mismatched_3": draw(mismatched(labels), guidance_scale=3.0), "maps": maps, "labels": labels}
        save_file(result, str(out / "samples.safetensors"))

    config = {"run": run.parent.name + "/" + run.name, "n": N}
    return load_file(str(cached("controlnet-samples", MODULES, produce, preset=preset, config=config)
                         / "samples.safetensors"))
