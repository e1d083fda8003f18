"""DreamBooth's cached artifacts (library module, no OUTPUTS): the fine-tuned quick runs (with and without prior
preservation, the layout of ``python -m refimpl dreambooth train --out``) and the evaluation samples the
DreamBooth figures and tests/test_dreambooth.py share. Only they import this module."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.ldm import ldm_checkpoint
from refimpl import dreambooth, ldm, personalization
from refimpl.core import pick_device

MODULES = ["refimpl.dreambooth"]
N = 100  # samples per prompt (skew statistics)
PER_DIGIT = 40  # samples per other digit (classifier accuracy)
SEED = 5  # the evaluation's z_T: the same for every model and prompt of the same size
MODELS = ("base", "prior", "no_prior")  # the base LDM, DreamBooth with lambda = 1, and with lambda = 0
OTHER_DIGITS = tuple(d for d in range(10) if d != personalization.SUBJECT_DIGIT)


def dreambooth_checkpoint(preset: str, prior_weight: float = dreambooth.PRIOR_WEIGHT) -> Path:
    """The checkpoint directory of DreamBooth (lambda = ``prior_weight``) on the preset's cached LDM."""
    run = ldm_checkpoint(preset)
    config = dreambooth.train_config(preset, prior_weight=prior_weight)

    def produce(out: Path) -> None:
        dreambooth.train(config, run, out, device=pick_device(), progress=False)

    return cached("dreambooth", MODULES, produce, preset=preset, config={**config, "base": run.name})


def evaluation(preset: str) -> dict[str, torch.Tensor]:
    """For each model of MODELS: ``<model>_instance`` (N samples of the instance prompt; the base model, which has
    no identifier, gets the class prompt), ``<model>_class`` (N samples of the class prompt) and ``<model>_others``
    (PER_DIGIT samples of "the digit k" for each k of OTHER_DIGITS, digit-major); plus ``subject`` and
    ``others_labels``."""
    from refimpl.captions import NUMBER_WORDS

    run = ldm_checkpoint(preset)
    runs = {"prior": dreambooth_checkpoint(preset, 1.0), "no_prior": dreambooth_checkpoint(preset, 0.0)}

    def produce(out: Path) -> None:
        device = pick_device()
        result = {"subject": personalization.subject_images(),
                  "others_labels": torch.tensor(OTHER_DIGITS).repeat_interleave(PER_DIGIT)}
        others = [f"the digit {NUMBER_WORDS[d]}" for d in OTHER_DIGITS for _ in range(PER_DIGIT)]
        for name in MODELS:
            if name == "base":
                autoencoder, model, schedule, scale = ldm.load(run)
                words, instance = (), dreambooth.CLASS_PROMPT
            else:
                autoencoder, model, schedule, scale, words = personalization.load(runs[name], run)
                instance = dreambooth.INSTANCE_PROMPT
            for key, texts in (("instance", [instance] * N), ("class", [dreambooth.CLASS_PROMPT] * N),
                               ("others", others)):
                x = personalization.sample(autoencoder, model, texts, schedule, scale, words, seed=SEED, device=device)
                result[f"{name}_{key}"] = x.float().cpu().contiguous()
        save_file(result, str(out / "samples.safetensors"))

    config = {"n": N, "per_digit": PER_DIGIT, "seed": SEED, "runs": sorted(p.name for p in runs.values())}
    path = cached("dreambooth-samples", MODULES, produce, preset=preset, config=config)
    return load_file(str(path / "samples.safetensors"))
