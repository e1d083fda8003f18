"""DPM-Solver++(2M) and EDM's Heun sampler against closed forms, DDIM and diffusers: the Karras sub-sequence,
convergence order on a Gaussian (exact probability-flow solution), convergence on the 2-D mixture, the
first-order case = DDIM, parity with DPMSolverMultistepScheduler / HeunDiscreteScheduler, pinned diffusers
deviations, and the command line.

Both samplers are deterministic: no noise is drawn, so parity needs only the same model and the same x_T.
"""

import math
from pathlib import Path

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl, with_defaults
from test_ddim import ode_endpoint  # RK4 reference solution of the probability-flow ODE (exact eps* of a mixture)
from test_diffusers_parity import PerturbedMLP
from refimpl.core import LineageError
from refimpl.ddim import ddim_sample
from refimpl.schedules import timesteps
from refimpl.ddpm import train, train_config
from refimpl.mixture import GaussianMixture, eps_model, mixture_2d
from refimpl.mixture import gaussian_flow as mixture_flow
from refimpl.schedules import make_schedule
from refimpl.solvers import (SAMPLERS, dpmpp_2m_sample, heun_sample, karras_timesteps, nfe, sample_from_checkpoint,
                             sub_sequence)

torch.set_num_threads(1)

F64 = torch.float64
T = 1000
MU, S = torch.tensor([0.7, -1.3], dtype=F64), 0.5  # the Gaussian data N(mu, s^2 I) of the order tests


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sample(name, model, x_T, schedule, steps, spacing, **kwargs):
    return SAMPLERS[name].sample(model, x_T, schedule, steps=steps, spacing=spacing, disable=True, **kwargs)


def _at_code_0(name, model, x_T, schedule, steps, spacing):
    """(x_0, the sample that landed on code t = 0): the callback of the step from tau_1 carries the latter."""
    landed = {}
    out = _sample(name, model, x_T, schedule, steps, spacing, callback=lambda t, x, x0: landed.setdefault(t, x))
    return out, landed[sub_sequence(schedule, steps, spacing)[1]]


# ---------------------------------------------------------------- the Karras sub-sequence (EDM Eq. 5)

def test_the_last_uniform_lambda_steps_quoted_in_the_docstring(s64):
    """dpmpp_2m_sample's docstring: with 10 uniform steps on the linear schedule the last lambda-step (code 100 ->
    0) is h = 3.53, after 0.75 (code 200 -> 100), ratio r = 0.21 (quoted to the digits shown: +-0.005)."""
    assert sub_sequence(s64, 10, "uniform")[:3] == [0, 100, 200]
    lam = lambda t: 0.5 * math.log(s64.alpha_bar[t] / (1 - s64.alpha_bar[t]))  # noqa: E731  log(alpha / sigma)
    last, before = lam(0) - lam(100), lam(100) - lam(200)
    assert last == pytest.approx(3.53, abs=0.005) and before == pytest.approx(0.75, abs=0.005)
    assert before / last == pytest.approx(0.21, abs=0.005)


def test_karras_timesteps_are_increasing_from_0_to_T_minus_1(s32, s64):
    for steps in (2, 3, 5, 10, 20, 40, 78):
        tau = karras_timesteps(s64, steps)
        assert len(tau) == steps and all(isinstance(t, int) for t in tau)
        assert tau[0] == 0 and tau[-1] == T - 1  # sigma_min = sigma(code 0), sigma_max = sigma(code T-1)
        assert all(a < b for a, b in zip(tau, tau[1:]))
        assert karras_timesteps(s32, steps) == tau  # the float32 schedule rounds to the same timesteps
    assert karras_timesteps(s64, 1) == [T - 1]
    # rho = 7 puts most levels at low noise: half of the 10 levels lie below code 400 (uniform: 5 of 10 below 500)
    assert karras_timesteps(s64, 10) == [0, 18, 102, 301, 511, 663, 775, 864, 937, 999]
    # rho = 1 is sigma-uniform: every level but sigma_min lies far above sigma ~ 1 (code ~ 300)
    assert karras_timesteps(s64, 10, rho=1.0)[1] > 700


