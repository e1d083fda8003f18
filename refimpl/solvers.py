"""Fast ODE samplers for a DDPM eps-model: DPM-Solver++(2M) and EDM's deterministic Heun sampler.

DPM-Solver: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (NeurIPS 2022), arXiv 2206.00927; DPM-Solver++: the same authors,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", arXiv 2211.01095.
EDM: Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative Models"
(NeurIPS 2022), arXiv 2206.00364.

Both solve the probability-flow ODE of the DDPM forward process (DDIM's Eq. 14) with a second-order
method, so the same trained eps-model samples in tens of model calls instead of T. Notation
(DPM-Solver's): alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), the half log-SNR
lambda_t = log(alpha_t / sigma_t); EDM's variables for a VP model (scaling s(t) = alpha_t) are xbar = x / alpha_t and sigma_edm = sigma_t / alpha_t = exp(-lambda_t).
Timesteps in code are 0-indexed like diffusers: code ``t`` in ``0..T-1`` is the paper's ``t + 1``.
Both samplers walk an increasing sub-sequence tau of code timesteps downwards, as DDIM does, and
after tau_0 take one last step to alpha_bar_0 := 1 (sigma = 0, lambda = +inf), returning x_0.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from refimpl.core import LineageError, progress
from refimpl.ddim import ddim_sample
from refimpl.schedules import timesteps
from refimpl.ddpm import Model
from refimpl.schedules import Schedule

SPACINGS = ("uniform", "quadratic", "karras")


# --8<-- [start:karras_timesteps]
def karras_timesteps(schedule: Schedule, steps: int, rho: float = 7.0) -> list[int]:
    """EDM Eq. (5) on a discrete schedule: the increasing sub-sequence tau of code timesteps for
    ``steps`` noise levels

        sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..N-1,

    with sigma = sqrt((1 - alpha_bar) / alpha_bar), sigma_max = sigma(code T-1), sigma_min = sigma(code 0).
    Each sigma_i is mapped to the code timestep whose log sigma is nearest, because the model only takes
    integer t; the samplers then use that timestep's own sigma, never the unrounded sigma_i. (diffusers'
    ``use_karras_sigmas`` instead keeps sigma_i and hands the model an interpolated, non-integer t.)
    N = 1 gives [T - 1] (Eq. 5 is 0/0 there; the ramp starts at sigma_max).

    Near sigma_min the grid is denser than the schedule's own timesteps, so for large N two levels round
    to the same timestep: LineageError then, naming the largest N that works (78 for the linear schedule
    with T = 1000, 5 for the cosine schedule, whose last betas are capped at 0.999 and jump in sigma).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise LineageError(f"steps must be a positive integer, got {steps!r}")
    if not rho > 0:
        raise LineageError(f"rho must be > 0, got {rho}")
    alpha_bar = schedule.alpha_bar.detach().to("cpu", torch.float64)
    log_sigma = 0.5 * torch.log((1 - alpha_bar) / alpha_bar)  # increasing in t

    def nearest(n: int) -> list[int]:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = log_sigma[0].exp() ** (1 / rho), log_sigma[-1].exp() ** (1 / rho)
        levels = (hi + ramp * (lo - hi)) ** rho  # EDM Eq. (5): decreasing from sigma_max to sigma_min
        return (levels.log()[:, None] - log_sigma[None]).abs().argmin(dim=1).flip(0).tolist()

    tau = nearest(steps)
    if any(a >= b for a, b in zip(tau, tau[1:])):
        most = next(n for n in range(1, steps + 1) if len(set(nearest(n))) < n) - 1
        raise LineageError(f"karras spacing with rho={rho:g} on this schedule (T={schedule.T}) gives distinct "
                           f"timesteps for at most {most} steps, got {steps}; use fewer steps or uniform spacing")
    return tau
# --8<-- [end:karras_timesteps]


def sub_sequence(schedule: Schedule, steps: int, spacing: str, rho: float = 7.0) -> list[int]:
    """The increasing code timesteps tau for ``spacing``: "uniform" / "quadratic" are DDIM's rules
    (``refimpl.schedules.timesteps``, DDIM Appendix D.2), "karras" is :func:`karras_timesteps` (EDM Eq. 5)."""
    if spacing == "karras":
        return karras_timesteps(schedule, steps, rho)
    if spacing not in SPACINGS:
        raise LineageError(f"unknown spacing {spacing!r} (choose from {', '.join(SPACINGS)})")
    return timesteps(schedule.T, steps, spacing)


