"""Flow matching / rectified flow (refimpl.flow) against closed forms, DDPM's exact eps and DDIM, diffusers'
FlowMatchEulerDiscreteScheduler, the command line, and the cached quick flows (learning)."""

import math

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import flow
from refimpl.ddim import ddim_sample
from refimpl.mixture import GaussianMixture, eps_model, mixture_2d
from refimpl.schedules import Schedule, linear_betas, timesteps

torch.set_num_threads(1)

F64 = torch.float64
TIMES = (0.0, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _full(t, n):
    return torch.full((n,), t, dtype=F64)


# --- closed form --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", TIMES[1:-1])
def test_a_velocity_is_also_an_x_and_an_eps_prediction(t):
    # x_t = (1 - t) x + t eps and v = eps - x: x = x_t - t v and eps = x_t + (1 - t) v are exact algebra, so float64
    # rounding of a few operations on O(1) numbers; velocity_from_eps divides by 1 - t >= 1e-3 (1000x the rounding).
    x, eps = torch.randn(256, 2, generator=_gen(0), dtype=F64), torch.randn(256, 2, generator=_gen(1), dtype=F64)
    tt = _full(t, 256)
    x_t, v = flow.interpolate(x, eps, tt), flow.target(x, eps)
    assert (flow.x_from_velocity(x_t, v, tt) - x).abs().max() < 1e-12
    assert (flow.eps_from_velocity(x_t, v, tt) - eps).abs().max() < 1e-12
    assert (flow.velocity_from_eps(x_t, eps, tt) - v).abs().max() < 1e-10


def _posterior_mean(mixture: GaussianMixture, z: torch.Tensor, t: float) -> torch.Tensor:
    """E[x | x_t = z] computed from the components, independently of the score: for component k, x_t = a x + t eps
    (a = 1 - t) has mean a mu_k and covariance C_k = a^2 S_k + t^2 I, and E[x | x_t, k] = mu_k + a S_k C_k^-1
    (z - a mu_k); the posterior weights are the responsibilities of the noised mixture."""
    a = 1 - t
    noised = mixture.noised(a, t)
    r = noised.responsibilities(z)  # (N, K)
    out = torch.zeros_like(z)
    for k in range(mixture.K):
        gain = a * mixture.covs[k] @ torch.linalg.inv(noised.covs[k])
        out += r[:, k:k + 1] * (mixture.means[k] + (z - a * mixture.means[k]) @ gain.T)
    return out


@pytest.mark.parametrize("t", TIMES)
def test_exact_velocity_is_the_posterior_mean_of_eps_minus_x(t):
    # v*(z, t) = E[eps - x | x_t = z] = (z - E[x | z]) / t: the module goes through the score (Tweedie), the test
    # through each component's Gaussian conditioning; both float64, O(1) values: 1e-10. At t = 0, v* = -z
    # (E[eps | x] = 0); at t = 1, z - E[x].
    mixture = mixture_2d()
    z = torch.randn(300, 2, generator=_gen(2), dtype=F64) * 2
    v = flow.exact_velocity(mixture)(z, _full(t, 300))
    if t == 0:
        expected = -z
    else:
        expected = (z - _posterior_mean(mixture, z, t)) / t
    assert (v - expected).abs().max() < 1e-10
    if 0 < t < 1:  # the score form of the same field (the probability-flow drift of this path)
        score = mixture.noised(1 - t, t).score(z)
        assert (flow.velocity_from_score(z, score, _full(t, 300)) - v).abs().max() < 1e-9


@pytest.mark.parametrize("step", (0, 10, 500, 900, 999))
def test_one_model_three_parameterisations(step):
    # The exact velocity run as DDPM's eps-model through as_eps_model is DDPM's exact eps* = -sigma score_t
    # (refimpl.mixture.eps_model) at the same code timestep, to float64 rounding; and as a v-model (refimpl.vpred)
    # it predicts the same x as the velocity does: vpred's x = alpha z - sigma v equals x_t - t v at the matching
    # straight-path point (v_from_eps divides by alpha >= 0.0064: 1e-8).
    from refimpl import vpred

    mixture = mixture_2d()
    schedule = Schedule(linear_betas(1000, dtype=F64))
    velocity = flow.exact_velocity(mixture)
    z, tt = torch.randn(300, 2, generator=_gen(3), dtype=F64) * 2, torch.full((300,), step)
    eps = flow.as_eps_model(velocity, schedule)(z, tt)
    assert (eps - eps_model(mixture, schedule)(z, tt)).abs().max() < 1e-10
    alpha, sigma = schedule.alpha_bar[step].sqrt(), (1 - schedule.alpha_bar[step]).sqrt()
    t = _full(float(sigma / (alpha + sigma)), 300)
    x_t = z / (alpha + sigma)
    x_flow = flow.x_from_velocity(x_t, velocity(x_t, t), t)
    x_vpred = vpred.x0_from_v(z, vpred.v_from_eps(z, eps, tt, schedule), tt, schedule)
    assert (x_flow - x_vpred).abs().max() < 1e-8


def _matched_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """The straight-path times of DDIM's visits: t_i = sigma_i / (alpha_i + sigma_i), then t = 0 (alpha_bar = 1)."""
    alpha_bar = schedule.alpha_bar[timesteps(schedule.T, steps)].flip(0).tolist() + [1.0]
    return torch.tensor([math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a)) for a in alpha_bar], dtype=F64)