def test_karras_timesteps_refuse_repeated_timesteps(s64):
    # Near sigma_min the grid is denser than the schedule's own timesteps: with the linear schedule 78 levels are
    # distinct, 79 are not (the two lowest both round to code 0). The cosine schedule's capped last betas make
    # sigma jump near T, so there only 5 levels stay distinct.
    assert len(set(karras_timesteps(s64, 78))) == 78
    with pytest.raises(LineageError, match="at most 78 steps, got 79"):
        karras_timesteps(s64, 79)
    with pytest.raises(LineageError, match="at most 5 steps, got 6"):
        karras_timesteps(make_schedule("cosine", T), 6)
    for bad, match in ((0, "positive"), (-1, "positive"), (2.5, "positive")):
        with pytest.raises(LineageError, match=match):
            karras_timesteps(s64, bad)
    with pytest.raises(LineageError, match="rho"):
        karras_timesteps(s64, 10, rho=0.0)
    with pytest.raises(LineageError, match="unknown spacing"):
        dpmpp_2m_sample(lambda x, t: x, torch.zeros(1, 2), s64, spacing="logsnr")


# ---------------------------------------------------------------- bookkeeping shared by the samplers

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_callback_dtype_and_no_noise(s64, name):
    calls = []
    exact = eps_model(mixture_2d(), s64)

    def model(x, t):
        calls.append(int(t[0]))
        return exact(x, t)

    spacing = SAMPLERS[name].spacing
    x_T = torch.randn(5, 2, generator=_gen(0))  # float32 in, float32 out
    log, g = [], _gen(1)
    out = _sample(name, model, x_T, s64, 10, spacing, generator=g, callback=lambda t, x, x0: log.append((t, x, x0)))
    tau = sub_sequence(s64, 10, spacing)
    assert len(calls) == nfe(name, 10) == {"ddim": 10, "dpmpp-2m": 10, "heun": 19}[name]
    assert [t for t, _, _ in log] == tau[::-1]
    assert torch.equal(log[-1][1], out) and torch.equal(log[-1][2], out)  # last step: x_0 = the prediction at code 0
    assert out.dtype == torch.float32 and out.shape == x_T.shape
    assert torch.equal(g.get_state(), _gen(1).get_state())  # deterministic: the generator is never drawn from
    with pytest.raises(LineageError, match="unknown sampler"):
        nfe("euler", 10)


# ---------------------------------------------------------------- closed form: convergence order on a Gaussian

def gaussian_flow(x, alpha_bar_from, alpha_bar_to):
    """Exact probability-flow map for this file's data N(MU, S^2 I) (refimpl.mixture.gaussian_flow, checked against
    an RK4 solution in tests/test_ddim.py)."""
    return mixture_flow(x, alpha_bar_from, alpha_bar_to, MU, S)


@pytest.mark.parametrize("name, spacing, steps_list, orders_ok", [
    ("ddim", "uniform", (10, 20, 40, 80), (0.8, 1.3)),
    ("dpmpp-2m", "uniform", (40, 80, 160, 320), (1.7, 2.4)),
    ("heun", "karras", (20, 39, 78), (1.7, 2.4)),
    ("heun", "uniform", (10, 20, 40, 80), (1.7, 2.4)),
])
def test_observed_order_on_a_gaussian(s64, name, spacing, steps_list, orders_ok):
    """Max error over 64 paths against the exact ODE solution, at code t = 0 (the sample landing there, from the
    callback), for each run from its own start level tau_{S-1} (uniform: T - T/S, so it moves with S; karras:
    always T-1). Observed order p = log(e_S / e_S') / log(S' / S).

    Why code 0 and not x_0: the last step, from sigma(code 0) = 0.01 to 0, is first order in all three samplers
    (it returns the data prediction D = mu + s^2 / (s^2 + sigma^2) (xbar - mu), where the exact flow gives
    mu + s / sqrt(s^2 + sigma^2) (xbar - mu)), whatever the number of steps: a floor of about
    |xbar - mu| sigma^2 / (2 s^2), measured 3.2e-4 here, that the errors of the second-order solvers reach
    (see the next test). At code 0 there is no floor (float64 rounding ~1e-15).

    Measured (code 0): DDIM 0.397, 0.209, 0.108, 0.0546 (orders 0.93, 0.96, 0.98); DPM-Solver++(2M) 0.127, 0.0339,
    0.00802, 0.00192 (1.90, 2.08, 2.06); Heun karras 0.0776, 0.0183, 0.00432 (2.16, 2.08); Heun uniform 0.111,
    0.0281, 0.00712, 0.0018 (1.98, 1.98, 1.98). Accepted: 0.8..1.3 for the first-order DDIM and 1.7..2.4 for the
    second-order ones (the non-integer parts are higher-order terms and the moving start level, <= 0.16 here; a
    method of the wrong order is off by ~1). DPM-Solver++(2M) with time-uniform steps is pre-asymptotic below
    40 steps (0.603, 0.358, 0.127 for S = 10, 20, 40: orders 0.75, 1.5): at S = 10 the step from code 100 into
    code 0 spans h = 3.5 in lambda against 0.8 for the one before (r = 0.22), and the linear extrapolation of the
    data prediction over it overshoots. Heun karras stops at 78 steps (karras_timesteps' limit).
    """
    model = eps_model(GaussianMixture.single(MU, S**2 * torch.eye(2, dtype=F64)), s64)
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    errors = []
    for steps in steps_list:
        start = s64.alpha_bar[sub_sequence(s64, steps, spacing)[-1]]
        _, at_0 = _at_code_0(name, model, x_T, s64, steps, spacing)
        errors.append((at_0 - gaussian_flow(x_T, start, s64.alpha_bar[0])).abs().max().item())
    orders = [math.log(a / b) / math.log(m / n) for a, b, n, m in zip(errors, errors[1:], steps_list, steps_list[1:])]
    assert all(orders_ok[0] < p < orders_ok[1] for p in orders), (errors, orders)


