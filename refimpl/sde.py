"""Score SDE: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations" (ICLR 2021), arXiv 2011.13456.

Data are diffused by a forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T = 1]; samples come from the
reverse-time SDE dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar run from T to 0, or from the
probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 grad log p_t(x), which has the same marginals p_t and gives
exact likelihoods by the instantaneous change of variables. Three forward SDEs: VE (the continuum limit of
SMLD/NCSN), VP (the continuum limit of DDPM) and sub-VP. Every one has a Gaussian perturbation kernel
p_0t(x_t | x_0) = N(mean_coef(t) x_0, std(t)^2 I), so the noised law of a Gaussian mixture is exact
(``GaussianMixture.noised(mean_coef, std)``).

Equation numbers of the paper are not cited here (we could not check them against the paper's text); the
names are the paper's. Conventions follow the authors' code (github.com/yang-song/score_sde_pytorch):
beta_min = 0.1, beta_max = 20; sigma_min = 0.01, sigma_max = 50 (their CIFAR-10 default); snr = 0.16 and one
corrector step; a network n(x, 999 t) predicts a noise-like output and score = -n / std(t).

A score model is any callable ``model(x, t) -> score`` with t a float tensor (B,) in (0, T]. Samplers integrate
``steps`` uniform steps of size (T - eps) / steps from t = T down to t = eps and return the sample at t = eps
(the authors' code instead takes its last step without noise; ours keeps it, so the output's law is p_eps).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from refimpl.core import LineageError, column, gaussian_like, progress
from refimpl.mixture import by_level

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _t64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64).detach().cpu()


# --8<-- [start:sdes]
class _SDE:
    """dx = f(x, t) dt + g(t) dw on [0, T]; subclasses give f, g, the kernel and the prior N(0, prior_std^2 I)."""

    T = 1.0
    prior_std = 1.0

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ p_T = N(0, prior_std^2 I) (float32; on the generator's device)."""
        device = generator.device if generator is not None else "cpu"
        return self.prior_std * torch.randn(shape, generator=generator, device=device)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, shape (B,)."""
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - z.flatten(1).pow(2).sum(1) / (2 * self.prior_std**2)

    def discretize(self, x: torch.Tensor, t, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward step x_{t+dt} = x_t + f_i + G_i z as (f_i, G_i): Euler-Maruyama, f dt and g sqrt(dt)."""
        return self.drift(x, t) * dt, self.diffusion(t) * math.sqrt(dt)

    def langevin_alpha(self, t, dt: float) -> torch.Tensor:
        """The factor alpha_i of the Langevin corrector's step size: 1 unless the SDE has a DDPM chain."""
        return torch.ones_like(_t64(t))


class VESDE(_SDE):
    """Variance exploding: dx = sqrt(d[sigma^2(t)]/dt) dw with sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    so g(t) = sigma(t) sqrt(2 log(sigma_max/sigma_min)); the continuum limit of SMLD's noise levels.

    Kernel: mean_coef = 1, std = sigma(t) (as in the authors' code; the exact variance sigma^2(t) - sigma_min^2
    differs by sigma_min^2 = 1e-4, i.e. p_0 is the data convolved with N(0, sigma_min^2 I)). Prior N(0, sigma_max^2 I).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise LineageError(f"VE SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _t64(t)

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def discretize(self, x: torch.Tensor, t, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z between the levels sigma(t - dt) and
        sigma(t), exactly; below t = 0 the previous level is sigma_0 = 0 (clean data), as in the authors' code."""
        t = _t64(t)
        previous = torch.where(t - dt >= 0, self.sigma(t - dt), torch.zeros_like(t))
        return torch.zeros_like(x), (self.sigma(t) ** 2 - previous**2).sqrt()


