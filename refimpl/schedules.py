"""Noise schedules and the quantities derived from them.

A schedule is a sequence of betas; everything else follows (DDPM Sec. 2):
``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s`` (Eq. 4) and the
posterior variance ``beta_tilde_t`` (Eq. 7). So do the forward process every variance-preserving
paper shares, from the 2015 model on: :func:`q_sample` (q(x_t | x_0)) and :func:`posterior`
(q(x_{t-1} | x_t, x_0)), and :func:`timesteps`, the sub-sequences that DDIM samples and improved
DDPM respaces on.

Timesteps in code are 0-indexed like diffusers: index ``t`` in ``0..T-1`` is the
paper's timestep ``t + 1``. So ``alpha_bar[0]`` is the paper's alpha_bar_1 and
``alpha_bar_prev[0] = 1`` is the paper's alpha_bar_0.
"""

from __future__ import annotations

import math

import torch

from refimpl.core import LineageError

SCHEDULES = ("linear", "cosine")
SPACINGS = ("uniform", "quadratic")  # timestep sub-sequences, see timesteps()


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DDPM Sec. 4: betas rising linearly from beta_1 = 1e-4 to beta_T = 0.02.

    With the default float32 this is exactly how diffusers' ``DDPMScheduler(beta_schedule="linear")``
    builds it (a float32 ``torch.linspace``, then a float32 cumprod in ``Schedule``), so that our
    schedule and theirs agree bit for bit.
    """
    return torch.linspace(beta_start, beta_end, T, dtype=dtype)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021) Eq. (17): alpha_bar(t) = f(t) / f(0),
    f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    clipped at ``max_beta`` (0.999) so that the last step is not a pure-noise jump.

    Computed in float64 and returned in ``dtype``; the default float32 equals diffusers'
    "squaredcos_cap_v2" betas bit for bit.
    """

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64).to(dtype)


class Schedule:
    """The DDPM forward process for a sequence of betas (DDPM Eqs. 2, 4, 7).

    Attributes (all tensors of shape (T,), in the betas' dtype, code index t = paper t+1):
    ``betas``, ``alphas`` = 1 - beta, ``alpha_bar`` (Eq. 4, cumulative product, computed in
    the betas' dtype like diffusers' ``alphas_cumprod``), ``alpha_bar_prev`` (alpha_bar one
    step earlier, 1 at the first step), ``beta_tilde`` (posterior variance, Eq. 7) and
    ``snr`` = alpha_bar / (1 - alpha_bar).
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas)
        if betas.ndim != 1 or betas.numel() == 0:
            raise LineageError("betas must be a non-empty 1-D tensor")
        if not torch.is_floating_point(betas):
            betas = betas.to(torch.float32)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise LineageError("every beta must lie in (0, 1)")
        self.T = betas.numel()
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones_like(self.alpha_bar[:1]), self.alpha_bar[:-1]])
        self.beta_tilde = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * betas
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with every tensor on ``device``."""
        out = Schedule.__new__(Schedule)
        for key, value in vars(self).items():
            setattr(out, key, value.to(device) if isinstance(value, torch.Tensor) else value)
        return out

    def __repr__(self) -> str:
        return f"Schedule(T={self.T}, beta_1={self.betas[0].item():.3g}, beta_T={self.betas[-1].item():.3g})"


def make_schedule(name: str, T: int) -> Schedule:
    """A schedule by name: "linear" (DDPM) or "cosine" (improved DDPM)."""
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise LineageError(f"the number of timesteps T must be a positive integer, got {T!r}")
    if name == "linear":
        return Schedule(linear_betas(T))
    if name == "cosine":
        return Schedule(cosine_betas(T))
    raise LineageError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)})")


def gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` for int64 timesteps ``t`` of shape (B,), shaped (B, 1, ..., 1) to
    broadcast against ``x`` and cast to x's device and dtype."""
    out = values.to(x.device)[t.to(x.device)]
    return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)


# --- the forward process of every variance-preserving paper (2015, DDPM and after) --------------------

# --8<-- [start:q_sample]
def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """DDPM Eq. (4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a draw from q(x_t | x_0)."""
    alpha_bar = gather(schedule.alpha_bar, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
# --8<-- [end:q_sample]


# --8<-- [start:posterior]
def posterior(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule):
    """DDPM Eqs. (6)-(7): q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) with
    mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
             + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.
    Returns (mean, variance); the variance is shaped to broadcast against x_t."""
    beta = gather(schedule.betas, t, x_t)
    alpha = gather(schedule.alphas, t, x_t)
    alpha_bar = gather(schedule.alpha_bar, t, x_t)
    alpha_bar_prev = gather(schedule.alpha_bar_prev, t, x_t)
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 \
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    variance = gather(schedule.beta_tilde, t, x_t)
    return mean, variance
# --8<-- [end:posterior]


# --- sub-sequences of timesteps: DDIM's sampler and improved DDPM's respacing -------------------------

# --8<-- [start:timesteps]
def timesteps(T: int, steps: int, spacing: str = "uniform") -> list[int]:
    """DDIM Appendix D.2: the increasing sub-sequence tau of code timesteps that the sampler visits.

    The paper picks tau_i = floor(c i) ("linear", here "uniform") or tau_i = floor(c i^2)
    ("quadratic"), "with c such that tau_{-1} is close to T". We read the rule as the authors'
    released code does (ermongroup/ddim, runners/diffusion.py: ``range(0, T, T // S)`` and
    ``int(linspace(0, sqrt(0.8 T), S) ** 2)``): i = 0, ..., S-1 with S = ``steps``, on the
    0-indexed code timesteps, so

        uniform:   tau_i = floor(c i),    c = T / S      (0, T/S, 2T/S, ..., T - T/S)
        quadratic: tau_i = floor(c i^2),  c = T / S^2    (0, T/S^2, 4T/S^2, ..., T (1 - 1/S)^2)

    computed exactly in integers. Code tau_i is the paper's timestep tau_i + 1: the first element
    is always code 0 = the paper's t = 1, and the last reverse step goes from there to x_0 with
    alpha_bar_prev = 1 (the paper's alpha_bar_0 := 1). In both rules c is the one that cuts
    [0, T) into S equal pieces (in t, or in sqrt(t)) and tau_i is where piece i starts.

    Differences from other readings, all deliberate: the authors' code uses c = T // S, which
    gives more than S timesteps when S does not divide T (S = 7: 8 of them); ours always gives
    exactly S, and equals diffusers' ``timestep_spacing="leading"`` (c = T // S) whenever
    floor(T i / S) = (T // S) i for all i (any S dividing T, also S = 3). The authors' quadratic
    uses c = 0.8 T / (S-1)^2, which repeats timesteps once S > sqrt(0.8 T) + 1 (29 for T = 1000;
    a repeated timestep is a no-op step); ours needs c >= 1 to be strictly increasing, so the
    quadratic rule is refused for steps > floor(sqrt(T)) (31 for T = 1000). Reading the rule
    with the paper's 1-indexed t and i = 1..S instead (tau_S = T exactly) gives diffusers'
    ``"trailing"`` spacing, which starts from the last timestep even for tiny S; with this
    rule a single step (S = 1) starts at code 0 and returns almost the noise it was given.

    Raises LineageError for steps <= 0, steps > T, an unknown spacing, or quadratic steps > sqrt(T).
    """
    for name, value in (("T", T), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LineageError(f"{name} must be a positive integer, got {value!r}")
    if steps > T:
        raise LineageError(f"steps must be at most the number of training timesteps T={T}, got {steps}")
    if spacing == "uniform":
        return [(T * i) // steps for i in range(steps)]  # floor(c i), c = T / S
    if spacing == "quadratic":
        if steps * steps > T:
            raise LineageError(f"quadratic spacing with T={T} allows at most {math.isqrt(T)} steps "
                               f"(floor(c i^2) with c = T/steps^2 < 1 repeats timesteps), got {steps}; "
                               "use uniform spacing")
        return [(T * i * i) // (steps * steps) for i in range(steps)]  # floor(c i^2), c = T / S^2
    raise LineageError(f"unknown spacing {spacing!r} (choose from {', '.join(SPACINGS)})")
# --8<-- [end:timesteps]