def test_the_first_order_last_step_leaves_an_error_floor(s64):
    # Heun (uniform): at code 0 the error keeps falling by ~4 per doubling (measured 0.0018, 4.6e-4, 1.2e-4 for
    # S = 80, 160, 320), but at x_0 it stalls at the floor of the final Euler step (measured 1.5e-3, 1.4e-4, 2.0e-4:
    # ratio 0.7 from 160 to 320), the same for every S: the final step applied to the *exact* code-0 sample is
    # 3.2e-4 off, ~ |xbar - mu| sigma(0)^2 / (2 s^2) with |xbar - mu| <= ~1.6, sigma(0) = 0.0100, s = 0.5.
    model = eps_model(GaussianMixture.single(MU, S**2 * torch.eye(2, dtype=F64)), s64)
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    end_errors, code0_errors = [], []
    for steps in (160, 320):
        start = s64.alpha_bar[timesteps(T, steps)[-1]]
        out, at_0 = _at_code_0("heun", model, x_T, s64, steps, "uniform")
        end_errors.append((out - gaussian_flow(x_T, start, 1.0)).abs().max().item())
        code0_errors.append((at_0 - gaussian_flow(x_T, start, s64.alpha_bar[0])).abs().max().item())
    exact_0 = gaussian_flow(x_T, start, s64.alpha_bar[0])
    a0 = s64.alpha_bar[0].item()
    last_step = (exact_0 - math.sqrt(1 - a0) * model(exact_0, torch.zeros(64, dtype=torch.long))) / math.sqrt(a0)
    floor = (last_step - gaussian_flow(x_T, start, 1.0)).abs().max().item()
    sigma0 = math.sqrt((1 - a0) / a0)
    assert 0.5 < floor / (1.6 * sigma0**2 / (2 * S**2)) < 1.5  # the estimate's size, within its rough |xbar - mu|
    assert 3 < code0_errors[0] / code0_errors[1] < 5.3  # second order at code 0 (order 1.6..2.4)
    assert end_errors[0] / end_errors[1] < 2  # ... but not at x_0: the floor
    assert end_errors[1] > 0.3 * floor


def test_dpmpp_2m_first_order_steps_are_ddim(s64):
    # With S <= 2 steps DPM-Solver++(2M) takes only first-order steps (the first one, and the last one to sigma = 0),
    # and DPM-Solver++(1) is DDIM (as both DPM-Solver papers show): the two algebraic forms of the same step agree to
    # float64 rounding (measured <= 4.4e-16; asserted 1e-12); for S = 10 the first step agrees too (4.4e-16), the
    # second, second order, does not (2.8e-3).
    model = eps_model(mixture_2d(), s64)
    x_T = torch.randn(256, 2, generator=_gen(2), dtype=F64)
    for steps in (1, 2):
        for spacing in ("uniform", "quadratic"):
            ours = dpmpp_2m_sample(model, x_T, s64, steps=steps, spacing=spacing, disable=True)
            ddim = ddim_sample(model, x_T, s64, steps=steps, spacing=spacing, disable=True)
            assert (ours - ddim).abs().max().item() < 1e-12
    first = {}
    for fn in (dpmpp_2m_sample, ddim_sample):
        seen = []
        fn(model, x_T, s64, steps=10, spacing="uniform", callback=lambda t, x, x0: seen.append(x), disable=True)
        first[fn.__name__] = seen
    a, b = first["dpmpp_2m_sample"], first["ddim_sample"]
    assert (a[0] - b[0]).abs().max().item() < 1e-12
    assert (a[1] - b[1]).abs().max().item() > 1e-3  # the second step is second order


