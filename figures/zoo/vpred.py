"""v-prediction's cached artifacts (library module, no OUTPUTS): the model trained with DDPM's quick config and the
v target, and its comparison with DDPM's eps model, which the LDM page's v-prediction figure and
tests/test_vpred.py share."""

from __future__ import annotations

from pathlib import Path

import torch

from figures.builder import cached
from figures.zoo.ddpm import ddpm_checkpoint
from refimpl import ddpm, vpred
from refimpl.core import pick_device

MODULES = ["refimpl.vpred"]
#: code timesteps at which both models predict x0 from z_t (denser near T, where alpha_t -> 0)
TIMES = (0, 100, 200, 300, 400, 500, 600, 700, 800, 850, 900, 950, 975, 990, 999)
N = 4000  # fresh swiss-roll points per timestep


def vpred_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of a v-prediction model trained on ``data`` with DDPM's ``preset`` sizes."""
    config = vpred.train_config(data, preset)

    def produce(out: Path) -> None:
        vpred.train(config, out, device=pick_device(), progress=False)

    return cached(f"vpred-{data}", MODULES, produce, preset=preset, config=config)


def x0_errors(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-point squared error of the x0 prediction, (len(TIMES), N), of the eps model (DDPM's Eq. 15) and of the
    v model (x0 = alpha_t z_t - sigma_t v) on the same fresh swiss-roll points and noise (cheap: no cache)."""
    from refimpl.data import toy_2d
    from refimpl.schedules import q_sample

    eps_model, schedule, _ = ddpm.load_for_sampling(ddpm_checkpoint("swissroll", preset))
    v_model, _ = vpred.load_model(vpred_checkpoint("swissroll", preset))  # trained first if not cached
    generator = torch.Generator().manual_seed(seed)
    out = {"eps": [], "v": []}
    with torch.no_grad():
        for t in TIMES:
            x0 = toy_2d("swissroll", N, generator)
            tt = torch.full((N,), t, dtype=torch.long)
            z = q_sample(x0, tt, torch.randn(x0.shape, generator=generator), schedule)
            out["eps"].append((ddpm.predict_x0(z, tt, eps_model(z, tt), schedule) - x0).pow(2).sum(1))
            out["v"].append((vpred.x0_from_v(z, v_model(z, tt), tt, schedule) - x0).pow(2).sum(1))
    return {name: torch.stack(errors) for name, errors in out.items()}
