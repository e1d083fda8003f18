"""Trainable parameters of each way to fine-tune the quick LDM: full fine-tuning, LoRA at several ranks r (the
count r (d_in + d_out) per adapted matrix), and a ControlNet (the copied encoder half plus its new layers).

Shared by the LoRA page's figure (figures/pages/finetuning/lora_params.py) and its 复现 table (lora_repro.py).
"""

from __future__ import annotations

from refimpl import controlnet, ldm, lora
from refimpl.training import build_seeded

RANKS = (1, 2, 4, 8, 16)


def counts(preset: str) -> list[tuple[str, int]]:
    """(label, trainable parameters) for the preset's LDM denoiser (random weights: counts do not depend on them)."""
    config = ldm.train_config(preset)["diffusion"]
    full = sum(p.numel() for p in build_seeded(ldm.LatentDenoiser, config).parameters())
    rows = [("full", full)]
    for r in RANKS:
        model = build_seeded(ldm.LatentDenoiser, config)
        lora.apply_lora(model, r=r, alpha=r, within=model.cross)
        rows.append((f"LoRA r={r}", lora.trainable_parameters(model)))
    base = build_seeded(ldm.LatentDenoiser, config)
    control = controlnet.ControlNet(base, controlnet.PRESETS[preset]["hidden"])
    rows.append(("ControlNet", sum(p.numel() for p in control.parameters())))
    return rows