def _alpha_bar(schedule: Schedule, tau: list[int]) -> list[float]:
    """alpha_bar at each element of tau, as float64 Python numbers (coefficients keep x's dtype and device)."""
    return schedule.alpha_bar.detach().to("cpu", torch.float64)[tau].tolist()


def _t_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


# --8<-- [start:dpmpp_2m]
@torch.no_grad()
def dpmpp_2m_sample(model: Model, x_T: torch.Tensor, schedule: Schedule, *, steps: int = 20,
                    spacing: str = "karras", generator: torch.Generator | None = None, callback=None,
                    disable: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M), DPM-Solver++ Algorithm 2: multistep second order in the data prediction
    model x0 = (x - sigma eps) / alpha, from x_{tau_{S-1}} = x_T down the sub-sequence tau, one model
    call per step (NFE = steps). A step from s = t_{i-1} to t = t_i with h_i = lambda_t - lambda_s is

        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h_i} - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0(t_{i-1}) - 1 / (2 r_i) x0(t_{i-2}),    r_i = h_{i-1} / h_i,

    and the first step uses D_1 = x0(t_0) (first order: DPM-Solver++(1), which both papers show is DDIM
    with eta = 0).

    The last step, from tau_0 (code 0) to alpha_bar_0 := 1, has sigma_t = 0 and lambda_t = +inf: h is
    infinite, r = 0 and the second-order D_i is undefined. The algorithm's end time is a small
    epsilon > 0 instead; we handle sigma = 0 explicitly with a first-order step, whose limit is
    x_t = D = x0(tau_0): the sample is the data prediction at code 0 (diffusers does the same with
    ``final_sigmas_type="zero"``). With steps <= 2 every step is therefore first order.

    Default spacing "karras" (EDM Eq. 5, rho = 7; the combination diffusers users know as "DPM++ 2M
    Karras"). The DPM-Solver paper discusses time-uniform against logSNR-uniform steps, and the authors'
    code recommends time-uniform steps for high-resolution data and guided sampling. On the linear
    schedule time-uniform steps make the last lambda-step into code 0 long (10 steps: h = 3.53 from code
    100, after 0.75 from code 200; r = 0.21; tests/test_solvers.py computes them), and the linear extrapolation of x0 over it overshoots, so with
    10-20 uniform steps 2M is less accurate than DDIM; "karras" (which tends to logSNR-uniform as
    rho -> inf) puts more steps at low noise and is 4-7x more accurate at 10 steps (tests/test_solvers.py
    measures both). Karras spacing is limited to 78 steps on the linear schedule; use "uniform" beyond.

    ``generator`` is accepted for the common sampler signature and unused (the sampler is deterministic).
    ``callback(t, x, x0_pred)`` is called after each step with the new sample and the data prediction at
    code timestep t.
    """
    tau = sub_sequence(schedule, steps, spacing)
    alpha_bar = _alpha_bar(schedule, tau)
    alpha = [math.sqrt(a) for a in alpha_bar]
    sigma = [math.sqrt(1 - a) for a in alpha_bar]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]  # half log-SNR, increasing as t decreases
    x, x0_last, h_last = x_T, None, None
    for i in progress(range(len(tau) - 1, -1, -1), total=len(tau), desc="DPM-Solver++(2M)", disable=disable):
        eps = model(x, _t_batch(x, tau[i]))
        x0 = (x - sigma[i] * eps) / alpha[i]  # the data prediction model of DPM-Solver++
        if i == 0:  # to sigma = 0 (lambda = +inf): first order, e^{-h} = 0, x = D = x0
            x_next = x0
        else:
            h = lam[i - 1] - lam[i]
            if x0_last is None:
                D = x0  # first step: DPM-Solver++(1) = DDIM
            else:
                r = h_last / h
                D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_last
            x_next = (sigma[i - 1] / sigma[i]) * x - alpha[i - 1] * math.expm1(-h) * D
            h_last = h
        if callback is not None:
            callback(tau[i], x_next, x0)
        x, x0_last = x_next, x0
    return x
# --8<-- [end:dpmpp_2m]


# --8<-- [start:heun]
@torch.no_grad()
def heun_sample(model: Model, x_T: torch.Tensor, schedule: Schedule, *, steps: int = 10, spacing: str = "karras",
                rho: float = 7.0, generator: torch.Generator | None = None, callback=None,
                disable: bool = False) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic sampling, Heun's 2nd-order method; the stochastic
    sampler with S_churn = 0), on the VP model written as an EDM denoiser: in the variables
    xbar = x / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar),

        D(xbar; sigma) = xbar - sigma eps(xbar / sqrt(1 + sigma^2), t(sigma)),
        d = (xbar - D(xbar; sigma)) / sigma = eps,

    i.e. c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(1 + sigma^2), c_noise = the code timestep t, and the
    ODE is d xbar / d sigma = (xbar - D) / sigma = eps (EDM's probability-flow ODE with sigma(t) = t, s(t) = 1).
    Each step from sigma_i to sigma_{i+1} is an Euler predictor xbar' = xbar + (sigma_{i+1} - sigma_i) d_i
    and a trapezoidal corrector xbar + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2 with d'_i evaluated at
    (xbar', sigma_{i+1}), except the last step, to sigma = 0 (alpha_bar_0 := 1), which is Euler only and
    returns D(xbar; sigma(code 0)).
    NFE = 2 steps - 1. x_T is a VP sample at level tau_{S-1} (for "karras", code T-1), so the start is
    xbar = x_T / sqrt(alpha_bar) there (not EDM's N(0, sigma_max^2 I), which assumes sigma_max >> 1).

    The sigma levels are those of the integer timesteps tau (the model only takes integer t); default
    spacing "karras" with rho = 7, EDM Eq. (5), EDM's choice: it concentrates the steps at low noise.
    ``generator`` is unused (deterministic sampler, common
    signature). ``callback(t, x, x0_pred)`` is called after each step with the new sample in VP
    variables, x = sqrt(alpha_bar) xbar at the next level, and D(xbar; sigma) at code timestep t.
    """
    tau = sub_sequence(schedule, steps, spacing, rho)
    sig = [math.sqrt((1 - a) / a) for a in _alpha_bar(schedule, tau)]  # EDM sigma of each timestep

    def denoiser_eps(xbar: torch.Tensor, i: int) -> torch.Tensor:  # d = eps at (xbar, sigma_i)
        return model(xbar / math.sqrt(1 + sig[i] ** 2), _t_batch(xbar, tau[i]))

    xbar = x_T * math.sqrt(1 + sig[-1] ** 2)  # x_T / sqrt(alpha_bar(tau_{S-1}))
    for i in progress(range(len(tau) - 1, -1, -1), total=len(tau), desc="EDM Heun", disable=disable):
        d = denoiser_eps(xbar, i)
        sigma_next = sig[i - 1] if i > 0 else 0.0
        xbar_next = xbar + (sigma_next - sig[i]) * d  # Euler step
        if i > 0:  # second-order (trapezoidal) correction, skipped when sigma_next = 0
            d_prime = denoiser_eps(xbar_next, i - 1)
            xbar_next = xbar + (sigma_next - sig[i]) * (d + d_prime) / 2
        if callback is not None:
            callback(tau[i], xbar_next / math.sqrt(1 + sigma_next**2), xbar - sig[i] * d)
        xbar = xbar_next
    return xbar
# --8<-- [end:heun]


class Sampler(NamedTuple):
    """A sampler with the common signature, its model calls for ``steps``, and its default spacing."""

    sample: Callable[..., torch.Tensor]
    nfe: Callable[[int], int]
    spacing: str


#: the project's samplers by CLI name (DDIM at its default eta = 0: deterministic)
SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler(ddim_sample, lambda steps: steps, "uniform"),
    "dpmpp-2m": Sampler(dpmpp_2m_sample, lambda steps: steps, "karras"),
    "heun": Sampler(heun_sample, lambda steps: 2 * steps - 1, "karras"),
}


