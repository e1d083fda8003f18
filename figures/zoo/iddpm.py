"""Improved DDPM's cached artifacts (library module, no OUTPUTS): the digits models with learned variance, and the
variational bound of every digits model on the same held-out digits and noise (the likelihood figure and
tests/test_iddpm.py share it)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.ddpm import ddpm_checkpoint
from refimpl import ddpm, iddpm
from refimpl.core import pick_device

#: the bound's rows: (model, variance). The DDPM's two rows differ only in the variance the bound assumes.
ROWS = (("ddpm", "fixed_small"), ("ddpm", "fixed_large"), ("iddpm-linear", "learned"), ("iddpm", "learned"))
#: held-out digits per bound. Rows share digits and noise, so a difference between two rows is measured per digit:
#: its standard error was 0.003-0.011 bits/dim at 64 digits (differences of 0.11-0.38), that of one row's mean ~0.05.
N_NLL = 64
SEED = 0  # refimpl.iddpm.nll_from_checkpoint's default: the rows match `python -m refimpl iddpm nll`


def iddpm_checkpoint(data: str, preset: str, schedule: str = "cosine") -> Path:
    """The checkpoint directory of an improved DDPM trained on ``data`` with ``preset`` (L_hybrid, learned
    variance; the paper's cosine schedule unless ``schedule`` says "linear")."""
    config = iddpm.train_config(data, preset, schedule=schedule)

    def produce(out: Path) -> None:
        iddpm.train(config, out, device=pick_device(), progress=False)

    name = f"iddpm-{data}" if schedule == "cosine" else f"iddpm-{schedule}-{data}"
    return cached(name, ["refimpl.iddpm"], produce, preset=preset, config=config)


class Replay:
    """A model whose first pass over a sequence of calls runs the network and records each output; ``replay()``
    then answers the same sequence of calls from the record, refusing a call whose inputs differ."""

    def __init__(self, model):
        self.model, self.calls, self.replaying = model, [], False

    def replay(self) -> None:
        self.replaying, self.calls = True, iter(self.calls)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.replaying:
            self.calls.append((x_t, t, self.model(x_t, t)))
            return self.calls[-1][2]
        x_seen, t_seen, output = next(self.calls)
        if not (torch.equal(x_t, x_seen) and torch.equal(t, t_seen)):
            raise RuntimeError("the second bound called the network on other inputs than the first")
        return output


@torch.no_grad()
def _ddpm_bounds(ckpt: Path, device) -> dict[str, iddpm.BitsPerDim]:
    """bits_per_dim of the DDPM with fixed_small and with fixed_large, as nll_from_checkpoint computes each, from
    one run of the network: both bounds call it on the same (x_t, t), so the second replays the first's outputs."""
    from refimpl.data import held_out_digits

    model, schedule, _ = ddpm.load_for_sampling(ckpt, device)
    x0 = held_out_digits()[0][:N_NLL].to(device)
    shared, results = Replay(model), {}
    for variance in ("fixed_small", "fixed_large"):
        results[variance] = iddpm.bits_per_dim(shared, x0, schedule, variance=variance, bin_width=iddpm.BIN_WIDTH,
                                               generator=torch.Generator().manual_seed(SEED), disable=True)
        shared.replay()
    return results


def bounds(preset: str) -> dict[str, iddpm.BitsPerDim]:
    """The bound (all T terms, no sampling of t) of each of :data:`ROWS` on the first N_NLL held-out digits, keyed
    ``"<model>_<variance>"``."""
    ckpts = {"ddpm": ddpm_checkpoint("digits", preset), "iddpm": iddpm_checkpoint("digits", preset),
             "iddpm-linear": iddpm_checkpoint("digits", preset, schedule="linear")}

    def produce(out: Path) -> None:
        device = pick_device()
        results = {f"ddpm_{v}": r for v, r in _ddpm_bounds(ckpts["ddpm"], device).items()}
        for kind, variance in ROWS:
            if kind != "ddpm":
                results[f"{kind}_{variance}"] = iddpm.nll_from_checkpoint(ckpts[kind], N_NLL, variance=variance,
                                                                          seed=SEED, device=device, disable=True)[0]
        save_file({f"{row}.{field}": getattr(r, field).float().cpu().contiguous() for row, r in results.items()
                   for field in iddpm.BitsPerDim._fields}, str(out / "bounds.safetensors"))

    config = {"n": N_NLL, "seed": SEED, "checkpoints": [p.parent.name + "/" + p.name for p in ckpts.values()]}
    data = load_file(str(cached("iddpm-bounds", ["refimpl.iddpm"], produce, preset=preset, config=config)
                         / "bounds.safetensors"))
    return {f"{kind}_{variance}": iddpm.BitsPerDim(*(data[f"{kind}_{variance}.{field}"]
                                                     for field in iddpm.BitsPerDim._fields))
            for kind, variance in ROWS}
