"""Consistency models (refimpl.consistency) against the exact consistency function of a Gaussian, diffusers'
LCMScheduler, the command line, and the cached quick distillation (learning)."""

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import consistency as cm
from refimpl.ddim import ddim_step
from refimpl.nets import MLPDenoiser
from refimpl.schedules import Schedule, linear_betas

torch.set_num_threads(1)

F64 = torch.float64
MEAN, STD = 0.7, 0.3  # 1-D data N(MEAN, STD^2): every marginal is Gaussian, so the PF-ODE is known exactly


def _schedule(dtype=F64):
    return Schedule(linear_betas(1000).to(dtype))


def _exact_eps(schedule):
    """E[eps | x_t] of the Gaussian data: sqrt(1 - abar) (x_t - sqrt(abar) MEAN) / (abar STD^2 + 1 - abar)."""
    def eps(x, t):
        abar = schedule.alpha_bar[t].reshape(-1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * MEAN) / (abar * STD**2 + 1 - abar)
    return eps


def _lcm_scheduler(prediction="epsilon"):
    return diffusers.LCMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                                  clip_sample=False, prediction_type=prediction, original_inference_steps=cm.GRID)


# --- closed form --------------------------------------------------------------------------------------------

def test_exact_gaussian_meets_the_boundary_and_is_constant_along_the_exact_ode():
    """f(x, 0) = x; and DDIM with the exact eps, DDIM's first-order solution of the PF-ODE, carries x_999 to
    f(x_999, 999): the endpoint error shrinks with the step size at first order (1000 steps against 100 steps:
    ratio ~10; asked > 5), so the limit of the exact ODE is f."""
    schedule = _schedule()
    x = torch.linspace(-3, 3, 41, dtype=F64).reshape(-1, 1)
    # f(x, 0) = m + sd (x - m) / sd: float64 rounding only (a few ulp of |x| <= 3)
    torch.testing.assert_close(cm.exact_gaussian(x, torch.zeros(41, dtype=torch.long), schedule, MEAN, STD), x,
                               rtol=0, atol=1e-14)
    target = cm.exact_gaussian(x, torch.full((41,), 999), schedule, MEAN, STD)
    eps = _exact_eps(schedule)
    errors = {}
    for steps in (100, 1000):
        ts = list(range(999, -1, -1000 // steps)) + [0]
        y = x
        for t, s in zip(ts, ts[1:]):
            y = ddim_step(y, eps(y, torch.full((41,), t)), schedule.alpha_bar[t], schedule.alpha_bar[s], 0.0, None)
        errors[steps] = (y - target).abs().max().item()
    assert errors[1000] < errors[100] / 5, errors


def test_boundary_scalings_are_lcm_schedulers_and_pin_its_near_pure_x0():
    """c_skip(0) = 1 and c_out(0) = 0 exactly (the boundary); on the grid the scalings equal diffusers'
    get_scalings_for_boundary_condition_discrete, and with LCM's factor 10 the smallest grid point, t = 19,
    already has c_skip = 0.25 / (190^2 + 0.25) = 6.9e-6: on its grid f is x0_theta to within 7e-6 of x_t."""
    c_skip, c_out = cm.boundary_scalings(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    scheduler = _lcm_scheduler()
    for t in cm.grid().tolist():
        ours = [v.item() for v in cm.boundary_scalings(torch.tensor([t]))]
        assert ours == pytest.approx(scheduler.get_scalings_for_boundary_condition_discrete(t), rel=1e-12)
    assert cm.boundary_scalings(torch.tensor([19]))[0].item() == pytest.approx(0.25 / (190**2 + 0.25), rel=1e-12)
    assert cm.boundary_scalings(torch.tensor([19]))[0].item() < 7e-6


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 50])
def test_timesteps_are_lcm_schedulers(steps):
    scheduler = _lcm_scheduler()
    scheduler.set_timesteps(steps)
    assert cm.inference_timesteps(steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_sampler_is_lcm_schedulers_loop(prediction):
    """The same network, the same x_T and the same generator: our multistep consistency sampling and the
    LCMScheduler loop agree to float32 rounding (a few ulp of O(1) values through four steps: 1e-5)."""
    net = MLPDenoiser(data_dim=2, hidden=32, depth=2).eval()
    schedule = _schedule(torch.float32)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = cm.consistency_sample(net, x_T, schedule, cm.inference_timesteps(4), torch.Generator().manual_seed(1),
                                     prediction)
        scheduler, generator, x = _lcm_scheduler(prediction), torch.Generator().manual_seed(1), x_T
        scheduler.set_timesteps(4)
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.repeat(64)), t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


def test_distillation_target_at_the_last_grid_point_is_the_teachers_step_itself():
    """The pair (19 -> 0): the target f(x_hat_0, 0) is x_hat_0 exactly (c_out(0) = 0), one DDIM step of the
    teacher, so a student that returns the teacher's chain (teacher_solution) has zero loss there; and the chain
    from 999 makes 50 DDIM steps, 999, 979, ..., 19, 0."""
    schedule, eps = _schedule(), _exact_eps(_schedule())
    x = torch.linspace(-2, 2, 9, dtype=F64).reshape(-1, 1)
    one = cm.teacher_solution(eps, x, 19, schedule)
    by_hand = ddim_step(x, eps(x, torch.full((9,), 19)), schedule.alpha_bar[19], schedule.alpha_bar[0], 0.0, None)
    assert torch.equal(one, by_hand)
    assert torch.equal(cm.consistency_function(lambda x, t: one, one, torch.zeros(9, dtype=torch.long), schedule,
                                               "sample"), one)
    calls = []
    cm.teacher_solution(lambda x, t: calls.append(int(t[0])) or eps(x, t), x, 999, schedule)
    assert calls == cm.grid().flip(0).tolist() and len(calls) == 50


# --- command line ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency")
    result = refimpl("ddpm", "train", "--data", "swissroll", "--steps", "3", "--out", "teacher", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr
    result = refimpl("consistency", "distill", "--teacher", "teacher", "--steps", "3", "--out", "cm", "--quiet",
                     cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_cli_distils_resumes_and_samples(run):
    """A rerun of a finished distillation resumes it and changes nothing; then 1- and 4-call samples."""
    before = (run / "cm" / "config.json").read_bytes()
    result = refimpl("consistency", "distill", "--teacher", "teacher", "--steps", "3", "--out", "cm", "--quiet",
                     cwd=run)
    assert result.returncode == 0, result.stderr
    assert (run / "cm" / "config.json").read_bytes() == before
    for steps in ("1", "4"):
        result = refimpl("consistency", "sample", "--ckpt", "cm", "--n", "16", "--steps", steps,
                         "--out", f"s{steps}.png", "--quiet", cwd=run)
        assert result.returncode == 0, result.stderr
        assert (run / f"s{steps}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["consistency", "sample", "--ckpt", "cm", "--steps", "0", "--out", "x.png"], "steps"),
    (["consistency", "sample", "--ckpt", "cm", "--steps", "51", "--out", "x.png"], "1..50"),
    (["consistency", "sample", "--ckpt", "missing", "--out", "x.png"], "not found"),
    (["consistency", "sample", "--ckpt", "teacher", "--out", "x.png"], "consistency"),
    (["consistency", "distill", "--teacher", "missing", "--out", "d"], "not found"),
    (["consistency", "distill", "--teacher", "cm", "--out", "d"], "ddpm"),
])
def test_cli_refuses_bad_input_in_one_line(run, args, fragment):
    assert_refused(refimpl(*args, cwd=run), fragment)


# --- learning: the cached quick distillation, shared with the consistency-models page's figures ---------------

@pytest.fixture(scope="module")
def compared():
    from figures.zoo.consistency import compare

    return compare("quick", torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)))


