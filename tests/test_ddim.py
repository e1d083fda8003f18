"""DDIM against closed forms, DDPM and diffusers: the sub-sequence rules, convergence of the eta = 0
sampler to the exact ODE endpoint (first order), eta = 1 = DDPM ancestral sampling, inversion,
slerp, bit-for-bit parity with DDIMScheduler, a pinned diffusers deviation, and the command line.

Noise order: diffusers' DDIMScheduler.step draws ``randn_tensor(model_output.shape, generator=...,
dtype=model_output.dtype)`` at every step when eta > 0, the last step too (scheduling_ddim.py,
step(): "if eta > 0"); ``ddim_sample`` draws one ``torch.randn(x.shape, ...)`` per step likewise.
"""

import math
from pathlib import Path

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl, with_defaults
from refimpl import checkpoint, ddim, ddpm
from refimpl.core import LineageError
from refimpl.ddim import ddim_invert, ddim_sample, ddim_step, sigma_eta, slerp
from refimpl.schedules import timesteps
from refimpl.ddpm import ddpm_sample
from refimpl.mixture import GaussianMixture, eps_model, gaussian_flow, mixture_2d

torch.set_num_threads(1)

F64 = torch.float64
T = 1000


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the sub-sequence tau (Appendix D.2)

def test_timesteps_by_hand():
    # uniform tau_i = floor(c i), c = T / S, i = 0..S-1 (code timesteps; paper t = code t + 1):
    #   T = 10, S = 4: c = 2.5 -> floor(0, 2.5, 5, 7.5) = 0, 2, 5, 7
    #   T = 10, S = 3: c = 10/3 -> floor(0, 3.33, 6.67) = 0, 3, 6
    #   T = 1000, S = 7: c = 142.857.. -> 0, 142, 285, 428, 571, 714, 857
    assert timesteps(10, 4) == [0, 2, 5, 7]
    assert timesteps(10, 3) == [0, 3, 6]
    assert timesteps(1000, 7) == [0, 142, 285, 428, 571, 714, 857]
    assert timesteps(1000, 10) == list(range(0, 1000, 100))
    assert timesteps(5, 5) == [0, 1, 2, 3, 4] and timesteps(5, 1) == [0]
    # quadratic tau_i = floor(c i^2), c = T / S^2:
    #   T = 100, S = 5: c = 4 -> 0, 4, 16, 36, 64
    #   T = 10, S = 3: c = 10/9 -> floor(0, 1.11, 4.44) = 0, 1, 4
    #   T = 1000, S = 10: c = 10 -> 0, 10, 40, 90, 160, 250, 360, 490, 640, 810
    assert timesteps(100, 5, "quadratic") == [0, 4, 16, 36, 64]
    assert timesteps(10, 3, "quadratic") == [0, 1, 4]
    assert timesteps(1000, 10, "quadratic") == [10 * i * i for i in range(10)]


@pytest.mark.parametrize("spacing, steps_list", [("uniform", [1, 2, 3, 7, 10, 50, 99, 333, 999, 1000]),
                                                 ("quadratic", [1, 2, 3, 7, 10, 20, 31])])
def test_timesteps_are_an_increasing_sub_sequence_starting_at_0(spacing, steps_list):
    for steps in steps_list:
        tau = timesteps(T, steps, spacing)
        assert len(tau) == steps and all(isinstance(t, int) for t in tau)
        assert tau[0] == 0 and tau[-1] <= T - 1  # code 0 = paper t = 1; the last step then goes to alpha_bar_0 = 1
        assert all(a < b for a, b in zip(tau, tau[1:]))
    # "c is selected such that tau_{-1} is close to T": the start is T (1 - 1/S) resp. T (1 - 1/S)^2
    assert timesteps(T, T) == list(range(T))
    assert timesteps(T, 50)[-1] == 980 and timesteps(T, 31, "quadratic")[-1] == 1000 * 30**2 // 31**2 == 936


