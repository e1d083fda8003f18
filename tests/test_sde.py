"""Score SDE (refimpl.sde): SDE identities, the discrete chains, closed-form sampling and likelihood on the 2-D
mixture, the denoising score-matching objective, parity with diffusers' ScoreSdeVe/VpScheduler, and the CLI.

Tolerances: Monte Carlo ones are 4 standard errors (a false failure has probability ~6e-5 per assertion); the
others are derived next to each assertion.
"""

import math

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

from clitools import assert_refused, refimpl
from refimpl.core import LineageError
from refimpl.mixture import mixture_2d
from refimpl.schedules import linear_betas
from refimpl.sde import (SAMPLERS, VESDE, VPSDE, SubVPSDE, dsm_loss, em_step, exact_score, langevin_correct,
                         log_likelihood, make_sde, reverse_diffusion_step, toy_sde)

torch.set_num_threads(1)
F64 = torch.float64
SDE_NAMES = ("vp", "subvp", "ve")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the SDEs and their kernels

@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_solves_the_moment_odes(name):
    """For dx = a(t) x dt + g(t) dw the kernel's mean coefficient and variance solve m' = a m and v' = 2 a v + g^2.
    Central differences with h = 1e-4: truncation h^2 |f'''| / 6 relative to |f'| is <= h^2 beta_max^2 / 6 ~ 7e-7,
    rounding ~1e-16 / h = 1e-12; rtol 1e-5 is above both."""
    sde, h = make_sde(name), 1e-4
    for t in (0.05, 0.3, 0.6, 0.95):
        a = float(sde.drift(torch.ones(1, 1, dtype=F64), torch.tensor([t]))[0, 0])
        (m_lo, s_lo), (m, s), (m_hi, s_hi) = (sde.marginal(torch.tensor(t + d, dtype=F64)) for d in (-h, 0, h))
        dm, dv = (m_hi - m_lo) / (2 * h), (s_hi**2 - s_lo**2) / (2 * h)
        torch.testing.assert_close(dm, a * m, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(dv, 2 * a * s**2 + sde.diffusion(torch.tensor(t)) ** 2, rtol=1e-5, atol=1e-12)


def test_kernel_endpoints_and_priors():
    vp, subvp, ve = VPSDE(), SubVPSDE(), VESDE()
    assert float(vp.marginal(0.0)[1]) == 0 and float(subvp.marginal(0.0)[1]) == 0
    assert float(vp.marginal(1.0)[0]) == pytest.approx(math.exp(-0.25 * 19.9 - 0.05), rel=1e-12)
    for t in (0.1, 0.5, 1.0):  # sub-VP variance (1 - m^2)^2 never exceeds VP's 1 - m^2
        assert float(subvp.marginal(t)[1]) ** 2 < float(vp.marginal(t)[1]) ** 2
    assert float(ve.marginal(1.0)[1]) == pytest.approx(50.0) and ve.prior_std == 50.0
    z = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    exact = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(50.0, dtype=F64)).log_prob(z).sum(1)
    torch.testing.assert_close(ve.prior_log_prob(z), exact, rtol=1e-12, atol=1e-12)


