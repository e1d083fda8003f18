"""Diffusion probabilistic models: Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli, "Deep Unsupervised
Learning using Nonequilibrium Thermodynamics" (ICML 2015), arXiv 1503.03585.

A forward Gaussian diffusion slowly turns the data into N(0, I), q(x_t | x_{t-1}) = N(x_{t-1} sqrt(1 - beta_t),
beta_t I) (Eq. 2 with the Gaussian kernel of Table App.1), and a learned reverse diffusion
p(x_{t-1} | x_t) = N(f_mu(x_t, t), f_Sigma(x_t, t)) (Eq. 5, Table App.1), with a learned mean *and* a learned
diagonal covariance, turns N(0, I) back into the data. Training maximises the lower bound K on the log
likelihood (Eqs. 12-14), a sum of analytic KL divergences between the forward posteriors
q(x_{t-1} | x_t, x_0) and the reverse kernels, plus entropies.

Choices made here (the page explains them):

- the schedule is fixed, not learned (the paper learns beta_2..T by gradient ascent on K, Sec. 2.4.1; its
  footnote says a fixed schedule works as well): beta_t = 1 / linspace(T, 2, T)_t, the baseline of the
  official code (each step erases about 1/T of what is left), with beta_1 replaced by a small constant
  (Sec. 2.4.1: "fixed to a small constant to prevent overfitting");
- the kernel is parameterised as a perturbation of the forward kernel, Eqs. (64)-(65) of Appendix D.2.1:
  Sigma = sigmoid(z_Sigma + logit(beta_t)), mu = (x_t - z_mu)(1 - Sigma) + z_mu, on a small MLP
  (:class:`refimpl.nets.MLPDenoiser` with two outputs per dimension) instead of the paper's swiss-roll
  radial-basis-function network (Appendix D.1.1);
- the last reverse step is fixed to the forward kernel's reversal at equilibrium (Appendix B.2),
  p(x_0 | x_1) = N(x_1 sqrt(1 - beta_1), beta_1 I), so the bound has KL terms for t = 2..T only (Eq. 14).

Timesteps in code are 0-indexed like diffusers: code ``t`` in ``0..T-1`` is the paper's ``t + 1``. The
learned kernels are code t = 1..T-1 (the paper's t = 2..T); code t = 0 is the fixed last step. A *kernel* is
a callable ``kernel(x_t, t) -> (mean, variance)`` with ``t`` an int64 tensor of shape (B,), the mean and the
diagonal variance of p(x_{t-1} | x_t) shaped like x_t; :func:`network_kernel` turns a network into one.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.schedules import posterior, q_sample
from refimpl.likelihood import normal_kl
from refimpl.schedules import Schedule, gather

Kernel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: the swiss roll of Appendix D.1.1: "40 time steps of Gaussian diffusion"
T_SWISSROLL = 40
#: beta_1, the variance of the first step; the paper fixes it to "a small constant" without giving the value
#: for the swiss roll. The official code's step1_beta defaults to 1e-3 but is a floor added to its baseline
#: schedule (its beta_1 is about 1e-3 + 1/T); ours is 1e-3 itself
BETA_1 = 1e-3


# --8<-- [start:schedule]
def make_schedule(T: int = T_SWISSROLL, beta_1: float = BETA_1, dtype: torch.dtype = torch.float32) -> Schedule:
    """Sec. 2.4.1, fixed: beta_1 = ``beta_1`` (a small constant) and, for the paper's t = 2..T,
    beta_t = 1 / linspace(T, 2, T)_t, the official code's baseline (1/T rising to 1/2). The paper learns
    beta_2..T instead; its footnote 2 reports a fixed schedule "just as effective"."""
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise LineageError(f"the number of timesteps T must be an integer >= 2, got {T!r}")
    if not 0 < beta_1 < 1:
        raise LineageError(f"beta_1 must lie in (0, 1), got {beta_1!r}")
    betas = 1 / torch.linspace(T, 2, T, dtype=torch.float64)
    betas[0] = beta_1
    return Schedule(betas.to(dtype))


def forward_step(x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Eq. (2), Table App.1: one step of the forward diffusion, x_t = x_{t-1} sqrt(1 - beta_t) + sqrt(beta_t) z.
    T steps of it give q(x_t | x_0) in one shot (:func:`refimpl.schedules.q_sample`)."""
    beta = gather(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise
# --8<-- [end:schedule]


# --8<-- [start:kernel]
def reverse_kernel(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix D.2.1, Eqs. (64)-(65): the mean and diagonal variance of p(x_{t-1} | x_t) from the network's
    output (z_mu, z_Sigma) (its two halves along dim 1), as a perturbation of the forward kernel:

        Sigma = sigmoid(z_Sigma + logit(beta_t))      (in (0, 1); z_Sigma = 0 gives beta_t)
        mu    = (x_t - z_mu)(1 - Sigma) + z_mu        (z_mu: where the step would settle if repeated)

    Returns (mean, variance), both shaped like x_t, in x_t's dtype."""
    d = x_t.shape[1]
    if output.shape != (x_t.shape[0], 2 * d, *x_t.shape[2:]):
        raise LineageError(f"the network must return z_mu and z_Sigma, shape {(x_t.shape[0], 2 * d)}; "
                           f"got {tuple(output.shape)}")
    output = output.to(x_t.dtype)
    z_mu, z_sigma = output[:, :d], output[:, d:]
    beta = gather(schedule.betas, t, x_t)
    variance = torch.sigmoid(z_sigma + torch.logit(beta))
    mean = (x_t - z_mu) * (1 - variance) + z_mu
    return mean, variance


def network_kernel(net: torch.nn.Module, schedule: Schedule) -> Kernel:
    """``kernel(x_t, t) -> (mean, variance)`` of a network that returns (z_mu, z_Sigma), Eqs. (64)-(65)."""

    def kernel(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reverse_kernel(net(x_t, t), x_t, t, schedule)

    return kernel


def last_step(x_1: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix B.2: the last reverse step is not learned, p(x_0 | x_1) = q(x_1 | x_0) pi(x_0) / pi(x_1)
    = N(x_1 sqrt(1 - beta_1), beta_1 I), the forward kernel's time reversal at equilibrium pi = N(0, I).
    Returns (mean, variance)."""
    beta_1 = schedule.betas[0].to(x_1.device, x_1.dtype)
    return (1 - beta_1).sqrt() * x_1, beta_1.expand_as(x_1)
# --8<-- [end:kernel]


# --8<-- [start:bound]
def log_pi(x: torch.Tensor) -> torch.Tensor:
    """log pi(x) for pi = N(0, I), per sample (summed over dimensions), in nats: the isotropic-Gaussian
    baseline L_null of Table 1 when evaluated on data."""
    flat = x.flatten(1)
    return -0.5 * (flat.shape[1] * math.log(2 * math.pi) + (flat ** 2).sum(1))


def analytic_terms(x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The parameter-free part of K (Eq. 14) for each x_0, in nats:

        H_q(X_T | x_0) - H_q(X_1 | x_0) + E_q[log pi(x_T) + log pi(x_0) - log pi(x_1) | x_0].

    The entropies are those of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I). The last term holds
    -H_p(X_T) of Eq. (14) and the edge terms of Appendix B.2 exactly: E|x_t|^2 = abar_t |x_0|^2 + D(1 - abar_t)
    gives -D/2 log(2 pi) - ((1 - abar_1 + abar_T) |x_0|^2 + D (abar_1 - abar_T)) / 2. For data with
    E|x_0|^2 = D (scaled to variance 1, as Table 1 scales its data) its mean is -D/2 log(2 pi e) = -H_p(X_T):
    Eq. (14) as printed. Kept per x_0, K is a lower bound for data of any scale."""
    flat = x0.flatten(1)
    d = flat.shape[1]
    abar_1, abar_T = schedule.alpha_bar[0].item(), schedule.alpha_bar[-1].item()
    entropy = 0.5 * d * (math.log1p(-abar_T) - math.log(schedule.betas[0].item()))  # H_q(X_T|x0) - H_q(X_1|x0)
    edge = -0.5 * (d * math.log(2 * math.pi) + (1 - abar_1 + abar_T) * (flat ** 2).sum(1) + d * (abar_1 - abar_T))
    return entropy + edge


def kl_term(kernel: Kernel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One term of Eq. (14) for code timesteps ``t`` >= 1 (the paper's t + 1 = 2..T), per sample, in nats:
    D_KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) at x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) ``noise``,
    with the Gaussian posterior of DDPM Eqs. (6)-(7) and the analytic Gaussian KL."""
    x_t = q_sample(x0, t, noise, schedule)
    true_mean, true_variance = posterior(x0, x_t, t, schedule)
    mean, variance = kernel(x_t, t)
    kl = normal_kl(true_mean, torch.log(true_variance).expand_as(x_t), mean, torch.log(variance))
    return kl.flatten(1).sum(1)


class Bound(NamedTuple):
    """K of Eq. (14) per sample, in nats: ``total`` (N,) = -kl.sum(1) + ``analytic`` (N,); ``kl`` (N, T-1),
    column j the KL term of code t = j + 1 (the paper's t = j + 2)."""

    total: torch.Tensor
    kl: torch.Tensor
    analytic: torch.Tensor


@torch.no_grad()
def bound(kernel: Kernel, x0: torch.Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
          batch_size: int = 4096, disable: bool = False) -> Bound:
    """Eq. (14): K = -sum_{t=2}^T E D_KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) + :func:`analytic_terms`,
    for every sample of ``x0``, all T - 1 KL terms, each at one x_t ~ q(x_t | x_0) (one noise draw of x0's
    shape per code t = 1..T-1, in that order, from ``generator``). Unbiased for K: E[total] <= log p(x_0)
    under the model (Eq. 13). Divide by log 2 for bits."""
    schedule = schedule.to(x0.device)
    n = x0.shape[0]
    kl = torch.empty(n, schedule.T - 1, dtype=x0.dtype, device=x0.device)
    for t in progress(range(1, schedule.T), total=schedule.T - 1, desc="bound K", disable=disable):
        noise = gaussian_like(x0, generator)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            t_batch = torch.full((x0[rows].shape[0],), t, dtype=torch.long, device=x0.device)
            kl[rows, t - 1] = kl_term(kernel, x0[rows], t_batch, noise[rows], schedule)
    analytic = analytic_terms(x0, schedule)
    return Bound(analytic - kl.sum(1), kl, analytic)
# --8<-- [end:bound]


# --8<-- [start:loss]
def loss(kernel: Kernel, x0: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """-K in bits per sample, estimated with one timestep per sample: t uniform over the T - 1 learned
    steps (code 1..T-1), then one x_t; the KL term is multiplied by T - 1, which makes the estimate
    unbiased for the sum of Eq. (14). (The official code draws one t per minibatch, from the same range.)
    The analytic terms carry no parameters; they make the training curve read as -K in bits."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(1, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    kl = kl_term(kernel, x0, t, noise, schedule)
    return ((schedule.T - 1) * kl - analytic_terms(x0, schedule)).mean() / math.log(2)
# --8<-- [end:loss]


# --8<-- [start:sample]
@torch.no_grad()
def sample(model: Kernel, x_T: torch.Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
           callback=None, disable: bool = False) -> torch.Tensor:
    """Eq. (5): x_T ~ pi = N(0, I) (``x_T``, Eq. 4), then x_{t-1} ~ p(x_{t-1} | x_t) for the paper's
    t = T..2 from ``model``, a kernel ``(x_t, t) -> (mean, variance)`` (:func:`network_kernel` for a
    network), and the fixed last step p(x_0 | x_1) (:func:`last_step`), which also adds noise: these are
    samples of the model whose likelihood K bounds. One noise draw of x_T's shape per step, from
    ``generator``. ``callback(t, x, mean)`` after each step with the code t, the new sample and the mean
    of the kernel that drew it (the model predicts no x_0)."""
    schedule = schedule.to(x_T.device)
    x = x_T
    for t in progress(range(schedule.T - 1, -1, -1), total=schedule.T, desc="reverse diffusion", disable=disable):
        if t > 0:
            mean, variance = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        else:
            mean, variance = last_step(x, schedule)
        x = mean + variance.sqrt() * gaussian_like(x, generator)
        if callback is not None:
            callback(t, x, mean)
    return x
# --8<-- [end:sample]


# --- training ----------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm (T = 40, the same fixed schedule)
PRESETS = {
    "quick": {"steps": 6000, "batch_size": 256, "lr": 2e-3, "model": {"hidden": 64, "depth": 2}},
    "full": {"steps": 30000, "batch_size": 1024, "lr": 1e-3, "model": {"hidden": 256, "depth": 4}},
}


def train_config(preset: str = "quick", *, data: str = "swissroll", steps: int | None = None, seed: int = 0,
                 T: int = T_SWISSROLL, beta_1: float = BETA_1) -> dict:
    """The JSON config of a run on a 2-D toy: ``preset``'s sizes, T and beta_1 of the schedule, and an MLP
    with two outputs per dimension (z_mu, z_Sigma of Eqs. 64-65)."""
    from refimpl.data import TOY_2D
    from refimpl.nets import MLPDenoiser, model_config

    if data not in TOY_2D:
        raise LineageError(f"unknown dataset {data!r} (choose from {', '.join(TOY_2D)})")
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    make_schedule(T, beta_1)  # refuse a bad T or beta_1 now
    sizes = PRESETS[preset]
    model = model_config(MLPDenoiser(data_dim=2, out_dim=4, **sizes["model"]))
    return {"data": data, "T": T, "beta_1": beta_1, "model": model, "seed": seed,
            "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Maximise K (Eq. 15) by minimising :func:`loss` with the project's training loop; ``config`` comes from
    :func:`train_config`, ``out`` is the checkpoint directory (resumed if it holds the same run; checkpoint
    model name "nonequilibrium"). Returns (network, history of -K in bits)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit

    schedule = make_schedule(config["T"], config["beta_1"])  # its values follow x_0's device (gather)
    net = model_from_config(config["model"], seed=config["seed"])  # initial weights from the config's seed
    batch = sampler(config["data"])

    def loss_fn(model, generator):
        x0 = batch(config["batch_size"], generator).to(next(model.parameters()).device)
        return loss(network_kernel(model, schedule), x0, schedule, generator)

    history = fit(net, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="nonequilibrium",
                  config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
                  resume=resume, progress=progress)
    return net, history
# --8<-- [end:train]


def load(ckpt, device=None) -> tuple[Kernel, Schedule, dict]:
    """(kernel, schedule, config) of a checkpoint written by :func:`train`, on ``device`` (CPU by default);
    a missing, corrupt or foreign checkpoint -> LineageError."""
    from refimpl.training import load_model

    net, checkpoint = load_model(ckpt, "nonequilibrium")
    device = torch.device(device or "cpu")
    schedule = make_schedule(checkpoint.config["T"], checkpoint.config["beta_1"]).to(device)
    return network_kernel(net.to(device), schedule), schedule, checkpoint.config


def sample_from_checkpoint(ckpt, n: int, *, seed: int = 0, device=None, callback=None,
                           disable: bool = False) -> torch.Tensor:
    """``n`` samples of a checkpoint (:func:`sample`); x_T and then the noise come from one generator."""
    kernel, schedule, _ = load(ckpt, device)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, 2), generator=generator).to(schedule.device)
    return sample(kernel, x_T, schedule, generator=generator, callback=callback, disable=disable)


def bound_from_checkpoint(ckpt, n: int, *, seed: int = 0, device=None, disable: bool = False) -> tuple[Bound, torch.Tensor]:
    """K (:func:`bound`) of a checkpoint on ``n`` fresh samples of its training data (drawn from a generator
    seeded with 10^6 + ``seed``, away from the training seeds), and L_null = log pi(x_0) on the same data."""
    from refimpl.data import toy_2d

    kernel, schedule, config = load(ckpt, device)
    generator = torch.Generator().manual_seed(10**6 + seed)
    x0 = toy_2d(config["data"], n, generator).to(schedule.device)
    return bound(kernel, x0, schedule, generator=generator, disable=disable), log_pi(x0)