def nfe(name: str, steps: int) -> int:
    """Number of model evaluations of sampler ``name`` with ``steps`` steps."""
    if name not in SAMPLERS:
        raise LineageError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[name].nfe(steps)


# --- sampling a checkpoint ---------------------------------------------------------------

def sample_from_checkpoint(ckpt, n: int, *, sampler: str = "dpmpp-2m", steps: int = 20, spacing: str | None = None,
                           seed: int = 0, device=None, callback=None, disable: bool = False) -> torch.Tensor:
    """Load a DDPM checkpoint and draw ``n`` samples with ``sampler`` (a key of SAMPLERS); ``spacing``
    None means the sampler's default. x_T comes from one CPU generator seeded with ``seed``, as in
    ``refimpl.ddim.sample_from_checkpoint``, so every sampler starts from the same noise."""
    from refimpl.ddpm import load_for_sampling

    nfe(sampler, 1)  # refuse an unknown name
    entry = SAMPLERS[sampler]
    spacing = spacing or entry.spacing
    model, schedule, shape = load_for_sampling(ckpt, device)
    sub_sequence(schedule, steps, spacing)  # refuse bad steps before drawing anything (ddim refuses karras itself)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    return entry.sample(model, x_T, schedule, steps=steps, spacing=spacing, generator=generator,
                        callback=callback, disable=disable)
