"""DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), arXiv 2010.02502.

The DDPM training objective only constrains the marginals q(x_t | x_0), so one trained noise
predictor eps_theta serves a whole family of generative processes indexed by sigma (Eq. 12):

    x_{t-1} = sqrt(alpha_bar_{t-1}) x0_pred + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps + sigma_t z,
    x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t),

with sigma_t(eta) of Eq. (16): eta = 1 is DDPM's ancestral sampler, eta = 0 the deterministic DDIM.
The same update works between the elements of any increasing sub-sequence tau of the timesteps
(Sec. 4.2), so sampling takes ``steps`` model calls instead of T; at eta = 0 it is the Euler
discretisation (Eq. 13) of an ODE (Eq. 14) that can also be run forwards, x_0 -> x_T (Sec. 5.4).
There is no DDIM training: a DDIM samples a DDPM checkpoint.

Notation: the DDIM paper writes alpha_t for DDPM's alpha_bar_t (the cumulative product); this module
uses DDPM's alpha_bar throughout. Timesteps in code are 0-indexed like diffusers: code ``t`` in
``0..T-1`` is the paper's ``t + 1``, so ``schedule.alpha_bar[t]`` is the paper's alpha_bar_{t+1}, and
the paper's alpha_bar_0 := 1 (DDIM Sec. 4.1, "we define alpha_0 := 1") is the value the last reverse
step lands on. A model is any callable ``model(x_t, t) -> eps`` with ``t`` an int64 tensor of shape (B,).
"""

from __future__ import annotations


import torch

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.ddpm import Model, predict_x0
from refimpl.schedules import Schedule, timesteps



def _levels_as_tensors(alpha_bar_t, alpha_bar_prev, like: torch.Tensor | None = None):
    """Tensors stay as given (their dtype decides the arithmetic, as in diffusers); Python numbers become
    0-d tensors in the dtype of the other level, else of ``like``, else float64."""
    ref = next((a for a in (alpha_bar_t, alpha_bar_prev) if isinstance(a, torch.Tensor)), like)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
    device = ref.device if ref is not None else None
    return tuple(a if isinstance(a, torch.Tensor) else torch.tensor(float(a), dtype=dtype, device=device)
                 for a in (alpha_bar_t, alpha_bar_prev))