class VPSDE(_SDE):
    """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max - beta_min);
    the continuum limit of DDPM. Kernel: mean_coef = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min),
    std = sqrt(1 - mean_coef^2). Prior N(0, I)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise LineageError(f"VP SDE needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def config(self) -> dict:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _t64(t) * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t) -> torch.Tensor:
        t = _t64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return -0.5 * column(self.beta(t), x) * x

    def diffusion(self, t) -> torch.Tensor:
        return self.beta(t).sqrt()

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        log_mean = self.log_mean_coef(t)
        return log_mean.exp(), (-torch.expm1(2 * log_mean)).sqrt()

    def discretize(self, x: torch.Tensor, t, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z with beta_i = beta(t) dt: for t = i/(N-1)
        and dt = 1/N this is DDPM's linear schedule beta_i = beta_min/N + i (beta_max - beta_min)/(N (N-1)).
        To first order in dt it is Euler-Maruyama: sqrt(1 - beta dt) - 1 = -1/2 beta dt + O(dt^2)."""
        beta_i = self.beta(t) * dt
        return column((1 - beta_i).sqrt() - 1, x) * x, beta_i.sqrt()

    def langevin_alpha(self, t, dt: float) -> torch.Tensor:
        """alpha_i = 1 - beta_i of the DDPM chain (the VP corrector's step-size factor in the authors' code)."""
        return 1 - self.beta(t) * dt


class SubVPSDE(VPSDE):
    """sub-VP: dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw. Same mean as VP,
    std = 1 - mean_coef^2, whose square never exceeds VP's variance. No discrete chain: discretize is
    Euler-Maruyama (as in the authors' code); the corrector uses VP's alpha_i."""

    name = "subvp"

    def diffusion(self, t) -> torch.Tensor:
        return (self.beta(t) * -torch.expm1(4 * self.log_mean_coef(t))).sqrt()

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        log_mean = self.log_mean_coef(t)
        return log_mean.exp(), -torch.expm1(2 * log_mean)

    discretize = _SDE.discretize
# --8<-- [end:sdes]


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def make_sde(name: str, **kwargs) -> _SDE:
    """The SDE called ``name`` ("ve", "vp" or "subvp") with its parameters (paper defaults otherwise)."""
    if name not in SDES:
        raise LineageError(f"unknown SDE {name!r} (choose from {', '.join(SDES)})")
    return SDES[name](**kwargs)


def sde_from_config(cfg: dict) -> _SDE:
    """Inverse of ``sde.config()``."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise LineageError(f"not an SDE config: {cfg!r}")
    try:
        return make_sde(**cfg)
    except TypeError as err:
        raise LineageError(f"bad SDE config {cfg!r}: {err}") from None


# --- score models ----------------------------------------------------------------------

def exact_score(mixture, sde: _SDE) -> Score:
    """The closed-form score grad log p_t(x) of data ``mixture`` diffused by ``sde``: p_t is the mixture noised by
    the kernel, ``mixture.noised(mean_coef(t), std(t))``. Float64 on the CPU (differentiable in x, for the exact
    divergence), rows with equal t grouped (:func:`refimpl.mixture.by_level`)."""
    return by_level(lambda x, t: mixture.noised(*map(float, sde.marginal(t))).score(x))


# --8<-- [start:score_model]
def score_model(net: torch.nn.Module, sde: _SDE) -> Score:
    """A noise-predicting network as a score model, the parameterisation of the authors' code for continuous VP
    training: score(x, t) = -net(x, 999 t) / std(t). (Their VE models take std(t) as the time input instead.)"""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -net(x, 999 * t) / column(sde.marginal(t)[1], x)

    return model


def dsm_loss(score: Score, x0: torch.Tensor, sde: _SDE, generator: torch.Generator | None = None,
             eps: float = 1e-5, per_sample: bool = False) -> torch.Tensor:
    """Continuous-time denoising score matching with lambda(t) = std(t)^2: t ~ U(eps, T), z ~ N(0, I),
    x_t = mean_coef x_0 + std z, loss = lambda || score(x_t, t) + z / std ||^2 = || std score + z ||^2, averaged
    over dimensions (and over the batch unless ``per_sample``). With score = -n / std it is || z - n ||^2."""
    device = generator.device if generator is not None else x0.device
    t = (eps + (sde.T - eps) * torch.rand(x0.shape[0], generator=generator, device=device, dtype=torch.float64))
    z = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    mean_coef, std = (column(v, x0) for v in sde.marginal(t))
    x_t = mean_coef * x0 + std * z
    losses = (std * score(x_t, t.to(device=x0.device, dtype=x0.dtype)) + z).pow(2).flatten(1).mean(1)
    return losses if per_sample else losses.mean()
# --8<-- [end:score_model]


def tweedie_x0(x: torch.Tensor, t, score: torch.Tensor, sde: _SDE) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + std^2 score) / mean_coef (Tweedie's formula for the Gaussian kernel)."""
    mean_coef, std = sde.marginal(t)
    return (x + column(std**2, x) * score) / column(mean_coef, x)


