"""v-prediction: Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models" (ICLR 2022),
arXiv 2202.00512, Sec. 4 and Appendix D; the parameterisation Stable Diffusion 2's 768-px model is trained with.

For the variance-preserving forward process z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1
(DDPM's alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)), write alpha_t = cos(phi), sigma_t = sin(phi).
Then z = cos(phi) x + sin(phi) eps moves on a circle as phi grows, and its velocity is

    v = dz/dphi = cos(phi) eps - sin(phi) x = alpha_t eps - sigma_t x.

The network predicts v. Rotating back gives the other two predictions without dividing by alpha_t or sigma_t:

    x_hat = alpha_t z_t - sigma_t v_hat,        eps_hat = sigma_t z_t + alpha_t v_hat.

With eps-prediction, x_hat = (z_t - sigma_t eps_hat) / alpha_t multiplies the network's error by sigma_t / alpha_t,
which grows without bound as alpha_t -> 0 (the noisiest steps, and the only steps of a few-step sampler). Since
eps_hat - eps = alpha_t (v_hat - v) and x_hat - x = -sigma_t (v_hat - v),

    ||v_hat - v||^2 = ||eps_hat - eps||^2 + ||x_hat - x||^2 = (1 + alpha_t^2 / sigma_t^2) ||x_hat - x||^2,

so the v-loss is the x-loss weighted by SNR + 1, one of the two weightings the paper proposes (its Sec. 4).

Timesteps are DDPM's code timesteps (0..T-1, refimpl.ddpm); a v-model is any ``model(z_t, t) -> v``.
:func:`eps_model` wraps it as an eps-model, so every sampler on the site (DDPM, DDIM, the solvers) runs it.
Progressive distillation itself (halving a DDIM sampler's steps by training a student) is not implemented here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refimpl.ddpm import Model
from refimpl.schedules import Schedule, gather, make_schedule, q_sample

#: the model name in a v-prediction checkpoint: ``ddpm sample`` refuses it (its network does not predict eps)
MODEL_NAME = "vpred"


def alpha_sigma(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at code timesteps ``t``, shaped like ``like``."""
    alpha_bar = gather(schedule.alpha_bar, t, like)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


# --8<-- [start:conversions]
def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The training target v = alpha_t eps - sigma_t x_0 (the velocity dz/dphi)."""
    alpha, sigma = alpha_sigma(schedule, t, x0)
    return alpha * eps - sigma * x0


def x0_from_v(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x_hat = alpha_t z_t - sigma_t v_hat."""
    alpha, sigma = alpha_sigma(schedule, t, z_t)
    return alpha * z_t - sigma * v


def eps_from_v(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """eps_hat = sigma_t z_t + alpha_t v_hat."""
    alpha, sigma = alpha_sigma(schedule, t, z_t)
    return sigma * z_t + alpha * v


def v_from_eps(z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """v of an eps prediction: (eps - sigma_t z_t) / alpha_t, i.e. alpha_t eps - sigma_t x_hat(eps)."""
    alpha, sigma = alpha_sigma(schedule, t, z_t)
    return (eps - sigma * z_t) / alpha
# --8<-- [end:conversions]


# --8<-- [start:loss_v]
def loss_v(model: Model, x0: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's Algorithm 1 with the v target: E_{t, x_0, eps} || v - v_theta(z_t, t) ||^2, t uniform over the T steps.
    t and eps are drawn exactly as refimpl.ddpm.loss_simple draws them (same generator, same order), so with the
    same seed the two losses see the same z_t and differ only in the target."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    return F.mse_loss(model(q_sample(x0, t, eps, schedule), t), v_target(x0, eps, t, schedule))
# --8<-- [end:loss_v]


def eps_model(model: Model, schedule: Schedule) -> Model:
    """``model(z_t, t) -> v`` as ``(z_t, t) -> eps`` (:func:`eps_from_v`), for any sampler that takes an eps-model."""
    def eps(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_from_v(z_t, model(z_t, t), t, schedule)
    return eps


# --- training and loading ------------------------------------------------------------------------------

def train_config(data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """DDPM's config for ``data`` and ``preset`` (refimpl.ddpm.train_config: same network, schedule and optimiser),
    with ``"prediction": "v"``: the two runs differ only in what the network predicts."""
    from refimpl.ddpm import train_config as ddpm_config

    return {**ddpm_config(data, preset, steps=steps, seed=seed), "prediction": "v"}


def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """DDPM's training loop (refimpl.ddpm.train) on :func:`loss_v`. Returns (model, loss history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit_config

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    model = model_from_config(config["model"], seed=config["seed"])
    batch = sampler(config["data"])

    def loss_fn(model, generator):
        return loss_v(model, batch(config["batch_size"], generator).to(schedule.device), schedule, generator)

    return model, fit_config(model, loss_fn, config, out, MODEL_NAME, device, resume, progress)


def load_model(ckpt, device=None) -> tuple[torch.nn.Module, Schedule]:
    """A v-prediction checkpoint's network ``(z_t, t) -> v`` and its schedule, on ``device`` (CPU unless given)."""
    from refimpl.training import load_model as load

    model, checkpoint = load(ckpt, MODEL_NAME)
    device = torch.device(device or "cpu")
    return model.to(device), make_schedule(checkpoint.config["schedule"], checkpoint.config["T"]).to(device)


def load_for_sampling(ckpt, device=None) -> tuple[Model, Schedule, tuple[int, ...]]:
    """A v-prediction checkpoint as (its :func:`eps_model` on ``device``, schedule, shape of one sample), the
    triple refimpl.ddpm.load_for_sampling returns for an eps checkpoint."""
    model, schedule = load_model(ckpt, device)
    shape = (model.config["data_dim"],) if "data_dim" in model.config else (1, 8, 8)
    return eps_model(model, schedule), schedule, shape


def sample_from_checkpoint(ckpt, n: int, *, steps: int = 50, eta: float = 0.0, seed: int = 0, device=None,
                           disable: bool = False) -> torch.Tensor:
    """Load a v-prediction checkpoint and draw ``n`` samples with DDIM (refimpl.ddim.ddim_sample: ``steps``
    uniform steps, noise scale ``eta``), x_T and then the noise from one generator seeded with ``seed``."""
    from refimpl.core import LineageError
    from refimpl.ddim import ddim_sample
    from refimpl.schedules import timesteps

    if not eta >= 0:
        raise LineageError(f"eta must be >= 0, got {eta}")
    model, schedule, shape = load_for_sampling(ckpt, device)
    timesteps(schedule.T, steps, "uniform")  # refuse bad steps before drawing anything
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    return ddim_sample(model, x_T, schedule, steps=steps, eta=eta, generator=generator, disable=disable)