@pytest.mark.parametrize("args, match", [((T, 0), "positive"), ((T, -3), "positive"), ((T, 1001), "at most"),
                                         ((T, 2.5), "positive"), ((0, 1), "T must"), ((T, 10, "cosine"), "spacing"),
                                         ((T, 32, "quadratic"), "at most 31")])
def test_timesteps_bad_input(args, match):
    with pytest.raises(LineageError, match=match):
        timesteps(*args)


# ---------------------------------------------------------------- Eqs. (12), (13), (16)

def test_sigma_eta_is_eq16_and_eta1_is_the_ddpm_posterior_variance(s64):
    # eta = 1 between consecutive timesteps gives DDPM's beta_tilde_t (DDPM Eq. 7); eta scales it linearly.
    for t in (1, 10, 500, 999):
        sigma = sigma_eta(s64.alpha_bar[t], s64.alpha_bar[t - 1], 1.0)
        assert sigma.item() ** 2 == pytest.approx(s64.beta_tilde[t].item(), rel=1e-12)
        scaled = sigma_eta(s64.alpha_bar[t], s64.alpha_bar[t - 1], 0.3).item()
        assert scaled == pytest.approx(0.3 * sigma.item(), rel=1e-14)
    assert sigma_eta(s64.alpha_bar[0], 1.0, 1.0).item() == 0  # the last step: alpha_bar_0 = 1
    assert sigma_eta(s64.alpha_bar[50], s64.alpha_bar[10], 0.0).item() == 0


def test_ddim_step_eta0_is_eq13_in_both_directions(s64):
    x = torch.randn(32, 2, generator=_gen(0), dtype=F64)
    eps = torch.randn(32, 2, generator=_gen(1), dtype=F64)
    for a_t, a_prev in [(s64.alpha_bar[700], s64.alpha_bar[300]), (s64.alpha_bar[0], 1.0),
                        (s64.alpha_bar[20], s64.alpha_bar[600])]:  # the last one runs upwards (inversion)
        a_t, a_prev = float(a_t), float(a_prev)
        sig = lambda a: math.sqrt((1 - a) / a)  # noqa: E731  (Eq. 13's sqrt((1 - alpha) / alpha))
        eq13 = math.sqrt(a_prev) * (x / math.sqrt(a_t) + (sig(a_prev) - sig(a_t)) * eps)
        torch.testing.assert_close(ddim_step(x, eps, a_t, a_prev, 0.0, None), eq13, rtol=1e-12, atol=1e-12)
    # with the exact noise, eta = 0 maps a point of Eq. (4) to the same point at the other level
    x0 = torch.randn(32, 2, generator=_gen(2), dtype=F64)
    a, b = s64.alpha_bar[800], s64.alpha_bar[100]
    torch.testing.assert_close(ddim_step(a.sqrt() * x0 + (1 - a).sqrt() * eps, eps, a, b, 0.0, None),
                               b.sqrt() * x0 + (1 - b).sqrt() * eps, rtol=1e-10, atol=1e-10)


def test_sampler_bookkeeping(s64):
    model = eps_model(mixture_2d(), s64)
    x_T = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    log = []
    out = ddim_sample(model, x_T, s64, steps=10, callback=lambda t, x, x0: log.append((t, x, x0)), disable=True)
    assert [t for t, _, _ in log] == timesteps(T, 10)[::-1]
    assert torch.equal(log[-1][1], out) and torch.equal(log[-1][2], out)  # last step: x_0 = predicted x_0
    # eta = 0 draws no noise; eta > 0 draws one per step, the last included (diffusers' order)
    g = _gen(1)
    ddim_sample(model, x_T, s64, steps=10, eta=0.0, generator=g, disable=True)
    assert torch.equal(g.get_state(), _gen(1).get_state())
    g, replay = _gen(1), _gen(1)
    ddim_sample(model, x_T, s64, steps=10, eta=0.5, generator=g, disable=True)
    for _ in range(10):
        torch.randn(x_T.shape, generator=replay, dtype=F64)
    assert torch.equal(g.get_state(), replay.get_state())


