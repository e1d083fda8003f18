"""Classifier guidance (refimpl.adm): the noisy digits classifier and guided samples of the shared quick DDPM digits
model, cached once per key for the figures and tests/test_adm.py.

Library module (no OUTPUTS). The DDPM checkpoint is figures.zoo.ddpm.ddpm_checkpoint: its key does not depend on this
module or on refimpl/adm.py, so the DDPM page's figures and this page share one trained model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.ddpm import ddpm_checkpoint
from refimpl import adm
from refimpl.core import pick_device
from refimpl.ddpm import load_for_sampling

#: gradient scales of the guided-digits artifact (0: the unguided model; ADM's unconditional 256x256 model uses 10)
SCALES = (0.0, 1.0, 3.0, 10.0)
PER_LABEL = 100  # samples per (label, scale); the same x_T for every scale
DDIM_STEPS = 25  # the 25-step DDIM of the guided-diffusion README (--timestep_respacing ddim25)
SEED = 0


def classifier_checkpoint(preset: str) -> Path:
    """The checkpoint directory of the noisy classifier p_phi(y | x_t, t) trained with ``preset``."""
    config = adm.train_config(preset)

    def produce(out: Path) -> None:
        adm.train(config, out, device=pick_device(), progress=False)

    return cached("adm-classifier", ["refimpl.adm"], produce, preset=preset, config=config)


def guided_digits(preset: str) -> dict[str, torch.Tensor]:
    """Guided DDIM samples (ADM Algorithm 2, eta = 0, DDIM_STEPS steps) of the quick DDPM digits model:
    ``x0`` (len(SCALES), 10 * PER_LABEL, 1, 8, 8), requested ``labels`` (10 * PER_LABEL,) = 0,0,...,1,1,..., and
    ``scales``; row i of every scale starts from the same x_T (seed SEED)."""
    ddpm = ddpm_checkpoint("digits", preset)
    classifier = classifier_checkpoint(preset)

    def produce(out: Path) -> None:
        device = pick_device()
        model, schedule, shape = load_for_sampling(ddpm, device)
        net = adm.load_classifier(classifier, schedule, device)
        labels = torch.arange(adm.CLASSES).repeat_interleave(PER_LABEL)
        x_T = torch.randn((len(labels), *shape), generator=torch.Generator().manual_seed(SEED)).to(device)
        grad = adm.classifier_grad_fn(net, labels.to(device))
        x0 = torch.stack([adm.guided_sample(model, grad, x_T, schedule, scale=s, steps=DDIM_STEPS, disable=True).cpu()
                          for s in SCALES])
        save_file({"x0": x0.contiguous(), "labels": labels, "scales": torch.tensor(SCALES)},
                  str(out / "samples.safetensors"))

    path = cached("adm-guided-digits", ["refimpl.adm"], produce, preset=preset,
                  config={"scales": SCALES, "per_label": PER_LABEL, "steps": DDIM_STEPS, "seed": SEED,
                          "ddpm": ddpm.parent.name + "/" + ddpm.name, "classifier": classifier.name})
    return load_file(str(path / "samples.safetensors"))


def per_sample_stats(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample fidelity and diversity of :func:`guided_digits` samples, each of shape (len(SCALES), N):
    ``hit`` = 1 where the separately trained digits_eval classifier agrees with the requested label, and ``spread``
    = squared distance of the sample's digits_eval features to the mean features of the samples requested with the
    same label (its mean over a label is the trace of that label's feature covariance: within-class diversity)."""
    from refimpl.digits_eval import classifier

    x0, labels = out["x0"].clamp(-1, 1), out["labels"]
    probe = classifier()
    with torch.no_grad():
        hit = torch.stack([(probe(x).argmax(-1) == labels).double() for x in x0])
        feats = torch.stack([probe.features(x).double() for x in x0])
    centre = torch.stack([feats[:, labels == k].mean(1) for k in range(adm.CLASSES)], 1)[:, labels]
    return hit, ((feats - centre) ** 2).sum(-1)
