"""Improved DDPM: Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (ICML 2021), arXiv 2102.09672.

Three changes to DDPM, each a few lines on top of :mod:`refimpl.ddpm`:

- a learned reverse variance (Sec. 3.1, Eq. 15): the network returns eps and a second output v, and
  Sigma_theta = exp(v log beta_t + (1 - v) log beta_tilde_t), an interpolation in log space between
  DDPM's two fixed choices; it is trained by the hybrid objective L_hybrid = L_simple + lambda L_vlb
  (Eq. 16, lambda = 0.001), where L_vlb (Eqs. 4-7) sees the mean only through a stop-gradient;
- the cosine schedule (Sec. 3.2, Eq. 17), which lives in :func:`refimpl.schedules.cosine_betas`;
- strided sampling (Sec. 4): a sub-sequence tau of the timesteps with respaced betas, where the
  learned variance rescales itself to the longer jumps.

The variational bound is also what the paper reports as log-likelihood: :func:`bits_per_dim`
evaluates all T + 1 terms of Eq. (4) in bits per dimension, with DDPM's discretized decoder for L_0.

Timesteps in code are 0-indexed like diffusers: code ``t`` in ``0..T-1`` is the paper's ``t + 1``.
So the bound's term at code ``t`` is the paper's L_t: L_0 = -log p(x_0 | x_1) at code 0, and for code
t > 0 the KL of Eq. (6) at the paper's timestep t + 1, L_t = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1}));
the paper's alpha_bar_0 = 1 is ``schedule.alpha_bar_prev[0]``. A model is a callable ``model(x_t, t)``
with ``t`` an int64 tensor of shape (B,); a learned-variance model returns 2C channels along dim 1 (2D
features for 2-D data): eps first, then v. :func:`eps_only` turns it into an ``eps`` model for any
other sampler.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.schedules import timesteps
from refimpl.ddpm import PRESETS as DDPM_PRESETS
from refimpl.ddpm import Model, predict_x0
from refimpl.schedules import posterior, q_sample
from refimpl.ddpm import train_config as ddpm_train_config
from refimpl.likelihood import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from refimpl.schedules import Schedule, gather, make_schedule

VARIANCES = ("learned", "fixed_small", "fixed_large")

#: bin width of the digits grid: pixels 0..16 are mapped to [-1, 1] by x / 8 - 1 (refimpl.data.digits),
#: so the data take 17 values 1/8 apart
BIN_WIDTH = 1 / 8


# --8<-- [start:learned_variance]
def split_output(output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.1: a learned-variance network returns 2C channels along dim 1, (eps, v)."""
    c = x_t.shape[1]
    if output.shape[0] != x_t.shape[0] or output.shape[1] != 2 * c or output.shape[2:] != x_t.shape[2:]:
        expected = (x_t.shape[0], 2 * c, *x_t.shape[2:])
        raise LineageError(f"a learned-variance model must return eps and v, shape {expected} for x_t of shape "
                           f"{tuple(x_t.shape)}; got {tuple(output.shape)}")
    return output[:, :c], output[:, c:]


def clipped_log_beta_tilde(schedule: Schedule) -> torch.Tensor:
    """log beta_tilde_t (DDPM Eq. 7) for every code t, with the t = 0 entry clipped.

    beta_tilde at code t = 0 is 0 (alpha_bar_0 = 1), so its log is -inf; like the official code
    (improved-diffusion, ``posterior_log_variance_clipped``) we use the value at code t = 1 there.
    It only matters where a variance at t = 0 is used: the decoder L_0 (no sampler adds noise at
    t = 0). With a single timestep (T = 1) there is no t = 1 and beta_0 is used instead."""
    if schedule.T == 1:
        return torch.log(schedule.betas)
    beta_tilde = schedule.beta_tilde
    return torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]]))