def test_bad_eta_is_refused_before_any_model_call(s64):
    calls = []

    def model(x_t, t):
        calls.append(t)
        return torch.zeros_like(x_t)

    with pytest.raises(LineageError, match="eta"):
        ddim_sample(model, torch.zeros(2, 2, dtype=F64), s64, eta=-0.1, disable=True)
    # eta is a free parameter >= 0 (Sec. 5), but for eta > 1 the coefficient sqrt(1 - alpha_bar_prev - sigma^2) of
    # Eq. (12) can become imaginary: (1 - alpha_bar_prev - sigma^2) / (1 - alpha_bar_prev)
    # = 1 - eta^2 (alpha_bar_prev - alpha_bar_t) / (alpha_bar_prev (1 - alpha_bar_t)), and the fraction nears 1 on a
    # long jump into code t = 0. With 10 steps even eta = 1.01 fails; with all T steps the worst step is code t = 1,
    # beta / (1 - alpha_bar) = 0.545, so eta up to 1.354 works.
    with pytest.raises(LineageError, match="too large"):
        ddim_sample(model, torch.zeros(2, 2, dtype=F64), s64, steps=10, eta=1.01, disable=True)
    with pytest.raises(LineageError, match=r"largest possible eta here: 1\.35"):
        ddim_sample(model, torch.zeros(2, 2, dtype=F64), s64, steps=T, eta=1.4, disable=True)
    assert calls == []
    ddim_sample(model, torch.zeros(2, 2, dtype=F64), s64, steps=T, eta=1.35, generator=_gen(0), disable=True)


# ---------------------------------------------------------------- closed form: a single Gaussian

def gaussian_ode_endpoint(mu, s, x_T, alpha_bar_T):
    """Exact endpoint x_0 of the eta = 0 ODE (DDIM Eq. 14) for data N(mu, s^2 I), started at x_T at level
    alpha_bar_T: refimpl.mixture.gaussian_flow to alpha_bar = 1, i.e.
    x_0 = mu + s (x_T / sqrt(alpha_bar_T) - mu) / sqrt(s^2 + sigma_T^2) (checked against RK4 below)."""
    return gaussian_flow(x_T, alpha_bar_T, 1.0, mu, s)


def test_eta0_converges_to_the_exact_ode_endpoint_at_first_order(s64):
    # DDIM at eta = 0 is explicit Euler in sigma for xbar (Eq. 13 discretises Eq. 14): local error O(d sigma^2),
    # global error O(1/S). Each run starts at its own tau_{S-1} (900, 950, 975, ...), so each is compared with the
    # exact endpoint from that level. Measured max errors over 64 paths: 0.398, 0.209, 0.108, 0.0549, 0.0279 for
    # S = 10..160, observed orders log2(e_S / e_2S) = 0.93, 0.95, 0.97, 0.98 (not exactly 1: the O(1/S^2) terms
    # and the moving start level). We accept 0.8..1.3: a second-order method would show ~2, a bug ~0 or chaos.
    mu, s = torch.tensor([0.7, -1.3], dtype=F64), 0.5
    model = eps_model(GaussianMixture.single(mu, s**2 * torch.eye(2, dtype=F64)), s64)
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    errors = []
    for steps in (10, 20, 40, 80, 160):
        exact = gaussian_ode_endpoint(mu, s, x_T, s64.alpha_bar[timesteps(T, steps)[-1]])
        errors.append((ddim_sample(model, x_T, s64, steps=steps, disable=True) - exact).abs().max().item())
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)
    assert errors[-1] < 0.04


