"""Consistency models' cached artifact (library module, no OUTPUTS): the quick DDPM on the swiss roll distilled into
a consistency model, and the comparison of it with its teacher that the consistency-models page's figures and
tests/test_consistency.py share."""

from __future__ import annotations

from pathlib import Path

import torch

from figures.builder import cached
from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from refimpl import consistency
from refimpl.core import pick_device

#: model calls at which the consistency model and its teacher's ODE samplers are compared
NFE = (1, 2, 4, 8)


def consistency_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of the consistency distillation of DDPM's ``preset`` model on ``data`` (the config
    names the teacher by its weights, so a retrained teacher means a new distillation)."""
    from refimpl.checkpoint import weights_digest
    from refimpl.training import load_model

    teacher_ckpt = ddpm_checkpoint(data, preset)
    teacher, checkpoint = load_model(teacher_ckpt, "ddpm")
    config = consistency.distill_config(checkpoint.config, weights_digest(teacher), preset)

    def produce(out: Path) -> None:
        consistency.distill(teacher_ckpt, config, out, device=pick_device(), progress=False)

    return cached(f"consistency-{data}", ["refimpl.consistency"], produce, preset=preset, config=config)


def compare(preset: str, noise: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """Samples from ``noise`` (n, 2) on the swiss roll: the consistency model ("cm"), its teacher with DDIM ("ddim")
    and with DPM-Solver++(2M) ("dpmpp") at each of :data:`NFE` model calls; the teacher's chain of DDIM steps down
    the distillation grid, the map distillation teaches ("chain", 50); and the teacher's own Algorithm 2 samples
    from the shared bank ("ddpm", 1000: its own seed-0 noise, n of them)."""
    from refimpl import ddim, solvers
    from refimpl.ddpm import load_for_sampling

    teacher, schedule, _ = load_for_sampling(ddpm_checkpoint("swissroll", preset))
    student, _, _ = consistency.load_model(consistency_checkpoint("swissroll", preset))
    out = {}
    with torch.no_grad():
        for n in NFE:
            out[("cm", n)] = consistency.consistency_sample(student, noise, schedule, consistency.inference_timesteps(n),
                                                            torch.Generator().manual_seed(1), consistency.PREDICTION)
            out[("ddim", n)] = ddim.ddim_sample(teacher, noise, schedule, steps=n, disable=True)
            out[("dpmpp", n)] = solvers.dpmpp_2m_sample(teacher, noise, schedule, steps=n, disable=True)
        out[("chain", consistency.GRID)] = consistency.teacher_solution(teacher, noise, schedule.T - 1, schedule)
    out[("ddpm", 1000)] = ddpm_samples("swissroll", preset, n=noise.shape[0])["x0"]
    return out
