"""Flow matching and rectified flow: Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and Transfer
Data with Rectified Flow" (ICLR 2023), arXiv 2209.03003; Lipman, Chen, Ben-Hamu, Nickel & Le, "Flow Matching for
Generative Modeling" (ICLR 2023), arXiv 2210.02747.

Both train a velocity field by least squares on a path that joins a data point x and a noise sample eps. With the
straight path (rectified flow's linear interpolation, Flow Matching's optimal-transport path with sigma_min = 0)

    x_t = (1 - t) x + t eps,    t in [0, 1],    d x_t / dt = eps - x,

and the loss E_{t, x, eps} || v_theta(x_t, t) - (eps - x) ||^2 is minimised by the marginal velocity
v*(z, t) = E[eps - x | x_t = z], the field whose ODE d z / dt = v*(z, t) carries N(0, I) at t = 1 to the data at
t = 0 (Flow Matching, Theorems 1 and 2; rectified flow calls this the marginal-preserving property).

Time runs as in the diffusion pages and in diffusers / Stable Diffusion 3: t = 0 is data, t = 1 is noise. Both
papers write it the other way round (t = 0 noise, t = 1 data; X_t = t X_1 + (1 - t) X_0), so their velocity
X_1 - X_0 is our -(eps - x); the models are the same.

Three parameterisations of one model. Since x = x_t - t v and eps = x_t + (1 - t) v, a velocity model is also an
x-prediction and an eps-prediction; and because x_t / ((1 - t) + t) is nothing but a rescaled point of the
variance-preserving path z = alpha x + sigma eps at the same signal-to-noise ratio (1 - t) / t = alpha / sigma,
the same network runs as DDPM's eps-model (:func:`as_eps_model`) and, through refimpl.vpred, as a v-model.
DDIM's deterministic step on that eps-model is exactly an Euler step of the flow ODE (see :func:`euler_sample`).

Reflow (rectified flow): draw eps, solve the learned ODE to get x_hat, and train again on the pairs
(x_hat, eps) instead of independent pairs; the new flow's paths are straighter, so few Euler steps suffice.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from refimpl.core import LineageError, column, progress
from refimpl.schedules import Schedule, gather

#: the model name in a flow checkpoint: other papers' loaders refuse it
MODEL_NAME = "flow"
#: the network sees 1000 t, as diffusers' flow-matching models see sigma * num_train_timesteps
TIME_SCALE = 1000.0

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --8<-- [start:path]
def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path x_t = (1 - t) x + t eps (data at t = 0, noise at t = 1)."""
    t = column(t, x)
    return (1 - t) * x + t * eps


def target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The conditional velocity d x_t / dt = eps - x: the same for every t on one straight line."""
    return eps - x


def loss_cfm(model: Velocity, x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """Conditional flow matching / rectified flow's least squares: E || v_theta(x_t, t) - (eps - x) ||^2 with
    t ~ U(0, 1) drawn from ``generator``. ``eps`` is paired with ``x``: fresh noise (the independent coupling of
    the first flow) or the noise a previous flow mapped to ``x`` (reflow)."""
    device = generator.device if generator is not None else x.device
    t = torch.rand(x.shape[0], generator=generator, device=device, dtype=x.dtype).to(x.device)
    return F.mse_loss(model(interpolate(x, eps, t), t), target(x, eps))
# --8<-- [end:path]


# --8<-- [start:conversions]
def x_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x = x_t - t v (exact when v = eps - x)."""
    return x_t - column(t, x_t) * v


def eps_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps = x_t + (1 - t) v."""
    return x_t + (1 - column(t, x_t)) * v


def velocity_from_eps(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = (eps - x_t) / (1 - t): eps - x with x = (x_t - t eps) / (1 - t); undefined at t = 1."""
    return (eps - x_t) / (1 - column(t, x_t))


