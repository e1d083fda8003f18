"""Diffusion probabilistic models (Sohl-Dickstein et al. 2015): the bound K, the chains, learning and the CLI.

For Gaussian data N(mu, diag(s^2)) the forward chain is linear-Gaussian, so the true reverse kernels
q(x_{t-1} | x_t) are Gaussian with a diagonal covariance: they lie in the model's family and are the
kernels that maximise K (each KL term of Eq. 14 is minimised by them). With affine-Gaussian kernels the
model's law of x_0 is Gaussian too (propagate N(0, I) through the kernels), so log p(x_0) is exact, and so
is K: every expectation in Eq. (14) is a Gaussian moment. Monte Carlo tolerances are 4 standard errors
measured on the samples themselves (a two-sided 4-sigma check fails by chance with probability 6e-5).
"""

import math

import pytest
import torch

from refimpl import nonequilibrium as ne
from refimpl.core import LineageError
from refimpl.mixture import mixture_2d
from clitools import assert_refused, refimpl
from learning import assert_near_the_data

F64 = torch.float64
SCHEDULE = ne.make_schedule(dtype=F64)  # T = 40, beta_1 = 1e-3: the swiss-roll setting
MU, S = torch.tensor([0.6, -0.4], dtype=F64), torch.tensor([0.3, 1.1], dtype=F64)  # data N(MU, diag(S^2))


def se4(values: torch.Tensor) -> float:
    """Four standard errors of the mean of ``values``."""
    return 4 * values.std().item() / math.sqrt(values.numel())


def exact_coefficients(schedule=SCHEDULE, mu=MU, s=S):
    """The true reverse kernel q(x_{t-1} | x_t) = N(A x_t + b, v) for data N(mu, diag(s^2)), per code t (T, D).

    x_{t-1} ~ N(a, c) with a = sqrt(abar_{t-1}) mu, c = abar_{t-1} s^2 + 1 - abar_{t-1}, and x_t = sqrt(alpha_t)
    x_{t-1} + sqrt(beta_t) z, so Gaussian conditioning gives A = sqrt(alpha) c / (alpha c + beta),
    b = a beta / (alpha c + beta), v = c beta / (alpha c + beta). Row 0 is unused (the last step is fixed)."""
    abar_prev = schedule.alpha_bar_prev[:, None]
    alpha, beta = schedule.alphas[:, None], schedule.betas[:, None]
    a, c = abar_prev.sqrt() * mu, abar_prev * s**2 + 1 - abar_prev
    denominator = alpha * c + beta
    return alpha.sqrt() * c / denominator, a * beta / denominator, c * beta / denominator


def affine_kernel(A, b, v):
    def kernel(x_t, t):
        return A[t] * x_t + b[t], v[t].expand_as(x_t)
    return kernel


def model_law(A, b, v, schedule=SCHEDULE):
    """Mean and variance of x_0 under the model: x_T ~ N(0, I) through the kernels of code t = T-1..1, then
    the fixed last step N(x_1 sqrt(1 - beta_1), beta_1) (Appendix B.2)."""
    m, var = torch.zeros(A.shape[1], dtype=F64), torch.ones(A.shape[1], dtype=F64)
    for t in range(schedule.T - 1, 0, -1):
        m, var = A[t] * m + b[t], A[t] ** 2 * var + v[t]
    beta_1 = schedule.betas[0]
    return (1 - beta_1).sqrt() * m, (1 - beta_1) * var + beta_1


def closed_form_bound(A, b, v, schedule=SCHEDULE, mu=MU, s=S) -> float:
    """E_{x_0 ~ N(mu, diag s^2)} K of Eq. (14) for the affine kernels (A, b, v), computed independently of
    refimpl.nonequilibrium.bound: with the posterior mean c1 x_0 + c2 x_t (DDPM Eq. 7) and x_t = sqrt(abar) x_0
    + sqrt(1 - abar) eps, the residual posterior mean - kernel mean is k x_0 - b + d eps with k = c1 + (c2 - A)
    sqrt(abar) and d = (c2 - A) sqrt(1 - abar), whose second moment is (k mu - b)^2 + k^2 s^2 + d^2. The
    analytic terms are linear in |x_0|^2, so their mean is their value at any x_0 with |x_0|^2 = E|x_0|^2."""
    total = 0.0
    for t in range(1, schedule.T):
        abar, abar_prev = schedule.alpha_bar[t], schedule.alpha_bar_prev[t]
        c1 = abar_prev.sqrt() * schedule.betas[t] / (1 - abar)
        c2 = schedule.alphas[t].sqrt() * (1 - abar_prev) / (1 - abar)
        k, d = c1 + (c2 - A[t]) * abar.sqrt(), (c2 - A[t]) * (1 - abar).sqrt()
        residual2 = (k * mu - b[t]) ** 2 + k**2 * s**2 + d**2
        beta_tilde = schedule.beta_tilde[t]
        total -= 0.5 * (torch.log(v[t] / beta_tilde) + (beta_tilde + residual2) / v[t] - 1).sum().item()
    x_with_mean_square_norm = torch.zeros(1, mu.numel(), dtype=F64)
    x_with_mean_square_norm[0, 0] = (mu**2 + s**2).sum().sqrt()
    return total + ne.analytic_terms(x_with_mean_square_norm, schedule).item()