def test_vp_discretize_is_the_ddpm_chain():
    """beta(t) dt at t = i/(N-1), dt = 1/N is DDPM's linear beta_i (1e-4 ... 0.02); the chain's step agrees with
    Euler-Maruyama to first order: sqrt(1 - b) - 1 + b/2 = -b^2/8 + O(b^3), so the difference scales as dt^2
    (ratio 4 when dt halves, up to a relative correction ~ beta dt <= 2e-2)."""
    sde, N = VPSDE(), 1000
    t = torch.arange(N, dtype=F64) / (N - 1)
    x = torch.ones(N, 1, dtype=F64)
    f, G = sde.discretize(x, t, 1 / N)
    torch.testing.assert_close(G**2, linear_betas(N, dtype=F64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(f[:, 0], (1 - G**2).sqrt() - 1, rtol=1e-12, atol=1e-15)  # x_i = sqrt(1-b) x + ...
    gap = [(sde.discretize(x, t, dt)[0] - sde.drift(x, t) * dt).abs().max() for dt in (1e-3, 5e-4)]
    assert 3.9 < float(gap[0] / gap[1]) < 4.1


def test_ve_discretize_is_the_smld_chain():
    """At t = i/(N-1) with dt = 1/(N-1): G_i^2 = sigma_i^2 - sigma_{i-1}^2 exactly, on NCSN's geometric levels
    sigma_i = exp(linspace(log sigma_min, log sigma_max, N)), with sigma_{-1} = 0 below the first level."""
    sde, N = VESDE(0.01, 50.0), 100
    sigmas = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=F64))
    i = torch.arange(N, dtype=F64)
    torch.testing.assert_close(sde.sigma(i / (N - 1)), sigmas, rtol=1e-12, atol=0)
    f, G = sde.discretize(torch.ones(N, 2, dtype=F64), i * (1 / (N - 1)), 1 / (N - 1))
    previous = torch.cat([torch.zeros(1, dtype=F64), sigmas[:-1]])
    torch.testing.assert_close(G**2, sigmas**2 - previous**2, rtol=1e-10, atol=0)
    assert bool((f == 0).all())


# ---------------------------------------------------------------- closed form: sampling

N_SAMPLES = 8000


def _reference(mixture, sde, eps):
    """p_eps exactly, and mean/variance of log p_eps over 200k of its own samples."""
    target = mixture.noised(*map(float, sde.marginal(eps)))
    log_p = target.log_prob(target.sample(200_000, _gen(1))[0])
    return target, float(log_p.mean()), float(log_p.var())


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("sampler,steps,kwargs", [("em", 500, {}), ("ode", 50, {}), ("pc", 500, {"snr": 0.04})])
def test_samplers_reproduce_the_mixture(name, sampler, steps, kwargs):
    """Samples driven by the exact score have the right mean log-density under p_eps: |gap| < 4 standard errors of
    the difference of the two Monte Carlo means. Discretisation bias is below that at these step counts: EM and
    the reverse-diffusion predictor are weak order 1 (test below), RK4 order 4 (likelihood tests). The corrector is
    unadjusted Langevin, whose bias grows with its step ~ snr^2: at the paper's snr = 0.16 it is measurable here
    (the page's table), so this test runs PC at snr = 0.04 (16x smaller steps)."""
    mixture, sde, eps = mixture_2d(), toy_sde(name), 1e-3
    target, ref_mean, ref_var = _reference(mixture, sde, eps)
    x_T = sde.prior_sample((N_SAMPLES, 2), _gen(3)).double()
    x = SAMPLERS[sampler](exact_score(mixture, sde), x_T, sde, steps=steps, eps=eps, generator=_gen(4), disable=True,
                          **kwargs)
    log_p = target.log_prob(x)
    se = math.sqrt(float(log_p.var()) / N_SAMPLES + ref_var / 200_000)
    assert abs(float(log_p.mean()) - ref_mean) < 4 * se, (float(log_p.mean()) - ref_mean, se)


def _affine_moments(step, mean, var, t, dt, mu, s2, sde):
    """Push N(mean, var) (1-D) through one sampler step that is affine in x and in the noise (exact Gaussian score)."""
    def score(x, t):
        m, s = sde.marginal(t)
        return -(x - m * mu) / (m**2 * s2 + s**2)

    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    tb = torch.full((2,), t, dtype=F64)
    zero, one = step(x, tb, dt, score(x, tb), sde, None), step(x, tb, dt, score(x, tb), sde, torch.ones_like(x))
    c, A, G = float(zero[0, 0]), float(zero[1, 0] - zero[0, 0]), float(one[0, 0] - zero[0, 0])
    return A * mean + c, A * A * var + G * G


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("step", [em_step, reverse_diffusion_step], ids=["em", "reverse_diffusion"])
def test_stochastic_predictors_are_weak_order_one(name, step):
    """On Gaussian data N(mu, s^2) with the exact score every step is affine, so the law after N steps is Gaussian
    with moments computed exactly (no sampling). Their error against p_eps must at least halve when N doubles
    (weak order 1: the ratio tends to 2 with an O(1/N) correction, so ratio > 1.7 at N = 400 -> 800; on this
    Gaussian, EM on the VE SDE does better, ratio ~8), and is already small at N = 800."""
    sde, eps, mu, s2 = toy_sde(name), 1e-3, 0.7, 0.25
    m_eps, s_eps = map(float, sde.marginal(eps))
    errors = []
    for steps in (400, 800):
        dt = (1 - eps) / steps
        m1, s1 = map(float, sde.marginal(1.0))
        mean, var = m1 * mu, m1**2 * s2 + s1**2  # start from the exact p_T: only the discretisation errs
        for k in range(steps):
            mean, var = _affine_moments(step, mean, var, 1 - k * dt, dt, mu, s2, sde)
        errors.append(abs(mean - m_eps * mu) + abs(var - (m_eps**2 * s2 + s_eps**2)))
    assert errors[0] / errors[1] > 1.7, errors
    assert errors[1] < 1e-2, errors