# --- one step of each sampler (noise passed in; None gives the mean) --------------------------------

# --8<-- [start:steps]
def em_step(x: torch.Tensor, t, dt: float, score: torch.Tensor, sde: _SDE, noise: torch.Tensor | None) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE from t to t - dt:
    x <- x - [f(x, t) - g(t)^2 score] dt + g(t) sqrt(dt) z."""
    g = column(sde.diffusion(t), x)
    mean = x - (sde.drift(x, t) - g**2 * score) * dt
    return mean if noise is None else mean + g * math.sqrt(dt) * noise


def reverse_diffusion_step(x: torch.Tensor, t, dt: float, score: torch.Tensor, sde: _SDE,
                           noise: torch.Tensor | None) -> torch.Tensor:
    """The reverse-diffusion predictor: with the forward step (f_i, G_i) = sde.discretize(x, t, dt),
    x <- x - f_i + G_i^2 score + G_i z. For VE it is SMLD's chain reversed, for VP DDPM's."""
    f, G = sde.discretize(x, t, dt)
    G = column(G, x)
    mean = x - f + G**2 * score
    return mean if noise is None else mean + G * noise


def langevin_correct(x: torch.Tensor, t, score: torch.Tensor, sde: _SDE, noise: torch.Tensor, snr: float,
                     alpha=1.0) -> torch.Tensor:
    """One Langevin corrector step at level t with the signal-to-noise step rule:
    eps = 2 alpha (snr ||z|| / ||score||)^2, x <- x + eps score + sqrt(2 eps) z, where the norms are per-sample
    norms averaged over the batch (one step size for the batch, as in the authors' code and diffusers).
    ``alpha``: 1 for VE, alpha_i = 1 - beta_i for VP (``sde.langevin_alpha``)."""
    grad_norm = score.flatten(1).norm(dim=1).mean()
    noise_norm = noise.flatten(1).norm(dim=1).mean()
    step = column(2 * torch.as_tensor(alpha, dtype=torch.float64), x) * (snr * noise_norm / grad_norm) ** 2
    return x + step * score + (2 * step).sqrt() * noise


def ode_drift(x: torch.Tensor, t, score: torch.Tensor, sde: _SDE) -> torch.Tensor:
    """The probability-flow ODE's velocity dx/dt = f(x, t) - 1/2 g(t)^2 score."""
    return sde.drift(x, t) - 0.5 * column(sde.diffusion(t) ** 2, x) * score
# --8<-- [end:steps]


# --- samplers: sample(model, x_T, sde, *, steps, eps, generator, callback, disable) -> x_eps ------------

def _grid(steps: int, eps: float, sde: _SDE) -> tuple[list[float], float]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise LineageError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < eps < sde.T:
        raise LineageError(f"eps must lie in (0, {sde.T}), got {eps!r}")
    dt = (sde.T - eps) / steps
    return [sde.T - k * dt for k in range(steps)], dt


def _full(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


# --8<-- [start:em_sample]
@torch.no_grad()
def em_sample(model: Score, x_T: torch.Tensor, sde: _SDE, *, steps: int = 1000, eps: float = 1e-3,
              generator: torch.Generator | None = None, callback=None, disable: bool = False) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE, ``steps`` uniform steps from T to eps. ``callback(t, x_new, x0_pred)``
    after each step, x0_pred by Tweedie's formula at the step's start."""
    times, dt = _grid(steps, eps, sde)
    x = x_T
    for t in progress(times, desc="Score SDE (EM)", disable=disable):
        tb = _full(t, x)
        score = model(x, tb)
        x_new = em_step(x, tb, dt, score, sde, gaussian_like(x, generator))
        if callback is not None:
            callback(t, x_new, tweedie_x0(x, tb, score, sde))
        x = x_new
    return x
# --8<-- [end:em_sample]


# --8<-- [start:pc_sample]
@torch.no_grad()
def pc_sample(model: Score, x_T: torch.Tensor, sde: _SDE, *, steps: int = 1000, eps: float = 1e-3,
              snr: float = 0.16, corrector_steps: int = 1, generator: torch.Generator | None = None,
              callback=None, disable: bool = False) -> torch.Tensor:
    """Predictor-corrector sampling: at each level t, ``corrector_steps`` Langevin corrections, then one
    reverse-diffusion prediction to t - dt (the order of the authors' code and of diffusers' pipeline).
    (corrector_steps + 1) model calls per step."""
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise LineageError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    if not snr > 0:
        raise LineageError(f"snr must be positive, got {snr!r}")
    times, dt = _grid(steps, eps, sde)
    x = x_T
    for t in progress(times, desc="Score SDE (PC)", disable=disable):
        tb = _full(t, x)
        for _ in range(corrector_steps):
            x = langevin_correct(x, tb, model(x, tb), sde, gaussian_like(x, generator), snr, sde.langevin_alpha(tb, dt))
        score = model(x, tb)
        x_new = reverse_diffusion_step(x, tb, dt, score, sde, gaussian_like(x, generator))
        if callback is not None:
            callback(t, x_new, tweedie_x0(x, tb, score, sde))
        x = x_new
    return x
# --8<-- [end:pc_sample]


# --8<-- [start:ode_sample]
def _rk4(velocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    """One classical Runge-Kutta step of dx/dt = velocity(x, t) from t to t + h (h may be negative)."""
    k1 = velocity(x, t)
    k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = velocity(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@torch.no_grad()
def ode_sample(model: Score, x_T: torch.Tensor, sde: _SDE, *, steps: int = 100, eps: float = 1e-3,
               generator: torch.Generator | None = None, callback=None, disable: bool = False) -> torch.Tensor:
    """The probability-flow ODE from T to eps by fixed-step classical RK4 in t (4 model calls per step; the paper
    used an adaptive RK45). Deterministic: ``generator`` is accepted for the shared signature and unused."""
    times, dt = _grid(steps, eps, sde)

    def velocity(x, t):
        tb = _full(t, x)
        return ode_drift(x, tb, model(x, tb), sde)

    x = x_T
    for t in progress(times, desc="Score SDE (ODE)", disable=disable):
        x_new = _rk4(velocity, x, t, -dt)
        if callback is not None:
            tb = _full(t, x)
            callback(t, x_new, tweedie_x0(x, tb, model(x, tb), sde))
        x = x_new
    return x
# --8<-- [end:ode_sample]


SAMPLERS = {"em": em_sample, "pc": pc_sample, "ode": ode_sample}


# --- likelihood --------------------------------------------------------------------------

# --8<-- [start:likelihood]
def _velocity_divergence(model: Score, x: torch.Tensor, t: float, sde: _SDE, probe: torch.Tensor | None):
    """(v, div v) of the probability-flow ODE at (x, t): the exact trace of dv/dx by one backward pass per
    dimension if ``probe`` is None, else Hutchinson's estimate probe^T (dv/dx) probe."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        tb = _full(t, x)
        v = ode_drift(x, tb, model(x, tb), sde)
        flat = v.flatten(1)
        if probe is None:
            div = sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
                      for i in range(flat.shape[1]))
        else:
            div = (torch.autograd.grad((v * probe).sum(), x)[0] * probe).flatten(1).sum(1)
    return v.detach(), div.detach()


def log_likelihood(model: Score, x: torch.Tensor, sde: _SDE, *, steps: int = 100, eps: float = 1e-5,
                   divergence: str = "exact", generator: torch.Generator | None = None, prior=None,
                   disable: bool = True) -> torch.Tensor:
    """log p_eps(x) in nats per sample, (B,), by the instantaneous change of variables along the probability-flow
    ODE: log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div v(x(t), t) dt, with x and the integral solved
    together by ``steps`` RK4 steps from eps to T. ``divergence``: "exact" (autograd, D backward passes) or
    "hutchinson" (one Rademacher probe per sample drawn from ``generator``, fixed along the path: unbiased).
    ``prior``: log p_T as a callable, default ``sde.prior_log_prob`` (the true p_T differs from the prior slightly;
    tests pass the exact one to measure the ODE error alone)."""
    if divergence not in ("exact", "hutchinson"):
        raise LineageError(f"unknown divergence {divergence!r} (choose exact or hutchinson)")
    times, dt = _grid(steps, eps, sde)
    probe = None
    if divergence == "hutchinson":
        device = generator.device if generator is not None else x.device
        probe = (torch.randint(0, 2, x.shape, generator=generator, device=device) * 2 - 1).to(x)

    def velocity(state, t):
        v, div = _velocity_divergence(model, state[:, :-1].reshape(x.shape), t, sde, probe)
        return torch.cat([v.flatten(1), div[:, None]], dim=1)

    state = torch.cat([x.flatten(1), torch.zeros_like(x[:, :1].flatten(1)[:, :1])], dim=1)
    for t in progress(times[::-1], desc="likelihood", disable=disable):
        state = _rk4(velocity, state, t - dt, dt)  # times[::-1] are the step ends eps + k dt, starting at eps + dt
    z = state[:, :-1].reshape(x.shape)
    return (prior or sde.prior_log_prob)(z) + state[:, -1]
# --8<-- [end:likelihood]


def bits_per_dim(log_p: torch.Tensor, dim: int) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension, -log p / (dim ln 2). (For 8-bit images the paper's code
    also rescales to [0, 256) and dequantises; for continuous toy data this is the whole conversion.)"""
    return -log_p / (dim * math.log(2))


# --- training ----------------------------------------------------------------------

#: toy sizes per preset (2-D data, MLP); a preset changes sizes, never the algorithm
PRESETS = {
    "quick": {"steps": 4000, "batch_size": 256, "lr": 2e-3, "model": {"kind": "mlp", "hidden": 128, "depth": 3}},
    "full": {"steps": 30000, "batch_size": 1024, "lr": 1e-3, "model": {"kind": "mlp", "hidden": 512, "depth": 4}},
}
#: the VE SDE's sigma_max on the 2-D toys (our choice, instead of the image default 50): about twice the largest
#: distance between two points of the unit-variance toys (3.6 to 6.0), so that p_T is close to N(0, sigma_max^2 I)
TOY_SIGMA_MAX = 10.0
TRAIN_EPS = 1e-5  # t ~ U(eps, 1) in training, as in the authors' code


def toy_sde(name: str) -> _SDE:
    """The SDE used for the 2-D toys: paper defaults, except VE's sigma_max = TOY_SIGMA_MAX."""
    return make_sde(name, sigma_max=TOY_SIGMA_MAX) if name == "ve" else make_sde(name)


def train_config(sde: str, data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a Score SDE run on a 2-D toy: SDE, data, model and optimisation sizes of ``preset``."""
    from refimpl.data import TOY_2D
    from refimpl.nets import build_model, model_config

    if data not in TOY_2D:
        raise LineageError(f"unknown dataset {data!r} for Score SDE (choose from {', '.join(TOY_2D)})")
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    return {"sde": toy_sde(sde).config(), "data": data, "eps": TRAIN_EPS, "seed": seed,
            "model": model_config(build_model(**sizes["model"], data_dim=2)),
            "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Minimise ``dsm_loss`` of ``score_model(net, sde)`` on batches of the toy data with refimpl.training.fit.
    Returns (net, loss history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit

    sde = sde_from_config(config["sde"])
    net = model_from_config(config["model"], seed=config["seed"])
    batch = sampler(config["data"])
    model = score_model(net, sde)

    def loss_fn(net, generator):
        x0 = batch(config["batch_size"], generator).to(next(net.parameters()).device)
        return dsm_loss(model, x0, sde, generator, eps=config["eps"])

    history = fit(net, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="sde", config=config,
                  device=device, seed=config["seed"], batch_size=config["batch_size"], resume=resume,
                  progress=progress)
    return net, history
# --8<-- [end:train]


def load_for_sampling(ckpt, device=None) -> tuple[Score, _SDE, dict]:
    """(score model on ``device``, its SDE, the run's config) from a checkpoint written by :func:`train`;
    bad checkpoints -> LineageError."""
    from refimpl.training import load_model

    net, checkpoint = load_model(ckpt, "sde")
    sde = sde_from_config(checkpoint.config.get("sde"))
    return score_model(net.to(torch.device(device or "cpu")), sde), sde, checkpoint.config


def sample_from_checkpoint(ckpt, n: int, *, sampler: str = "em", steps: int = 1000, seed: int = 0, device=None,
                           callback=None, disable: bool = False) -> torch.Tensor:
    """Load a Score SDE checkpoint and draw ``n`` 2-D samples with ``sampler`` ("em", "pc" or "ode")."""
    if sampler not in SAMPLERS:
        raise LineageError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    device = torch.device(device or "cpu")
    model, sde, _ = load_for_sampling(ckpt, device)
    generator = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, 2), generator).to(device)
    return SAMPLERS[sampler](model, x_T, sde, steps=steps, generator=generator, callback=callback, disable=disable)