@pytest.mark.slow
def test_one_call_lands_nearer_the_teachers_chain_than_one_teacher_call(compared):
    """Distillation's claim, per sample: one call of the student lands within half the distance from the teacher's
    50-call DDIM chain (what it was taught) that one DDIM call of the teacher itself lands."""
    chain = compared[("chain", cm.GRID)]
    student, teacher = ((compared[(name, 1)] - chain).norm(dim=1).mean().item() for name in ("cm", "ddim"))
    assert student < teacher / 2, (student, teacher)


@pytest.mark.slow
def test_two_calls_pass_the_learning_check_where_the_teachers_samplers_fail(compared):
    """At NFE 2 the consistency model passes the learning check of the 2-D toys (tests/learning.py); its teacher
    with DDIM and with DPM-Solver++(2M), at the same two calls, does not."""
    from learning import assert_near_the_data

    assert_near_the_data(compared[("cm", 2)])
    for name in ("ddim", "dpmpp"):
        with pytest.raises(AssertionError):
            assert_near_the_data(compared[(name, 2)])


@pytest.mark.slow
def test_at_every_nfe_the_student_beats_its_teachers_samplers_and_from_two_calls_its_chain(compared):
    """Sliced Wasserstein to the data (tests/learning.py) at NFE 1, 2, 4, 8: the consistency model is nearer than its
    teacher with DDIM or DPM-Solver++(2M) at the same calls. From two calls on it is also nearer than the 50-call
    ODE chain it was distilled from: multistep consistency sampling renoises at every step, a stochastic sampler,
    and so is the teacher's own Algorithm 2 (1000 steps), which beats that chain too: why a student can beat its
    teacher's ODE here."""
    from figures.zoo.consistency import NFE
    from learning import distances

    d = {key: distances(x)[0] for key, x in compared.items()}
    chain = d[("chain", cm.GRID)]
    for n in NFE:
        assert d[("cm", n)] < min(d[("ddim", n)], d[("dpmpp", n)]), (n, d)
        assert n == 1 or d[("cm", n)] < chain, (n, d)
    assert d[("ddpm", 1000)] < chain, d