def test_mixture_errors_shrink_with_steps(s64):
    # mixture_2d with its exact eps*: the sample landing on code 0 against an RK4 solution of the probability-flow
    # ODE from each run's own start level to sigma(code 0) (its own error, 400 vs 800 RK4 steps: 1e-8 mean), mean
    # over 256 paths (the max is dominated by the few paths near a boundary between components). Measured:
    #   DDIM (uniform; S = 10, 20, 50, 100)             0.151, 0.0769, 0.0343, 0.0196
    #   DPM-Solver++(2M) (uniform; S = 10, 20, 50, 100) 0.497, 0.0944, 0.0313, 0.0115
    #   Heun (karras; S = 10, 20, 40, 78)               0.239, 0.0357, 0.00759, 0.00193
    # (at 10 time-uniform steps 2M is worse than DDIM: the overshooting last lambda-step of the order test).
    # Asserted: strictly decreasing, and the second-order solvers' errors at the most steps below DDIM's.
    mixture = mixture_2d()
    model = eps_model(mixture, s64)
    x_T = torch.randn(256, 2, generator=_gen(1), dtype=F64)
    a0 = s64.alpha_bar[0].item()
    sigma0 = math.sqrt((1 - a0) / a0)
    references = {}
    results = {}
    for name, spacing, steps_list in (("ddim", "uniform", (10, 20, 50, 100)),
                                      ("dpmpp-2m", "uniform", (10, 20, 50, 100)),
                                      ("heun", "karras", (10, 20, 40, 78))):
        errors = []
        for steps in steps_list:
            start = sub_sequence(s64, steps, spacing)[-1]
            if start not in references:  # x at code 0 = xbar / sqrt(1 + sigma0^2): ode_endpoint returns exactly that
                references[start] = ode_endpoint(mixture, x_T, s64.alpha_bar[start], sigma_min=sigma0)
            _, at_0 = _at_code_0(name, model, x_T, s64, steps, spacing)
            errors.append((at_0 - references[start]).norm(dim=1).mean().item())
        results[name] = errors
        assert all(a > b for a, b in zip(errors, errors[1:])), (name, errors)
    assert results["dpmpp-2m"][-1] < results["ddim"][-1] and results["heun"][-1] < results["ddim"][-1], results


# ---------------------------------------------------------------- parity with diffusers

def diffusers_dpmpp_2m(model, x_T, tau, num_inference_steps=None, **config):
    """The DPMSolverMultistepScheduler loop on our sub-sequence: set_timesteps(timesteps=reversed tau) (or, with
    tau None, its own set_timesteps(num_inference_steps)), then model + step per timestep (scale_model_input is
    the identity for this scheduler)."""
    config = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
                  final_sigmas_type="zero", thresholding=False, beta_schedule="linear", beta_start=1e-4,
                  beta_end=0.02, num_train_timesteps=T, prediction_type="epsilon") | config
    scheduler = diffusers.DPMSolverMultistepScheduler(**config)
    if tau is None:
        scheduler.set_timesteps(num_inference_steps or 10)
    else:
        scheduler.set_timesteps(timesteps=tau[::-1])
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, torch.full((x.shape[0],), int(t))), t, x).prev_sample
    return x, scheduler


