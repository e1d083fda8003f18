"""DDPM against closed forms: the forward process, the posterior, the Gaussian-mixture toolkit,
and ancestral sampling driven by the exact optimal noise prediction."""

import math

import pytest
import torch

from refimpl.core import LineageError
from refimpl.ddpm import ddpm_sample, ddpm_step, loss_simple, predict_x0, reverse_step
from refimpl.schedules import posterior, q_sample
from refimpl.metrics import mmd_rbf, sliced_wasserstein
from refimpl.mixture import GaussianMixture, eps_model, mixture_2d
from refimpl.schedules import Schedule, linear_betas, make_schedule

torch.set_num_threads(1)

F64 = torch.float64


@pytest.fixture(scope="module")
def s64():
    """The DDPM linear schedule in float64, so closed-form identities hold to ~1e-12."""
    return Schedule(linear_betas(1000, dtype=F64))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- forward process, Eq. (4)

def test_q_sample_moments(s64):
    # x_t | x_0 ~ N(sqrt(abar) x_0, (1 - abar) I). With N draws, the sample mean has standard error
    # sqrt((1 - abar) / N) and the sample variance sqrt(2 / (N - 1)) (1 - abar) (Gaussian data);
    # we allow 5 standard errors per coordinate.
    N, x0 = 100_000, torch.tensor([1.5, -0.5, 3.0], dtype=F64)
    for t in (0, 100, 500, 999):
        eps = torch.randn(N, 3, generator=_gen(t), dtype=F64)
        x_t = q_sample(x0.expand(N, 3), torch.full((N,), t), eps, s64)
        abar = s64.alpha_bar[t].item()
        mean_se = math.sqrt((1 - abar) / N)
        var_se = math.sqrt(2 / (N - 1)) * (1 - abar)
        assert (x_t.mean(0) - math.sqrt(abar) * x0).abs().max().item() < 5 * mean_se
        assert (x_t.var(0) - (1 - abar)).abs().max().item() < 5 * var_se


def test_q_sample_is_the_forward_chain(s64):
    # Independent check of alpha_bar: run the one-step forward process of Eq. (2),
    # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, and compare the moments of x_t with Eq. (4)
    # at a few t, 5 standard errors as above.
    N, x0 = 50_000, 2.0
    x = torch.full((N,), x0, dtype=F64)
    g = _gen(1)
    for t in range(1000):
        x = (1 - s64.betas[t]).sqrt() * x + s64.betas[t].sqrt() * torch.randn(N, generator=g, dtype=F64)
        if t in (9, 99, 999):
            abar = s64.alpha_bar[t].item()
            assert abs(x.mean().item() - math.sqrt(abar) * x0) < 5 * math.sqrt((1 - abar) / N)
            assert abs(x.var().item() - (1 - abar)) < 5 * math.sqrt(2 / (N - 1)) * (1 - abar)


def test_q_sample_per_sample_timesteps(s64):
    x0 = torch.randn(4, 3, 2, 2, generator=_gen(0), dtype=F64)
    eps = torch.randn(4, 3, 2, 2, generator=_gen(1), dtype=F64)
    t = torch.tensor([0, 999, 7, 500])
    x_t = q_sample(x0, t, eps, s64)
    for i in range(4):
        abar = s64.alpha_bar[t[i]]
        torch.testing.assert_close(x_t[i], abar.sqrt() * x0[i] + (1 - abar).sqrt() * eps[i], rtol=0, atol=1e-15)


# ---------------------------------------------------------------- posterior, Eqs. (6)-(7)

T_CHECK = [0, 1, 10, 250, 998, 999]