def ode_endpoint(mixture, x_T, alpha_bar_T, n=400, sigma_min=1e-4):
    """A reference solution of DDIM Eq. (14), d xbar = eps*(xbar / sqrt(sigma^2 + 1), sigma) d sigma, with the exact
    eps* of ``mixture`` at continuous noise levels (alpha_bar = 1 / (1 + sigma^2)): classical RK4 in log sigma from
    sigma_T to ``sigma_min`` (the rest contributes ~sigma_min^2 / s^2 |xbar - mu| < 1e-6 for this test's data)."""

    def velocity(xbar, rho):  # d xbar / d log sigma = sigma eps*
        sigma = math.exp(rho)
        a = 1 / (1 + sigma * sigma)
        return sigma * (-math.sqrt(1 - a)) * mixture.vp(a).score(xbar * math.sqrt(a))

    a = float(alpha_bar_T)
    y, rho = x_T / math.sqrt(a), 0.5 * math.log((1 - a) / a)
    h = (math.log(sigma_min) - rho) / n
    for _ in range(n):
        k1 = velocity(y, rho)
        k2 = velocity(y + h / 2 * k1, rho + h / 2)
        k3 = velocity(y + h / 2 * k2, rho + h / 2)
        k4 = velocity(y + h * k3, rho + h)
        y, rho = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), rho + h
    return y / math.sqrt(1 + sigma_min**2)


def test_ode_reference_is_exact_on_a_gaussian(s64):
    # The reference integrator reproduces the closed-form endpoint (measured 1.3e-7), so below it is exact
    # to well under the smallest DDIM error it is compared with (1.9e-3).
    mu, s = torch.tensor([0.7, -1.3], dtype=F64), 0.5
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    a = s64.alpha_bar[T - 1]
    got = ode_endpoint(GaussianMixture.single(mu, s**2 * torch.eye(2, dtype=F64)), x_T, a)
    assert (got - gaussian_ode_endpoint(mu, s, x_T, a)).abs().max().item() < 1e-6


def test_eta0_sampling_of_the_mixture_approaches_the_probability_flow(s64):
    # Pathwise error of DDIM (exact eps*, eta = 0) against the exact ODE endpoint from the same x_T, mean over 500
    # paths (the max is dominated by the few paths near a boundary between components, where the flow map is
    # nearly discontinuous). Measured: 0.158, 0.084, 0.0384, 0.0204, 0.00186 for S = 10, 20, 50, 100, 1000:
    # S * error ~ 1.6..2.0, first order. The reference's own error (5e-6 between 400 and 800 RK4 steps) is the
    # floor, 300x below the 1000-step error, so no floor is reached here. Tolerances: strictly decreasing,
    # observed order between consecutive S in 0.75..1.25 (measured 0.91, 0.86, 0.91, 1.04), and < 3e-3 at S = 1000.
    mixture = mixture_2d()
    model = eps_model(mixture, s64)
    x_T = torch.randn(500, 2, generator=_gen(1), dtype=F64)
    steps_list, errors = (10, 20, 50, 100, 1000), []
    for steps in steps_list:
        reference = ode_endpoint(mixture, x_T, s64.alpha_bar[timesteps(T, steps)[-1]])
        errors.append((ddim_sample(model, x_T, s64, steps=steps, disable=True) - reference).norm(dim=1).mean().item())
    orders = [math.log(a / b) / math.log(m / n) for a, b, n, m in zip(errors, errors[1:], steps_list, steps_list[1:])]
    assert all(0.75 < p < 1.25 for p in orders), (errors, orders)
    assert errors[-1] < 3e-3


# ---------------------------------------------------------------- eta = 1, all T steps: DDPM

@pytest.mark.parametrize("model_name", ["closed_form", "perturbed"])
def test_eta1_with_all_steps_is_ddpm_ancestral_sampling(s64, model_name):
    # With tau = 0..T-1 and eta = 1, sigma = sqrt(beta_tilde_t) and Eq. (12) is DDPM's posterior mean at the predicted
    # x_0 plus the same noise: ddpm_sample draws T - 1 noises (t > 0), ddim_sample T (the last with sigma = 0), from
    # the same generator in the same order. Float64: measured 1.8e-13; asserted 1e-9.
    model = eps_model(mixture_2d(), s64) if model_name == "closed_form" else _perturbed(s64)
    x_T = torch.randn(256, 2, generator=_gen(1), dtype=F64)
    a = ddim_sample(model, x_T, s64, steps=T, eta=1.0, generator=_gen(5), disable=True)
    b = ddpm_sample(model, x_T, s64, variance="fixed_small", generator=_gen(5), disable=True)
    assert (a - b).abs().max().item() <= 1e-9


