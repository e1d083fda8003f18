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

import argparse
import math

import torch

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.ddpm import Model, predict_x0
from refimpl.schedules import Schedule

SPACINGS = ("uniform", "quadratic")


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


# --- command line ------------------------------------------------------------------------

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


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_commands(commands) -> None:
    """``python -m refimpl ddim sample``: DDIM sampling of a checkpoint written by ``ddpm train``."""
    from refimpl.cli import add_common, png_path, positive_int

    sample_cmd = commands.add_parser("sample", help="sample a trained DDPM with DDIM (Eq. 12) into a PNG")
    sample_cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by 'ddpm train'")
    sample_cmd.add_argument("--steps", type=positive_int, default=50, help="sampling steps S = len(tau) (default 50)")
    sample_cmd.add_argument("--eta", type=_non_negative_float, default=0.0,
                            help="noise scale eta >= 0 of Eq. (16): 0 = deterministic DDIM, 1 = DDPM-like (default 0)")
    sample_cmd.add_argument("--spacing", choices=SPACINGS, default="uniform",
                            help="sub-sequence tau: floor(c i) or floor(c i^2) (Appendix D.2; default uniform)")
    sample_cmd.add_argument("--n", type=positive_int, default=1000, help="number of samples")
    sample_cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png)")
    add_common(sample_cmd)
    sample_cmd.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from refimpl.core import pick_device
    from refimpl.plots import save_samples

    out = args.out
    device = pick_device(args.device)
    x0 = sample_from_checkpoint(args.ckpt, args.n, steps=args.steps, eta=args.eta, spacing=args.spacing,
                                seed=args.seed, device=device, disable=args.quiet)
    save_samples(x0.cpu(), out)
    print(f"wrote {args.n} DDIM samples ({args.steps} {args.spacing} steps, eta={args.eta:g}) to {out}")
    return 0