@pytest.mark.parametrize("steps", (1, 5, 50))
def test_ddim_is_euler_on_the_straight_path(steps):
    # DDIM (eta = 0) on as_eps_model(v) from x_T equals Euler on v from x_T / (alpha_T + sigma_T) over the matched
    # times: the two updates are the same map in different coordinates (refimpl.flow.euler_sample's docstring).
    # Exact algebra, so float64 rounding accumulated over <= 50 steps: 1e-12. Any velocity model: the exact one,
    # and a random network in float32 (rounding 1e-7 relative, 1e-5 after the steps).
    for velocity, dtype, tol in ((flow.exact_velocity(mixture_2d()), F64, 1e-12), (_random_net(), torch.float32, 1e-5)):
        schedule = Schedule(linear_betas(1000, dtype=dtype))
        grid = _matched_grid(schedule, steps)
        a = schedule.alpha_bar[timesteps(1000, steps)[-1]].item()  # x_T is taken to be at DDIM's first timestep
        x_T = torch.randn(400, 2, generator=_gen(5), dtype=F64).to(dtype)
        ddim = ddim_sample(flow.as_eps_model(velocity, schedule), x_T, schedule, steps=steps, disable=True)
        euler = flow.euler_sample(velocity, x_T / (math.sqrt(a) + math.sqrt(1 - a)), grid)
        assert (ddim - euler).abs().max() < tol


def _random_net():
    from refimpl.nets import MLPDenoiser

    torch.manual_seed(0)
    return flow.network(MLPDenoiser(data_dim=2, hidden=32, depth=2, time_dim=16))


def test_euler_converges_to_the_exact_flow_map_of_a_gaussian_at_first_order():
    # Data N(mu, s^2 I): x_t ~ N((1 - t) mu, r(t)^2 I) with r(t)^2 = (1 - t)^2 s^2 + t^2, and the ODE of v* maps
    # eps (t = 1) to mu + s eps (t = 0): the flow keeps the standardised coordinate (x_t - (1 - t) mu) / r(t) fixed.
    # Euler's global error is first order: doubling the steps halves it (ratio within 1.8..2.2 once h is small),
    # so the limit is the exact map.
    mu, s = torch.tensor([1.5, -0.5], dtype=F64), 0.3
    gaussian = GaussianMixture.single(mu, s * s * torch.eye(2, dtype=F64))
    eps = torch.randn(200, 2, generator=_gen(6), dtype=F64)
    errors = [(flow.euler_sample(flow.exact_velocity(gaussian), eps, flow.time_grid(n)) - (mu + s * eps)).abs().max()
              for n in (100, 200, 400)]
    assert errors[-1] < 1e-2  # first order: about 1.9 / n
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.8 < coarse / fine < 2.2, errors


