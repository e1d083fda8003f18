"""DDPM: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020), arXiv 2006.11239.

The forward process adds Gaussian noise in T small steps, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1},
beta_t I) (Eq. 2), so that x_t can be drawn from x_0 in one shot (Eq. 4). The reverse process is
learned: a network eps_theta(x_t, t) predicts the noise, which gives the reverse-step mean (Eq. 11)
through the Gaussian posterior q(x_{t-1} | x_t, x_0) (Eqs. 6-7). Training minimises the simplified
objective L_simple (Eq. 14, Algorithm 1); sampling runs the learned chain from x_T ~ N(0, I)
(Algorithm 2), with sigma_t^2 = beta_t or beta_tilde_t.

Timesteps in code are 0-indexed like diffusers: code ``t`` in ``0..T-1`` is the paper's ``t + 1``.
So ``schedule.alpha_bar[t]`` is the paper's alpha_bar_{t+1}, ``schedule.alpha_bar_prev[t]`` is
alpha_bar_t, and the last sampling step, which adds no noise (paper t = 1), is code ``t == 0``.
A model is any callable ``model(x_t, t) -> eps`` with ``t`` an int64 tensor of shape (B,).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.schedules import Schedule, gather, make_schedule, q_sample

VARIANCES = ("fixed_small", "fixed_large")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --8<-- [start:predict_x0]
def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """DDPM Eq. (15), Eq. (4) solved for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    alpha_bar = gather(schedule.alpha_bar, t, x_t)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
# --8<-- [end:predict_x0]


# --8<-- [start:loss_simple]
def loss_simple(model: Model, x0: torch.Tensor, schedule: Schedule,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM Algorithm 1 / Eq. (14): L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2 with
    t uniform over the T steps and eps ~ N(0, I). ``generator`` draws t and eps (reproducible
    training); both are then moved to x0's device. Returns the mean over all elements (Eq. 14 up
    to the constant factor of the data dimension)."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, eps, schedule)
    return F.mse_loss(model(x_t, t), eps)
# --8<-- [end:loss_simple]


# --8<-- [start:ddpm_step]
def reverse_variance(t: int, schedule: Schedule, variance: str = "fixed_small") -> torch.Tensor:
    """DDPM Sec. 3.2: sigma_t^2 = beta_tilde_t ("fixed_small", Eq. 7) or beta_t ("fixed_large")."""
    if variance == "fixed_small":
        return schedule.beta_tilde[t]
    if variance == "fixed_large":
        return schedule.betas[t]
    raise LineageError(f"unknown variance {variance!r} (choose from {', '.join(VARIANCES)})")


def reverse_step(x_t: torch.Tensor, t: int, eps: torch.Tensor, schedule: Schedule,
                 noise: torch.Tensor | None, variance: str = "fixed_small") -> torch.Tensor:
    """DDPM Algorithm 2, line 4, given the predicted noise eps:
    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z   (Eq. 11 mean),
    with z = ``noise``, and no noise at the last step (code t == 0, the paper's t = 1)."""
    sigma2 = reverse_variance(t, schedule, variance)
    beta, alpha, alpha_bar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bar[t]
    mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
    if t == 0:
        return mean
    return mean + sigma2.sqrt() * noise


def ddpm_step(model: Model, x_t: torch.Tensor, t: int, schedule: Schedule,
              noise: torch.Tensor | None, variance: str = "fixed_small") -> torch.Tensor:
    """DDPM Algorithm 2, line 4: one reverse step x_t -> x_{t-1} with eps = model(x_t, t)."""
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    return reverse_step(x_t, t, model(x_t, t_batch), schedule, noise, variance)
# --8<-- [end:ddpm_step]


# --8<-- [start:ddpm_sample]
@torch.no_grad()
def ddpm_sample(model: Model, x_T: torch.Tensor, schedule: Schedule, *, variance: str = "fixed_small",
                generator: torch.Generator | None = None, callback=None, disable: bool = False,
                mean_shift=None) -> torch.Tensor:
    """DDPM Algorithm 2: ancestral sampling from x_T through all T reverse steps to x_0.

    The noise z for each step with t > 0 is drawn from ``generator`` (on its own device, then
    moved to x_T's device) in x_T's dtype, one draw of x_T's shape per step, the order in which
    diffusers' DDPMScheduler.step draws it. ``callback(t, x, x0_pred)`` is called after each
    step with the new sample and the x_0 predicted at step t (Eq. 15). ``mean_shift(x_t, t_batch, sigma2)``, if
    given, is added to every step's mean (guided sampling: refimpl.adm's Algorithm 1); since the noise is
    additive, adding it to the drawn sample is the same draw.
    """
    reverse_variance(0, schedule, variance)  # reject a bad name before the first model call
    schedule = schedule.to(x_T.device)
    x = x_T
    for t in progress(range(schedule.T - 1, -1, -1), total=schedule.T, desc="DDPM", disable=disable):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = model(x, t_batch)
        noise = None
        if t > 0:
            noise = gaussian_like(x, generator)
        x_prev = reverse_step(x, t, eps, schedule, noise, variance)
        if mean_shift is not None:
            x_prev = x_prev + mean_shift(x, t_batch, reverse_variance(t, schedule, variance))
        if callback is not None:
            callback(t, x_prev, predict_x0(x, t_batch, eps, schedule))
        x = x_prev
    return x