def test_eta1_ddpm_equivalence_float32_gap(s32):
    # Float32: the two algebraic forms round differently (measured 6.9e-5 over 1000 steps); bounded well below
    # an algorithmic difference (a wrong variance moves samples by O(1e-1)).
    model = eps_model(mixture_2d(), s32)
    x_T = torch.randn(256, 2, generator=_gen(1))
    a = ddim_sample(model, x_T, s32, steps=T, eta=1.0, generator=_gen(5), disable=True)
    b = ddpm_sample(model, x_T, s32, generator=_gen(5), disable=True)
    assert (a - b).abs().max().item() < 1e-3


def _perturbed(schedule):
    """A fixed nonlinear eps-like model (exact eps* for N(0, I) data plus a bounded perturbation): not an eps* of
    any data, so agreement cannot come from a special structure of the closed-form model."""
    alpha_bar = schedule.alpha_bar

    def model(x_t, t):
        a = alpha_bar.to(x_t)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        phase = t.to(x_t).reshape(a.shape) / T
        return (1 - a).sqrt() * x_t + 0.3 * torch.tanh(x_t.roll(1, dims=-1) * (1 + phase))

    return model


# ---------------------------------------------------------------- inversion (Sec. 4.3, 5.4)

def test_inversion_then_sampling_reconstructs_x0(s64):
    # Encode mixture data with ddim_invert, decode with ddim_sample (same S): per-dimension MSE measured
    # 0.045, 0.016, 0.0028, 6.1e-4, 7.0e-6 for S = 10, 20, 50, 100, 1000 (the paper's Table 2 shows the same
    # trend on CIFAR-10). Asserted: strictly decreasing, < 1e-4 at S = 1000, and the codes look like N(0, I).
    mixture = mixture_2d()
    model = eps_model(mixture, s64)
    x0 = mixture.sample(256, _gen(3))[0]
    mse = []
    for steps in (10, 20, 50, 100, 1000):
        z = ddim_invert(model, x0, s64, steps=steps, disable=True)
        mse.append((ddim_sample(model, z, s64, steps=steps, disable=True) - x0).pow(2).mean().item())
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    assert mse[-1] < 1e-4
    # the last z is the S = 1000 code: mean 0 and sd 1 within ~4 standard errors (sd 1/sqrt(512) = 0.044)
    assert abs(z.mean().item()) < 0.2 and abs(z.std().item() - 1) < 0.15


def test_invert_callback_and_determinism(s64):
    model = eps_model(mixture_2d(), s64)
    x0 = mixture_2d().sample(8, _gen(4))[0]
    seen = []
    z = ddim_invert(model, x0, s64, steps=10, callback=lambda t, x, x0p: seen.append(t), disable=True)
    assert seen == timesteps(T, 10)
    assert torch.equal(z, ddim_invert(model, x0, s64, steps=10, disable=True))


# ---------------------------------------------------------------- slerp (Sec. 5.3, Appendix D.5)