def gaussian_log_density(x, mean, var):
    return (-0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)).sum(1)


def test_schedule_and_kernel_parameterisation():
    """Sec. 2.4.1 fixed: beta_1 is the small constant, then the official baseline 1 / linspace(T, 2, T).
    Eqs. (64)-(65): a zero network output is the forward kernel's variance beta_t, and mean x (1 - beta_t)."""
    assert SCHEDULE.betas[0].item() == 1e-3
    torch.testing.assert_close(SCHEDULE.betas[1:], 1 / torch.linspace(40, 2, 40, dtype=F64)[1:], rtol=0, atol=0)
    x, t = torch.randn(5, 2, dtype=F64), torch.tensor([1, 2, 10, 20, 39])
    mean, variance = ne.reverse_kernel(torch.zeros(5, 4, dtype=F64), x, t, SCHEDULE)
    beta = SCHEDULE.betas[t][:, None]
    torch.testing.assert_close(variance, beta.expand_as(x))
    torch.testing.assert_close(mean, x * (1 - beta))
    with pytest.raises(LineageError, match="z_mu and z_Sigma"):
        ne.reverse_kernel(torch.zeros(5, 2, dtype=F64), x, t, SCHEDULE)
    for bad in ({"T": 1}, {"beta_1": 0.0}, {"beta_1": 1.5}):
        with pytest.raises(LineageError):
            ne.make_schedule(**bad)


def test_forward_chain_marginals_match_the_closed_form():
    """T steps of Eq. (2) from Gaussian-mixture data give q(x_t | x_0) marginals N-mixtures with
    abar_t = prod(1 - beta): their means and second moments agree within 4 standard errors."""
    mixture, n = mixture_2d(), 40_000
    generator = torch.Generator().manual_seed(0)
    x, _ = mixture.sample(n, generator)
    for t in range(SCHEDULE.T):
        x = ne.forward_step(x, torch.full((n,), t), torch.randn(n, 2, generator=generator, dtype=F64), SCHEDULE)
        if t in (0, 5, 19, 39):
            alpha_bar = SCHEDULE.alpha_bar[t].item()
            law = mixture.vp(alpha_bar)
            mean, cov = law.mean(), law.covariance()
            for values, target in ((x, mean), ((x - mean)[:, :, None] * (x - mean)[:, None, :], cov)):
                error = (values.mean(0) - target).abs()
                tolerance = 4 * values.std(0) / math.sqrt(n)
                assert (error < tolerance).all(), (t, error, tolerance)


def test_analytic_bound_equals_the_monte_carlo_elbo():
    """Appendix B: Eq. (14) (analytic KLs through the posterior, entropies, edge terms) is Eq. (12), the
    expectation over forward trajectories of log p(x_{0..T}) - log q(x_{1..T} | x_0). Both are estimated per
    x_0 (Eq. 12 from one whole forward trajectory, evaluating every kernel density) for a deliberately
    wrong kernel on non-Gaussian data; their mean difference is zero within 4 standard errors."""
    A, b, v = exact_coefficients()
    kernel = affine_kernel(0.97 * A, b + 0.05, 1.4 * v)
    n = 20_000
    generator = torch.Generator().manual_seed(1)
    x0, _ = mixture_2d().sample(n, generator)
    analytic = ne.bound(kernel, x0, SCHEDULE, generator=generator, disable=True).total

    path = [x0]
    for t in range(SCHEDULE.T):
        path.append(ne.forward_step(path[-1], torch.full((n,), t), torch.randn(n, 2, generator=generator, dtype=F64),
                                    SCHEDULE))
    elbo = ne.log_pi(path[-1])  # log p(x_T), Eq. (4)
    for t in range(SCHEDULE.T):  # path[t + 1] is the sample at code t (the paper's x^(t+1))
        x_prev, x_t = path[t], path[t + 1]
        mean, var = ne.last_step(x_t, SCHEDULE) if t == 0 else kernel(x_t, torch.full((n,), t))
        beta = SCHEDULE.betas[t]
        elbo += gaussian_log_density(x_prev, mean, var) - gaussian_log_density(x_t, (1 - beta).sqrt() * x_prev, beta)
    difference = elbo - analytic
    assert abs(difference.mean().item()) < se4(difference), (difference.mean().item(), se4(difference))


