"""Trainable parameters of each way to fine-tune the quick LDM: full fine-tuning, LoRA at several ranks r (the
count r (d_in + d_out) per adapted matrix), and a ControlNet (the copied encoder half plus its new layers)."""

from pathlib import Path

from refimpl import controlnet, ldm, lora
from refimpl.glide import build_seeded
from refimpl.plots import save, subplots

PAGE = "finetuning/lora.md"
OUTPUTS = ("lora_params.svg",)
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


def make(out: Path, preset: str) -> None:
    rows = counts(preset)
    fig, ax = subplots(figsize=(6.4, 3.0))
    labels, values = zip(*rows)
    colors = ["C7"] + ["C0"] * len(RANKS) + ["C3"]
    ax.bar(labels, values, color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("trainable parameters")
    for i, v in enumerate(values):
        ax.text(i, v * 1.15, f"{v:,}", ha="center", fontsize=7)
    ax.set_ylim(top=max(values) * 4)
    ax.tick_params(axis="x", labelsize=8)
    save(fig, out / "lora_params.svg")
