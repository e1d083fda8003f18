"""NCSN / SMLD: Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution"
(NeurIPS 2019), arXiv 1907.05600.

The data are perturbed with Gaussian noise at L levels sigma_1 > ... > sigma_L (a geometric sequence);
one noise conditional score network s_theta(x, sigma_i) learns the score grad_x log q_sigma_i(x) of every
perturbed law by denoising score matching, the objective l(theta; sigma), weighted by lambda(sigma) =
sigma^2 and averaged over the levels, L(theta; {sigma_i}). Samples come from annealed Langevin dynamics,
Algorithm 1: T Langevin steps at each level, from the largest sigma to the smallest, with step
alpha_i = eps * sigma_i^2 / sigma_L^2. (The paper's objectives are named here by their symbols, not by
equation numbers, which we could not check against the paper's text.)

Level indices in code are 0-indexed: code ``i`` in ``0..L-1`` is the paper's ``i + 1``, so ``sigmas[0]``
is sigma_1 (the largest) and ``sigmas[-1]`` is sigma_L. A score model is any callable
``model(x, i) -> score`` with ``i`` an int64 tensor of shape (B,), the same calling convention as every
sampler of the project (the "timestep" is the level index).

What we simplified: the paper's network (official code: CondRefineNetDilated) is a RefineNet with dilated
convolutions and conditional instance normalisation for 32x32 images; ours is :class:`refimpl.nets.MLPDenoiser`
for 2-D toys, conditioned on the level index through its sinusoidal embedding. Its output is divided by
sigma_i (:func:`score_model`), so the network predicts -sigma * score, a unit-scale target at every level:
that parameterisation is NCSNv2's (Song & Ermon 2020, arXiv 2006.09011), not NCSN's, which fed sigma_i to
the network only through the conditional normalisation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from refimpl.core import LineageError, gaussian_like, progress
from refimpl.mixture import GaussianMixture, by_level

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_F64 = torch.float64


# --8<-- [start:geometric_sigmas]
def geometric_sigmas(sigma_1: float, sigma_L: float, L: int) -> torch.Tensor:
    """NCSN: the noise levels {sigma_i}, a geometric sequence sigma_1 / sigma_2 = ... =
    sigma_{L-1} / sigma_L > 1 from sigma_1 down to sigma_L. Returns (L,) float64, descending."""
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise LineageError(f"the number of noise levels must be a positive integer, got {L!r}")
    if not (sigma_L > 0 and sigma_1 >= sigma_L) or (L == 1 and sigma_1 != sigma_L):
        raise LineageError(f"need sigma_1 >= sigma_L > 0 (and equal when L = 1), got {sigma_1} and {sigma_L}")
    return torch.logspace(math.log10(sigma_1), math.log10(sigma_L), L, dtype=_F64)
# --8<-- [end:geometric_sigmas]


# --8<-- [start:score_model]
def score_model(net: torch.nn.Module, sigmas: torch.Tensor) -> Model:
    """s_theta(x, sigma_i) = net(x, i) / sigma_i: the noise conditional score network of an
    :class:`refimpl.nets.MLPDenoiser` that takes the level index i as its "timestep". (Dividing by
    sigma_i is NCSNv2's parameterisation; see the module docstring.)"""
    def model(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        sigma = sigmas.to(device=x.device, dtype=x.dtype)[i].reshape(-1, *([1] * (x.ndim - 1)))
        return net(x, i) / sigma
    return model
# --8<-- [end:score_model]


# --8<-- [start:dsm_loss]
def dsm_terms(model: Model, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor,
              sigmas: torch.Tensor) -> torch.Tensor:
    """NCSN l(theta; sigma_i) times lambda(sigma_i) = sigma_i^2, per example: with x~ = x + sigma_i z,
    lambda(sigma) * 1/2 || s(x~, sigma) + (x~ - x) / sigma^2 ||^2 = 1/2 || sigma s(x~, sigma) + z ||^2.
    ``i`` (B,) int64 picks each example's level, ``noise`` is z ~ N(0, I). Returns (B,)."""
    sigma = sigmas.to(device=x0.device, dtype=x0.dtype)[i].reshape(-1, *([1] * (x0.ndim - 1)))
    x_noisy = x0 + sigma * noise
    residual = sigma * model(x_noisy, i) + noise
    return 0.5 * residual.pow(2).flatten(1).sum(1)


def dsm_loss(model: Model, x0: torch.Tensor, sigmas: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """NCSN L(theta; {sigma_i}) = 1/L sum_i lambda(sigma_i) l(theta; sigma_i), estimated with one level i drawn
    uniformly per example (as in the official training loop) and z ~ N(0, I), both from ``generator``."""
    device = generator.device if generator is not None else x0.device
    i = torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator, device=device).to(x0.device)
    noise = gaussian_like(x0, generator)
    return dsm_terms(model, x0, i, noise, sigmas).mean()
# --8<-- [end:dsm_loss]


# --8<-- [start:langevin]
def langevin_step(x: torch.Tensor, score: torch.Tensor, alpha, noise: torch.Tensor) -> torch.Tensor:
    """One Langevin step, NCSN Algorithm 1 line 6: x + alpha/2 * score + sqrt(alpha) * z."""
    return x + 0.5 * alpha * score + math.sqrt(alpha) * noise


@torch.no_grad()
def annealed_langevin_sample(model: Model, x_T: torch.Tensor, sigmas: torch.Tensor, *, eps: float = 2e-5,
                             steps_per_level: int = 100, generator: torch.Generator | None = None,
                             callback=None, disable: bool = False) -> torch.Tensor:
    """NCSN Algorithm 1 (annealed Langevin dynamics): for each level i = 1..L (code 0..L-1), run
    ``steps_per_level`` (the paper's T) Langevin steps with alpha_i = eps * sigma_i^2 / sigma_L^2 and the
    score s(x, sigma_i) = ``model(x, i)``; each level starts where the previous one ended.

    ``x_T`` is the initial sample (the paper draws it from a uniform distribution). The noise z of every
    step is drawn from ``generator`` in x_T's shape and dtype. After each level ``callback(i, x, x0_pred)``
    gets the sample and Tweedie's estimate E[x_0 | x] = x + sigma_i^2 s(x, sigma_i) (one extra model call
    per level, only when there is a callback). With one level, this is plain Langevin dynamics with step eps.
    The default eps = 2e-5 is the official code's step_lr, but that code steps x + step * s + sqrt(2 step) z
    with step = step_lr * sigma_i^2 / sigma_L^2, i.e. alpha_i = 2 * step: its eps is 4e-5 in this notation.
    """
    if not isinstance(steps_per_level, int) or steps_per_level <= 0:
        raise LineageError(f"steps per level must be a positive integer, got {steps_per_level!r}")
    if not eps > 0:
        raise LineageError(f"eps must be positive, got {eps}")
    sigmas = torch.as_tensor(sigmas, dtype=_F64).cpu()
    x = x_T
    for i in progress(range(len(sigmas)), total=len(sigmas), desc="annealed Langevin", disable=disable):
        alpha = eps * float(sigmas[i] / sigmas[-1]) ** 2
        level = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        for _ in range(steps_per_level):
            x = langevin_step(x, model(x, level), alpha, gaussian_like(x, generator))
        if callback is not None:
            callback(i, x, x + float(sigmas[i]) ** 2 * model(x, level))
    return x
# --8<-- [end:langevin]


# --8<-- [start:exact_score_model]
def exact_score_model(mixture: GaussianMixture, sigmas: torch.Tensor) -> Model:
    """The exact score of the perturbed data q_sigma_i = data * N(0, sigma_i^2 I), i.e. of
    ``mixture.noised(1, sigma_i)``: the minimiser of l(theta; sigma_i) at every level. Returns ``model(x, i)``;
    computed in float64 on the CPU, returned in x's dtype and device."""
    noised = [mixture.noised(1.0, float(s)) for s in torch.as_tensor(sigmas, dtype=_F64)]
    return by_level(lambda x, level: noised[level].score(x))
# --8<-- [end:exact_score_model]


def two_mode_mixture() -> GaussianMixture:
    """The slow-mixing example of the official toy code (runners/toy_runner.py, GMMDistAnneal):
    0.8 N((5, 5), I) + 0.2 N((-5, -5), I). The modes are far apart, so Langevin dynamics on the data
    score alone almost never crosses between them and cannot recover the 4:1 weights."""
    eye = torch.eye(2, dtype=_F64)
    return GaussianMixture([0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], torch.stack([eye, eye]))


# --- training ----------------------------------------------------------------------

#: Noise levels and sampler settings for the 2-D toys (mean 0, unit variance per coordinate). sigma_1 = 5 is
#: comparable to the largest distance between two swiss-roll points (about 4.2; NCSNv2's rule). sigma_L = 0.03
#: is small against the roll's thickness (its noise std 0.5 / 6.8 = 0.074), so q_sigma_L is nearly the data.
#: L = 10 and T = 100 are the official image settings. eps = 1.8e-4 keeps alpha_L / sigma_L^2 = eps / sigma_L^2
#: = 0.2, the ratio of the official step_lr = 2e-5 (read as Algorithm 1's eps) to sigma_L^2 = 0.01^2; then at
#: every level alpha_i / (4 sigma_i^2) <= 0.05: a Gaussian direction of variance >= sigma_i^2 is widened by at
#: most 1 / (1 - 0.05) (tests/test_ncsn.py derives this). The uniform start [-init_box, init_box]^2 covers the data.
TOY = {"sigma_1": 5.0, "sigma_L": 0.03, "L": 10, "eps": 1.8e-4, "steps_per_level": 100, "init_box": 3.0}

#: sizes per preset; a preset changes sizes, never the algorithm. Quick: the score must be accurate in absolute
#: terms (Langevin dynamics follows it to its equilibrium; DDPM's sampler never waits for one), and batches of
#: 512 for 2500 steps gave markedly better swiss-roll samples than 256 for 3000 at a similar cost in seconds.
PRESETS = {
    "quick": {"steps": 2500, "batch_size": 512, "lr": 2e-3, "model": {"hidden": 128, "depth": 3}},
    "full": {"steps": 30000, "batch_size": 1024, "lr": 1e-3, "model": {"hidden": 512, "depth": 4}},
}


def train_config(data: str, preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of an NCSN run on a 2-D toy: noise levels, sampler defaults, model and optimisation."""
    from refimpl.data import TOY_2D
    from refimpl.nets import MLPDenoiser, model_config

    if data not in TOY_2D:
        raise LineageError(f"ncsn trains on the 2-D toys only (choose from {', '.join(TOY_2D)}), got {data!r}")
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    model = model_config(MLPDenoiser(data_dim=2, **sizes["model"]))
    return {"data": data, **TOY, "model": model, "seed": seed, "steps": steps or sizes["steps"],
            "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


def config_sigmas(config: dict) -> torch.Tensor:
    return geometric_sigmas(config["sigma_1"], config["sigma_L"], config["L"])


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Train the noise conditional score network on L(theta; {sigma_i}) (lambda(sigma) = sigma^2, a uniform level
    per example). ``config`` comes from :func:`train_config`; ``out`` is the checkpoint directory
    (resumed if it holds the same run). Returns (network, loss history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit

    sigmas = config_sigmas(config)
    net = model_from_config(config["model"], seed=config["seed"])
    model = score_model(net, sigmas)
    batch = sampler(config["data"])

    def loss_fn(net, generator):
        x0 = batch(config["batch_size"], generator).to(next(net.parameters()).device)
        return dsm_loss(model, x0, sigmas, generator)

    history = fit(net, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="ncsn",
                  config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
                  resume=resume, progress=progress)
    return net, history
# --8<-- [end:train]


def load_for_sampling(ckpt, device=None) -> tuple[Model, torch.Tensor, dict]:
    """Load an NCSN checkpoint: (score model on ``device``, its sigmas, its config). Bad checkpoints ->
    LineageError."""
    from refimpl.training import load_model

    net, checkpoint = load_model(ckpt, "ncsn")
    device = torch.device(device or "cpu")
    sigmas = config_sigmas(checkpoint.config)
    return score_model(net.to(device), sigmas), sigmas, checkpoint.config


def sample_from_checkpoint(ckpt, n: int, *, eps: float | None = None, steps_per_level: int | None = None,
                           seed: int = 0, device=None, callback=None, disable: bool = False) -> torch.Tensor:
    """Algorithm 1 with a trained network: ``n`` samples from a uniform start on the config's box
    [-init_box, init_box]^2; eps and T default to the checkpoint's config."""
    model, sigmas, config = load_for_sampling(ckpt, device)
    generator = torch.Generator().manual_seed(seed)
    box = config["init_box"]
    x_T = ((torch.rand(n, 2, generator=generator) * 2 - 1) * box).to(device or "cpu")
    return annealed_langevin_sample(model, x_T, sigmas, eps=eps or config["eps"],
                                    steps_per_level=steps_per_level or config["steps_per_level"],
                                    generator=generator, callback=callback, disable=disable)