def _rk4_log_density(velocity, z: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the flow ODE from t = 1 to 0 with RK4 together with d log p / dt = -div v (instantaneous change of
    variables): returns (x_0, log p_0(x_0)) for z ~ N(0, I) at t = 1. The 2-D divergence by autograd."""
    def field(state, t):
        x = state[:, :2].detach().requires_grad_(True)
        v = velocity(x, _full(t, x.shape[0]))
        div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
        return torch.cat([v.detach(), -div.detach()[:, None]], 1)

    state = torch.cat([z, (-0.5 * z.pow(2).sum(1) - math.log(2 * math.pi))[:, None]], 1)
    h = -1.0 / steps
    for i in range(steps):
        t = 1 + i * h
        k1 = field(state, t)
        k2 = field(state + h / 2 * k1, t + h / 2)
        k3 = field(state + h / 2 * k2, t + h / 2)
        k4 = field(state + h * k3, t + h)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state[:, :2], state[:, 2]


@pytest.mark.slow
def test_exact_velocity_carries_the_gaussian_to_the_data_density():
    # The ODE of v* pushes N(0, I) forward to the data: following each point's log density along the flow
    # (instantaneous change of variables), the density at the end point is the data's exact log p there.
    # For a correlated Gaussian the field is smooth and RK4's error is fourth order: halving h divides it by ~16
    # (accept 10..22), so the limit is the exact density. For the 5-component mixture (components as narrow as
    # 0.1, a stiffer field near t = 0) the error falls less regularly; at 160 steps it must be below 1e-5 nats,
    # and fall with every halving of h.
    z = torch.randn(64, 2, generator=_gen(7), dtype=F64)
    gaussian = GaussianMixture.single([1.0, -0.5], [[0.3, 0.1], [0.1, 0.2]])
    for data, check in ((gaussian, "order"), (mixture_2d(), "accuracy")):
        errors = []
        for steps in (40, 80, 160):
            x0, log_p = _rk4_log_density(flow.exact_velocity(data), z, steps)
            errors.append((log_p - data.log_prob(x0)).abs().max().item())
        assert errors[0] > errors[1] > errors[2], errors
        if check == "order":
            assert 10 < errors[0] / errors[1] < 22 and 10 < errors[1] / errors[2] < 22, errors
        else:
            assert errors[-1] < 1e-5, errors


def test_conditional_and_marginal_flow_matching_losses_differ_by_a_constant():
    # Flow Matching, Theorem 2: L_CFM(f) = L_FM(f) + C with C independent of f, because E[eps - x | x_t] = v*. So
    # for any field f = v* + delta, L_CFM(f) - L_FM(f) - L_CFM(v*) = -2 E<delta, (eps - x) - v*>, which has mean
    # zero. Monte Carlo over 200k draws: the sample mean must lie within 4 standard errors of 0, while the loss
    # gap it would otherwise hide, L_FM(f) = E|delta|^2, is many standard errors above 0.
    mixture = mixture_2d()
    n, g = 200_000, _gen(8)
    x = mixture.sample(n, g)[0]
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    # t on 99 levels (0.01..0.99) so that exact_velocity batches by level; the identity holds for any law of t
    t = torch.randint(1, 100, (n,), generator=g).to(F64) / 100
    x_t, u = flow.interpolate(x, eps, t), flow.target(x, eps)
    v_star = flow.exact_velocity(mixture)(x_t, t)
    delta = 0.3 * x_t.flip(1) + 0.2 * t[:, None] - 0.1
    cross = -2 * (delta * (u - v_star)).sum(1)
    gap = ((v_star + delta - u).pow(2).sum(1) - delta.pow(2).sum(1) - (v_star - u).pow(2).sum(1))
    assert (gap - cross).abs().max() < 1e-9  # the algebra of the decomposition, per sample
    se = cross.std() / math.sqrt(n)
    assert cross.mean().abs() < 4 * se, (cross.mean().item(), se.item())
    assert delta.pow(2).sum(1).mean() > 20 * se  # the gap L_FM(f) itself is far outside that band


def test_straightness_is_zero_exactly_for_straight_constant_speed_paths():
    # A constant field moves every point on a straight line at constant speed: S = 0 up to rounding. The exact
    # mixture field bends its paths (it points at the posterior mean, which moves): S > 0, by far (measured 1.42 for
    # these 500 paths; the bound only has to show the estimate is not identically zero).
    noise = torch.randn(500, 2, generator=_gen(9), dtype=F64)
    grid = flow.time_grid(50)
    constant = lambda x, t: torch.ones_like(x) * torch.tensor([0.5, -2.0], dtype=F64)  # noqa: E731
    assert flow.straightness(flow.euler_sample(constant, noise, grid, trajectory=True), grid) < 1e-20
    path = flow.euler_sample(flow.exact_velocity(mixture_2d()), noise, grid, trajectory=True)
    assert flow.straightness(path, grid) > 0.1


def test_one_euler_step_of_the_exact_first_flow_lands_every_sample_on_the_data_mean():
    # v*(z, 1) = z - E[x] (at t = 1, x_t is pure noise and tells nothing about x), so one Euler step from t = 1 to
    # 0 gives z - v*(z, 1) = E[x] for every z: the first flow cannot sample in one step. Float64 rounding.
    mixture = mixture_2d()
    x = flow.euler_sample(flow.exact_velocity(mixture), torch.randn(100, 2, generator=_gen(12), dtype=F64),
                          flow.time_grid(1))
    assert (x - mixture.mean()).abs().max() < 1e-12


# --- parity with diffusers' FlowMatchEulerDiscreteScheduler --------------------------------------------------

@pytest.mark.parametrize("shift", (1.0, 3.0))
@pytest.mark.parametrize("steps", (1, 4, 25))
def test_diffusers_sigmas_passed_like_flux_are_our_shifted_uniform_grid(shift, steps):
    # With sigmas = linspace(1, 1/n, n) passed in (what the FLUX pipeline does), the scheduler shifts them,
    # s t / (1 + (s - 1) t), and appends 0: our time_grid(n, shift), to float32 rounding.
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / steps, steps).tolist())
    assert (scheduler.sigmas.double() - flow.time_grid(steps, shift)).abs().max() < 1e-6
    assert (scheduler.timesteps.double() - flow.TIME_SCALE * flow.time_grid(steps, shift)[:-1]).abs().max() < 1e-3


@pytest.mark.parametrize("shift", (1.0, 3.0))
def test_diffusers_euler_step_is_ours(shift):
    # scheduler.step(v, t, x) is x + (sigma_next - sigma) v; on the same grid and the same velocity field (the
    # exact one, in float32 like a pipeline) our sampler gives the same samples. scale_noise is the straight path.
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / 8, 8).tolist())
    velocity = flow.exact_velocity(mixture_2d())
    noise = torch.randn(300, 2, generator=_gen(10))
    x = noise.clone()
    for timestep in scheduler.timesteps:
        sigma = timestep / scheduler.config.num_train_timesteps
        x = scheduler.step(velocity(x, sigma.expand(x.shape[0])), timestep, x).prev_sample
    ours = flow.euler_sample(velocity, noise, scheduler.sigmas.double())
    assert (x - ours).abs().max() < 1e-5  # float32 rounding over 8 steps of O(1) values
    data = torch.randn(300, 2, generator=_gen(11))
    mixed = scheduler.scale_noise(data, scheduler.timesteps[2:3], noise)
    assert (mixed - flow.interpolate(data, noise, scheduler.sigmas[2].expand(300))).abs().max() < 1e-6


def test_diffusers_default_grid_wastes_a_step_and_shifts_its_end_twice():
    # Without sigmas (the Stable Diffusion 3 pipeline's default), set_timesteps(n) spaces n points from sigma_max
    # = 1 to sigma_min = the shifted 1/1000 and then shifts them again: n = 2 gives [1, 0.001, 0], one useful step
    # and one of 0.001; with shift 3 the last nonzero sigma is the shift applied twice to 1/1000, not once.
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(2)
    assert scheduler.sigmas.tolist() == pytest.approx([1.0, 0.001, 0.0], abs=1e-7)
    assert flow.time_grid(2).tolist() == [1.0, 0.5, 0.0]

    def shifted(t, s=3.0):
        return s * t / (1 + (s - 1) * t)

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    assert scheduler.sigmas[-2].item() == pytest.approx(shifted(shifted(0.001)), rel=1e-5)
    assert abs(scheduler.sigmas[-2].item() - shifted(0.001)) > 1e-3


# --- command line ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    result = refimpl("flow", "train", "--data", "swissroll", "--steps", "3", "--out", "run", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_cli_trains_reflows_and_samples(run):
    result = refimpl("flow", "reflow", "--parent", "run", "--steps", "2", "--pairs", "64", "--out", "run2",
                     "--quiet", cwd=run)
    assert result.returncode == 0, result.stderr
    for ckpt in ("run", "run2"):
        result = refimpl("flow", "sample", "--ckpt", ckpt, "--n", "16", "--steps", "2", "--shift", "3",
                         "--out", f"{ckpt}.png", "--quiet", cwd=run)
        assert result.returncode == 0, result.stderr
        assert (run / f"{ckpt}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["flow", "sample", "--ckpt", "run", "--steps", "0", "--out", "x.png"], "steps"),
    (["flow", "sample", "--ckpt", "run", "--shift", "0", "--out", "x.png"], "shift"),
    (["flow", "sample", "--ckpt", "missing", "--out", "x.png"], "not found"),
    (["flow", "reflow", "--parent", "missing", "--out", "r"], "not found"),
    (["ddpm", "sample", "--ckpt", "run", "--out", "x.png"], "flow"),  # its network predicts a velocity, not eps
])
def test_cli_refuses_bad_input_in_one_line(run, args, fragment):
    assert_refused(refimpl(*args, cwd=run), fragment)


def test_config_differs_from_ddpm_only_in_the_path():
    from refimpl import ddpm

    config, reference = flow.train_config("swissroll", "quick"), ddpm.train_config("swissroll", "quick")
    assert config.pop("path") == "straight"
    assert config == {k: v for k, v in reference.items() if k not in ("schedule", "T")}


# --- learning: the cached quick flows, shared with the flow-matching page's figures -------------------------

@pytest.fixture(scope="module")
def quick_flows():
    from figures.zoo.flow import flows

    return flows("swissroll", "quick")


def _noise(n=2000):
    return torch.randn(n, 2, generator=_gen(0))


@pytest.mark.slow
def test_first_flow_learns_the_swiss_roll(quick_flows):
    """100 Euler steps of the quick first flow land near the data: the learning check of every 2-D toy model
    (tests/learning.py: sliced Wasserstein below the midpoint of the data-to-data floor and a moment-matched
    Gaussian)."""
    from learning import assert_near_the_data

    with torch.no_grad():
        assert_near_the_data(flow.euler_sample(quick_flows["flow"], _noise(), flow.time_grid(100)))


@pytest.mark.slow
def test_reflow_straightens_the_paths(quick_flows):
    """Rectified flow's claim: reflow makes the paths straighter. Straightness S of 100-step Euler paths from the
    same 2000 noise samples: the reflowed flow's S is less than a tenth of the first flow's."""
    grid = flow.time_grid(100)
    with torch.no_grad():
        s = {name: flow.straightness(flow.euler_sample(v, _noise(), grid, trajectory=True), grid)
             for name, v in quick_flows.items()}
    assert s["reflow"] < s["flow"] / 10, s


@pytest.mark.slow
def test_after_reflow_one_euler_step_samples_the_data_and_before_it_does_not(quick_flows):
    """One Euler step (NFE 1): the reflowed flow passes the learning check of the 2-D toys; the first flow fails
    it, farther from the data than the moment-matched Gaussian (its one step maps every sample near the data
    mean, see the closed-form test above)."""
    from learning import assert_near_the_data, distances

    with torch.no_grad():
        one = {name: flow.euler_sample(v, _noise(), flow.time_grid(1)) for name, v in quick_flows.items()}
    assert_near_the_data(one["reflow"])
    model, floor, gaussian = distances(one["flow"])
    assert model > gaussian, (model, floor, gaussian)