def test_slerp():
    z0 = torch.randn(6, 3, 4, generator=_gen(0), dtype=F64)
    z1 = torch.randn(6, 3, 4, generator=_gen(1), dtype=F64)
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    # equal norms stay on the sphere of that radius, per sample
    z1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1))[:, None, None]
    for alpha in (0.1, 0.5, 0.77):
        torch.testing.assert_close(slerp(z0, z1, alpha).flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1),
                                   rtol=1e-12, atol=1e-12)
    # orthogonal unit vectors: theta = pi/2, halfway is (e0 + e1) / sqrt(2)
    e0, e1 = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    torch.testing.assert_close(slerp(e0, e1, 0.5), (e0 + e1) / math.sqrt(2), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(slerp(e0, e1, 1 / 3), torch.tensor([math.cos(math.pi / 6), 0.5, 0.0], dtype=F64))
    # parallel inputs: 0/0 in the formula, the limit is linear interpolation
    assert torch.equal(slerp(e0, 2 * e0, 0.5), 1.5 * e0)


# ---------------------------------------------------------------- parity with diffusers' DDIMScheduler

def diffusers_ddim(model, x_T, steps, eta, *, seed, **config):
    """The DDIMPipeline loop: set_timesteps(N), then model + scheduler.step(eta, generator) per timestep."""
    config = dict(num_train_timesteps=T, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                  steps_offset=0, timestep_spacing="leading", prediction_type="epsilon") | config
    scheduler = diffusers.DDIMScheduler(**config)
    scheduler.set_timesteps(steps)
    generator = _gen(seed)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x, scheduler.timesteps.tolist()


def test_uniform_is_diffusers_leading_where_they_coincide():
    # Ours: floor(T i / S); "leading": (T // S) i. Equal whenever the floors agree: every S dividing T, and S = 3
    # (333.3 i floors to 333 i for i < 3); not S = 7 (c = 142.86 vs 142: 285 vs 284 at i = 2).
    for steps in (1, 2, 3, 4, 5, 8, 10, 20, 25, 50, 100, 125, 200, 250, 500, 1000):
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=0)
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == timesteps(T, steps)[::-1]
    scheduler.set_timesteps(7)
    assert scheduler.timesteps.tolist() == [852, 710, 568, 426, 284, 142, 0] != timesteps(T, 7)[::-1]