# ---------------------------------------------------------------- closed form: likelihood

def _likelihood_setup(name):
    mixture, sde, eps = mixture_2d(), toy_sde(name), 1e-5
    x = mixture.sample(64, _gen(0))[0]
    exact_prior = mixture.noised(*map(float, sde.marginal(1.0))).log_prob
    return mixture, sde, eps, x, exact_prior, mixture.noised(*map(float, sde.marginal(eps))).log_prob(x)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_probability_flow_likelihood_is_exact_and_fourth_order(name):
    """With the exact score and the exact p_T, the only error is RK4's: doubling the steps must divide the error by
    at least 8 (fourth order gives 16 asymptotically), and the error at 100 steps is bounded by Richardson,
    |ll_100 - ll_200| * 16/15, doubled for safety, plus 1e-10 of float64 round-off over the path."""
    mixture, sde, eps, x, exact_prior, exact = _likelihood_setup(name)
    ll = {n: log_likelihood(exact_score(mixture, sde), x, sde, steps=n, eps=eps, prior=exact_prior)
          for n in (25, 50, 100, 200)}
    err = {n: float((ll[n] - exact).abs().max()) for n in ll}
    assert err[50] < err[25] / 8 and err[100] < err[50] / 8, err
    assert err[100] <= 2 * 16 / 15 * float((ll[100] - ll[200]).abs().max()) + 1e-10, err


def test_prior_mismatch_is_the_only_other_error():
    """With the default prior N(0, sigma_max^2 I) instead of the exact p_T the estimate moves by exactly
    log N(z) - log p_T(z) at the ODE's end point z: the two runs share the path (float64 round-off only)."""
    mixture, sde, eps, x, exact_prior, exact = _likelihood_setup("vp")
    model = exact_score(mixture, sde)
    with_exact = log_likelihood(model, x, sde, steps=50, eps=eps, prior=exact_prior)
    with_default = log_likelihood(model, x, sde, steps=50, eps=eps)
    z = []
    log_likelihood(model, x, sde, steps=50, eps=eps, prior=lambda end: z.append(end) or sde.prior_log_prob(end))
    torch.testing.assert_close(with_default - with_exact, sde.prior_log_prob(z[0]) - exact_prior(z[0]),
                               rtol=1e-9, atol=1e-12)


def test_hutchinson_is_unbiased():
    """The probe does not change the path, so the Hutchinson estimate averages to the exact-divergence one:
    replicate 4 points 500 times (one Rademacher probe per row) and compare the means within 4 standard errors."""
    mixture, sde, eps, _, exact_prior, _ = _likelihood_setup("vp")
    model = exact_score(mixture, sde)
    points = mixture.sample(4, _gen(5))[0]
    exact = log_likelihood(model, points, sde, steps=20, eps=eps, prior=exact_prior)
    reps = points.repeat_interleave(500, 0)
    hutch = log_likelihood(model, reps, sde, steps=20, eps=eps, prior=exact_prior, divergence="hutchinson",
                           generator=_gen(6)).reshape(4, 500)
    se = hutch.std(1) / math.sqrt(500)
    assert bool((se > 0).all())  # the estimator is really random
    assert bool(((hutch.mean(1) - exact).abs() < 4 * se).all()), (hutch.mean(1) - exact, se)