# --8<-- [end:ddpm_sample]


# --- training ----------------------------------------------------------------------

#: sizes per preset and data kind; a preset changes sizes, never the algorithm (T = 1000, linear betas)
PRESETS = {
    "quick": {
        "toy": {"steps": 3000, "batch_size": 256, "lr": 2e-3, "model": {"kind": "mlp", "hidden": 128, "depth": 3}},
        # cosine decay: the run ends on a settled model (at a constant 2e-3 the last steps' noise decides how good
        # the samples are; 2000 constant steps gave no better digits than these 1000)
        # 32 channels at both resolutions (8x8 and 4x4): 35% less CPU per call than doubling to 64 at 4x4, and the
        # same picture (classifier score 8.4 vs 8.6 of 256 DDPM samples; every claim of the digits pages holds)
        "digits": {"steps": 1000, "batch_size": 64, "lr": 2e-3, "lr_decay": "cosine",
                   "model": {"kind": "unet", "base": 32, "channel_mults": [1, 1]}},
    },
    "full": {
        "toy": {"steps": 30000, "batch_size": 1024, "lr": 1e-3, "model": {"kind": "mlp", "hidden": 512, "depth": 4}},
        "digits": {"steps": 60000, "batch_size": 256, "lr": 2e-4, "model": {"kind": "unet", "base": 64}},
    },
}


def train_config(data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0,
                 schedule: str = "linear") -> dict:
    """The JSON config of a DDPM run: data, schedule, model and optimisation sizes of ``preset``."""
    from refimpl.data import DATASETS, TOY_2D
    from refimpl.nets import build_model, model_config

    if data not in DATASETS:
        raise LineageError(f"unknown dataset {data!r} (choose from {', '.join(DATASETS)})")
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]["toy" if data in TOY_2D else "digits"]
    model = model_config(build_model(**sizes["model"], **({"data_dim": 2} if data in TOY_2D else {"in_channels": 1})))
    return {"data": data, "schedule": schedule, "T": 1000, "model": model, "seed": seed,
            **optimisation(sizes, steps)}


def optimisation(sizes: dict, steps: int | None = None) -> dict:
    """The optimiser's part of a run's config from a preset's ``sizes``: steps (``steps`` if given), batch size,
    learning rate, and its decay when the preset has one."""
    extra = {"lr_decay": sizes["lr_decay"]} if "lr_decay" in sizes else {}
    return {"steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"], **extra}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Algorithm 1: repeat { x_0 ~ data, t ~ U{1..T}, eps ~ N(0, I), step on L_simple }.

    ``config`` comes from :func:`train_config`; ``out`` is the checkpoint directory (resumed if
    it holds a run with the same config). Returns (model, loss history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit_config

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    model = model_from_config(config["model"], seed=config["seed"])  # initial weights from the config's seed
    batch = sampler(config["data"])

    def loss_fn(model, generator):
        x0 = batch(config["batch_size"], generator).to(schedule.device)
        return loss_simple(model, x0, schedule, generator)

    history = fit_config(model, loss_fn, config, out, "ddpm", device, resume, progress)
    return model, history
# --8<-- [end:train]


def load_for_sampling(ckpt, device=None) -> tuple[torch.nn.Module, Schedule, tuple[int, ...]]:
    """Load a DDPM checkpoint for any sampler: (model on ``device``, its schedule on ``device``, the
    shape of one sample, (2,) or (1, 8, 8)). On CPU unless ``device``; bad checkpoints -> LineageError."""
    from refimpl.training import load_model

    model, checkpoint = load_model(ckpt, "ddpm")
    device = torch.device(device or "cpu")
    schedule = make_schedule(checkpoint.config["schedule"], checkpoint.config["T"]).to(device)
    shape = (2,) if checkpoint.config["model"]["kind"] == "mlp" else (1, 8, 8)
    return model.to(device), schedule, shape


def sample_from_checkpoint(ckpt, n: int, *, variance: str = "fixed_small", seed: int = 0, device=None,
                           callback=None, disable: bool = False) -> torch.Tensor:
    """Load a DDPM checkpoint and draw ``n`` samples with Algorithm 2 (on CPU unless ``device``)."""
    model, schedule, shape = load_for_sampling(ckpt, device)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    return ddpm_sample(model, x_T, schedule, variance=variance, generator=generator,
                       callback=callback, disable=disable)
