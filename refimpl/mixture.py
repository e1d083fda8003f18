"""Gaussian mixtures: data whose noised densities, scores and optimal denoisers are exact.

If x_0 ~ sum_k pi_k N(mu_k, S_k), then every noised marginal is again a Gaussian mixture:

- variance preserving (DDPM Eq. 4): x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps gives
  means sqrt(alpha_bar) mu_k and covariances alpha_bar S_k + (1 - alpha_bar) I;
- variance exploding (SMLD): x = x_0 + sigma eps gives means mu_k and covariances S_k + sigma^2 I.

The score is grad log p(x) = sum_k r_k(x) C_k^{-1} (m_k - x) with responsibilities r_k computed
in log space, and the optimal DDPM noise prediction is eps* = -sqrt(1 - alpha_bar) * score.
Everything is computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from refimpl.core import LineageError
from refimpl.schedules import Schedule

_F64 = torch.float64


class GaussianMixture:
    """sum_k pi_k N(mu_k, S_k) with ``weights`` (K,), ``means`` (K, D), ``covs`` (K, D, D)."""

    def __init__(self, weights, means, covs):
        self.weights = torch.as_tensor(weights, dtype=_F64)
        self.means = torch.as_tensor(means, dtype=_F64)
        self.covs = torch.as_tensor(covs, dtype=_F64)
        K, D = self.means.shape
        if self.weights.shape != (K,) or self.covs.shape != (K, D, D):
            raise LineageError("mixture shapes must be weights (K,), means (K, D), covs (K, D, D)")
        if bool((self.weights < 0).any()) or abs(self.weights.sum().item() - 1) > 1e-9:
            raise LineageError("mixture weights must be non-negative and sum to 1")
        self.weights = self.weights / self.weights.sum()
        self.chol, info = torch.linalg.cholesky_ex(self.covs)
        if bool((info != 0).any()):
            raise LineageError("every mixture covariance must be symmetric positive definite")
        self.precisions = torch.cholesky_inverse(self.chol)  # S_k^{-1}
        self.K, self.D = K, D

    @classmethod
    def single(cls, mean, cov) -> "GaussianMixture":
        """One Gaussian N(mean, cov) as a one-component mixture."""
        mean = torch.as_tensor(mean, dtype=_F64)
        return cls(torch.ones(1), mean[None], torch.as_tensor(cov, dtype=_F64)[None])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws (float64, (n, D)) and their component labels (int64, (n,))."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=_F64)
        x = self.means[labels] + (self.chol[labels] @ z[..., None])[..., 0]
        return x, labels

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_k + log N(x; mu_k, S_k), shape (K, N), and S_k^{-1} (x - mu_k), shape (K, D, N). Points run along
        the last, contiguous axis, so the sums over D and K below are vectorised over N (twice as fast as the
        (N, K, D) layout, whose reductions run over axes of length 2 and 5). ``x.T`` is only a view of (N, D)
        memory: made contiguous first, or ``diff`` inherits its strides and the score takes ~4x as long."""
        diff = x.to(_F64).T.contiguous()[None] - self.means[:, :, None]  # (K, D, N)
        whitened = self.precisions @ diff  # S_k^{-1} (x - mu_k)
        mahalanobis = (diff * whitened).sum(1)  # (K, N)
        log_det = 2 * torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        log_norm = -0.5 * mahalanobis - (0.5 * log_det + 0.5 * self.D * math.log(2 * math.pi))[:, None]
        return torch.log(self.weights)[:, None] + log_norm, whitened

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x of shape (N, D), via logsumexp over components."""
        return torch.logsumexp(self._terms(x)[0], dim=0)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """r_k(x) = p(k | x), shape (N, K), computed in log space (a softmax of the log terms)."""
        return torch.softmax(self._terms(x)[0], dim=0).T.contiguous()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = sum_k r_k(x) S_k^{-1} (mu_k - x), shape (N, D), float64."""
        log_terms, whitened = self._terms(x)
        r = torch.softmax(log_terms, dim=0)  # (K, N)
        return -(r[:, None, :] * whitened).sum(0).T.contiguous()

    def noised(self, scale: float, std: float) -> "GaussianMixture":
        """The law of ``scale * x_0 + std * eps`` with eps ~ N(0, I): means scale mu_k, covariances
        scale^2 S_k + std^2 I. Every forward process in the project has this form (the perturbation
        kernels of Score SDE Eq. 29 are Gaussian with such a mean coefficient and std)."""
        a, s = float(scale), float(std)
        eye = torch.eye(self.D, dtype=_F64)
        return GaussianMixture(self.weights, a * self.means, a * a * self.covs + s * s * eye)

    def vp(self, alpha_bar: float) -> "GaussianMixture":
        """The law of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (DDPM Eq. 4)."""
        a = float(alpha_bar)
        return self.noised(math.sqrt(a), math.sqrt(1 - a))

    def ve(self, sigma: float) -> "GaussianMixture":
        """The law of x = x_0 + sigma eps (SMLD / VE SDE)."""
        return self.noised(1.0, sigma)

    def denoise_vp(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """E[x_0 | x_t] by Tweedie's formula: (x_t + (1 - alpha_bar) grad log p_t(x_t)) / sqrt(alpha_bar)."""
        a = float(alpha_bar)
        x_t = x_t.to(_F64)
        return (x_t + (1 - a) * self.vp(a).score(x_t)) / math.sqrt(a)

    def mean(self) -> torch.Tensor:
        """E[x] (D,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x] (D, D) by the law of total covariance."""
        centred = self.means - self.mean()
        within = (self.weights[:, None, None] * self.covs).sum(0)
        between = (self.weights[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        return within + between


def by_level(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A batched model ``model(x, t)`` from ``fn(x_rows, level)``, a closed-form quantity at one noise level.

    ``t`` is a scalar or a (B,) tensor of levels (an int64 timestep, a level index or a float time); rows with the
    same level are computed together as ``fn(x[rows] in float64 on the CPU, level as a Python number)``. The output
    has x's dtype and device. x is not detached, so the result is differentiable in x (exact divergences).
    """

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x64 = x.to("cpu", _F64)
        t = torch.as_tensor(t).to("cpu").reshape(-1).expand(x.shape[0])
        levels = torch.unique(t).tolist()
        if len(levels) == 1:
            out = fn(x64, levels[0])
        else:
            out = torch.empty_like(x64)
            for level in levels:
                rows = t == level
                out[rows] = fn(x64[rows], level)
        return out.to(device=x.device, dtype=x.dtype)

    return model


def eps_model(mixture: GaussianMixture, schedule: Schedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact optimal noise prediction (the minimiser of DDPM Eq. 14) for data ``mixture``:
    eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - alpha_bar_t) * grad log p_t(x_t).

    Returns ``model(x_t, t)`` with t int64 of shape (B,) (code index, 0..T-1); the output has
    x_t's dtype and device, the computation is float64 on the CPU.
    """
    alpha_bar = schedule.alpha_bar.detach().to("cpu", _F64)

    def eps(x: torch.Tensor, step: int) -> torch.Tensor:
        a = alpha_bar[step].item()
        return -math.sqrt(1 - a) * mixture.vp(a).score(x)

    return by_level(eps)


def mixture_2d() -> GaussianMixture:
    """The project's 2-D test mixture: 5 components, unequal weights, tilted anisotropic covariances.

    Overall scale about +-2, so the linear DDPM schedule (alpha_bar_T ~ 4e-5) ends close to N(0, I).
    """

    def cov(sx: float, sy: float, angle: float) -> list[list[float]]:
        c, s = math.cos(angle), math.sin(angle)
        R = torch.tensor([[c, -s], [s, c]], dtype=_F64)
        return (R @ torch.diag(torch.tensor([sx**2, sy**2], dtype=_F64)) @ R.T).tolist()

    weights = [0.30, 0.25, 0.20, 0.15, 0.10]
    means = [[-1.5, -1.0], [1.5, -1.2], [0.0, 1.6], [1.8, 1.4], [-1.8, 1.2]]
    covs = [cov(0.45, 0.15, 0.5), cov(0.30, 0.30, 0.0), cov(0.50, 0.12, -0.3),
            cov(0.20, 0.10, 1.2), cov(0.25, 0.12, 0.9)]
    return GaussianMixture(weights, means, covs)


def gaussian_flow(x: torch.Tensor, alpha_bar_from: float, alpha_bar_to: float, mu, s: float) -> torch.Tensor:
    """The exact probability-flow ODE map (DDIM Eq. 14) for data N(mu, s^2 I), from a sample ``x`` at level
    ``alpha_bar_from`` to level ``alpha_bar_to`` (VP variables; alpha_bar_to = 1 is the data end).

    In the variables xbar = x / sqrt(alpha_bar), sigma^2 = (1 - alpha_bar) / alpha_bar the noised law is
    N(mu, (s^2 + sigma^2) I) and the optimal eps* = sigma (xbar - mu) / (s^2 + sigma^2), so
    d xbar / d sigma = eps* is linear and solved by xbar - mu ~ sqrt(s^2 + sigma^2). The benchmark against
    which every ODE sampler's discretisation error and order are measured.
    """
    a, b = float(alpha_bar_from), float(alpha_bar_to)
    mu = torch.as_tensor(mu, dtype=x.dtype)
    sigma_a2, sigma_b2 = (1 - a) / a, (1 - b) / b
    xbar = mu + (x / math.sqrt(a) - mu) * math.sqrt((s * s + sigma_b2) / (s * s + sigma_a2))
    return xbar * math.sqrt(b)
