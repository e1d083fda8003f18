"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023), distilled from a DDPM the way latent consistency
models do it (Luo et al. 2023): one network that maps any point of a probability-flow ODE trajectory straight to
the trajectory's start, so that one call samples and a few calls refine.

A consistency function ``f(x_t, t)`` returns the same point for every ``(x_t, t)`` on one PF-ODE trajectory, and
``f(x, 0) = x`` (the boundary condition). The network meets the boundary by construction,

    f_theta(x_t, t) = c_skip(t) x_t + c_out(t) x0_theta(x_t, t),   c_skip(0) = 1, c_out(0) = 0,

with ``x0_theta`` the DDPM's "predicted x_0" of an eps network, and the scalings of the latent consistency models'
code (diffusers' ``LCMScheduler``): ``c_skip = sd^2 / ((10 t)^2 + sd^2)``, ``c_out = 10 t / sqrt((10 t)^2 + sd^2)``
with sd = 0.5 and t the integer DDPM timestep (the paper's scalings are the same functions of a noise level
sigma - epsilon in place of 10 t).

Consistency distillation (the paper's Algorithm 2, with LCM's skipping step ``k``): on the grid
``t_i = (i + 1) k - 1`` draw a grid point ``t``, noise a data point to ``x_t``, take one DDIM step of the *teacher*
from ``t`` to ``s = max(t - k, 0)``, and pull ``f_theta(x_t, t)`` towards ``f_theta-(x_hat_s, s)``. Here the target
network theta- is the student itself without gradient (an EMA decay of 0, as in improved consistency training);
the student starts from the teacher's weights. At ``s = 0`` the target is ``x_hat_0`` itself (the boundary), and
that is what anchors the whole chain to the teacher's ODE.

Sampling (the paper's Algorithm 1, written for the DDPM's noise levels as ``LCMScheduler.step`` does): ``x <-
f(x_T, T)``; then for each further grid point ``t``: ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) z`` and
``x <- f(x_t, t)``. One step is one network call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refimpl.core import LineageError, column
from refimpl.ddim import ddim_step
from refimpl.ddpm import predict_x0
from refimpl.schedules import Schedule, gather, q_sample

MODEL_NAME = "consistency"
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
#: the distillation grid's number of points (LCM's ``original_inference_steps``): skipping step k = T // GRID
GRID = 50


# --8<-- [start:boundary]
def boundary_scalings(t: torch.Tensor, scaling: float = TIMESTEP_SCALING, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out) at integer timesteps ``t``: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x exactly."""
    scaled = t.double() * scaling
    return sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2).sqrt()


def consistency_function(model, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule,
                         prediction: str = "epsilon") -> torch.Tensor:
    """f_theta(x_t, t) = c_skip(t) x_t + c_out(t) x0_theta(x_t, t), where the network ``model(x, t)`` predicts the
    noise (``prediction="epsilon"``, x0_theta = DDPM's predicted x_0) or x_0 itself (``"sample"``)."""
    out = model(x_t, t)
    x0 = out if prediction == "sample" else predict_x0(x_t, t, out, schedule)
    c_skip, c_out = boundary_scalings(t)
    return column(c_skip, x_t) * x_t + column(c_out, x_t) * x0
# --8<-- [end:boundary]


def grid(T: int = 1000, points: int = GRID) -> torch.Tensor:
    """The distillation grid t_i = (i + 1) k - 1, i = 0..points-1, with k = T // points (19, 39, ..., 999 for 50)."""
    if not (isinstance(points, int) and 1 <= points <= T):
        raise LineageError(f"grid points must be an integer in 1..{T}, got {points!r}")
    k = T // points
    return torch.arange(1, points + 1) * k - 1


def inference_timesteps(steps: int, T: int = 1000, points: int = GRID) -> list[int]:
    """The sampling timesteps for ``steps`` calls: evenly spaced indices into the grid, from its top down (LCM's
    schedule: 999 for one step, 999 and 499 for two)."""
    if not (isinstance(steps, int) and 1 <= steps <= points):
        raise LineageError(f"steps must be an integer in 1..{points} (the distillation grid), got {steps!r}")
    top_down = grid(T, points).flip(0)
    index = torch.floor(torch.arange(steps, dtype=torch.float64) * points / steps).long()
    return top_down[index].tolist()


# --8<-- [start:distill]
def loss_cd(student, teacher, x0: torch.Tensor, schedule: Schedule, generator: torch.Generator,
            points: int = GRID, prediction: str = "epsilon") -> torch.Tensor:
    """The consistency distillation loss, squared L2: || f_theta(x_t, t) - sg(f_theta(x_hat_s, s)) ||^2 averaged,
    with x_hat_s one DDIM (eta = 0) step of ``teacher`` from t to s = max(t - k, 0)."""
    k = schedule.T // points
    t = grid(schedule.T, points)[torch.randint(0, points, (x0.shape[0],), generator=generator)].to(x0.device)
    s = (t - k).clamp(min=0)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = q_sample(x0, t, eps, schedule)
    with torch.no_grad():
        x_s = ddim_step(x_t, teacher(x_t, t), gather(schedule.alpha_bar, t, x0), gather(schedule.alpha_bar, s, x0),
                        eta=0.0, noise=None)
        # at s = 0 the target is x_s itself: c_skip(0) = 1, c_out(0) = 0
        target = consistency_function(student, x_s, s, schedule, prediction)
    return F.mse_loss(consistency_function(student, x_t, t, schedule, prediction), target)
# --8<-- [end:distill]


def teacher_solution(teacher, x_t: torch.Tensor, t: int, schedule: Schedule, points: int = GRID) -> torch.Tensor:
    """What distillation asks f(x_t, t) to return: DDIM (eta = 0) steps of ``teacher`` from grid point ``t`` down the
    grid and on to timestep 0 (the chain of :func:`loss_cd`'s targets)."""
    x = x_t
    for u in [v for v in grid(schedule.T, points).flip(0).tolist() if v <= t] + [0]:
        if u == t:
            continue
        x = ddim_step(x, teacher(x, torch.full((x.shape[0],), t, device=x.device)), schedule.alpha_bar[t],
                      schedule.alpha_bar[u], eta=0.0, noise=None)
        t = u
    return x


# --8<-- [start:sample]
def consistency_sample(model, x_T: torch.Tensor, schedule: Schedule, timesteps: list[int],
                       generator: torch.Generator | None = None, prediction: str = "epsilon") -> torch.Tensor:
    """Multistep consistency sampling: x <- f(x_T, t_0); for each later t: renoise x to t, x <- f(x_t, t).
    ``timesteps`` decrease; one network call each."""
    x = x_T
    for i, t in enumerate(timesteps):
        t = torch.full((x.shape[0],), t, device=x.device)
        if i > 0:  # renoise the previous answer to level t (DDPM Eq. 4)
            x = q_sample(x, t, torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device), schedule)
        x = consistency_function(model, x, t, schedule, prediction)
    return x