def velocity_from_score(x_t: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v* = -(x_t + t grad log p_t(x_t)) / (1 - t), from Tweedie's E[x | x_t] = (x_t + t^2 grad log p_t) / (1 - t):
    the marginal velocity is the probability-flow drift of this path written with the score (t < 1)."""
    t = column(t, x_t)
    return -(x_t + t * score) / (1 - t)


def as_eps_model(model: Velocity, schedule: Schedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A velocity model as DDPM's eps-model on ``schedule`` (code timesteps 0..T-1).

    The VP point z = alpha x + sigma eps (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)) divided by
    alpha + sigma is (1 - t) x + t eps with t = sigma / (alpha + sigma): the straight path's point with the same
    signal-to-noise ratio. So eps_hat(z) = eps_from_velocity(x_t, v(x_t, t), t) at that x_t and t."""
    def eps(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        alpha_bar = gather(schedule.alpha_bar, step, z)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        t = (sigma / (alpha + sigma)).reshape(-1)
        x_t = z / (alpha + sigma)
        return eps_from_velocity(x_t, model(x_t, t), t)
    return eps
# --8<-- [end:conversions]


# --- the exact velocity of a Gaussian mixture -------------------------------------------------------------

def exact_velocity(mixture) -> Velocity:
    """v*(z, t) = E[eps - x | x_t = z] for data ``mixture`` (refimpl.mixture.GaussianMixture), exactly.

    x_t = (1 - t) x + t eps is again a Gaussian mixture (``mixture.noised(1 - t, t)``), with score s_t. For t < 1/2
    the field is computed as -(z + t s_t(z)) / (1 - t) (:func:`velocity_from_score`); for t >= 1/2 as
    (z - E[x | z]) / t with Tweedie's E[x | z] = (z + t^2 s_t(z)) / (1 - t). The two are equal; each is the one
    without a cancellation where it is used (the second divides a difference of nearly equal terms by t, the
    first by 1 - t). At t = 1 it is z - E[x]. Float64 on the CPU, batched over rows of equal t
    (refimpl.mixture.by_level)."""
    from refimpl.mixture import by_level

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        if t == 1:
            return z - mixture.mean()
        score = mixture.noised(1 - t, t).score(z)
        if t < 0.5:
            return -(z + t * score) / (1 - t)
        return (z - (z + t * t * score) / (1 - t)) / t

    return by_level(velocity)


# --- sampling -------------------------------------------------------------------------------------------

# --8<-- [start:euler]
def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 down to 0: uniform, 1 - i / steps, then shifted by t -> s t / (1 + (s - 1) t)
    (diffusers' ``shift``; s > 1 spends more of the steps near t = 1, the noisy end). Float64."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise LineageError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise LineageError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def euler_sample(model: Velocity, noise: torch.Tensor, grid: torch.Tensor, *, trajectory: bool = False,
                 disable: bool = True) -> torch.Tensor:
    """Solve d x / dt = v(x, t) from t = grid[0] (noise) to grid[-1] with Euler steps
    x <- x + (t_next - t) v(x, t): one model call per step. Returns the end point, or with ``trajectory`` every
    point (len(grid), *noise.shape).

    With t_i = sigma_i / (alpha_i + sigma_i) this is DDIM (eta = 0) on :func:`as_eps_model`: DDIM's step is an
    Euler step in xbar = z / alpha over sigma / alpha, and x_t = xbar / (1 + sigma / alpha), t = (sigma / alpha) /
    (1 + sigma / alpha) is a change of variables under which that Euler step is this one."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    x, path = noise, [noise]
    for i in progress(range(len(grid) - 1), total=len(grid) - 1, desc="Euler", disable=disable):
        t = torch.full((x.shape[0],), float(grid[i]), dtype=x.dtype, device=x.device)
        x = x + float(grid[i + 1] - grid[i]) * model(x, t)
        path.append(x)
    return torch.stack(path) if trajectory else x
# --8<-- [end:euler]


# --8<-- [start:straightness]
def straightness(path: torch.Tensor, grid: torch.Tensor) -> float:
    """Rectified flow's straightness S = int_0^1 E || (x_1 - x_0) - v(x_t, t) ||^2 dt of an Euler trajectory
    ``path`` (len(grid), N, ...) from :func:`euler_sample`: the velocity of step i is (path[i+1] - path[i]) /
    (grid[i+1] - grid[i]) and the straight line's is (path[-1] - path[0]) / (grid[-1] - grid[0]); S = 0 exactly
    when every path is a straight line traversed at constant speed."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    dt = (grid[1:] - grid[:-1]).to(path.dtype)
    v = (path[1:] - path[:-1]) / dt.reshape(-1, *([1] * (path.ndim - 1)))
    line = (path[-1] - path[0]) / float(grid[-1] - grid[0])
    sq = (v - line).pow(2).flatten(2).sum(-1).mean(-1)  # (steps,): E || . ||^2 at each step
    return float((sq.double() * dt.abs().double()).sum())
# --8<-- [end:straightness]


# --- training and loading ------------------------------------------------------------------------------

def network(net: torch.nn.Module) -> Velocity:
    """A network of refimpl.nets (``net(x, timestep)``) as a velocity model ``(x_t, t) -> v``: it sees 1000 t."""
    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x_t, torch.as_tensor(t, device=x_t.device) * TIME_SCALE)
    return velocity


def train_config(data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """DDPM's network and optimiser for ``data`` and ``preset`` (refimpl.ddpm.train_config) on the straight path:
    the two runs differ only in the path and the target."""
    from refimpl.ddpm import train_config as ddpm_config

    config = ddpm_config(data, preset, steps=steps, seed=seed)
    del config["schedule"], config["T"]
    return {**config, "path": "straight"}


def reflow_config(parent: dict, parent_weights: str, preset: str = "quick", *, steps: int | None = None,
                  pairs: int | None = None, seed: int = 0) -> dict:
    """The config of a reflow run on a trained flow (its config ``parent``, its weights' digest): ``pairs`` noise
    samples solved to data points with ``pair_steps`` Euler steps of the parent, then ``steps`` of training on the
    pairs, starting from the parent's weights: the 2-rectified flow."""
    if preset not in REFLOW:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(REFLOW)})")
    sizes = REFLOW[preset]
    return {**{k: v for k, v in parent.items() if k not in ("steps", "train", "lr_decay")},
            "reflow": {"parent_weights": parent_weights, "pairs": pairs or sizes["pairs"],
                       "pair_steps": sizes["pair_steps"]},
            "steps": steps or sizes["steps"], "lr": sizes["lr"], "lr_decay": "cosine", "seed": seed}