def diffusers_heun(model, x_T, tau, schedule64=None):
    """The HeunDiscreteScheduler loop (pipeline order: scale_model_input, model, step) on our sub-sequence.

    Its sample lives in EDM's xbar = x / sqrt(alpha_bar); it starts from x_T * init_noise_sigma, which is
    sqrt(sigma_max^2 + 1) = 1 / sqrt(alpha_bar) only for timestep_spacing="leading" (see the deviation test below),
    so that is the one setting under which its start equals ours; with custom timesteps the spacing has no other
    effect. scale_model_input divides by sqrt(sigma^2 + 1), handing the model our VP x. Timesteps are interleaved
    (t_0, t_1, t_1, ..., t_{N-1}, t_{N-1}: 2N - 1 model calls) and float32; they are integers here, passed as int.
    Its default beta_start=0.00085, beta_end=0.012 (Stable Diffusion's) must be overridden. ``schedule64`` swaps
    its float32 sigmas for float64 ones from the same formula, to separate algebra from float32 rounding."""
    scheduler = diffusers.HeunDiscreteScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                                beta_end=0.02, prediction_type="epsilon", timestep_spacing="leading")
    scheduler.set_timesteps(timesteps=tau[::-1])
    if schedule64 is not None:
        a = schedule64.alpha_bar[tau[::-1]]
        sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=F64)])
        scheduler.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    x, calls = x_T * scheduler.init_noise_sigma, 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), torch.full((x.shape[0],), int(t)))
            calls += 1
            x = scheduler.step(eps, t, x).prev_sample
    return x, calls


@pytest.mark.parametrize("spacing, steps", [("uniform", 1), ("uniform", 2), ("uniform", 5), ("uniform", 10),
                                            ("uniform", 50), ("quadratic", 10), ("karras", 10), ("karras", 25)])
@pytest.mark.parametrize("model_name", ["closed_form", "mlp"])
def test_dpmpp_2m_is_diffusers_dpmsolver_multistep(s32, spacing, steps, model_name):
    # Same float32 alpha_bar on both sides (our s32 = their alphas_cumprod bit for bit), float64 model and x_T. What
    # remains is float32 rounding inside diffusers: set_timesteps stores sigma = sqrt((1 - a) / a) as float32, and
    # step() computes alpha, sigma, lambda from it in float32 and casts the sample to float32 ("Upcast to avoid
    # precision issues"): ~6e-8 relative per operation on |x| <= ~4, a few tens of operations per step, and the
    # mixture's flow amplifies perturbations of paths near component boundaries. Measured 1.9e-7 (1-2 steps) up to
    # 6.9e-6 (closed form, 50 steps), <= 1.5e-6 for the MLP; asserted 5e-5. An algorithmic difference is far larger:
    # a first-order step in place of the second-order one moves the samples by 2.8e-3 after that one step alone
    # (test_dpmpp_2m_first_order_steps_are_ddim).
    model = eps_model(mixture_2d(), s32) if model_name == "closed_form" else PerturbedMLP(s32).double()
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=F64)
    tau = sub_sequence(s32, steps, spacing)
    ours = dpmpp_2m_sample(model, x_T, s32, steps=steps, spacing=spacing, disable=True)
    theirs, scheduler = diffusers_dpmpp_2m(model, x_T, tau)
    assert scheduler.timesteps.tolist() == tau[::-1] and scheduler.sigmas[-1].item() == 0
    assert (ours - theirs).abs().max().item() < 5e-5


@pytest.mark.parametrize("spacing, steps", [("karras", 1), ("karras", 2), ("karras", 10), ("karras", 50),
                                            ("uniform", 10), ("quadratic", 20)])
@pytest.mark.parametrize("model_name", ["closed_form", "mlp"])
def test_heun_is_diffusers_heun_discrete(s64, spacing, steps, model_name):
    # With float64 sigmas swapped in (everything else in HeunDiscreteScheduler.step follows the sample's dtype), the
    # two are the same float64 computation in a different order: measured <= 7e-12 (|xbar| ~ 500 at sigma_max = 157:
    # a few ulp of that, 1e-13 each, amplified like the rounding in the float32 test below); asserted 1e-9.
    # Same number of model calls: 2 steps - 1.
    model = eps_model(mixture_2d(), s64) if model_name == "closed_form" else PerturbedMLP(s64).double()
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=F64)
    tau = sub_sequence(s64, steps, spacing)
    ours = heun_sample(model, x_T, s64, steps=steps, spacing=spacing, disable=True)
    theirs, calls = diffusers_heun(model, x_T, tau, schedule64=s64)
    assert calls == nfe("heun", steps) == 2 * steps - 1
    assert (ours - theirs).abs().max().item() < 1e-9