# --8<-- [end:sample]


def exact_gaussian(x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule, mean: float, std: float) -> torch.Tensor:
    """The exact consistency function of 1-D data N(mean, std^2) under the DDPM noising. Every marginal is Gaussian,
    N(sqrt(abar_t) mean, sd_t^2) with sd_t^2 = abar_t std^2 + 1 - abar_t, and the PF-ODE moves each point so that its
    standard score (x_t - sqrt(abar_t) mean) / sd_t stays fixed; f returns the trajectory's point at timestep 0 (the
    boundary, noise level abar_0), so f(x, 0) = x."""
    def level(t):
        abar = gather(schedule.alpha_bar, t, x_t)
        return abar.sqrt(), (abar * std**2 + 1 - abar).sqrt()

    scale_t, sd_t = level(t)
    scale_0, sd_0 = level(torch.zeros_like(t))
    return scale_0 * mean + sd_0 * (x_t - scale_t * mean) / sd_t


PREDICTION = "sample"
#: distillation sizes per preset: training steps and learning rate (batch size and network are the teacher's)
DISTILL = {"quick": {"steps": 1500, "lr": 5e-4}, "full": {"steps": 30000, "lr": 1e-4}}


def distill_config(teacher: dict, teacher_weights: str, preset: str = "quick", *, steps: int | None = None,
                   seed: int = 0) -> dict:
    """The config of a consistency distillation of a trained DDPM (its config ``teacher``, its weights' digest):
    the teacher's data, schedule, network and batch size; the student starts from the teacher's weights."""
    if preset not in DISTILL:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(DISTILL)})")
    sizes = DISTILL[preset]
    return {**{k: v for k, v in teacher.items() if k not in ("steps", "train", "lr", "lr_decay", "seed")},
            "distill": {"teacher_weights": teacher_weights, "grid": GRID, "solver": "ddim",
                        "prediction": PREDICTION},
            "steps": steps or sizes["steps"], "lr": sizes["lr"], "lr_decay": "cosine", "seed": seed}


def distill(teacher_ckpt, config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Consistency distillation (:func:`loss_cd`) of the DDPM in ``teacher_ckpt`` on its own data. Returns
    (student, history)."""
    from refimpl.checkpoint import weights_digest
    from refimpl.data import sampler
    from refimpl.ddpm import load_for_sampling
    from refimpl.training import fit_config

    teacher, schedule, _ = load_for_sampling(teacher_ckpt, device)
    if weights_digest(teacher) != config["distill"]["teacher_weights"]:
        raise LineageError(f"{teacher_ckpt} is not the DDPM this distillation config was made for (weights differ)")
    student = load_for_sampling(teacher_ckpt, device)[0]
    teacher.requires_grad_(False)
    batch = sampler(config["data"])

    def loss_fn(student, generator):
        x0 = batch(config["batch_size"], generator).to(schedule.device)
        return loss_cd(student, teacher, x0, schedule, generator, config["distill"]["grid"],
                       config["distill"]["prediction"])

    return student.train(), fit_config(student.train(), loss_fn, config, out, MODEL_NAME, device, resume, progress)


def load_model(ckpt, device=None):
    """A consistency checkpoint's network, its schedule and the shape of one sample (like refimpl.ddpm's)."""
    from refimpl.schedules import make_schedule
    from refimpl.training import load_model as load

    net, checkpoint = load(ckpt, MODEL_NAME)
    device = torch.device(device or "cpu")
    shape = (2,) if checkpoint.config["model"]["kind"] == "mlp" else (1, 8, 8)
    return net.to(device), make_schedule(checkpoint.config["schedule"], checkpoint.config["T"]).to(device), shape


def sample_from_checkpoint(ckpt, n: int, *, steps: int = 1, seed: int = 0, device=None) -> torch.Tensor:
    """Load a consistency checkpoint and draw ``n`` samples with ``steps`` network calls."""
    net, schedule, shape = load_model(ckpt, device)
    timesteps = inference_timesteps(steps, schedule.T)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    with torch.no_grad():
        return consistency_sample(net, x_T, schedule, timesteps, generator)
