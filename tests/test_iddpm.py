"""Improved DDPM (refimpl.iddpm): the learned variance (Eq. 15) against diffusers' "learned_range" and a pinned
deviation at t = 0, the VLB terms (Eqs. 4-7) against closed forms and an entropy bound, the stop-gradient of
L_hybrid (Eq. 16), respacing and strided sampling (Sec. 4), and the command line.

The cosine schedule (Eq. 17) equals diffusers' "squaredcos_cap_v2" betas bit for bit; that is pinned in
tests/test_schedules.py (test_cosine_matches_diffusers) and not repeated here.

Noise order: diffusers' DDPMScheduler.step splits off the variance channels and then, only if t > 0, draws
``randn_tensor(model_output.shape, generator=...)`` (scheduling_ddpm.py, step(), "6. Add noise"): one draw of
the sample's shape per step but the last. ``iddpm_sample`` draws the same, so seeded generators agree.
"""

import json
import math

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import ddpm, iddpm
from refimpl.core import LineageError
from refimpl.ddim import ddim_sample
from refimpl.schedules import timesteps
from refimpl.ddpm import ddpm_sample, loss_simple
from refimpl.schedules import q_sample
from refimpl.iddpm import (bits_per_dim, clipped_log_beta_tilde, eps_only, hybrid_loss, iddpm_sample,
                           learned_log_variance, prior_term, respace, reverse_mean, split_output, vlb_terms)
from refimpl.likelihood import discretized_gaussian_log_likelihood, normal_kl
from refimpl.mixture import GaussianMixture, eps_model, mixture_2d
from refimpl.schedules import Schedule, cosine_betas, linear_betas, make_schedule

torch.set_num_threads(1)

F64 = torch.float64
T = 1000
LN2 = math.log(2)


@pytest.fixture(scope="module")
def c64():
    """The cosine schedule in float64: identities hold to ~1e-12."""
    return Schedule(cosine_betas(T, dtype=F64))


@pytest.fixture(scope="module")
def c32():
    return make_schedule("cosine", T)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _t(value, n):
    return torch.full((n,), value, dtype=torch.long)


class LearnedVarianceMLP(torch.nn.Module):
    """A fixed random network with a learned-variance head: eps = the exact eps* for N(0, I) data plus a bounded
    perturbation (so chains stay bounded), and v = tanh(...) in (-1, 1), both nonlinear in (x_t, t)."""

    def __init__(self, schedule: Schedule, dim: int = 2, hidden: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 2, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, 2 * dim))
        self.register_buffer("alpha_bar", schedule.alpha_bar.clone())
        self.dim = dim

    def forward(self, x_t, t):
        phase = 2 * torch.pi * t.to(x_t.dtype)[:, None] / T
        h = self.net(torch.cat([x_t, torch.sin(phase), torch.cos(phase)], dim=1))
        scale = (1 - self.alpha_bar[t].to(x_t.dtype))[:, None].sqrt()
        return torch.cat([scale * x_t + 0.3 * torch.tanh(h[:, :self.dim]), torch.tanh(h[:, self.dim:])], dim=1)


# ---------------------------------------------------------------- Eq. (15): the learned variance

@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_learned_log_variance_is_eq15(c64, t):
    # frac = (v + 1) / 2 interpolates log beta_t (v = 1) and log beta_tilde_t (v = -1); at code t = 0, where
    # beta_tilde = 0, the lower end is beta_tilde at code t = 1 (the official code's clipped log variance).
    v = torch.tensor([[-1.0, 0.0, 1.0, 0.3, -1.7]], dtype=F64)  # unconstrained: v = -1.7 leaves the range
    got = learned_log_variance(v, _t(t, 1), c64)[0]
    beta = c64.betas[t].item()
    beta_tilde = c64.beta_tilde[max(t, 1)].item()
    frac = (v[0] + 1) / 2
    expected = torch.log(beta**frac * beta_tilde ** (1 - frac))  # Sigma = beta^frac beta_tilde^(1 - frac)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert clipped_log_beta_tilde(c64)[0].item() == pytest.approx(math.log(c64.beta_tilde[1].item()), rel=1e-15)
    assert c64.beta_tilde[0].item() == 0.0