def test_bound_is_below_the_exact_log_likelihood_and_maximal_at_the_true_reverse_kernels():
    """Gaussian data: K (Eq. 13-14) <= E log p(x_0) under the model, with log p exact; the true reverse
    kernels give the largest K; bound() agrees with the closed-form K within 4 standard errors."""
    A, b, v = exact_coefficients()
    kernels = {"exact": (A, b, v), "shifted": (A, b + 0.05, v), "wider": (A, b, 1.5 * v), "narrower": (A, b, 0.7 * v)}
    n = 20_000
    x0 = MU + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    bounds = {}
    for name, (A_, b_, v_) in kernels.items():
        mean, var = model_law(A_, b_, v_)
        log_p = (-0.5 * (torch.log(2 * math.pi * var) + ((MU - mean) ** 2 + S**2) / var)).sum().item()
        bounds[name] = closed_form_bound(A_, b_, v_)
        assert bounds[name] < log_p, (name, bounds[name], log_p)
        estimate = ne.bound(affine_kernel(A_, b_, v_), x0, SCHEDULE, generator=torch.Generator().manual_seed(3),
                            disable=True).total
        assert abs(estimate.mean().item() - bounds[name]) < se4(estimate), (name, estimate.mean().item(), bounds[name])
    assert max(bounds, key=bounds.get) == "exact", bounds


def test_sampler_with_the_true_reverse_kernels_reproduces_the_data_law():
    """Started from the exact q(x_T) and run through the true reverse kernels, the chain lands on q(x_1); the
    fixed last step then gives N((1 - beta_1) mu, (1 - beta_1)^2 s^2 + (2 - beta_1) beta_1): the data law
    up to O(beta_1) = 1e-3. The sample moments match that law within 4 standard errors."""
    A, b, v = exact_coefficients()
    n = 40_000
    generator = torch.Generator().manual_seed(4)
    alpha_bar_T = SCHEDULE.alpha_bar[-1]
    x_T = alpha_bar_T.sqrt() * MU + (alpha_bar_T * S**2 + 1 - alpha_bar_T).sqrt() * torch.randn(
        n, 2, generator=generator, dtype=F64)
    seen = []
    x0 = ne.sample(affine_kernel(A, b, v), x_T, SCHEDULE, generator=generator,
                   callback=lambda t, x, mean: seen.append(t), disable=True)
    assert seen == list(range(39, -1, -1))
    beta_1 = SCHEDULE.betas[0]
    mean, var = (1 - beta_1) * MU, (1 - beta_1) ** 2 * S**2 + (2 - beta_1) * beta_1
    assert ((x0.mean(0) - mean).abs() < 4 * (var / n).sqrt()).all()
    squares = (x0 - mean) ** 2
    assert ((squares.mean(0) - var).abs() < 4 * squares.std(0) / math.sqrt(n)).all()


def test_training_loss_is_an_unbiased_estimate_of_minus_k():
    """The one-timestep loss (T - 1 times one random KL term) averages to -K / log 2 of the full bound."""
    torch.manual_seed(0)
    from refimpl.nets import MLPDenoiser

    schedule = ne.make_schedule()  # float32, like training
    kernel = ne.network_kernel(MLPDenoiser(data_dim=2, hidden=16, depth=1, out_dim=4), schedule)
    generator = torch.Generator().manual_seed(5)
    x0 = mixture_2d().sample(20_000, generator)[0].float()
    with torch.no_grad():
        losses = torch.stack([ne.loss(kernel, chunk, schedule, generator) for chunk in x0.split(100)])
    full = ne.bound(kernel, x0, schedule, generator=generator, disable=True).total / math.log(2)
    # the two estimates are independent: the error of their difference adds in quadrature
    tolerance = 4 * math.sqrt(losses.var().item() / losses.numel() + full.var().item() / full.numel())
    assert abs(losses.mean().item() + full.mean().item()) < tolerance


