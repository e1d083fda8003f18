"""Sanity checks of the sample distances against closed forms."""

import math

import pytest
import torch

from refimpl.metrics import mmd_rbf, sliced_wasserstein

torch.set_num_threads(1)


def _gauss(n, seed, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_sets():
    x = _gauss(500, 0)
    assert sliced_wasserstein(x, x.clone(), generator=torch.Generator().manual_seed(1)) == 0.0
    # The unbiased MMD^2 of a set with itself is not 0 but exactly 2 (mean(K) - k(0)) / (n - 1) <= 0,
    # where k(0) = number of bandwidths (the kernel's diagonal): the diagonal is dropped from K_xx only.
    bandwidths = (0.5, 1.0)
    n = x.shape[0]
    k = sum(torch.exp(-torch.cdist(x, x) ** 2 / (2 * h**2)) for h in bandwidths)
    expected = 2 * (k.mean().item() - len(bandwidths)) / (n - 1)
    assert mmd_rbf(x, x.clone(), bandwidths) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert expected < 0


def test_grows_with_shift():
    x, y = _gauss(1000, 0), _gauss(1000, 1)
    sw = [sliced_wasserstein(x, y + s, generator=torch.Generator().manual_seed(2)) for s in (0.0, 0.5, 1.0, 2.0)]
    mmd = [mmd_rbf(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert sw == sorted(sw) and sw[0] < 0.1 < sw[1]
    assert mmd == sorted(mmd) and abs(mmd[0]) < 0.01 < mmd[1]


def test_sw_of_a_shifted_copy_is_exact():
    # Shifting a sample by delta shifts every sorted projection by u.delta, so each 1-D W2 is exactly
    # |u.delta| and SW^2 = mean_u (u.delta)^2 over the same directions: equal to rounding.
    x = _gauss(300, 0, d=3)
    delta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + delta, n_projections=64, generator=torch.Generator().manual_seed(7))
    u = torch.randn(3, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    assert sw == pytest.approx((delta @ u).pow(2).mean().sqrt().item(), rel=1e-12)


@pytest.mark.parametrize("n, m", [(4000, 4000), (4000, 1500)])
def test_sw_of_shifted_gaussians_closed_form(n, m):
    # x ~ N(0, I_2), y ~ N(delta, I_2): each 1-D projection is N(0, 1) vs N(u.delta, 1), so
    # W2 = |u.delta| and, for u uniform on the circle, E (u.delta)^2 = |delta|^2 / 2: SW = |delta| / sqrt(2).
    # Tolerance, 5 sigma of two independent relative errors on SW:
    # - P random directions: SW^2 is a mean of |delta|^2 cos^2(theta), Var cos^2 = 1/8, so SW has relative
    #   standard error sqrt(1/8) / (1/2) / sqrt(P) / 2;
    # - the sample means shift the effective delta by N(0, (1/n + 1/m) I): relative sd sqrt(1/n + 1/m) / |delta|.
    # The finite-sample spread of the sorted projections adds ~1e-3 to W2^2, negligible here.
    P = 2048
    delta = torch.tensor([1.2, -1.6], dtype=torch.float64)  # |delta| = 2
    x, y = _gauss(n, 0), _gauss(m, 1) + delta
    sw = sliced_wasserstein(x, y, n_projections=P, generator=torch.Generator().manual_seed(3))
    rel_sd = math.hypot(math.sqrt(1 / 8) / 0.5 / math.sqrt(P) / 2, math.sqrt(1 / n + 1 / m) / 2)
    assert sw == pytest.approx(2 / math.sqrt(2), rel=5 * rel_sd)


def test_sw_unequal_sizes_same_distribution_is_small():
    x, y = _gauss(3000, 0), _gauss(1000, 1)
    same = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(4))
    shifted = sliced_wasserstein(x, y + 0.5, generator=torch.Generator().manual_seed(4))
    assert same < 0.1 and shifted > 0.3


def test_mmd_of_shifted_gaussians_closed_form():
    # For N(0, I_D) vs N(delta, I_D) and k_h(a, b) = exp(-|a - b|^2 / (2 h^2)), a - b ~ N(mu, 2 I) gives
    # E k_h = (h^2 / (h^2 + 2))^(D/2) exp(-|mu|^2 / (2 (h^2 + 2))), so
    # MMD^2 = sum_h (h^2 / (h^2 + 2))^(D/2) * 2 * (1 - exp(-|delta|^2 / (2 (h^2 + 2)))).
    # The estimator is unbiased: the mean of R independent replicates must match within 5 standard
    # errors, the standard error estimated from the replicates themselves.
    D, bandwidths = 2, (0.5, 1.0, 2.0)
    delta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = sum((h**2 / (h**2 + 2)) ** (D / 2) * 2 * (1 - math.exp(-delta.pow(2).sum().item() / (2 * (h**2 + 2))))
                for h in bandwidths)
    values = torch.tensor([mmd_rbf(_gauss(600, 10 + r), _gauss(600, 50 + r) + delta, bandwidths) for r in range(8)])
    stderr = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - exact) < 5 * stderr
    assert exact > 10 * stderr  # the test can tell this shift from no shift


def test_digits_probe_is_a_pure_function_of_its_seed():
    """refimpl.digits_eval.classifier leaves the global RNG as it found it and trains the same weights every time:
    the figure builder trains it once per worker before forking the scripts that use it (WORKER_WARM_UP), which
    is output-neutral only if a script sees the same RNG state and probe either way."""
    from refimpl.digits_eval import classifier

    classifier.cache_clear()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = {k: v.clone() for k, v in classifier().state_dict().items()}
    assert torch.equal(torch.get_rng_state(), before)
    classifier.cache_clear()
    torch.manual_seed(7)
    assert all(torch.equal(first[k], v) for k, v in classifier().state_dict().items())