def learned_log_variance(v: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """iDDPM Eq. (15): log Sigma_theta = frac log beta_t + (1 - frac) log beta_tilde_t, per element.

    The paper writes the interpolation weight as v; the network's output ``v`` is mapped to it by
    frac = (v + 1) / 2, as in the official code and diffusers' "learned_range": an output in [-1, 1]
    spans [beta_tilde_t, beta_t], and an output of 0 (what our zero-initialised last layer starts
    with) is their geometric mean. Like the paper, v is not constrained, so Sigma may leave the range.
    log beta_tilde at t = 0 is clipped (:func:`clipped_log_beta_tilde`)."""
    frac = (v + 1) / 2
    max_log = gather(torch.log(schedule.betas), t, v)
    min_log = gather(clipped_log_beta_tilde(schedule), t, v)
    return frac * max_log + (1 - frac) * min_log
# --8<-- [end:learned_variance]


def reverse_log_variance(t: torch.Tensor, schedule: Schedule, variance: str, v: torch.Tensor | None,
                         like: torch.Tensor) -> torch.Tensor:
    """log Sigma of p(x_{t-1} | x_t): learned (Eq. 15, from ``v``), or DDPM's fixed beta_tilde_t ("fixed_small",
    clipped at t = 0 as in :func:`clipped_log_beta_tilde`) or beta_t ("fixed_large"; at t = 0 this is DDPM's
    sigma_1^2 = beta_1, where the official code uses beta_tilde at code 1 instead). Shaped to broadcast
    against ``like``."""
    if variance == "learned":
        return learned_log_variance(v, t, schedule)
    if variance == "fixed_small":
        return gather(clipped_log_beta_tilde(schedule), t, like)
    if variance == "fixed_large":
        return gather(torch.log(schedule.betas), t, like)
    raise LineageError(f"unknown variance {variance!r} (choose from {', '.join(VARIANCES)})")


def _eps_and_v(output: torch.Tensor, x_t: torch.Tensor, variance: str):
    """(eps, v) from a model output: v is needed only for the learned variance; with a fixed variance
    the model may return eps alone (a DDPM) or eps and v (v is then ignored)."""
    if variance == "learned" or output.shape[1] == 2 * x_t.shape[1]:
        eps, v = split_output(output, x_t)
        return eps, (v if variance == "learned" else None)
    if output.shape != x_t.shape:
        raise LineageError(f"model output of shape {tuple(output.shape)} fits neither eps nor (eps, v) "
                           f"for x_t of shape {tuple(x_t.shape)}")
    return output, None


def reverse_mean(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """iDDPM Eq. (13) (DDPM Eq. 11), the mean of p(x_{t-1} | x_t) for code timesteps ``t`` (B,):
    mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t). In exact arithmetic this is the
    posterior mean (Eqs. 10-11) at the x_0 predicted from eps, which is how diffusers and the official
    code compute it. That form divides x_0's coefficient by 1 - alpha_bar_t, whose float32 rounding near
    alpha_bar = 1 is large (5e-4 relative at t = 0 for the cosine schedule); here the rounding only
    touches the small eps term, and float32 samples stay closer to a float64 run (tests/test_iddpm.py)."""
    beta = gather(schedule.betas, t, x_t)
    alpha = gather(schedule.alphas, t, x_t)
    alpha_bar = gather(schedule.alpha_bar, t, x_t)
    return (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()


# --8<-- [start:vlb_terms]
def vlb_terms(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, log_variance: torch.Tensor,
              schedule: Schedule, *, bin_width: float | None = BIN_WIDTH) -> torch.Tensor:
    """iDDPM Eqs. (5)-(6) for one batch at code timesteps ``t`` (B,): per sample, in bits per dimension,
    the paper's L_t. With s = t + 1 the paper's timestep of code t:

        code t > 0:  L_{s-1} = KL(q(x_{s-1} | x_s, x_0) || p(x_{s-1} | x_s))          (Eq. 6)
        code t = 0:  L_0 = -log p(x_0 | x_1), the discretized decoder                 (Eq. 5)

    with p(x_{s-1} | x_s) = N(mean(x_t, eps) (Eq. 13), exp(log_variance)) and q's posterior from
    DDPM Eqs. (6)-(7) (its log-variance clipped at t = 0, where it is not used). ``bin_width=None``
    is for continuous data: L_0 is then -log of the Gaussian density (a density: it can be negative).
    Nats are turned into bits and averaged over the dimensions, like the paper's tables."""
    mean = reverse_mean(x_t, t, eps, schedule)
    true_mean, _ = posterior(x0, x_t, t, schedule)
    true_log_variance = gather(clipped_log_beta_tilde(schedule), t, x_t)
    kl = normal_kl(true_mean, true_log_variance, mean, log_variance)
    if bin_width is None:
        decoder = -gaussian_log_likelihood(x0, mean, log_variance)
    else:
        decoder = -discretized_gaussian_log_likelihood(x0, mean, log_variance, bin_width=bin_width)
    first = (t == 0).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.where(first, decoder, kl).flatten(1).mean(1) / math.log(2)


def prior_term(x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """iDDPM Eq. (7): L_T = KL(q(x_T | x_0) || N(0, I)) with q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0,
    (1 - alpha_bar_T) I), per sample, in bits per dimension. It has no parameters to learn."""
    alpha_bar = schedule.alpha_bar[-1].to(x0.device, x0.dtype)
    kl = normal_kl(alpha_bar.sqrt() * x0, torch.log1p(-alpha_bar), torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).mean(1) / math.log(2)
# --8<-- [end:vlb_terms]


# --8<-- [start:hybrid_loss]
def hybrid_loss(model: Model, x0: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None,
                lam: float = 0.001, *, bin_width: float | None = BIN_WIDTH) -> torch.Tensor:
    """iDDPM Eq. (16): L_hybrid = L_simple + lambda L_vlb, one t ~ U{0..T-1} and one eps ~ N(0, I) per sample
    (drawn from ``generator`` in the order of DDPM's ``loss_simple``: t, then eps).

    L_simple (Eq. 14) is the mean squared error of the eps channels over all elements, as in
    ``refimpl.ddpm.loss_simple``. L_vlb uses the mean computed from a *detached* eps (Sec. 3.1: a
    stop-gradient on mu_theta for the L_vlb term), so it trains only v, and L_simple only eps.
    Its single-t term (:func:`vlb_terms`, bits per dimension) is multiplied by T, which makes it an
    unbiased estimate of L_0 + ... + L_{T-1} (Eqs. 4-6; L_T is left out: it has no parameters).
    Units: L_simple per element, L_vlb in bits per dimension. With lambda = 0.001 this is exactly the
    official code's ``RESCALED_MSE`` loss, mean squared error + (T / 1000) * (one vb term in bits per
    dimension): its T / 1000 factor is lambda T. ``bin_width=None`` for continuous data (2-D toys)."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, eps, schedule)
    eps_pred, v = split_output(model(x_t, t).to(x0.dtype), x_t)
    l_simple = F.mse_loss(eps_pred, eps)
    log_variance = learned_log_variance(v, t, schedule)
    l_vlb = vlb_terms(x0, x_t, t, eps_pred.detach(), log_variance, schedule, bin_width=bin_width)
    return l_simple + lam * schedule.T * l_vlb.mean()
# --8<-- [end:hybrid_loss]


# --8<-- [start:respace]
def respace(schedule: Schedule, tau) -> Schedule:
    """iDDPM Sec. 4: the schedule of the shorter process that visits only the code timesteps ``tau``
    (increasing), with beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}} (alpha_bar before tau_0 is 1),
    so that its alpha_bar'_i = alpha_bar_{tau_i}: the same marginals q(x_t | x_0) at the visited steps.

    Step i of the new schedule stands for the original timestep tau_i (a model is still called with
    tau_i). The ratio is computed in float64 as the product of the alphas of the skipped block
    (tau_{i-1}, tau_i], the same number without cancelling two alpha_bar near 1, and a block of one step
    keeps its beta exactly, so ``respace(s, range(T))`` is ``s``. Returned in the betas' dtype and device."""
    tau = [int(t) for t in tau]
    if not tau or tau[0] < 0 or tau[-1] >= schedule.T or any(a >= b for a, b in zip(tau, tau[1:])):
        raise LineageError(f"tau must be a non-empty increasing sequence of timesteps in 0..{schedule.T - 1}")
    alphas = 1 - schedule.betas.double()
    betas, previous = [], -1
    for t in tau:
        betas.append(schedule.betas[t].double() if t == previous + 1 else 1 - torch.prod(alphas[previous + 1:t + 1]))
        previous = t
    return Schedule(torch.stack(betas).to(schedule.betas.dtype))
# --8<-- [end:respace]


# --8<-- [start:iddpm_sample]
@torch.no_grad()
def iddpm_sample(model: Model, x_T: torch.Tensor, schedule: Schedule, *, steps: int | None = None,
                 spacing: str = "uniform", variance: str = "learned", generator: torch.Generator | None = None,
                 callback=None, disable: bool = False) -> torch.Tensor:
    """iDDPM Sec. 4: ancestral sampling (DDPM Algorithm 2) along tau = ``timesteps(T, steps, spacing)``
    (all T steps by default) with the respaced schedule s' = :func:`respace` (schedule, tau):

        x_{tau_{i-1}} = mean'_i(x, eps) + sqrt(Sigma'_i) z,   eps = model(x, tau_i)[eps channels],

    mean' the Eq. (13) mean and Sigma' the variance of s' at step i: learned (Eq. 15, v interpolating
    beta'_i and beta_tilde'_i, so the variance rescales itself to the longer jump), or
    "fixed_small" (beta_tilde'_i) / "fixed_large" (beta'_i) for a model that returns eps only (a DDPM
    checkpoint: this is then DDPM's strided sampler; with all T steps it is Algorithm 2). No noise at
    the last step (tau_0 = 0). The x_0 prediction is not clipped (the official sampler clips it to [-1, 1]).
    tau is DDIM's sub-sequence (0, ..., T - T/S for uniform spacing), so x_T enters at alpha_bar_{tau_{S-1}};
    the official code's respacing rounds evenly spaced points between 0 and T - 1, which include T - 1.

    Noise: one draw of x_T's shape per step before the last, from ``generator`` (on its own device,
    then moved), as in ``refimpl.ddpm.ddpm_sample``. ``callback(t, x, x0_pred)`` after each step with the
    original timestep t = tau_i, the new sample and the x_0 predicted at that step.
    """
    if variance not in VARIANCES:  # refuse before the first model call
        raise LineageError(f"unknown variance {variance!r} (choose from {', '.join(VARIANCES)})")
    tau = timesteps(schedule.T, schedule.T if steps is None else steps, spacing)
    spaced = respace(schedule, tau).to(x_T.device)
    x = x_T
    for i in progress(range(len(tau) - 1, -1, -1), total=len(tau), desc="iDDPM", disable=disable):
        t_model = torch.full((x.shape[0],), tau[i], dtype=torch.long, device=x.device)
        t_spaced = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps, v = _eps_and_v(model(x, t_model), x, variance)
        x_prev = reverse_mean(x, t_spaced, eps, spaced)
        if i > 0:
            log_variance = reverse_log_variance(t_spaced, spaced, variance, v, x)
            x_prev = x_prev + torch.exp(0.5 * log_variance) * gaussian_like(x, generator)
        if callback is not None:
            callback(tau[i], x_prev, predict_x0(x, t_spaced, eps, spaced))
        x = x_prev
    return x
# --8<-- [end:iddpm_sample]


def eps_only(model: Model) -> Model:
    """A learned-variance model as ``model(x_t, t) -> eps`` (its v is dropped), for DDIM or any other sampler."""

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return split_output(model(x_t, t), x_t)[0]

    return eps_model


class BitsPerDim(NamedTuple):
    """The variational bound of :func:`bits_per_dim`, per sample, in bits per dimension."""

    total: torch.Tensor  # (N,): L_T + sum of the T terms
    prior: torch.Tensor  # (N,): L_T (Eq. 7)
    terms: torch.Tensor  # (N, T): column t is the term at code t, the paper's L_t (L_0, Eq. 5, in column 0; Eq. 6)


# --8<-- [start:bits_per_dim]
@torch.no_grad()
def bits_per_dim(model: Model, x0: torch.Tensor, schedule: Schedule, *, variance: str = "learned",
                 bin_width: float | None = BIN_WIDTH, batch_size: int = 512, generator: torch.Generator | None = None,
                 disable: bool = False) -> BitsPerDim:
    """iDDPM Eqs. (4)-(7): the full bound L_vlb = L_0 + L_1 + ... + L_{T-1} + L_T for every sample of ``x0``,
    in bits per dimension: all T terms, no sampling of t. Each term is estimated with one x_t ~ q(x_t | x_0):
    one noise draw of x0's shape per timestep from ``generator``, from code t = T-1 down to 0, so the result
    does not depend on ``batch_size`` (the number of samples per model call). In expectation over that
    noise the bound is >= -log2 p(x0) / dim under the model (a discrete distribution on the grid of
    ``bin_width``, or a density when ``bin_width`` is None).

    ``variance`` is "learned" for an iDDPM or "fixed_small"/"fixed_large" for a DDPM (which may return eps
    only). The decoder (t = 0) uses log beta_tilde clipped to its value at code t = 1 for "learned" and
    "fixed_small", and beta_1 for "fixed_large". The x_0 prediction is not clipped (the official
    ``calc_bpd_loop`` clips it to [-1, 1] by default). Returns :class:`BitsPerDim` (total, prior, terms)."""
    if variance not in VARIANCES:
        raise LineageError(f"unknown variance {variance!r} (choose from {', '.join(VARIANCES)})")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise LineageError(f"batch_size must be a positive integer, got {batch_size!r}")
    schedule = schedule.to(x0.device)
    n = x0.shape[0]
    terms = torch.empty(n, schedule.T, dtype=x0.dtype, device=x0.device)
    for t in progress(range(schedule.T - 1, -1, -1), total=schedule.T, desc="bits/dim", disable=disable):
        x_t = q_sample(x0, torch.full((n,), t, dtype=torch.long, device=x0.device), gaussian_like(x0, generator),
                       schedule)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            t_batch = torch.full((x_t[rows].shape[0],), t, dtype=torch.long, device=x0.device)
            eps, v = _eps_and_v(model(x_t[rows], t_batch).to(x0.dtype), x_t[rows], variance)
            log_variance = reverse_log_variance(t_batch, schedule, variance, v, x_t[rows])
            terms[rows, t] = vlb_terms(x0[rows], x_t[rows], t_batch, eps, log_variance, schedule, bin_width=bin_width)
    prior = prior_term(x0, schedule)
    return BitsPerDim(prior + terms.sum(1), prior, terms)
# --8<-- [end:bits_per_dim]


# --- training ----------------------------------------------------------------------

#: the sizes of DDPM's presets (refimpl.ddpm.PRESETS); only the network's output is doubled (eps and v)
PRESETS = DDPM_PRESETS


def train_config(data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0,
                 schedule: str = "cosine", lam: float = 0.001) -> dict:
    """The JSON config of an iDDPM run: DDPM's sizes for ``preset`` (:func:`refimpl.ddpm.train_config`) with
    the network's output doubled (eps and v), the cosine schedule by default, lambda of Eq. (16), and the
    decoder's bin width (1/8 for digits; None, a continuous decoder, for the 2-D toys). T = 1000 like our
    DDPM runs; the paper used T = 4000 (with the T / 1000 rescaling of L_vlb that :func:`hybrid_loss` has)."""
    from refimpl.nets import model_config, model_from_config
    from refimpl.schedules import SCHEDULES

    if schedule not in SCHEDULES:
        raise LineageError(f"unknown schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")
    config = ddpm_train_config(data, preset, steps=steps, seed=seed, schedule=schedule)
    model = dict(config["model"])
    if model["kind"] == "mlp":
        model["out_dim"] = 2 * model["data_dim"]
    else:
        model["out_channels"] = 2 * model["in_channels"]
    config["model"] = model_config(model_from_config(model))
    config["lambda"] = lam
    config["bin_width"] = BIN_WIDTH if data == "digits" else None
    return config


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """DDPM's Algorithm 1 with L_hybrid (Eq. 16) in place of L_simple. ``config`` comes from
    :func:`train_config`; ``out`` is the checkpoint directory (resumed if it holds a run with the same
    config; checkpoint model name "iddpm"). Returns (model, loss history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit_config

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    model = model_from_config(config["model"], seed=config["seed"])  # initial weights from the config's seed
    batch = sampler(config["data"])

    def loss_fn(model, generator):
        x0 = batch(config["batch_size"], generator).to(schedule.device)
        return hybrid_loss(model, x0, schedule, generator, config["lambda"], bin_width=config["bin_width"])

    history = fit_config(model, loss_fn, config, out, "iddpm", device, resume, progress)
    return model, history
# --8<-- [end:train]


def _load(ckpt, device, models: tuple[str, ...]):
    """(model, schedule, sample shape, checkpoint) of a checkpoint whose model name is one of ``models``."""
    from refimpl import checkpoint
    from refimpl.training import load_model

    name = checkpoint.load(ckpt).model
    if name not in models:
        raise LineageError(f"checkpoint {ckpt} holds a {name!r} model, not {' or '.join(map(repr, models))}")
    model, ckpt_data = load_model(ckpt, name)
    device = torch.device(device or "cpu")
    schedule = make_schedule(ckpt_data.config["schedule"], ckpt_data.config["T"]).to(device)
    shape = (2,) if ckpt_data.config["model"]["kind"] == "mlp" else (1, 8, 8)
    return model.to(device), schedule, shape, ckpt_data


def load_for_sampling(ckpt, device=None) -> tuple[torch.nn.Module, Schedule, tuple[int, ...]]:
    """Load an iDDPM checkpoint: (model on ``device``, its schedule on ``device``, the shape of one sample,
    (2,) or (1, 8, 8)). The model returns (eps, v); wrap it in :func:`eps_only` for other samplers."""
    model, schedule, shape, _ = _load(ckpt, device, ("iddpm",))
    return model, schedule, shape


def _default_variance(name: str, variance: str | None) -> str:
    """learned for an iDDPM, fixed_small for a DDPM; a DDPM has no v to learn a variance from."""
    variance = variance or ("learned" if name == "iddpm" else "fixed_small")
    if variance not in VARIANCES:
        raise LineageError(f"unknown variance {variance!r} (choose from {', '.join(VARIANCES)})")
    if name == "ddpm" and variance == "learned":
        raise LineageError("a DDPM checkpoint predicts eps only: use variance fixed_small or fixed_large")
    return variance


def sample_from_checkpoint(ckpt, n: int, *, steps: int | None = None, spacing: str = "uniform",
                           variance: str | None = None, seed: int = 0, device=None, callback=None,
                           disable: bool = False) -> torch.Tensor:
    """Draw ``n`` samples from an iDDPM (or DDPM) checkpoint with :func:`iddpm_sample`; x_T and then the noise
    come from one generator seeded with ``seed``, as in DDPM's sampler. ``variance`` defaults to learned
    (iDDPM) or fixed_small (DDPM)."""
    model, schedule, shape, ckpt_data = _load(ckpt, device, ("iddpm", "ddpm"))
    variance = _default_variance(ckpt_data.model, variance)
    timesteps(schedule.T, schedule.T if steps is None else steps, spacing)  # refuse bad steps before drawing
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, *shape), generator=generator).to(schedule.device)
    return iddpm_sample(model, x_T, schedule, steps=steps, spacing=spacing, variance=variance,
                        generator=generator, callback=callback, disable=disable)


def nll_from_checkpoint(ckpt, n: int | None = None, *, variance: str | None = None, seed: int = 0, device=None,
                        batch_size: int = 512, disable: bool = False) -> tuple[BitsPerDim, str]:
    """:func:`bits_per_dim` of an iDDPM or DDPM digits checkpoint on the first ``n`` (default all) of the
    ``refimpl.digits_eval.HOLDOUT`` = 297 last digits. Returns (result, variance used).

    Honest caveat: those digits are held out only from the digits *classifier*; DDPM and iDDPM train on
    all 1797 digits (``refimpl.data.sampler("digits")``), so the held-out digits were seen in training and
    this is a training-set likelihood, comparable between models trained on the same data only."""
    from refimpl.data import digits
    from refimpl.digits_eval import HOLDOUT

    n = HOLDOUT if n is None else n
    if not 0 < n <= HOLDOUT:
        raise LineageError(f"n must be between 1 and {HOLDOUT} (the held-out digits), got {n}")
    model, schedule, shape, ckpt_data = _load(ckpt, device, ("iddpm", "ddpm"))
    if ckpt_data.config.get("data") != "digits":
        data = ckpt_data.config.get("data")
        raise LineageError(f"bits/dim needs a digits checkpoint; {ckpt} was trained on {data!r}")
    variance = _default_variance(ckpt_data.model, variance)
    x0 = digits()[0][-HOLDOUT:][:n].to(schedule.device)
    generator = torch.Generator().manual_seed(seed)
    result = bits_per_dim(model, x0, schedule, variance=variance, bin_width=BIN_WIDTH, batch_size=batch_size,
                          generator=generator, disable=disable)
    return result, variance