@pytest.mark.parametrize("steps", [10, 50, 1000])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("model_name", ["closed_form", "perturbed_image"])
def test_same_samples_as_diffusers_bit_for_bit(s32, steps, eta, model_name):
    # Same float32 alphas_cumprod (both from a float32 linspace + cumprod), the same Eq. (12) / Eq. (16) arithmetic
    # in the same order, the same noise draws: measured difference exactly 0 for every case, float32 included, so
    # no float64 schedule swap is needed (unlike DDPM's parity test). Asserted <= 1e-6 as specified.
    if model_name == "closed_form":
        model, x_T = eps_model(mixture_2d(), s32), torch.randn(512, 2, generator=_gen(0))
    else:
        model, x_T = _perturbed(s32), torch.randn(16, 1, 8, 8, generator=_gen(0))
    ours = ddim_sample(model, x_T, s32, steps=steps, eta=eta, generator=_gen(1), disable=True)
    theirs, their_timesteps = diffusers_ddim(model, x_T, steps, eta, seed=1)
    assert their_timesteps == timesteps(T, steps)[::-1]
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_diffusers_prev_timestep_is_not_the_next_element_of_its_own_sub_sequence(s32):
    # DEVIATION: DDIMScheduler.step takes the level to step to as
    #     prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
    # (diffusers 0.42.1, scheduling_ddim.py, step(), "1. get previous step value"), which is the next element
    # of the timesteps only for "leading" spacing (multiples of T // N). With "linspace" or "trailing" the
    # timesteps are not, so each step lands on a level that the next model call does not assume.
    # T = 1000, N = 7, T // N = 142:
    #   linspace  timesteps 999, 832, 666, 500, 333, 166, 0   -> diffusers steps to 857, 690, 524, 358, 191, 24, x_0
    #   trailing  timesteps 999, 856, 713, 570, 428, 285, 142 -> diffusers steps to 857, 714, 571, 428, 286, 143, 0
    # The paper's process on the same sub-sequence (Sec. 4.2) steps to the next element (832, 666, ...; 856, 713, ...)
    # and finally to alpha_bar_0 = 1, i.e. x_0. Under "trailing" the last step lands at code 0 (the paper's x_1, noise
    # sd sqrt(1 - alpha_bar_1) = 0.01), never at x_0; under "linspace" the sample after the first step is at level
    # 857 but the model is next asked about 832, and so on.
    model = eps_model(mixture_2d(), s32)
    x_T = torch.randn(64, 2, generator=_gen(0))
    alpha_bar = s32.alpha_bar
    cases = {"linspace": ([999, 832, 666, 500, 333, 166, 0], [857, 690, 524, 358, 191, 24, None]),
             "trailing": ([999, 856, 713, 570, 428, 285, 142], [857, 714, 571, 428, 286, 143, 0])}
    for spacing, (their_timesteps, their_prev) in cases.items():
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=False, timestep_spacing=spacing)
        scheduler.set_timesteps(7)
        assert scheduler.timesteps.tolist() == their_timesteps
        x = x_T.clone()
        for t, prev in zip(their_timesteps, their_prev):
            eps = model(x, torch.full((64,), t))
            out = scheduler.step(eps, t, x).prev_sample
            # what diffusers does, to the bit: Eq. (12) from alpha_bar[t] to alpha_bar[t - 142] (or 1 below 0)
            target = alpha_bar[prev] if prev is not None else 1.0
            assert torch.equal(out, ddim_step(x, eps, alpha_bar[t], target, 0.0, None))
            x = out
        # the paper's DDIM on the same sub-sequence
        y, levels = x_T.clone(), their_timesteps + [None]
        for t, nxt in zip(levels, levels[1:]):
            y = ddim_step(y, model(y, torch.full((64,), t)), alpha_bar[t], alpha_bar[nxt] if nxt is not None else 1.0,
                          0.0, None)
        gap = (x - y).abs().max().item()
        assert gap > 1e-2, (spacing, gap)  # measured 0.38 (linspace), 0.027 (trailing); float32 rounding: ~1e-6


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 30-step swiss-roll DDPM: DDIM samples the DDPM checkpoint (there is no DDIM training)."""
    work = tmp_path_factory.mktemp("ddim_cli")
    result = refimpl("ddpm", "train", "--data", "swissroll", "--steps", "30", "--out", "run", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


@pytest.mark.parametrize("extra", [["--steps", "20"], ["--steps", "10", "--eta", "0.5", "--spacing", "quadratic"]])
def test_ddim_sample_writes_a_png(trained, extra, tmp_path):
    result = refimpl("ddim", "sample", "--ckpt", str(trained / "run"), "--n", "50", *extra, "--out", "s.png",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragments", [
    (["--steps", "0"], ["--steps", "positive"]),
    (["--steps", "5000"], ["5000", "T=1000"]),
    (["--steps", "50", "--spacing", "quadratic"], ["quadratic", "31"]),
    (["--eta", "-1"], ["--eta", ">= 0"]),
    (["--ckpt", "nowhere"], ["checkpoint not found", "nowhere"]),
    (["--out", "s.jpg"], [".png"]),
])
def test_ddim_sample_refuses_bad_input_in_one_line(trained, args, fragments):
    assert_refused(refimpl("ddim", "sample", *with_defaults(args, ckpt="run", out="s.png"), cwd=trained), *fragments)


def test_ddim_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    ckpt = checkpoint.load(trained / "run")
    checkpoint.save(tmp_path / "other", model="ncsn", config=ckpt.config, step=1, model_state=ckpt.model_state)
    assert_refused(refimpl("ddim", "sample", "--ckpt", "other", "--out", "s.png", cwd=tmp_path), "'ncsn'", "'ddpm'")


def test_same_checkpoint_ddim_eta1_all_steps_is_ddpm(trained):
    # "same training, different sampler": on a trained network, DDIM with S = T and eta = 1 reproduces DDPM's
    # sampler from the same seed (float32 network: measured gap 2.5e-5; the two forms round differently).
    a = ddim.sample_from_checkpoint(trained / "run", 64, steps=T, eta=1.0, seed=3, disable=True)
    b = ddpm.sample_from_checkpoint(trained / "run", 64, seed=3, disable=True)
    assert a.shape == b.shape == (64, 2)
    assert (a - b).abs().max().item() < 1e-3
    with pytest.raises(LineageError, match="eta"):
        ddim.sample_from_checkpoint(trained / "run", 4, eta=-1.0)