# ---------------------------------------------------------------- the training objective

@pytest.mark.parametrize("name", SDE_NAMES)
def test_dsm_is_minimised_by_the_exact_score(name):
    """lambda ||s + z/std||^2 with s = s* + delta: the cross term 2 lambda delta.(s* + z/std) has mean 0 because
    E[z | x_t] = -std s* (Tweedie). With delta = c u / std(t), lambda ||delta||^2 = c^2 exactly, so the loss
    (a mean over the D = 2 dimensions) rises by c^2 / D. Same draws for both losses; 4 standard errors of the
    per-sample difference."""
    mixture, sde = mixture_2d(), make_sde(name)
    exact, c, u = exact_score(mixture, sde), 0.3, torch.tensor([0.6, 0.8], dtype=F64)

    def perturbed(x, t):
        return exact(x, t) + c * u / sde.marginal(t)[1][:, None]

    x0 = mixture.sample(20_000, _gen(7))[0]
    base = dsm_loss(exact, x0, sde, _gen(8), per_sample=True)
    moved = dsm_loss(perturbed, x0, sde, _gen(8), per_sample=True)
    diff = moved - base
    se = float(diff.std()) / math.sqrt(len(diff))
    assert abs(float(diff.mean()) - c * c / 2) < 4 * se, (float(diff.mean()), c * c / 2, se)
    assert float(diff.mean()) > 0


# ---------------------------------------------------------------- parity with diffusers

def test_ve_predictor_and_corrector_match_diffusers():
    """ScoreSdeVeScheduler with N levels: timestep t_i of linspace(1, eps, N) is read as level floor(t_i (N-1));
    step_pred is our reverse-diffusion step at t = level/(N-1), dt = 1/(N-1) (level 0 steps to sigma = 0), and
    step_correct our Langevin step with alpha = 1, both fed the same score and the same seeded noise. Float32:
    agreement to a few float32 ulps (rtol 1e-5)."""
    N, snr = 50, 0.16
    mixture, sde = mixture_2d(), VESDE(0.01, 10.0)
    score_fn = exact_score(mixture, sde)
    scheduler = diffusers.ScoreSdeVeScheduler(num_train_timesteps=N, snr=snr, sigma_min=0.01, sigma_max=10.0)
    scheduler.set_timesteps(N)
    scheduler.set_sigmas(N)
    x = sde.prior_sample((64, 2), _gen(0))
    for i, t in enumerate(scheduler.timesteps):
        level = int((t * (N - 1)).long())
        assert level == N - 1 - i  # the flooring lands on the expected level for every step
        ours_t = torch.full((64,), level * (1 / (N - 1)), dtype=F64)
        torch.testing.assert_close(scheduler.discrete_sigmas[level].double(), sde.sigma(ours_t[0]), rtol=1e-6, atol=0)
        score = score_fn(x, ours_t)
        corrected = scheduler.step_correct(score, x, generator=_gen(100 + i)).prev_sample
        ours = langevin_correct(x, ours_t, score, sde, torch.randn(x.shape, generator=_gen(100 + i)), snr)
        torch.testing.assert_close(ours, corrected, rtol=1e-5, atol=1e-5)
        score = score_fn(corrected, ours_t)
        predicted = scheduler.step_pred(score, t, corrected, generator=_gen(200 + i)).prev_sample
        ours = reverse_diffusion_step(corrected, ours_t, 1 / (N - 1), score, sde,
                                      torch.randn(x.shape, generator=_gen(200 + i)))
        torch.testing.assert_close(ours, predicted, rtol=1e-5, atol=1e-5)
        x = predicted


