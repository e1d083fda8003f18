"""Textual Inversion's cached artifacts (library module, no OUTPUTS): the quick run (the layout of
``python -m refimpl textual-inversion train --out``) and the evaluation samples that the Textual Inversion
figures and tests/test_textual_inversion.py share. Only they import this module."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.ldm import ldm_checkpoint
from refimpl import personalization, textual_inversion
from refimpl.core import pick_device

MODULES = ["refimpl.textual_inversion"]
N = 100  # samples per prompt
SEED = 5  # the same z_T for both prompts
PROMPTS = {"word": f"the digit {textual_inversion.PLACEHOLDER}", "plain": f"the digit {textual_inversion.INIT_WORD}"}
#: a harder-pushed inversion (quick preset only): twice the learning rate, about twice the steps
PUSHED = {"lr": 0.1, "steps": 1500}


def ti_checkpoint(preset: str, pushed: bool = False) -> Path:
    """The checkpoint directory of Textual Inversion on the preset's cached LDM (``pushed``: with PUSHED)."""
    run = ldm_checkpoint(preset)
    config = textual_inversion.train_config(preset, **(PUSHED if pushed else {}))

    def produce(out: Path) -> None:
        textual_inversion.train(config, run, out, device=pick_device(), progress=False)

    return cached("textual-inversion", MODULES, produce, preset=preset, config={**config, "base": run.name})


def evaluation(preset: str) -> dict[str, torch.Tensor]:
    """N samples for each prompt of PROMPTS from the same z_T: keys ``word`` and ``plain`` (the learned run; the
    frozen model with the plain prompt is exactly the base LDM) and ``pushed`` (the word of the PUSHED run); and
    ``subject``."""
    run, ckpt, pushed = ldm_checkpoint(preset), ti_checkpoint(preset), ti_checkpoint(preset, pushed=True)

    def produce(out: Path) -> None:
        result = {"subject": personalization.subject_images()}
        for name, path in (("", ckpt), ("pushed", pushed)):
            autoencoder, model, schedule, scale, words = personalization.load(path, run, "textual-inversion")
            for key, text in PROMPTS.items() if not name else [("pushed", PROMPTS["word"])]:
                result[key] = personalization.sample(autoencoder, model, [text] * N, schedule, scale, words, seed=SEED,
                                                device=pick_device()).float().cpu().contiguous()
        save_file(result, str(out / "samples.safetensors"))

    path = cached("textual-inversion-samples", MODULES, produce, preset=preset,
                  config={"n": N, "seed": SEED, "prompts": PROMPTS, "runs": [ckpt.name, pushed.name]})
    return load_file(str(path / "samples.safetensors"))