def diffusers_euler(model, x_T, tau, timestep_spacing):
    """The EulerDiscreteScheduler loop (scale_model_input, model, step) on our sub-sequence, from
    x_T * init_noise_sigma. Like Heun it works on xbar; with custom timesteps, timestep_spacing only decides
    init_noise_sigma."""
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                                 beta_end=0.02, prediction_type="epsilon",
                                                 timestep_spacing=timestep_spacing)
    scheduler.set_timesteps(timesteps=tau[::-1])
    x = x_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), torch.full((x.shape[0],), int(t)))
            x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("model_name", ["closed_form", "mlp"])
def test_ddim_is_diffusers_euler_only_with_the_vp_start_scale(s32, model_name):
    # DDIM at eta = 0 is Euler's method in sigma for xbar (DDIM Eq. 13), i.e. EulerDiscreteScheduler on the same
    # integer timesteps -- provided the start is xbar = x_T / sqrt(alpha_bar) = x_T sqrt(sigma_max^2 + 1), which
    # init_noise_sigma gives only for timestep_spacing="leading". Its step() casts the sample to float32 like the DPM
    # solver's: measured <= 2.0e-6 (1 to 50 steps, both models); asserted 5e-5 as in the DPM parity test.
    # DEVIATION: with the default "linspace" the start is x_T sigma_max (see the Heun test below), too small by
    # 1 - sigma / sqrt(sigma^2 + 1) = 1.4e-4 at code 900 (10 steps: measured gap 5.6e-4 closed form, 3.6e-4 MLP);
    # a 1-step run starts at code 0 (sigma = 0.01) and scales N(0, I) noise by 0.01, not 1.00005 (measured gap 3.1).
    model = eps_model(mixture_2d(), s32) if model_name == "closed_form" else PerturbedMLP(s32).double()
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=F64)
    for steps in (1, 2, 10, 50):
        tau = timesteps(T, steps)
        ours = ddim_sample(model, x_T, s32, steps=steps, disable=True)
        assert (ours - diffusers_euler(model, x_T, tau, "leading")).abs().max().item() < 5e-5
        default_gap = (ours - diffusers_euler(model, x_T, tau, "linspace")).abs().max().item()
        if steps == 1:
            assert default_gap > 1
        if steps == 10:
            assert default_gap > 1e-4


def test_heun_float32_sigmas_gap(s32):
    # The everyday configuration (their float32 sigmas and init_noise_sigma, our float32 schedule, float64 samples):
    # the gap is float32 rounding of sigma (~6e-8 relative) on |xbar| ~ sigma_max |x_T| ~ 500 at the start, which
    # the flow then contracts: measured 1.8e-7, 3.3e-7, 2.1e-7 at 10, 20, 40 karras steps; asserted 1e-5. With very
    # few steps it is larger (measured 1.1e-3 at 2 steps, 8e-5 at 5): the corrector multiplies the model's
    # sensitivity at sigma(code 0) by the whole step (sigma_max / 2 = 79). Hence parity above uses float64 sigmas.
    model = eps_model(mixture_2d(), s32)
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=F64)
    for steps in (10, 20, 40):
        tau = karras_timesteps(s32, steps)
        gap = (heun_sample(model, x_T, s32, steps=steps, disable=True) - diffusers_heun(model, x_T, tau)[0]).abs().max()
        assert gap.item() < 1e-5


# ---------------------------------------------------------------- deviations of diffusers from the papers, pinned

def test_dpmsolver_default_spacing_never_reaches_code_0(s64):
    # DEVIATION: DPMSolverMultistepScheduler's default timestep_spacing="linspace" takes round(linspace(0, T-1, N+1))
    # and drops the 0 (set_timesteps): with N = 10 it visits 999, 899, ..., 100 and then jumps from code 100
    # (sigma = 0.34) straight to sigma = 0 with one first-order step, i.e. it returns the data prediction at code 100.
    # The papers' discrete-time solver ends at the first training timestep, code 0 (the authors' code maps
    # n = 0..N-1 to t = (n + 1) / N and solves from T = 1 to t_0 = 1e-3), as our sub-sequences do. On N(mu, s^2 I)
    # that final prediction
    # mu + s^2 / (s^2 + sigma^2) (xbar - mu) shrinks the spread to s^2 / sqrt(s^2 + sigma^2) = 0.41 instead of
    # s = 0.5: measured sd 0.403 over 4096 samples (its standard error 0.41 / sqrt(2 * 4096) = 0.0045, plus the
    # solver's error before code 100); asserted 0.38..0.44.
    model = eps_model(GaussianMixture.single(MU, S**2 * torch.eye(2, dtype=F64)), s64)
    x_T = torch.randn(4096, 2, generator=_gen(0), dtype=F64)
    seen = []
    theirs, scheduler = diffusers_dpmpp_2m(lambda x, t: seen.append((x, t)) or model(x, t), x_T, None)
    assert scheduler.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    x_100, t_100 = seen[-1]
    a = s64.alpha_bar[100].item()
    x0_at_100 = (x_100 - math.sqrt(1 - a) * model(x_100, t_100)) / math.sqrt(a)
    assert (theirs - x0_at_100).abs().max().item() < 1e-5  # float32 rounding, as in the parity test
    sigma2 = (1 - a) / a
    assert S**2 / math.sqrt(S**2 + sigma2) == pytest.approx(0.4125, abs=1e-3)
    assert 0.38 < theirs.std(0).mean().item() < 0.44