def test_split_output_and_eps_only(c64):
    model = LearnedVarianceMLP(c64).double()
    x = torch.randn(6, 2, generator=_gen(0), dtype=F64)
    out = model(x, _t(500, 6))
    eps, v = split_output(out, x)
    assert torch.equal(eps, out[:, :2]) and torch.equal(v, out[:, 2:])
    assert torch.equal(eps_only(model)(x, _t(500, 6)), eps)
    with pytest.raises(LineageError, match="eps and v"):
        split_output(out[:, :3], x)
    # any eps sampler runs on the wrapped model: DDIM sees exactly the eps channels
    eps_channels = lambda x_t, t: model(x_t, t)[:, :2]  # noqa: E731
    x_T = torch.randn(8, 2, generator=_gen(1), dtype=F64)
    assert torch.equal(ddim_sample(eps_only(model), x_T, c64, steps=10, disable=True),
                       ddim_sample(eps_channels, x_T, c64, steps=10, disable=True))


# ---------------------------------------------------------------- parity with diffusers' learned_range

def diffusers_loop(model, x_T, steps, *, seed, schedule64=None):
    """DDPMPipeline's loop with DDPMScheduler(variance_type="learned_range"), the cosine betas and no clipping.
    set_timesteps(steps) uses "leading" spacing, (T // steps) i, which is our uniform tau when steps divides T.
    ``schedule64`` swaps in a float64 alphas_cumprod (the only schedule quantity step() reads)."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                        variance_type="learned_range", clip_sample=False)
    if schedule64 is not None:
        scheduler.alphas_cumprod = schedule64.alpha_bar.clone()
        scheduler.one = torch.tensor(1.0, dtype=F64)
    scheduler.set_timesteps(steps)
    generator = _gen(seed)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, _t(int(t), x.shape[0])), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("steps", [T, 50])
def test_learned_range_sampling_matches_diffusers(c64, steps):
    # Same 2C-channel model output, same noise, alpha_bar in float64 on both sides: with all T steps and with 50
    # respaced steps (diffusers' beta' = 1 - alpha_bar_t / alpha_bar_prev and its beta_tilde' are ours), the
    # loops agree to float64 rounding (measured 1.2e-12 / 3e-14). Asserted: 1e-9.
    assert timesteps(T, steps) == list(range(0, T, T // steps))
    model = LearnedVarianceMLP(c64).double()
    x_T = torch.randn(512, 2, generator=_gen(0), dtype=F64)
    ours = iddpm_sample(model, x_T, c64, steps=steps, generator=_gen(1), disable=True)
    theirs = diffusers_loop(model, x_T, steps, seed=1, schedule64=c64)
    assert (ours - theirs).abs().max().item() <= 1e-9


@pytest.mark.parametrize("steps", [T, 50])
def test_float32_schedule_gap_and_ours_is_closer(c32, c64, steps):
    # DEVIATION (numerical): with the float32 schedule, diffusers computes the mean as the Eq. (10)-(11) posterior
    # mean at the predicted x_0, whose x_0 coefficient beta'_t / (1 - alpha_bar_t) is exactly 1 at t = 0 in exact
    # arithmetic but carries the float32 rounding of 1 - alpha_bar near 1 (~5e-4 relative for the cosine
    # alpha_bar_0 = 1 - 4e-5) elsewhere; the Eq. (13) form rounds only the eps term. Against a float64 run the
    # errors are (measured) ours 3.0e-6 / 7.5e-6, diffusers 8.5e-4 / 1.7e-5 for T / 50 steps; the gap between
    # the two is rounding (< 2e-3, far below a wrong variance or mean, which moves samples by O(1e-1)).
    model32 = LearnedVarianceMLP(c32).double()  # float64 arithmetic, float32 schedule quantities
    x_T = torch.randn(512, 2, generator=_gen(0), dtype=F64)
    reference = iddpm_sample(LearnedVarianceMLP(c64).double(), x_T, c64, steps=steps, generator=_gen(1), disable=True)
    ours = iddpm_sample(model32, x_T, c32, steps=steps, generator=_gen(1), disable=True)
    theirs = diffusers_loop(model32, x_T, steps, seed=1)
    ours_err, theirs_err = (ours - reference).abs().max().item(), (theirs - reference).abs().max().item()
    assert (ours - theirs).abs().max().item() < 2e-3
    assert ours_err < theirs_err, (ours_err, theirs_err)


def test_diffusers_clamps_the_t0_variance_instead_of_clipping_it(c32, c64):
    # DEVIATION: at code t = 0, beta_tilde = 0. diffusers clamps it at 1e-20 before the log (_get_variance:
    # "torch.clamp(variance, min=1e-20)"), so learned_range interpolates towards log(1e-20) = -46.05; the official
    # code (and we) use log beta_tilde at code t = 1.
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                        variance_type="learned_range", clip_sample=False)
    v = torch.tensor([-1.0, 0.0, 1.0])
    theirs = scheduler._get_variance(0, predicted_variance=v)
    beta_0 = 1 - scheduler.alphas_cumprod[0]  # diffusers' current_beta_t at t = 0
    torch.testing.assert_close(theirs, (v + 1) / 2 * beta_0.log() + (1 - v) / 2 * math.log(1e-20), rtol=1e-6, atol=1e-5)
    ours = learned_log_variance(v, _t(0, 3), c32)
    assert ours[0].item() == pytest.approx(math.log(c32.beta_tilde[1].item()), rel=1e-6)
    # the gap is (1 - frac) (log beta_tilde_1 - log 1e-20): 35.3 nats at v = -1, 17.7 at v = 0 (a factor 5e7)
    gap = math.log(c32.beta_tilde[1].item()) - math.log(1e-20)
    torch.testing.assert_close(ours - theirs, (1 - v) / 2 * gap, rtol=1e-5, atol=1e-3)  # float32 logs of ~10..46
    # It does not matter for sampling: neither adds noise at t = 0, so the last step is the Eq. (13) mean on both
    # sides (float64 alphas: equal to rounding). It matters for a likelihood: a decoder L_0 with diffusers'
    # variance would be a near point mass (diffusers computes no likelihood).
    scheduler.alphas_cumprod, scheduler.one = c64.alpha_bar.clone(), torch.tensor(1.0, dtype=F64)
    model = LearnedVarianceMLP(c64).double()
    x = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    out = model(x, _t(0, 64))
    one = scheduler.step(out, 0, x, generator=_gen(1)).prev_sample
    assert torch.equal(one, scheduler.step(out, 0, x, generator=_gen(2)).prev_sample)
    assert (one - reverse_mean(x, _t(0, 64), out[:, :2], c64)).abs().max().item() < 1e-12


# ---------------------------------------------------------------- Eqs. (4)-(7): the terms of the bound

def test_normal_kl_matches_torch_distributions():
    g = _gen(0)
    m1, m2 = torch.randn(200, generator=g, dtype=F64), 3 * torch.randn(200, generator=g, dtype=F64)
    lv1, lv2 = 4 * torch.randn(200, generator=g, dtype=F64), 4 * torch.randn(200, generator=g, dtype=F64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bin_width", [1 / 8, 2 / 255])
def test_discretized_likelihood_is_a_distribution_on_the_grid(bin_width):
    # The bins [x - w/2, x + w/2] of the grid -1, -1 + w, ..., 1, with the end bins open to -inf / +inf, tile the
    # real line: the probabilities of all levels sum to 1 (digits: 17 levels; DDPM's images: 256), for any mean
    # and scale, including means off the grid and far outside [-1, 1]. Float64: each of the 17..256 terms is
    # exact to ~1e-16 relative, so the sum is 1 to < 1e-12.
    levels = torch.linspace(-1, 1, round(2 / bin_width) + 1, dtype=F64)
    assert torch.allclose(levels[1:] - levels[:-1], torch.tensor(bin_width, dtype=F64))
    for mean in (-3.0, -1.0, -0.3, 0.0, 0.97, 2.5):
        for std in (1e-3, 0.05, 1.0, 10.0):
            log_p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                        torch.full_like(levels, 2 * math.log(std)), bin_width=bin_width)
            assert torch.isfinite(log_p).all()
            assert abs(log_p.exp().sum().item() - 1) < 1e-12, (mean, std)


def test_discretized_likelihood_values_and_tails():
    w = 1 / 8
    ndtr = torch.special.ndtr
    x = torch.tensor([-1.0, -0.5, 0.25, 1.0], dtype=F64)
    mean, std = torch.tensor([-0.9, -0.45, 0.3, 0.8], dtype=F64), 0.1
    got = discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, 2 * math.log(std)), bin_width=w)
    expected = torch.log(torch.stack([
        ndtr((x[0] + w / 2 - mean[0]) / std),  # lowest level: (-inf, -1 + w/2]
        ndtr((x[1] + w / 2 - mean[1]) / std) - ndtr((x[1] - w / 2 - mean[1]) / std),
        ndtr((x[2] + w / 2 - mean[2]) / std) - ndtr((x[2] - w / 2 - mean[2]) / std),
        1 - ndtr((x[3] - w / 2 - mean[3]) / std),  # highest level: [1 - w/2, inf)
    ]))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # Far tail: mean 0, std 0.01, level 0.5: the bin is [43.75, 56.25] standard deviations out. Its log-probability
    # is log Phi(-43.75) (Phi(-56.25) is e^-1582 smaller), whose asymptotic (Mills ratio) series
    # -z^2/2 - log(z sqrt(2 pi)) + log(1 - 1/z^2 + 3/z^4 - 15/z^6) is exact to ~105/z^8 ~ 1e-11 here. The official
    # code's floor would give log(1e-12) = -27.6 instead of -961.
    z = 43.75
    series = -z * z / 2 - math.log(z * math.sqrt(2 * math.pi)) + math.log(1 - z**-2 + 3 * z**-4 - 15 * z**-6)
    tail = discretized_gaussian_log_likelihood(torch.tensor([0.5], dtype=F64), torch.zeros(1, dtype=F64),
                                               torch.full((1,), 2 * math.log(0.01), dtype=F64), bin_width=w)
    assert tail.item() == pytest.approx(series, rel=1e-12)


@pytest.mark.parametrize("t", [1, 2, 10, 500, 999])
def test_kl_terms_vanish_at_the_exact_posterior(c64, t):
    # With the true eps, Eq. (13)'s mean is the posterior mean of Eqs. (10)-(11) (algebraically), so with
    # Sigma = beta_tilde_t the KL term is 0 (float64: measured < 1e-13 bits; asserted 1e-10). With Sigma = beta_t
    # it is the KL between two Gaussians of equal mean, (beta_tilde/beta - 1 - log(beta_tilde/beta)) / 2 nats per dim.
    x0 = torch.randn(32, 3, generator=_gen(t), dtype=F64)
    eps = torch.randn(32, 3, generator=_gen(t + 1), dtype=F64)
    tt = _t(t, 32)
    x_t = q_sample(x0, tt, eps, c64)
    small = vlb_terms(x0, x_t, tt, eps, torch.log(c64.beta_tilde[tt])[:, None], c64)
    assert small.abs().max().item() < 1e-10
    r = (c64.beta_tilde[t] / c64.betas[t]).item()
    large = vlb_terms(x0, x_t, tt, eps, torch.log(c64.betas[tt])[:, None], c64)
    torch.testing.assert_close(large, torch.full((32,), (r - 1 - math.log(r)) / 2 / LN2, dtype=F64),
                               rtol=1e-9, atol=1e-12)


def test_prior_term_is_eq7():
    # L_T = KL(N(sqrt(alpha_bar_T) x_0, 1 - alpha_bar_T) || N(0, 1)), averaged over dims, in bits. Linear betas
    # with T = 250 end at alpha_bar_T = 0.08, so the term is far from 0 (~0.02-0.1 bits/dim here).
    s = Schedule(linear_betas(250, dtype=F64))
    x0 = torch.randn(16, 1, 4, 4, generator=_gen(0), dtype=F64)
    a = s.alpha_bar[-1]
    q = torch.distributions.Normal(a.sqrt() * x0, (1 - a).sqrt().expand_as(x0))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).mean(1) / LN2
    got = prior_term(x0, s)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert got.min().item() > 1e-3


def _discrete_data(n):
    """Four points of the 1/8 grid in 2-D with weights 0.1..0.4, n samples in exact proportions (no sampling
    noise in the data: the mean over them is the expectation over the data), and the matching 'mixture' of
    tiny Gaussians (s = 1e-3, far below the bin width) whose eps* is the exact noise prediction for this data."""
    points = torch.tensor([[-0.75, -0.25], [0.25, -0.75], [0.5, 0.5], [-0.5, 0.875]], dtype=F64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    counts = [round(w * n) for w in weights.tolist()]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    mixture = GaussianMixture(weights, points, 1e-6 * torch.eye(2, dtype=F64).expand(4, 2, 2))
    return points[labels], labels, weights, mixture


def test_bits_per_dim_bounds_and_nearly_reaches_the_entropy(c64):
    # For data on the grid with entropy H, any model's expected -log2 p(x) is >= H (Gibbs), and the VLB is >= that,
    # in expectation over the noise of its Monte Carlo terms. With the exact eps* and Sigma = beta_tilde (the exact
    # reverse variance where x_t pins down x_0), the bound becomes tight as T grows (continuous-time limit).
    # Measured at T = 1000, cosine, N = 1000: gap 0.003 +- 0.003 bits/dim. Asserted: mean >= H - 4 standard
    # errors (within-level errors: the data are stratified), and mean <= H + 0.05. That upper tolerance is
    # 1/8 of the gap left by the wrong variance (fixed_large, checked below) and far below a unit or averaging
    # error (nats: x1.44, i.e. +0.4; summing instead of averaging the 2 dims: +0.9).
    x0, labels, weights, mixture = _discrete_data(1000)
    entropy = -(weights * weights.log2()).sum().item() / 2  # bits per dimension
    model = eps_model(mixture, c64)
    result = bits_per_dim(model, x0, c64, variance="fixed_small", generator=_gen(0), disable=True)
    assert result.terms.shape == (1000, T) and result.prior.shape == (1000,)
    torch.testing.assert_close(result.total, result.prior + result.terms.sum(1), rtol=1e-12, atol=1e-12)
    mean = result.total.mean().item()
    n = len(labels)
    se = math.sqrt(sum(((labels == k).sum().item() / n) ** 2 * result.total[labels == k].var().item()
                       / (labels == k).sum().item() for k in range(4)))
    assert mean >= entropy - 4 * se, (mean, entropy, se)
    assert mean <= entropy + 0.05, (mean, entropy)
    # Power: Sigma = beta_t (too large near t = 0 for data on points) leaves a clear gap (measured 0.43 bits/dim).
    large = bits_per_dim(model, x0[::4], c64, variance="fixed_large", generator=_gen(0), disable=True)
    assert large.total.mean().item() > entropy + 0.2


def test_bits_per_dim_noise_does_not_depend_on_batching(c64):
    # One noise draw of x0's shape per timestep, so splitting the model calls changes nothing (the closed-form
    # model is row-wise; float64 rounding only).
    x0 = _discrete_data(40)[0]
    model = eps_model(_discrete_data(40)[3], Schedule(cosine_betas(50, dtype=F64)))
    s = Schedule(cosine_betas(50, dtype=F64))
    a = bits_per_dim(model, x0, s, variance="fixed_small", batch_size=7, generator=_gen(3), disable=True)
    b = bits_per_dim(model, x0, s, variance="fixed_small", batch_size=40, generator=_gen(3), disable=True)
    torch.testing.assert_close(a.terms, b.terms, rtol=1e-12, atol=1e-12)
    with pytest.raises(LineageError, match="variance"):
        bits_per_dim(model, x0, s, variance="large", disable=True)
    with pytest.raises(LineageError, match="eps and v"):
        bits_per_dim(model, x0, s, variance="learned", disable=True)  # an eps-only model has no v


def test_the_likelihood_figure_shares_one_network_pass_between_the_fixed_variances():
    # figures.zoo.iddpm.bounds runs the DDPM once for its fixed_small and fixed_large rows: the same digits and
    # noise give the same (x_t, t) calls, so the replayed bound equals a direct one exactly; other inputs are refused.
    from figures.zoo.iddpm import Replay as replay_class

    x0, *_rest, mixture = _discrete_data(40)
    s = Schedule(cosine_betas(50, dtype=F64))
    model = eps_model(mixture, s)
    shared = replay_class(model)
    bits_per_dim(shared, x0, s, variance="fixed_small", generator=_gen(3), disable=True)
    shared.replay()
    replayed = bits_per_dim(shared, x0, s, variance="fixed_large", generator=_gen(3), disable=True)
    direct = bits_per_dim(model, x0, s, variance="fixed_large", generator=_gen(3), disable=True)
    assert torch.equal(replayed.total, direct.total)
    shared = replay_class(model)
    bits_per_dim(shared, x0, s, variance="fixed_small", generator=_gen(3), disable=True)
    shared.replay()
    with pytest.raises(RuntimeError, match="other inputs"):
        bits_per_dim(shared, x0, s, variance="fixed_large", generator=_gen(4), disable=True)


# ---------------------------------------------------------------- Eq. (16): L_hybrid and its stop-gradient

def test_hybrid_loss_stop_gradient_and_draws(c64):
    x0 = (torch.randint(0, 17, (16, 1, 4, 4), generator=_gen(0)) / 8 - 1).to(F64)  # on the digits grid
    output = torch.randn(16, 2, 4, 4, generator=_gen(1), dtype=F64, requires_grad=True)
    model = lambda x_t, t: output * 1  # noqa: E731  (a model whose output is a leaf we can differentiate)

    def gradient(lam):
        output.grad = None
        hybrid_loss(model, x0, c64, _gen(5), lam).backward()
        return output.grad.clone()

    simple_only, hybrid = gradient(0.0), gradient(1e-3)
    assert torch.equal(simple_only[:, :1], hybrid[:, :1])  # L_vlb sends no gradient to eps (Sec. 3.1)
    assert torch.count_nonzero(simple_only[:, 1:]) == 0  # L_simple sends none to v
    assert torch.isfinite(hybrid).all() and torch.count_nonzero(hybrid[:, 1:]) == hybrid[:, 1:].numel()
    # Values: the same draws as DDPM's loss_simple (t, then eps), and the vlb part is lambda * T * mean L_t
    with torch.no_grad():
        l_simple = loss_simple(eps_only(model), x0, c64, _gen(5))
        assert hybrid_loss(model, x0, c64, _gen(5), 0.0).item() == l_simple.item()
        g = _gen(5)
        t = torch.randint(0, T, (16,), generator=g)
        x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=F64), c64)
        l_vlb = vlb_terms(x0, x_t, t, output[:, :1], learned_log_variance(output[:, 1:], t, c64), c64).mean()
        total = hybrid_loss(model, x0, c64, _gen(5), 1e-3).item()
        assert total == pytest.approx(l_simple.item() + 1e-3 * T * l_vlb.item(), rel=1e-12)


# ---------------------------------------------------------------- Sec. 4: respacing and strided sampling

@pytest.mark.parametrize("schedule", [make_schedule("cosine", T), make_schedule("linear", T),
                                      Schedule(cosine_betas(T, dtype=F64))], ids=["cosine32", "linear32", "cosine64"])
def test_respace_with_all_timesteps_is_the_schedule(schedule):
    same = respace(schedule, range(schedule.T))
    for name in ("betas", "alpha_bar", "beta_tilde"):
        assert torch.equal(getattr(same, name), getattr(schedule, name)), name


@pytest.mark.parametrize("steps, spacing", [(50, "uniform"), (7, "uniform"), (25, "quadratic"), (1, "uniform")])
def test_respaced_alpha_bar_is_alpha_bar_at_tau(c64, c32, steps, spacing):
    # alpha_bar'_i = prod_{j <= i} (1 - beta'_j) = alpha_bar_{tau_i}: same marginals at the visited steps. Float64:
    # two products of <= T factors, rounding ~T * 1.1e-16 = 1e-13 relative (asserted 1e-12). Float32: the original
    # cumprod runs over T float32 factors, ours over S, each with relative rounding 2^-24 per factor, so they may
    # differ by up to ~T 2^-24 = 6e-5 relative (measured 5e-7 for 50 steps).
    tau = timesteps(T, steps, spacing)
    for schedule, rtol in ((c64, 1e-12), (c32, T * 2.0**-24)):
        spaced = respace(schedule, tau)
        assert spaced.T == steps and spaced.betas.dtype == schedule.betas.dtype
        torch.testing.assert_close(spaced.alpha_bar, schedule.alpha_bar[tau], rtol=rtol, atol=0)
    with pytest.raises(LineageError, match="increasing"):
        respace(c64, [0, 5, 5])
    with pytest.raises(LineageError, match="increasing"):
        respace(c64, [0, T])


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_all_steps_with_a_fixed_variance_is_ddpm_algorithm_2(c64, variance):
    # With every timestep and sigma^2 = beta_tilde_t or beta_t, iddpm_sample is DDPM's Algorithm 2 with the same
    # noise order (float64: measured ~1e-14; asserted 1e-9). A model that also returns v has its v ignored.
    model = eps_model(mixture_2d(), c64)
    x_T = torch.randn(256, 2, generator=_gen(1), dtype=F64)
    a = iddpm_sample(model, x_T, c64, variance=variance, generator=_gen(5), disable=True)
    b = ddpm_sample(model, x_T, c64, variance=variance, generator=_gen(5), disable=True)
    assert (a - b).abs().max().item() <= 1e-9
    with_v = lambda x_t, t: torch.cat([model(x_t, t), torch.ones_like(x_t)], dim=1)  # noqa: E731
    c = iddpm_sample(with_v, x_T, c64, variance=variance, generator=_gen(5), disable=True)
    assert torch.equal(a, c)


def test_sampler_bookkeeping(c64):
    model = LearnedVarianceMLP(c64).double()
    x_T = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    log = []
    g, replay = _gen(1), _gen(1)
    out = iddpm_sample(model, x_T, c64, steps=10, generator=g, callback=lambda t, x, x0: log.append((t, x, x0)),
                       disable=True)
    assert [t for t, _, _ in log] == timesteps(T, 10)[::-1]
    assert torch.equal(log[-1][1], out)
    for _ in range(9):  # one draw per step but the last
        torch.randn(x_T.shape, generator=replay, dtype=F64)
    assert torch.equal(g.get_state(), replay.get_state())
    calls = []
    with pytest.raises(LineageError, match="unknown variance"):
        iddpm_sample(lambda x, t: calls.append(t), x_T, c64, variance="small", disable=True)
    with pytest.raises(LineageError, match="steps"):
        iddpm_sample(lambda x, t: calls.append(t), x_T, c64, steps=0, disable=True)
    assert calls == []
    with pytest.raises(LineageError, match="eps and v"):  # an eps-only model cannot give a learned variance
        iddpm_sample(eps_model(mixture_2d(), c64), x_T, c64, steps=5, disable=True)


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-step iDDPM digits run through the CLI; in-process, 2-step DDPM and iDDPM digits runs with T = 20
    (recorded in their configs: nll makes T model calls per image) and a 2-step iDDPM toy run."""
    work = tmp_path_factory.mktemp("iddpm_cli")
    result = refimpl("iddpm", "train", "--data", "digits", "--steps", "3", "--out", "iddpm", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "trained iddpm on digits for 3 steps" in result.stdout
    ddpm.train(ddpm.train_config("digits", steps=2) | {"T": 20}, work / "ddpm20", progress=False)
    iddpm.train(iddpm.train_config("digits", steps=2) | {"T": 20}, work / "iddpm20", progress=False)
    iddpm.train(iddpm.train_config("moons", steps=2), work / "toy", progress=False)
    return work


def test_cli_trains_with_a_doubled_output(runs):
    config = json.loads((runs / "iddpm" / "config.json").read_text())
    assert config["model"] == "iddpm"
    assert config["config"]["model"]["out_channels"] == 2 and config["config"]["schedule"] == "cosine"
    model, schedule, shape = iddpm.load_for_sampling(runs / "iddpm")
    assert shape == (1, 8, 8) and schedule.T == T
    assert model(torch.zeros(2, 1, 8, 8), _t(3, 2)).shape == (2, 2, 8, 8)
    with pytest.raises(LineageError, match="'ddpm'"):
        iddpm.load_for_sampling(runs / "ddpm20")


def test_cli_sample_writes_a_png(runs, tmp_path):
    result = refimpl("iddpm", "sample", "--ckpt", str(runs / "iddpm"), "--steps", "5", "--n", "4", "--out", "s.png",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the toy run (continuous decoder) samples too, in-process
    assert iddpm.sample_from_checkpoint(runs / "toy", 10, steps=4, disable=True).shape == (10, 2)


@pytest.mark.parametrize("ckpt, extra, variance", [("iddpm20", [], "learned"),
                                                  ("ddpm20", ["--variance", "fixed_large"], "fixed_large")])
def test_cli_nll_prints_bits_per_dim(runs, ckpt, extra, variance):
    result = refimpl("iddpm", "nll", "--ckpt", ckpt, "--n", "2", *extra, cwd=runs)
    assert result.returncode == 0, result.stderr
    assert "bits/dim on 2 held-out digits" in result.stdout and f"({variance} variance)" in result.stdout
    assert float(result.stdout.split()[0]) > 0


def test_nll_defaults_and_sizes(runs):
    # a DDPM checkpoint defaults to fixed_small (as 'ddpm sample' does); n counts the held-out digits used
    result, variance = iddpm.nll_from_checkpoint(runs / "ddpm20", 3, disable=True)
    assert variance == "fixed_small" and result.terms.shape == (3, 20) and result.total.shape == (3,)


@pytest.mark.parametrize("args, fragments", [
    (["nll", "--ckpt", "ddpm20", "--variance", "learned"], ["eps only", "fixed_small"]),
    (["nll", "--ckpt", "toy"], ["digits checkpoint", "'moons'"]),
    (["nll", "--ckpt", "iddpm", "--n", "298"], ["297"]),
    (["sample", "--ckpt", "iddpm", "--steps", "1001", "--out", "s.png"], ["1001", "T=1000"]),
    (["sample", "--ckpt", "nowhere", "--out", "s.png"], ["checkpoint not found"]),
])
def test_cli_refuses_bad_input_in_one_line(runs, args, fragments):
    assert_refused(refimpl("iddpm", *args, cwd=runs), *fragments)


# ---------------------------------------------------------------- learning (the quick model the site uses)

@pytest.mark.slow
def test_learned_variance_lowers_the_bound_below_both_fixed_variances():
    """The page's likelihood claim at our scale: with the linear schedule of the DDPM, the iDDPM's learned variance
    (L_hybrid) gives a lower bound than the DDPM under either fixed variance. Every row of the cached bounds uses the
    same digits and noise, so the difference is taken per digit: its mean must exceed 3 standard errors
    (sd / sqrt(n), n = figures.zoo.iddpm.N_NLL)."""
    from figures.zoo.iddpm import bounds

    rows = bounds("quick")
    learned = rows["iddpm-linear_learned"].total.double()
    for fixed in ("ddpm_fixed_small", "ddpm_fixed_large"):
        diff = rows[fixed].total.double() - learned
        se = diff.std().item() / math.sqrt(diff.numel())
        assert diff.mean().item() > 3 * se, (fixed, diff.mean().item(), se)


@pytest.mark.slow
def test_quick_digits_model_samples_recognisable_digits_in_50_steps():
    """The quick iDDPM on digits (cached, shared with the figures) sampled with 50 of its 1000 steps and the learned
    variance (Sec. 4). Classifier score (the Inception-Score formula with refimpl.digits_eval's classifier):
    uniform noise and real digits are measured here; the samples must score above their midpoint, the same
    bar as DDPM's 1000-step samples in tests/test_ddpm_learning.py."""
    from figures.zoo.iddpm import iddpm_checkpoint
    from refimpl.data import digits
    from refimpl.digits_eval import evaluate

    generated = iddpm.sample_from_checkpoint(iddpm_checkpoint("digits", "quick"), 256, steps=50, disable=True)
    images, _ = digits()
    noise = torch.rand(256, 1, 8, 8, generator=_gen(3)) * 2 - 1
    real_score, noise_score = evaluate(images[:256]).classifier_score, evaluate(noise).classifier_score
    score = evaluate(generated).classifier_score
    assert noise_score < real_score
    assert score > (noise_score + real_score) / 2, (score, noise_score, real_score)