@pytest.mark.slow
def test_quick_model_beats_the_gaussian_and_samples_the_swiss_roll():
    """Learning: on fresh data, K beats the isotropic Gaussian L_null (Table 1's baseline) by more than 4
    standard errors, and the samples are nearer the data than a moment-matched Gaussian (sliced Wasserstein
    below the midpoint of the data-vs-data floor and the Gaussian), as in tests/test_ddpm_learning.py."""
    from figures.zoo.nonequilibrium import checkpoint, samples

    result, null = ne.bound_from_checkpoint(checkpoint("quick"), 2000, disable=True)
    gain = result.total - null
    assert gain.mean().item() > se4(gain), (gain.mean().item(), se4(gain))

    n = 2000
    x = samples("quick")["x0"][:n]
    assert_near_the_data(x)


def test_cli_trains_samples_bounds_and_refuses_bad_input(tmp_path):
    """train / sample / bound run end to end; a missing checkpoint, a non-positive --n, a non-PNG output, a
    dataset it cannot train on and a checkpoint of another paper each give one 'refimpl: error:' line, exit 2."""
    run = refimpl("nonequilibrium", "train", "--steps", "20", "--out", "run", "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run = refimpl("nonequilibrium", "sample", "--ckpt", "run", "--n", "50", "--out", "s.png", "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "s.png").stat().st_size > 0
    run = refimpl("nonequilibrium", "bound", "--ckpt", "run", "--n", "100", "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "bits" in run.stdout and "K - L_null" in run.stdout

    assert_refused(refimpl("nonequilibrium", "bound", "--ckpt", "missing", cwd=tmp_path))
    assert_refused(refimpl("nonequilibrium", "bound", "--ckpt", "run", "--n", "0", cwd=tmp_path), "--n")
    assert_refused(refimpl("nonequilibrium", "sample", "--ckpt", "run", "--out", "s.jpg", cwd=tmp_path), ".png")
    assert_refused(refimpl("nonequilibrium", "train", "--data", "digits", "--out", "d", cwd=tmp_path), "digits")
    from refimpl import ddpm

    ddpm.train(ddpm.train_config("swissroll", steps=1), tmp_path / "ddpm", device="cpu", progress=False)
    assert_refused(refimpl("nonequilibrium", "sample", "--ckpt", "ddpm", "--out", "x.png", cwd=tmp_path), "ddpm")


def test_diffusers_ddpm_scheduler_runs_these_kernels_except_the_noisy_last_step():
    """diffusers has no 2015 model, but DDPMScheduler with our betas (trained_betas), prediction_type="sample"
    and variance_type="learned" takes any Gaussian kernel N(mu, Sigma): feed it the x_0 whose posterior mean
    (DDPM Eq. 7) is mu, x_0 = (mu - c2 x_t) / c1, and Sigma itself. Its step then equals ours for the paper's
    t = 2..T. Tolerance: the round trip divides by 1 - abar_t, whose float32 rounding is relative
    eps / (1 - abar_t) = 1.2e-7 / 0.026 = 5e-6 for t >= 2 but 1.2e-7 / beta_1 = 1.2e-4 at t = 1; with |x| < 5,
    atol 1e-5 and rtol 3e-4 (both sides round). At the last step (code t = 0) diffusers adds no
    noise, while the 2015 model's fixed p(x^(0) | x^(1)) adds variance beta_1 (Appendix B.2)."""
    from diffusers import DDPMScheduler

    schedule = ne.make_schedule()
    scheduler = DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.tolist(),
                              prediction_type="sample", variance_type="learned", clip_sample=False)
    torch.testing.assert_close(scheduler.alphas_cumprod, schedule.alpha_bar, rtol=0, atol=0)
    A, b, v = (c.float() for c in exact_coefficients(ne.make_schedule(dtype=F64)))
    x_t = torch.randn(64, 2, generator=torch.Generator().manual_seed(6))
    for t in (39, 20, 1, 0):
        mean, variance = (affine_kernel(A, b, v)(x_t, torch.full((64,), t)) if t > 0
                          else ne.last_step(x_t, schedule))
        abar, abar_prev = schedule.alpha_bar[t], schedule.alpha_bar_prev[t]
        c1 = abar_prev.sqrt() * schedule.betas[t] / (1 - abar)
        c2 = schedule.alphas[t].sqrt() * (1 - abar_prev) / (1 - abar)
        output = torch.cat([(mean - c2 * x_t) / c1, variance], dim=1)
        theirs = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        ours = mean + variance.sqrt() * noise
        if t > 0:
            torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        else:  # diffusers stops at the mean: the difference is exactly our last step's noise
            torch.testing.assert_close(theirs, mean, rtol=3e-4, atol=1e-6)
            assert (ours - theirs).std().item() > 0.5 * math.sqrt(schedule.betas[0].item())
