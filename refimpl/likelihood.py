"""Gaussian KL and (discretised) Gaussian log-likelihoods shared by the 2015 bound and improved DDPM's bits/dim.

The diffusion probabilistic model of Sohl-Dickstein et al. (2015, :mod:`refimpl.nonequilibrium`) and improved
DDPM (Nichol & Dhariwal 2021, :mod:`refimpl.iddpm`) both write their variational bound as a sum of KL
divergences between diagonal Gaussians; improved DDPM also needs the decoder term L_0, a Gaussian
log-likelihood, discretised on the data grid for images. All values are per element, in nats.
"""

from __future__ import annotations

import math

import torch


# --8<-- [start:gaussians]
def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats:
    (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1) / 2."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _log_normal_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b (either may be infinite), accurate in both tails: an interval
    right of 0 is mirrored, Phi(b) - Phi(a) = Phi(-a) - Phi(-b), so Phi is only evaluated where it is
    not close to 1; then log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi)))."""
    mirror = a > 0
    lo, hi = torch.where(mirror, -b, a), torch.where(mirror, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor, *,
                                        bin_width: float) -> torch.Tensor:
    """DDPM Sec. 3.3 (Eq. 13 there), the decoder of iDDPM's L_0 (Eq. 5): log P(x) in nats, per element, for
    x on the grid -1, -1 + w, ..., 1 (w = ``bin_width``) under N(mean, exp(log_variance)): the mass of the
    bin [x - w/2, x + w/2], where the lowest bin extends to -inf and the highest to +inf, so the bins tile
    the real line and the probabilities of all grid points sum to 1.

    DDPM's images have w = 2/255; the digits here have w = 1/8 (17 levels, ``refimpl.iddpm.BIN_WIDTH``).
    The official code uses a tanh approximation of the normal CDF and clamps probabilities at 1e-12 (at
    most 27.6 nats); we use the exact CDF in log space, without a floor."""
    half = bin_width / 2
    inv_std = torch.exp(-0.5 * log_variance)
    upper = torch.where(x > 1 - half, math.inf, (x + half - mean) * inv_std)
    lower = torch.where(x < -1 + half, -math.inf, (x - half - mean) * inv_std)
    return _log_normal_interval(lower, upper)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_variance)) per element, in nats: the decoder for continuous data (2-D toys)."""
    return -0.5 * (math.log(2 * math.pi) + log_variance + (x - mean) ** 2 * torch.exp(-log_variance))
# --8<-- [end:gaussians]