@pytest.mark.parametrize("t", T_CHECK)
def test_posterior_matches_eq7(s64, t):
    x0 = torch.randn(5, 3, generator=_gen(t), dtype=F64)
    x_t = torch.randn(5, 3, generator=_gen(t + 1), dtype=F64)
    mean, var = posterior(x0, x_t, torch.full((5,), t), s64)
    beta, alpha, abar = (s64.betas[t].item(), s64.alphas[t].item(), s64.alpha_bar[t].item())
    abar_prev = s64.alpha_bar[t - 1].item() if t > 0 else 1.0  # paper alpha_bar_0 = 1
    eq7_mean = math.sqrt(abar_prev) * beta / (1 - abar) * x0 + math.sqrt(alpha) * (1 - abar_prev) / (1 - abar) * x_t
    eq7_var = (1 - abar_prev) / (1 - abar) * beta
    torch.testing.assert_close(mean, eq7_mean, rtol=1e-12, atol=1e-12)
    assert var.shape == (5, 1) and var.flatten().tolist() == pytest.approx([eq7_var] * 5, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("t", T_CHECK)
def test_posterior_is_bayes_on_the_gaussian_joint(s64, t):
    # Independent derivation: given x_0, (x_{t-1}, x_t) is jointly Gaussian per coordinate with
    #   x_{t-1} ~ N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}),  x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t),
    # so the covariance is [[v, sqrt(alpha_t) v], [sqrt(alpha_t) v, alpha_t v + beta_t]] with v = 1 - abar_{t-1},
    # and Gaussian conditioning gives the posterior. Built from betas by a float64 product, not from Eq. (7).
    betas = s64.betas
    abar_prev = torch.prod(1 - betas[:t]).item()  # empty product = 1 at t = 0
    alpha, beta = 1 - betas[t].item(), betas[t].item()
    v = 1 - abar_prev
    cov = torch.tensor([[v, math.sqrt(alpha) * v], [math.sqrt(alpha) * v, alpha * v + beta]], dtype=F64)
    x0 = torch.randn(5, 3, generator=_gen(t), dtype=F64)
    x_t = torch.randn(5, 3, generator=_gen(t + 1), dtype=F64)
    m_prev, m_t = math.sqrt(abar_prev) * x0, math.sqrt(abar_prev * alpha) * x0
    gain = cov[0, 1] / cov[1, 1]
    bayes_mean = m_prev + gain * (x_t - m_t)
    bayes_var = (cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]).item()
    mean, var = posterior(x0, x_t, torch.full((5,), t), s64)
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-10, atol=1e-10)
    assert var[0].item() == pytest.approx(bayes_var, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("t", T_CHECK)
def test_predict_x0_inverts_q_sample(s64, t):
    x0 = torch.randn(64, 2, generator=_gen(t), dtype=F64)
    eps = torch.randn(64, 2, generator=_gen(t + 1), dtype=F64)
    tt = torch.full((64,), t)
    # Error: rounding of x_t (~1e-16) amplified by 1 / sqrt(abar_T) ~ 160.
    torch.testing.assert_close(predict_x0(q_sample(x0, tt, eps, s64), tt, eps, s64), x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", T_CHECK)
def test_eq11_mean_is_the_posterior_mean_at_predicted_x0(s64, t):
    # Eq. (11) is Eq. (7)'s mean with x_0 replaced by the Eq. (15) prediction: the two forms are the
    # same function of (x_t, eps) in exact arithmetic (diffusers computes the second one).
    x_t = torch.randn(64, 2, generator=_gen(t), dtype=F64)
    eps = torch.randn(64, 2, generator=_gen(t + 1), dtype=F64)
    tt = torch.full((64,), t)
    eq11 = reverse_step(x_t, t, eps, s64, torch.zeros_like(x_t))  # zero noise: the mean alone
    mean, _ = posterior(predict_x0(x_t, tt, eps, s64), x_t, tt, s64)
    torch.testing.assert_close(eq11, mean, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- the Gaussian-mixture toolkit

@pytest.fixture(scope="module")
def mix():
    return mixture_2d()


def test_mixture_log_prob_is_normalised_and_exact(mix):
    # Midpoint rule on a grid covering > 10 standard deviations: converges spectrally for Gaussians.
    h = 0.02
    axis = torch.arange(-6 + h / 2, 6, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    assert mix.log_prob(grid).exp().sum().item() * h * h == pytest.approx(1.0, abs=1e-6)
    # One component against torch.distributions.
    single = GaussianMixture.single(mix.means[0], mix.covs[0])
    ref = torch.distributions.MultivariateNormal(mix.means[0], mix.covs[0])
    x = mix.sample(100, _gen(0))[0]
    torch.testing.assert_close(single.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-12)


def test_responsibilities_are_stable_far_away(mix):
    x = torch.tensor([[1e3, -1e3], [0.0, 0.0], [-40.0, 3.0]], dtype=F64)
    r = mix.responsibilities(x)
    assert torch.isfinite(r).all() and torch.allclose(r.sum(-1), torch.ones(3, dtype=F64))
    assert torch.isfinite(mix.score(x)).all() and torch.isfinite(mix.log_prob(x)).all()


@pytest.mark.parametrize("noise", [("vp", 1.0 - 1e-4), ("vp", 0.5), ("vp", 1e-3), ("ve", 0.3), ("ve", 20.0)])
def test_score_is_grad_log_prob(mix, noise):
    kind, level = noise
    noised = mix.vp(level) if kind == "vp" else mix.ve(level)
    x = noised.sample(200, _gen(3))[0].requires_grad_(True)
    (grad,) = torch.autograd.grad(noised.log_prob(x).sum(), x)
    torch.testing.assert_close(noised.score(x.detach()), grad, rtol=1e-9, atol=1e-9)


def test_vp_marginal_moments(mix):
    # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps drawn through q_sample's formula vs the closed-form
    # noised mixture's mean and covariance (law of total covariance); 5 standard errors, with the
    # standard error of a mean sqrt(var / N) and of a covariance entry sqrt((S_ii S_jj + S_ij^2) / N)
    # (Gaussian 4th moments; the mixture's are heavier, so we use 6 instead of 5 for the covariance).
    N, abar = 200_000, 0.3
    x0 = mix.sample(N, _gen(4))[0]
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * torch.randn(N, 2, generator=_gen(5), dtype=F64)
    noised = mix.vp(abar)
    m, S = noised.mean(), noised.covariance()
    assert ((x_t.mean(0) - m).abs() < 5 * (S.diagonal() / N).sqrt()).all()
    cov_se = ((S.diagonal()[:, None] * S.diagonal()[None] + S**2) / N).sqrt()
    assert ((torch.cov(x_t.T) - S).abs() < 6 * cov_se).all()


def test_denoise_vp_is_the_componentwise_posterior_mean(mix):
    # Tweedie vs direct Bayes: E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + sqrt(a) S_k C_k^{-1} (x_t - sqrt(a) mu_k)),
    # with C_k = a S_k + (1 - a) I and r_k the noised mixture's responsibilities.
    a = 0.4
    noised = mix.vp(a)
    x_t = noised.sample(300, _gen(6))[0]
    r = noised.responsibilities(x_t)
    direct = torch.zeros_like(x_t)
    for k in range(mix.K):
        C = noised.covs[k]
        gain = math.sqrt(a) * mix.covs[k] @ torch.linalg.inv(C)
        direct += r[:, k:k + 1] * (mix.means[k] + (x_t - math.sqrt(a) * mix.means[k]) @ gain.T)
    torch.testing.assert_close(mix.denoise_vp(x_t, a), direct, rtol=1e-10, atol=1e-10)


def test_eps_model_is_scaled_score_with_per_sample_t(mix, s64):
    model = eps_model(mix, s64)
    x_t = torch.randn(6, 2, generator=_gen(7), dtype=torch.float32)
    t = torch.tensor([0, 999, 500, 0, 10, 500])
    out = model(x_t, t)
    assert out.dtype == torch.float32 and out.shape == (6, 2)
    for i in range(6):
        a = s64.alpha_bar[t[i]].item()
        expected = -math.sqrt(1 - a) * mix.vp(a).score(x_t[i:i + 1].double())
        torch.testing.assert_close(out[i:i + 1].double(), expected, rtol=1e-6, atol=1e-6)  # float32 output


@pytest.mark.parametrize("t", [0, 10, 100])
def test_eps_model_recovers_eps_for_a_tight_component(s64, t):
    # Data N(mu, s^2 I) with s = 1e-4 and x_0 = mu: eps* = E[eps | x_t] = (1 - a) / (a s^2 + 1 - a) * eps
    # exactly (Gaussian conditioning), which is eps up to a relative 1e-4 even at t = 0 (1 - a = 1e-4).
    s, mu = 1e-4, torch.tensor([0.7, -1.3], dtype=F64)
    tight = GaussianMixture.single(mu, s**2 * torch.eye(2, dtype=F64))
    model = eps_model(tight, s64)
    eps = torch.randn(100, 2, generator=_gen(8), dtype=F64)
    tt = torch.full((100,), t)
    x_t = q_sample(mu.expand(100, 2), tt, eps, s64)
    a = s64.alpha_bar[t].item()
    got = model(x_t, tt)
    torch.testing.assert_close(got, (1 - a) / (a * s**2 + 1 - a) * eps, rtol=1e-8, atol=1e-8)
    assert (got - eps).abs().max().item() < 5e-4  # |eps| < 5, relative error <= 1e-4


# ---------------------------------------------------------------- Algorithm 1

def test_loss_simple_is_algorithm_1(s64):
    # Replaying the generator's draws (t first, then eps) reproduces the loss exactly.
    x0 = torch.randn(16, 2, generator=_gen(0), dtype=F64)
    seen = {}

    def model(x_t, t):
        seen["t"] = t
        return torch.tanh(x_t) * (t[:, None] + 1) / 1000

    loss = loss_simple(model, x0, s64, _gen(42))
    g = _gen(42)
    t = torch.randint(0, 1000, (16,), generator=g)
    eps = torch.randn(16, 2, generator=g, dtype=F64)
    manual = ((eps - model(q_sample(x0, t, eps, s64), t)) ** 2).mean()
    assert torch.equal(seen["t"], t) and seen["t"].dtype == torch.int64
    assert loss.item() == manual.item()
    assert loss_simple(model, x0, s64, _gen(42)).item() == loss.item()
    assert loss_simple(model, x0, s64, _gen(43)).item() != loss.item()


# ---------------------------------------------------------------- Algorithm 2

def test_ddpm_step_last_step_is_noise_free(s64):
    model = eps_model(mixture_2d(), s64)
    x = torch.randn(8, 2, generator=_gen(0), dtype=F64)
    a = ddpm_step(model, x, 0, s64, torch.randn(8, 2, generator=_gen(1), dtype=F64))
    b = ddpm_step(model, x, 0, s64, None)
    assert torch.equal(a, b)
    c = ddpm_step(model, x, 1, s64, torch.randn(8, 2, generator=_gen(1), dtype=F64))
    d = ddpm_step(model, x, 1, s64, torch.zeros(8, 2, dtype=F64))
    assert not torch.equal(c, d)


def test_bad_variance_name_is_refused_before_any_work(s64):
    calls = []

    def model(x_t, t):
        calls.append(t)
        return torch.zeros_like(x_t)

    with pytest.raises(LineageError, match="unknown variance"):
        ddpm_sample(model, torch.zeros(2, 2), s64, variance="learned", disable=True)
    with pytest.raises(LineageError):
        ddpm_step(model, torch.zeros(2, 2), 5, s64, torch.zeros(2, 2), variance="large")
    assert len(calls) <= 1


def test_sampler_callback_and_reproducibility():
    s = make_schedule("linear", 20)
    model = eps_model(mixture_2d(), s)
    log = []
    x_T = torch.randn(5, 2, generator=_gen(0))
    out = ddpm_sample(model, x_T, s, generator=_gen(1), callback=lambda t, x, x0: log.append((t, x, x0)),
                      disable=True)
    assert [t for t, _, _ in log] == list(range(19, -1, -1))
    assert all(x.shape == (5, 2) and x0.shape == (5, 2) for _, x, x0 in log)
    assert torch.equal(log[-1][1], out) and out.dtype == torch.float32
    assert torch.equal(ddpm_sample(model, x_T, s, generator=_gen(1), disable=True), out)
    assert not torch.equal(ddpm_sample(model, x_T, s, generator=_gen(2), disable=True), out)


@pytest.fixture(scope="module")
def reference_stats(mix):
    """What two exact draws of the mixture look like to each metric (the null distribution)."""
    N, g = 4000, _gen(100)
    sw = lambda a, b: sliced_wasserstein(a, b, 256, _gen(123))  # noqa: E731
    fresh = mix.sample(N, g)[0]
    sw_null = torch.tensor([sw(mix.sample(N, g)[0], mix.sample(N, g)[0]) for _ in range(10)])
    mmd_null = torch.tensor([mmd_rbf(mix.sample(1500, g)[0], mix.sample(1500, g)[0]) for _ in range(6)])
    gaussian = GaussianMixture.single(mix.mean(), mix.covariance()).sample(N, g)[0]
    return dict(N=N, sw=sw, fresh=fresh, sw_null=sw_null, mmd_null=mmd_null, gaussian=gaussian)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampling_with_exact_eps_reproduces_the_mixture(mix, s64, reference_stats, variance):
    """Algorithm 2 driven by the exact eps* (T = 1000) must give back the data distribution."""
    ref = reference_stats
    N, sw, fresh = ref["N"], ref["sw"], ref["fresh"]
    x_T = torch.randn(N, 2, generator=_gen(7), dtype=F64)
    x = ddpm_sample(eps_model(mix, s64), x_T, s64, variance=variance, generator=_gen(8), disable=True)
    assert torch.isfinite(x).all()

    # Sliced Wasserstein: an exact sampler's distance to a fresh draw has the law of the null
    # distances between two exact draws; threshold = null mean + 5 null sd. The moment-matched Gaussian
    # (right mean and covariance, wrong shape) must be far beyond it, or the test had no power.
    sw_threshold = ref["sw_null"].mean().item() + 5 * ref["sw_null"].std().item()
    assert sw(x, fresh) < sw_threshold
    assert sw(ref["gaussian"], fresh) > 2 * sw_threshold

    # Unbiased MMD^2: mean 0 under the null; threshold 5 null sd; the Gaussian is ~100 null sd away.
    mmd_threshold = 5 * ref["mmd_null"].std().item()
    assert mmd_rbf(x[:1500], fresh[:1500]) < mmd_threshold
    assert mmd_rbf(ref["gaussian"][:1500], fresh[:1500]) > 10 * mmd_threshold

    # Mean log-density under the data: for exact samples, mean log p(x) - mean log p(fresh) has mean 0
    # and sd sqrt(2 Var[log p] / N) (~0.012 nats here). Too wide or too narrow samples shift it: doubling
    # sigma_t^2 moves it by ~-35 sd, eps scaled by 1.1 by ~+8 sd. T = 1000 is not exact either: measured
    # with N = 20000, fixed_small samples are slightly too concentrated (+0.026 nats) and fixed_large
    # slightly too spread (-0.020 nats), as expected from beta_tilde_t and beta_t being the lower and
    # upper ends of the true reverse variance (DDPM Sec. 3.2); that is ~2 sd at this N, inside 5 sd.
    lp_x, lp_fresh = mix.log_prob(x), mix.log_prob(fresh)
    sd = math.sqrt(2 * lp_fresh.var().item() / N)
    assert abs(lp_x.mean().item() - lp_fresh.mean().item()) < 5 * sd

    # Component weights: E_{x ~ p}[r_k(x)] = pi_k exactly, and 0 <= r_k <= 1 gives Var r_k <= pi_k (1 - pi_k),
    # so the mean responsibility is within 5 sqrt(pi_k (1 - pi_k) / N) (multinomial standard error).
    # Equal weights (0.2 each) would be 0.1 off for the first component, ~3x this tolerance.
    pi = mix.weights
    assert ((mix.responsibilities(x).mean(0) - pi).abs() < 5 * (pi * (1 - pi) / N).sqrt()).all()