# --8<-- [start:ddim_step]
def sigma_eta(alpha_bar_t, alpha_bar_prev, eta: float):
    """DDIM Eq. (16): the noise scale
    sigma(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
    of a step from alpha_bar_t to alpha_bar_prev (consecutive elements of tau).
    eta = 1 gives DDPM's posterior standard deviation sqrt(beta_tilde) (DDPM Eq. 7); eta = 0 gives 0."""
    alpha_bar_t, alpha_bar_prev = _levels_as_tensors(alpha_bar_t, alpha_bar_prev)
    if eta == 0:
        return torch.zeros_like(alpha_bar_t)
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """DDIM Eq. (12), from noise level alpha_bar_t to alpha_bar_prev, given the predicted noise eps:

        x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z,
        x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)      ("predicted x_0"),

    with sigma = sigma_eta(alpha_bar_t, alpha_bar_prev, eta) (Eq. 16) and z = ``noise`` (unused
    when sigma is 0: eta = 0, or the last step, alpha_bar_prev = 1; the square root's argument is
    clamped at 0 against rounding, ddim_sample refuses an eta > 1 that makes it negative).
    At eta = 0 this is Eq. (13),
    x_prev / sqrt(alpha_bar_prev) = x_t / sqrt(alpha_bar_t) + (sqrt((1 - alpha_bar_prev) / alpha_bar_prev)
    - sqrt((1 - alpha_bar_t) / alpha_bar_t)) eps, which holds in either direction (inversion runs it
    with alpha_bar_prev < alpha_bar_t). ``alpha_bar_*`` are floats or 0-d tensors.
    """
    alpha_bar_t, alpha_bar_prev = _levels_as_tensors(alpha_bar_t, alpha_bar_prev, like=x_t)
    sigma = sigma_eta(alpha_bar_t, alpha_bar_prev, eta)
    x0_pred = (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps  # "direction pointing to x_t"
    x_prev = alpha_bar_prev.sqrt() * x0_pred + direction
    if eta > 0 and bool(sigma > 0):
        x_prev = x_prev + sigma * noise
    return x_prev
# --8<-- [end:ddim_step]


def _levels(schedule: Schedule, tau: list[int]) -> torch.Tensor:
    """alpha_bar at [paper t = 0, tau_0, ..., tau_{S-1}]: alpha_bar_0 := 1 (Sec. 4.1) prepended."""
    index = torch.tensor(tau, dtype=torch.long, device=schedule.device)
    return torch.cat([torch.ones_like(schedule.alpha_bar[:1]), schedule.alpha_bar[index]])


# --8<-- [start:ddim_sample]
@torch.no_grad()
def ddim_sample(model: Model, x_T: torch.Tensor, schedule: Schedule, *, steps: int = 50, eta: float = 0.0,
                spacing: str = "uniform", generator: torch.Generator | None = None, callback=None,
                disable: bool = False) -> torch.Tensor:
    """DDIM Eq. (12) with sigma(eta) of Eq. (16) along reversed(tau) (Sec. 4.2, Appendix D.3):
    x_{tau_{S-1}} = x_T -> x_{tau_{S-2}} -> ... -> x_{tau_0} -> x_0, one model call per step.

    tau = ``timesteps(schedule.T, steps, spacing)``; the last step (from code tau_0 = 0) goes to
    alpha_bar_0 = 1 and returns the predicted x_0. When eta > 0 a noise z is drawn from
    ``generator`` (on its own device, then moved to x_T's) in x_T's dtype, one draw of x_T's shape
    at *every* step, the last included (where sigma = 0 and z is unused): that is the order in
    which diffusers' DDIMScheduler.step draws its variance noise, so both agree given the same
    seed. eta = 0 draws nothing. ``callback(t, x, x0_pred)`` is called after each step with the
    new sample and the x_0 predicted at code timestep t. eta is a free parameter >= 0 (Sec. 5);
    eta > 1 is refused, before any model call, if it makes 1 - alpha_bar_prev - sigma^2 negative.
    """
    if not eta >= 0:
        raise LineageError(f"eta must be >= 0, got {eta}")
    tau = timesteps(schedule.T, steps, spacing)
    schedule = schedule.to(x_T.device)
    levels = _levels(schedule, tau)
    if eta > 1:  # for eta <= 1, 1 - alpha_bar_prev - sigma^2 >= 0 exactly (up to rounding, clamped in ddim_step)
        sigma1 = sigma_eta(levels[1:], levels[:-1], 1.0)
        if bool((1 - levels[:-1] - eta**2 * sigma1**2 < -4 * torch.finfo(sigma1.dtype).eps).any()):
            largest = ((1 - levels[:-1]) / sigma1**2)[sigma1 > 0].min().sqrt().item()
            raise LineageError(f"eta={eta} is too large for {steps} {spacing} steps: sigma^2 would exceed "
                               f"1 - alpha_bar_prev in Eq. (12) (largest possible eta here: {largest:.4f})")
    x = x_T
    for i in progress(range(len(tau) - 1, -1, -1), total=len(tau), desc="DDIM", disable=disable):
        t = tau[i]
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = model(x, t_batch)
        noise = None
        if eta > 0:
            noise = gaussian_like(x, generator)
        x_prev = ddim_step(x, eps, levels[i + 1], levels[i], eta, noise)
        if callback is not None:
            callback(t, x_prev, predict_x0(x, t_batch, eps, schedule))
        x = x_prev
    return x
# --8<-- [end:ddim_sample]


# --8<-- [start:ddim_invert]
@torch.no_grad()
def ddim_invert(model: Model, x0: torch.Tensor, schedule: Schedule, *, steps: int = 50, spacing: str = "uniform",
                callback=None, disable: bool = False) -> torch.Tensor:
    """DDIM Sec. 4.3 / 5.4: encode x_0 -> x_T by running the eta = 0 update, Eq. (13), forwards in time,
    x_0 -> x_{tau_0} -> ... -> x_{tau_{S-1}} (the reverse of the ODE of Eq. 14), ``steps`` model calls.

    Each step is explicit Euler from the current level: eps = model(x, tau_{i-1}) at the sample's
    own timestep, then Eq. (13) up to alpha_bar at tau_i. The first step starts from x_0
    (alpha_bar_0 = 1), for which the model has no timestep; it uses tau_0 = 0, the nearest.
    (diffusers' DDIMInverseScheduler instead evaluates the model at the *target* timestep.)
    Decoding the result with ``ddim_sample(..., eta=0)`` and the same steps and spacing returns
    x_0 up to the O(1/steps) discretisation error. ``callback(t, x, x0_pred)`` is called after
    each step with the new sample (now at code timestep t) and the x_0 predicted at the source.
    """
    tau = timesteps(schedule.T, steps, spacing)
    schedule = schedule.to(x0.device)
    levels = _levels(schedule, tau)
    x = x0
    for i in progress(range(len(tau)), total=len(tau), desc="DDIM inversion", disable=disable):
        t_source = tau[max(i - 1, 0)]
        t_batch = torch.full((x.shape[0],), t_source, dtype=torch.long, device=x.device)
        eps = model(x, t_batch)
        x_next = ddim_step(x, eps, levels[i], levels[i + 1], 0.0, None)
        if callback is not None:
            x0_pred = (x - (1 - levels[i]).sqrt() * eps) / levels[i].sqrt()
            callback(tau[i], x_next, x0_pred)
        x = x_next
    return x
# --8<-- [end:ddim_invert]


# --8<-- [start:slerp]
def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha) -> torch.Tensor:
    """DDIM Sec. 5.3 / Appendix D.5: spherical linear interpolation of latents x_T,

        z(alpha) = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1,
        theta = arccos(<z0, z1> / (|z0| |z1|)).

    A batch (B, ...) is interpolated sample by sample (angles over all but the first dimension);
    a 1-D tensor is one vector. ``alpha`` is a float or broadcasts against (B, 1, ..., 1).
    Where z0 and z1 are (anti)parallel (sin theta < 1e-7), the formula is 0/0 and the linear
    interpolation (its limit for theta -> 0) is returned instead.
    """
    dims = tuple(range(1, z0.ndim)) or (0,)
    cos = (z0 * z1).sum(dims, keepdim=True) / (z0.norm(dim=dims, keepdim=True) * z1.norm(dim=dims, keepdim=True))
    theta = torch.arccos(cos.clamp(-1, 1))
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    sin = torch.sin(theta).clamp(min=1e-7)
    spherical = torch.sin((1 - alpha) * theta) / sin * z0 + torch.sin(alpha * theta) / sin * z1
    return torch.where(torch.sin(theta) > 1e-7, spherical, (1 - alpha) * z0 + alpha * z1)
# --8<-- [end:slerp]


# --- sampling a checkpoint ---------------------------------------------------------------

def sample_from_checkpoint(ckpt, n: int, *, steps: int = 50, eta: float = 0.0, spacing: str = "uniform",
                           seed: int = 0, device=None, callback=None, disable: bool = False) -> torch.Tensor:
    """Load a DDPM checkpoint (DDIM trains nothing: Sec. 3-4) and draw ``n`` samples with DDIM.

    x_T and then the noise come from one generator seeded with ``seed``, as in DDPM's sampler, so
    ``steps = T, eta = 1`` reproduces ``refimpl.ddpm.sample_from_checkpoint`` (DDPM, fixed_small)."""
    from refimpl.ddpm import load_for_sampling

    if not eta >= 0:
        raise LineageError(f"eta must be >= 0, got {eta}")
    model, schedule, shape = load_for_sampling(ckpt, device)
    timesteps(schedule.T, steps, spacing)  # refuse bad steps before drawing anything
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    return ddim_sample(model, x_T, schedule, steps=steps, eta=eta, spacing=spacing, generator=generator,
                       callback=callback, disable=disable)
