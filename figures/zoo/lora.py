"""LoRA's cached artifacts (library module, no OUTPUTS): the slanted-writer fine-tunes of the quick LDM (LoRA and
full fine-tuning, layout of ``python -m refimpl lora train --out``), the GPT adaptations to Python source, and
the samples and numbers the LoRA figures and tests/test_lora.py share."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.gpt import gpt_run
from figures.zoo.ldm import ldm_checkpoint
from refimpl import lora
from refimpl.core import pick_device

MODULES = ["refimpl.lora"]
METHODS = ("lora", "full")


def style_checkpoint(preset: str, method: str = "lora") -> Path:
    """The checkpoint directory of ``lora train --base <the preset's LDM>`` (``method`` "full": with --full)."""
    base = ldm_checkpoint(preset)
    config = lora.style_config(base, preset, method=method)

    def produce(out: Path) -> None:
        lora.train_style(config, base, out, device=pick_device(), progress=False)

    return cached(f"lora-ldm-{method}", MODULES, produce, preset=preset, config=config)


def style_samples(preset: str) -> dict[str, torch.Tensor]:
    """10 samples per caption "the digit k" (CFG 3, DDIM 50, the same z_T) from the base LDM and from each
    fine-tune: keys ``base``, ``lora``, ``full`` (100, 1, 8, 8) and ``labels``."""
    from refimpl import ldm

    base = ldm_checkpoint(preset)
    runs = {method: style_checkpoint(preset, method) for method in METHODS}

    def produce(out: Path) -> None:
        result = {"base": lora.style_samples(*ldm.load(base), device=pick_device())[0]}
        for method, run in runs.items():
            images, labels = lora.style_samples(*lora.load_style(run, base), device=pick_device())
            result[method], result["labels"] = images, labels
        save_file({k: v.float().cpu().contiguous() if k != "labels" else v for k, v in result.items()},
                  str(out / "samples.safetensors"))

    config = {"runs": {m: r.parent.name + "/" + r.name for m, r in runs.items()}}
    return load_file(str(cached("lora-ldm-samples", MODULES, produce, preset=preset, config=config)
                         / "samples.safetensors"))


def gpt_checkpoint(preset: str, method: str = "lora") -> Path:
    """The checkpoint directory of ``lora train-gpt --base <the preset's GPT>``, with ``results.json``:
    held-out loss (nats/char) on the Python source before and after, trainable parameters."""
    base = gpt_run(preset)
    config = lora.gpt_config(base, preset, method=method)

    def produce(out: Path) -> None:
        model, _, losses, _ = lora.train_gpt(config, base, out, device=pick_device(), progress=False)
        results = {**losses, "trainable": lora.trainable_parameters(model),
                   "total": sum(p.numel() for p in model.parameters())}
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    return cached(f"lora-gpt-{method}", MODULES, produce, preset=preset, config=config)


def gpt_results(preset: str) -> dict[str, dict]:
    """``{method: results.json}`` for LoRA and full fine-tuning of the GPT."""
    return {method: json.loads((gpt_checkpoint(preset, method) / "results.json").read_text()) for method in METHODS}