#: reflow sizes per preset: pairs drawn once, Euler steps used to draw them, training steps and learning rate
REFLOW = {"quick": {"pairs": 10000, "pair_steps": 100, "steps": 500, "lr": 1e-3},
          "full": {"pairs": 200000, "pair_steps": 200, "steps": 20000, "lr": 2e-4}}


def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Train a first flow (independent pairs: data and fresh noise) on :func:`loss_cfm`. Returns (net, history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit_config

    net = model_from_config(config["model"], seed=config["seed"])
    batch = sampler(config["data"])
    device = torch.device(device or "cpu")

    def loss_fn(net, generator):
        x = batch(config["batch_size"], generator).to(device)
        eps = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(device)
        return loss_cfm(network(net), x, eps, generator)

    return net, fit_config(net, loss_fn, config, out, MODEL_NAME, device, resume, progress)


def draw_pairs(model: Velocity, n: int, shape: tuple[int, ...], steps: int, generator: torch.Generator,
               device=None, batch: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, eps): ``n`` noise samples and where ``steps`` uniform Euler steps of ``model`` take them."""
    device = torch.device(device or "cpu")
    eps = torch.randn((n, *shape), generator=generator)
    with torch.no_grad():
        x = torch.cat([euler_sample(model, chunk.to(device), time_grid(steps)).cpu() for chunk in eps.split(batch)])
    return x, eps


def reflow(parent_ckpt, config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Reflow: the pairs of the flow in ``parent_ckpt`` (drawn with ``config["seed"]``), then :func:`loss_cfm` on
    them, starting from the parent's weights. Returns (net, history)."""
    from refimpl.checkpoint import weights_digest
    from refimpl.training import fit_config

    parent, _ = load_model(parent_ckpt, device)
    if weights_digest(parent) != config["reflow"]["parent_weights"]:
        raise LineageError(f"{parent_ckpt} is not the flow this reflow config was made for (weights differ)")
    spec = config["reflow"]
    generator = torch.Generator().manual_seed(config["seed"])
    x_hat, eps = draw_pairs(network(parent), spec["pairs"], _shape(parent), spec["pair_steps"], generator, device)
    device = torch.device(device or "cpu")
    x_hat, eps = x_hat.to(device), eps.to(device)
    net = parent.train()

    def loss_fn(net, generator):
        idx = torch.randint(0, spec["pairs"], (config["batch_size"],), generator=generator,
                            device=generator.device).to(device)
        return loss_cfm(network(net), x_hat[idx], eps[idx], generator)

    return net, fit_config(net, loss_fn, config, out, MODEL_NAME, device, resume, progress)


def _shape(net: torch.nn.Module) -> tuple[int, ...]:
    """The shape of one sample of a refimpl.nets network: (data_dim,) for the MLP, (1, 8, 8) for the digits."""
    return (net.config["data_dim"],) if "data_dim" in net.config else (net.config.get("in_channels", 1), 8, 8)


def load_model(ckpt, device=None) -> tuple[torch.nn.Module, dict]:
    """A flow checkpoint's network on ``device`` (CPU unless given) and its config."""
    from refimpl.training import load_model as load

    net, checkpoint = load(ckpt, MODEL_NAME)
    return net.to(torch.device(device or "cpu")), checkpoint.config


def sample_from_checkpoint(ckpt, n: int, *, steps: int = 50, shift: float = 1.0, seed: int = 0, device=None,
                           disable: bool = False) -> torch.Tensor:
    """Load a flow checkpoint and draw ``n`` samples with ``steps`` Euler steps on :func:`time_grid`."""
    grid = time_grid(steps, shift)  # refuse bad steps before loading anything
    net, _ = load_model(ckpt, device)
    noise = torch.randn((n, *_shape(net)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return euler_sample(network(net), noise.to(next(net.parameters()).device), grid, disable=disable)