def test_dpmsolver_lower_order_final_switches_at_15_steps(monkeypatch):
    # DEVIATION: DPM-Solver++ Algorithm 2 is second order on every step after the first. With final_sigmas_type=
    # "sigma_min" (the last level is sigma(code 0), not 0) diffusers makes the last step first order only when
    # there are fewer than 15 steps (step(): "lower_order_final and len(self.timesteps) < 15"); the authors' code
    # uses "steps < 10". So 14 steps take two first-order steps (first and last), 15 steps one.
    # (With final_sigmas_type="zero", our setting, the last step is always first order, as it must be at sigma = 0.)
    calls = []
    original = diffusers.DPMSolverMultistepScheduler.dpm_solver_first_order_update

    def counted(self, *args, **kwargs):
        calls.append(self.step_index)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.DPMSolverMultistepScheduler, "dpm_solver_first_order_update", counted)
    model = lambda x, t: 0.1 * x  # noqa: E731  (any eps-like model; only the update's order is counted)
    x_T = torch.randn(4, 2, generator=_gen(0))
    for steps, first_order_at in ((14, [0, 13]), (15, [0])):
        calls.clear()
        diffusers_dpmpp_2m(model, x_T, None, final_sigmas_type="sigma_min", num_inference_steps=steps)
        assert calls == first_order_at


def test_dpmsolver_karras_sigmas_do_not_match_their_rounded_timesteps(s32):
    # DEVIATION: with use_karras_sigmas=True the DPM solver keeps the Karras sigmas of EDM Eq. (5) for its update but
    # hands the model round(t) (linear schedule; set_timesteps: "timesteps.round()"), whose own sigma differs: the
    # model is asked about a noise level the sample is not at, by up to 1.3% in sigma at 10 steps (code 18).
    # karras_timesteps rounds the same way (nearest log sigma) but then uses the rounded timestep's own sigma.
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                                      use_karras_sigmas=True)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps.tolist()
    assert t == karras_timesteps(s32, 10)[::-1]
    own = ((1 - s32.alpha_bar[t]) / s32.alpha_bar[t]).sqrt()
    mismatch = ((own - scheduler.sigmas[:-1]).abs() / scheduler.sigmas[:-1]).max().item()
    assert 5e-3 < mismatch < 3e-2  # measured 0.0133; float32 rounding alone would be ~1e-7


def test_heun_karras_sigmas_give_non_integer_timesteps(s32):
    # DEVIATION: HeunDiscreteScheduler(use_karras_sigmas=True) maps each Karras sigma to a fractional timestep
    # (log-sigma interpolation, _sigma_to_t, not rounded) and passes it to the model: 936.92, 863.83, ... A network
    # trained on integer t (DDPM) never saw these; EDM itself conditions on continuous sigma. Rounded, they are
    # exactly karras_timesteps (nearest log sigma), which our sampler uses together with their own sigmas.
    scheduler = diffusers.HeunDiscreteScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                                use_karras_sigmas=True)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[::2].flip(0)  # interleaved t_0, t_1, t_1, ...: every other one, increasing
    assert (t - t.round()).abs().max().item() > 0.1  # measured 0.36 (18.31, 102.17, ..., 936.92)
    assert t.round().long().tolist() == karras_timesteps(s32, 10)


