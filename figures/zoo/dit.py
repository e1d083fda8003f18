"""DiT's cached artifacts (library module, no OUTPUTS): the quick miniature family (every size of refimpl.dit.SIZES
with every patch size of refimpl.dit.PATCHES, trained alike on the training digits) and its measurements, which the
DiT page's figures and tests/test_dit.py share."""

from __future__ import annotations

from pathlib import Path

import math

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from refimpl import dit
from refimpl.core import pick_device

MODULES = ["refimpl.dit"]
MEMBERS = tuple((size, p) for size in dit.SIZES for p in dit.PATCHES)  # ascending size, then patch 4 before 2
PER_CLASS = 30   # conditional samples per digit for the quality measurements (300 per model, same x_T for all)
STEPS = 50       # DDIM steps of those samples (eta = 0; no guidance, as the paper's scaling study)


def name(size: str, p: int) -> str:
    """The paper's naming: DiT-B/2 is size B with 2 x 2 patches."""
    return f"{size}/{p}"


def dit_checkpoint(size: str, p: int, preset: str) -> Path:
    """The checkpoint directory of family member (size, p) trained with ``preset``."""
    config = dit.train_config(size, p, preset)

    def produce(out: Path) -> None:
        dit.train(config, out, device=pick_device(), progress=False)

    return cached(f"dit-{size}-{p}", MODULES, produce, preset=preset, config=config)


def family(preset: str) -> dict[str, torch.Tensor]:
    """For every member (keys ``"<size>/<p>"`` prefixed): ``loss/`` its held-out denoising loss per held-out digit
    (refimpl.dit.held_out_loss: same x_0, t and eps for all), ``samples/`` its conditional DDIM samples
    (PER_CLASS per digit, digit-major, the same x_T for every member), ``gflops/`` and ``params/``; and
    ``labels``, the digits the samples were asked for."""
    ckpts = {name(size, p): dit_checkpoint(size, p, preset) for size, p in MEMBERS}

    def produce(out: Path) -> None:
        from refimpl.ddim import ddim_sample

        device = pick_device()
        labels = torch.arange(10).repeat_interleave(PER_CLASS)
        x_T = torch.randn((labels.shape[0], 1, 8, 8), generator=torch.Generator().manual_seed(0))
        result = {"labels": labels}
        for key, ckpt in ckpts.items():
            model, schedule, config = dit.load(ckpt, device)
            result[f"loss/{key}"] = dit.held_out_loss(model, schedule)
            with torch.no_grad():
                result[f"samples/{key}"] = ddim_sample(lambda x, t: model(x, t, y=labels.to(device)), x_T.to(device),
                                                       schedule, steps=STEPS, disable=True).cpu()
            result[f"gflops/{key}"] = torch.tensor(dit.forward_gflops(config["model"]), dtype=torch.float64)
            result[f"params/{key}"] = torch.tensor(sum(p.numel() for p in model.parameters()))
        save_file({k: v.contiguous() for k, v in result.items()}, str(out / "family.safetensors"))

    config = {"per_class": PER_CLASS, "steps": STEPS, "runs": {key: p.name for key, p in ckpts.items()}}
    path = cached("dit-family", MODULES, produce, preset=preset, config=config)
    return load_file(str(path / "family.safetensors"))


def measure(preset: str) -> dict:
    """The family's measurements, shared by the DiT page's figures and tests/test_dit.py: ``rows`` per member (keys
    ``"<size>/<p>"``): Mflops, parameters, held-out loss (mean and standard error over the held-out digits), Fréchet
    distance of its samples to the held-out digits, and the share of its samples read as the digit asked for; and
    ``data``, :func:`family`'s tensors."""
    from refimpl.digits_eval import evaluate, read_as

    data = family(preset)
    labels, rows = data["labels"], {}
    for size, p in MEMBERS:
        key = name(size, p)
        loss, samples = data[f"loss/{key}"], data[f"samples/{key}"]
        rows[key] = {"size": size, "patch": p, "mflops": float(data[f"gflops/{key}"]) * 1e3,
                     "params": int(data[f"params/{key}"]), "loss": loss.mean().item(),
                     "loss_se": (loss.std() / math.sqrt(loss.numel())).item(),
                     "fd": evaluate(samples).frechet_distance, "read_as_asked": read_as(samples, labels)}
    return {"rows": rows, "data": data}
