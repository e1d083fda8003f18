"""Noise schedules: DDPM's linear betas, improved DDPM's cosine betas, and the derived quantities."""

import math

import pytest
import torch

from refimpl.core import LineageError
from refimpl.schedules import Schedule, cosine_betas, gather, linear_betas, make_schedule

EPS32 = 2.0**-24  # unit roundoff of float32
EPS64 = 2.0**-53  # unit roundoff of float64


def test_linear_endpoints_are_exactly_the_papers():
    # DDPM Sec. 4: beta_1 = 1e-4, beta_T = 0.02. (A well-known tutorial squared a linspace that
    # started at 1e-8 and so began at 1e-16.) Equality with the float32 literals, not "close to".
    betas = linear_betas(1000)
    assert betas.dtype == torch.float32 and betas.shape == (1000,)
    assert betas[0].item() == torch.tensor(1e-4, dtype=torch.float32).item()
    assert betas[-1].item() == torch.tensor(0.02, dtype=torch.float32).item()
    assert bool((betas[1:] > betas[:-1]).all())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_derived_quantities(name):
    s = make_schedule(name, 1000)
    assert s.T == 1000
    assert torch.equal(s.alphas, 1 - s.betas)
    # alpha_bar is strictly decreasing in (0, 1): every beta is in (0, 1).
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())
    assert 0 < s.alpha_bar[-1].item() < s.alpha_bar[0].item() < 1
    assert s.alpha_bar_prev[0].item() == 1.0 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    # beta_tilde (Eq. 7) is zero at the first step and never exceeds beta.
    assert s.beta_tilde[0].item() == 0.0
    assert bool((s.beta_tilde <= s.betas).all())
    torch.testing.assert_close(s.snr, s.alpha_bar / (1 - s.alpha_bar), rtol=0, atol=0)


def test_linear_alpha_bar_end_value():
    # prod(1 - beta_t) for the linear schedule, computed independently in float64: about 4.04e-5,
    # so x_T is N(0, I) up to a mean shrink of sqrt(alpha_bar_T) ~ 0.0064.
    exact = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    got = make_schedule("linear", 1000).alpha_bar[-1].item()
    # float32 cumprod over T factors: relative error at most ~T * EPS32 (6e-5), plus the betas' rounding.
    assert abs(got - exact) / exact < 2 * 1000 * EPS32


def _cosine_f(u, T, s=0.008):
    return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosine_alpha_bar_is_the_closed_form(dtype):
    # The betas are ratios 1 - f(t)/f(t-1), so their cumulative product telescopes to f(t)/f(0):
    # alpha_bar must equal the closed form up to rounding, everywhere except the last step, whose
    # beta is clipped at 0.999 (there f(T) = 0). Worst-case rounding: each of the <= T factors and
    # each rounded beta contributes one unit roundoff -> relative error <= 2 T u.
    T = 1000
    s = Schedule(cosine_betas(T, dtype=dtype))
    closed = torch.tensor([_cosine_f(t + 1, T) / _cosine_f(0, T) for t in range(T)], dtype=torch.float64)
    u = EPS64 if dtype == torch.float64 else EPS32
    rel = ((s.alpha_bar.double() - closed).abs() / closed)[:-1]
    assert rel.max().item() < 2 * T * u
    # Sanity of the test: forgetting the normalisation by f(0) would be off by 1.6e-4 relative.
    assert abs(1 / _cosine_f(0, T) - 1) > 10 * 2 * T * EPS64


def test_cosine_clip():
    betas = cosine_betas(1000)
    assert betas.max().item() == pytest.approx(0.999, abs=1e-7)
    assert betas[-1].item() == pytest.approx(0.999, abs=1e-7)  # unclipped it would be 1 (f(T) = 0)
    assert bool((betas[:-1] < 0.999).all())
    # Clipping at another level is honoured, and clips more than one step.
    clipped = cosine_betas(1000, max_beta=0.1)
    assert clipped.max().item() == pytest.approx(0.1, abs=1e-7) and int((clipped >= 0.1 - 1e-7).sum()) > 1


def test_cosine_matches_diffusers():
    import diffusers
    theirs = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
    assert torch.equal(theirs.betas, cosine_betas(1000))


@pytest.mark.parametrize("T", [0, -3, 2.5, True])
def test_bad_T(T):
    with pytest.raises(LineageError):
        make_schedule("linear", T)


def test_bad_name():
    with pytest.raises(LineageError, match="unknown schedule"):
        make_schedule("quadratic", 10)


@pytest.mark.parametrize("betas", [torch.tensor([]), torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.1]),
                                   torch.ones(2, 2) * 0.1])
def test_bad_betas(betas):
    with pytest.raises(LineageError):
        Schedule(betas)


def test_gather_shapes_and_to():
    s = make_schedule("linear", 10)
    x = torch.zeros(3, 4, 5, 6, dtype=torch.float64)
    t = torch.tensor([0, 9, 4])
    out = gather(s.alpha_bar, t, x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float64
    assert out.flatten().tolist() == s.alpha_bar[t].double().tolist()
    moved = s.to("cpu")
    assert moved.T == 10 and torch.equal(moved.beta_tilde, s.beta_tilde)