def test_heun_initial_noise_scale_depends_on_timestep_spacing():
    # DEVIATION: init_noise_sigma is sigma_max for "linspace"/"trailing" (EDM Algorithm 1 literally: x_0 ~ N(0,
    # sigma_max^2 I), right only when sigma_max >> 1) but sqrt(sigma_max^2 + 1) for "leading", the VP-consistent
    # 1 / sqrt(alpha_bar) that maps an N(0, I) x_T to xbar. With the linear schedule (sigma_max = 157.4) the two
    # differ by a factor 1 + 2e-5, with a schedule ending at small sigma_max by much more; our heun_sample always
    # uses 1 / sqrt(alpha_bar) of its start level.
    scales = {}
    for spacing in ("linspace", "leading", "trailing"):
        scheduler = diffusers.HeunDiscreteScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                                    timestep_spacing=spacing)
        scheduler.set_timesteps(timesteps=[999, 500, 0])
        scales[spacing] = float(scheduler.init_noise_sigma)
        sigma_max = scheduler.sigmas.max().item()
    assert scales["linspace"] == scales["trailing"] == pytest.approx(sigma_max, rel=1e-7)
    assert scales["leading"] == pytest.approx(math.sqrt(sigma_max**2 + 1), rel=1e-7)


def test_dpmsolver_step_rounds_float64_samples_to_float32(s64):
    # DEVIATION (numerical): DPMSolverMultistepScheduler.step casts the sample to float32 (step(): "Upcast to avoid
    # precision issues"), so even with float64 sigmas swapped in and a float64 model the loop is float32-exact only:
    # measured gap 2.1e-6 at 10 steps (float32 ulp of |x| ~ 3 is 2.4e-7 per step, amplified as in the parity test),
    # where the same swap makes the Heun loop agree to 1e-11. Asserted between 1e-9 (not float64 arithmetic) and
    # 5e-5 (rounding, not algebra: the parity tolerance).
    model = eps_model(mixture_2d(), s64)
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=F64)
    tau = timesteps(T, 10)
    config = dict(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", beta_schedule="linear",
                  beta_start=1e-4, beta_end=0.02, num_train_timesteps=T)
    scheduler = diffusers.DPMSolverMultistepScheduler(**config)
    scheduler.set_timesteps(timesteps=tau[::-1])
    a = s64.alpha_bar[tau[::-1]]
    scheduler.sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=F64)])
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, torch.full((256,), int(t))), t, x).prev_sample
    gap = (x - dpmpp_2m_sample(model, x_T, s64, steps=10, spacing="uniform", disable=True)).abs().max().item()
    assert x.dtype == F64 and 1e-9 < gap < 5e-5


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 5-step swiss-roll DDPM, trained in-process (the samplers need a checkpoint, not a good one)."""
    work = tmp_path_factory.mktemp("solvers_cli")
    train(train_config("swissroll", steps=5), work / "run", progress=False)
    return work


def test_solvers_sample_writes_a_png_and_reports_the_nfe(ckpt, tmp_path):
    result = refimpl("solvers", "sample", "--ckpt", str(ckpt / "run"), "--sampler", "heun", "--steps", "10",
                     "--n", "50", "--out", "s.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "19 model evaluations" in result.stdout and "karras" in result.stdout


def test_sample_from_checkpoint_same_noise_for_every_sampler(ckpt):
    # one seeded CPU generator draws x_T: with S <= 2, DPM-Solver++(2M) is DDIM (first order only) on the same x_T
    a = sample_from_checkpoint(ckpt / "run", 16, sampler="dpmpp-2m", steps=2, spacing="uniform", seed=3, disable=True)
    b = sample_from_checkpoint(ckpt / "run", 16, sampler="ddim", steps=2, seed=3, disable=True)
    assert a.shape == (16, 2) and (a - b).abs().max().item() < 1e-5  # float32 network: two forms, rounding apart
    with pytest.raises(LineageError, match="unknown sampler"):
        sample_from_checkpoint(ckpt / "run", 4, sampler="euler")


@pytest.mark.parametrize("args, fragments", [
    (["--steps", "0"], ["--steps", "positive"]),
    (["--sampler", "heun", "--steps", "500"], ["karras", "at most 78", "500"]),
    (["--sampler", "euler"], ["--sampler", "euler"]),
    (["--ckpt", "nowhere"], ["checkpoint not found", "nowhere"]),
    (["--out", "s.jpg"], [".png"]),
])
def test_solvers_sample_refuses_bad_input_in_one_line(ckpt, args, fragments):
    assert_refused(refimpl("solvers", "sample", *with_defaults(args, ckpt="run", out="s.png"), cwd=ckpt), *fragments)