def test_vp_step_matches_diffusers_and_pins_its_dt():
    """ScoreSdeVpScheduler.step_pred takes a noise-type model output n and uses score = -n / std(t); it is our
    Euler-Maruyama step with dt = 1 / len(timesteps), although its timesteps linspace(1, eps, N) are
    (1 - eps)/(N - 1) apart (the authors' code uses the same dt = 1/N). Pinned: equal with dt = 1/N, and not with
    the grid spacing. It also computes std = sqrt(1 - exp(2 log_mean)) in float32, which cancels at small t: at
    t = eps = 1e-3 (std ~ 0.0105) it is off by ~1e-4 relative; with that same std our step agrees to float32."""
    N, eps = 20, 1e-3
    sde = VPSDE()
    scheduler = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20, sampling_eps=eps)
    scheduler.set_timesteps(N)
    x = torch.randn(64, 2, generator=_gen(0))
    n = torch.randn(64, 2, generator=_gen(1))
    for t in scheduler.timesteps[[0, 7, N - 1]]:
        tb = torch.full((64,), float(t), dtype=F64)
        log_mean = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
        their_std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean))  # float32, as in step_pred
        theirs, _ = scheduler.step_pred(n, x, t, generator=_gen(2))
        ours = em_step(x, tb, 1 / N, -n / their_std, sde, torch.randn(x.shape, generator=_gen(2)))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        spacing = (1 - eps) / (N - 1)
        other = em_step(x, tb, spacing, -n / their_std, sde, torch.randn(x.shape, generator=_gen(2)))
        assert float((other - theirs).abs().max()) > 1e-3
    std64 = float(sde.marginal(torch.tensor(float(scheduler.timesteps[-1]), dtype=F64))[1])
    assert abs(float(their_std) / std64 - 1) > 1e-5  # float32 cancellation at t = eps (float32 ulp ~ 6e-8)


# ---------------------------------------------------------------- errors and the command line

def test_bad_arguments_are_refused():
    sde, model = VPSDE(), exact_score(mixture_2d(), VPSDE())
    x = torch.zeros(4, 2)
    for kwargs, match in (({"steps": 0}, "positive"), ({"eps": 0.0}, "eps"), ({"eps": 1.0}, "eps"),
                          ({"steps": 2.5}, "positive")):
        with pytest.raises(LineageError, match=match):
            SAMPLERS["em"](model, x, sde, disable=True, **kwargs)
    with pytest.raises(LineageError, match="corrector_steps"):
        SAMPLERS["pc"](model, x, sde, corrector_steps=-1, disable=True)
    with pytest.raises(LineageError, match="divergence"):
        log_likelihood(model, x, sde, divergence="trace")
    with pytest.raises(LineageError, match="unknown SDE"):
        make_sde("vpp")
    with pytest.raises(LineageError, match="sigma_min"):
        VESDE(1.0, 0.5)


def test_cli_trains_samples_and_measures_likelihood(tmp_path):
    result = refimpl("sde", "train", "--sde", "ve", "--data", "moons", "--steps", "30", "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained a ve score model on moons for 30 steps" in result.stdout
    for sampler in ("em", "pc", "ode"):
        result = refimpl("sde", "sample", "--ckpt", "run", "--sampler", sampler, "--steps", "5", "--n", "50",
                         "--out", f"{sampler}.png", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"{sampler}.png").stat().st_size > 0
    for extra in ((), ("--hutchinson",)):
        result = refimpl("sde", "likelihood", "--ckpt", "run", "--n", "16", "--steps", "5", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "nats per sample" in result.stdout and "bits/dim" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["train", "--sde", "vpp", "--out", "r"], "invalid choice"),
    (["train", "--data", "digits", "--out", "r"], "invalid choice"),
    (["train", "--steps", "0", "--out", "r"], "positive integer"),
    (["sample", "--ckpt", "missing", "--out", "x.png"], "missing"),
    (["sample", "--ckpt", "missing", "--out", "x.jpg"], ".png"),
    (["sample", "--ckpt", "missing", "--sampler", "heun", "--out", "x.png"], "invalid choice"),
    (["likelihood", "--ckpt", "missing", "--n", "0"], "positive integer"),
    (["likelihood", "--ckpt", "missing"], "missing"),
])
def test_cli_refuses_bad_input(tmp_path, args, fragment):
    assert_refused(refimpl("sde", *args, cwd=tmp_path), fragment)
