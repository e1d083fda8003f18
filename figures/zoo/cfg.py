"""The classifier-free guidance model and its trade-off samples, cached once per key and shared by the CFG
figures and tests/test_cfg.py (a library module: no OUTPUTS).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import cfg
from refimpl.core import pick_device

#: guidance scales of the trade-off (diffusers' convention s = 1 + w): unconditional, conditional, guided
SCALES = (0.0, 1.0, 2.0, 4.0)
PER_CLASS = 25  # samples per digit and scale
STEPS = 25  # DDIM steps, eta = 0 (25: half the CPU time of 50, with the same trends)


def cfg_checkpoint(preset: str) -> Path:
    """The checkpoint directory of the CFG digits model trained with ``preset`` (Algorithm 1)."""
    config = cfg.train_config(preset)

    def produce(out: Path) -> None:
        cfg.train(config, out, device=pick_device(), progress=False)

    return cached("cfg-digits", ["refimpl.cfg"], produce, preset=preset, config=config)


def tradeoff_samples(preset: str) -> dict[str, torch.Tensor]:
    """Guided DDIM samples of that model: ``labels`` (PER_CLASS of each digit, sorted) and ``x0_<s>`` for each
    guidance scale s of :data:`SCALES`, every scale from the same x_T (seed 0)."""
    checkpoint = cfg_checkpoint(preset)
    labels = torch.arange(cfg.CLASSES).repeat_interleave(PER_CLASS)

    def produce(out: Path) -> None:
        net, schedule = cfg.load_for_sampling(checkpoint, pick_device())
        samples = {f"x0_{s:g}": cfg.sample(net, schedule, labels, guidance_scale=s, steps=STEPS).float().cpu()
                   for s in SCALES}
        save_file({"labels": labels, **samples}, str(out / "samples.safetensors"))

    path = cached("cfg-tradeoff", ["refimpl.cfg"], produce, preset=preset,
                  config={"scales": SCALES, "per_class": PER_CLASS, "steps": STEPS,
                          "checkpoint": checkpoint.parent.name + "/" + checkpoint.name})
    return load_file(str(path / "samples.safetensors"))


def tradeoff_metrics(samples: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per guidance scale: accuracy of refimpl.digits_eval's classifier on the requested digit, within-class
    diversity of its features (refimpl.cfg.diversity) and the Frechet distance to held-out digits."""
    from refimpl.digits_eval import classifier, evaluate

    probe, labels, rows = classifier(), samples["labels"], []
    with torch.no_grad():
        for s in SCALES:
            images = samples[f"x0_{s:g}"].clamp(-1, 1)
            rows.append({"scale": s,
                         "accuracy": float((probe(images).argmax(1) == labels).float().mean()),
                         "diversity": cfg.diversity(probe.features(images), labels),
                         "frechet": evaluate(images).frechet_distance})
    return rows
