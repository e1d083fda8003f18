"""v-prediction (Progressive Distillation, Sec. 4 / App. D) against closed forms, DDPM's eps-prediction and diffusers'
``prediction_type="v_prediction"`` in DDPMScheduler and DDIMScheduler, and the command line."""

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import ddpm, vpred
from refimpl.ddim import ddim_sample
from refimpl.ddpm import ddpm_sample, loss_simple, predict_x0
from refimpl.mixture import eps_model, mixture_2d
from refimpl.schedules import Schedule, linear_betas, q_sample

torch.set_num_threads(1)

F64 = torch.float64
T = 1000
TIMES = (0, 1, 10, 100, 500, 900, 990, 999)  # code timesteps, from alpha_bar ~ 1 to alpha_bar_T ~ 4e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def s64():
    return Schedule(linear_betas(T, dtype=F64))


def _batch(t: int, n: int = 256) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


@pytest.mark.parametrize("t", TIMES)
def test_conversions_recover_x0_and_eps(s64, t):
    # z = alpha x0 + sigma eps, v = alpha eps - sigma x0 is a rotation of (x0, eps) by phi = atan(sigma / alpha):
    # rotating back is exact algebra (alpha^2 + sigma^2 = 1), so float64 rounding of a few operations on O(1)
    # numbers: 1e-12 leaves 3-4 orders of margin.
    x0, eps = torch.randn(256, 2, generator=_gen(0), dtype=F64), torch.randn(256, 2, generator=_gen(1), dtype=F64)
    tt = _batch(t)
    z, v = q_sample(x0, tt, eps, s64), vpred.v_target(x0, eps, tt, s64)
    assert (vpred.x0_from_v(z, v, tt, s64) - x0).abs().max() < 1e-12
    assert (vpred.eps_from_v(z, v, tt, s64) - eps).abs().max() < 1e-12
    assert (vpred.v_from_eps(z, eps, tt, s64) - v).abs().max() < 1e-9  # divides by alpha >= 0.0064: 157x the rounding


@pytest.mark.parametrize("t", TIMES)
def test_exact_v_model_gives_the_exact_eps_and_x0_predictions(s64, t):
    # The closed-form eps* of the 2-D mixture, turned into v* = v_from_eps(eps*): the v-model's eps and x0 are
    # DDPM's eps* and its Eq. (15) x0 (predict_x0 divides by alpha: at t = 999 that multiplies rounding by 160).
    mixture = mixture_2d()
    eps_star = eps_model(mixture, s64)
    z, tt = torch.randn(256, 2, generator=_gen(2), dtype=F64) * 3, _batch(t)
    eps = eps_star(z, tt)
    v = vpred.v_from_eps(z, eps, tt, s64)
    assert (vpred.eps_model(lambda z_, t_: vpred.v_from_eps(z_, eps_star(z_, t_), t_, s64), s64)(z, tt) - eps
            ).abs().max() < 1e-9
    assert (vpred.x0_from_v(z, v, tt, s64) - predict_x0(z, tt, eps, s64)).abs().max() < 1e-9


@pytest.mark.parametrize("t", TIMES)
def test_v_loss_is_eps_loss_plus_x0_loss_and_snr_plus_one_weighted_x0_loss(s64, t):
    # eps_hat - eps = alpha (v_hat - v) and x_hat - x0 = -sigma (v_hat - v), so per element
    # (v_hat - v)^2 = (eps_hat - eps)^2 + (x_hat - x0)^2 = (1 + alpha^2 / sigma^2) (x_hat - x0)^2. Float64 rounding.
    x0, eps = torch.randn(64, 2, generator=_gen(3), dtype=F64), torch.randn(64, 2, generator=_gen(4), dtype=F64)
    tt = _batch(t, 64)
    z, v = q_sample(x0, tt, eps, s64), vpred.v_target(x0, eps, tt, s64)
    v_hat = v + 0.3 * torch.randn(v.shape, generator=_gen(5), dtype=F64)  # any prediction
    err_v = (v_hat - v) ** 2
    err_eps = (vpred.eps_from_v(z, v_hat, tt, s64) - eps) ** 2
    err_x0 = (vpred.x0_from_v(z, v_hat, tt, s64) - x0) ** 2
    snr = s64.alpha_bar[t] / (1 - s64.alpha_bar[t])
    assert (err_v - err_eps - err_x0).abs().max() < 1e-12
    assert (err_v - (1 + snr) * err_x0).abs().max() < 1e-9 * (1 + snr)


def test_the_amplification_quoted_on_the_ldm_page():
    # The page (and the learning test below) say the eps model's x0 at code t = 999 multiplies its noise error by
    # sigma / alpha ~ 157 on DDPM's linear schedule: sqrt((1 - alpha_bar) / alpha_bar) with alpha_bar = 4.04e-5.
    from refimpl.schedules import make_schedule

    alpha_bar = make_schedule("linear", T).alpha_bar[T - 1].double()
    assert round(((1 - alpha_bar) / alpha_bar).sqrt().item()) == 157


def test_v_loss_draws_t_and_eps_like_loss_simple(s64):
    # Same generator, same order: the network sees the same (z_t, t) in both losses; only the target differs.
    seen = {}
    x0 = torch.randn(32, 2, generator=_gen(6), dtype=F64)

    def recorder(name):
        def model(z, t):
            seen[name] = (z, t)
            return torch.zeros_like(z)
        return model

    loss_simple(recorder("eps"), x0, s64, _gen(7))
    vpred.loss_v(recorder("v"), x0, s64, _gen(7))
    assert torch.equal(seen["eps"][0], seen["v"][0]) and torch.equal(seen["eps"][1], seen["v"][1])


def _v_star(schedule):
    eps_star = eps_model(mixture_2d(), schedule)
    return lambda z, t: vpred.v_from_eps(z, eps_star(z, t), t, schedule)


def _swap_to_float64(scheduler, s64):
    """The scheduler's float32 alphas_cumprod (the only schedule quantity step() reads) swapped for float64, to
    separate algebra from float32 rounding (as in tests/test_diffusers_parity.py)."""
    scheduler.alphas_cumprod = s64.alpha_bar.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    scheduler.one = torch.tensor(1.0, dtype=F64)
    return scheduler


@pytest.mark.parametrize("steps, eta", [(10, 0.0), (50, 0.0), (50, 1.0)])
def test_ddim_on_a_v_model_is_diffusers_v_prediction(s64, steps, eta):
    # diffusers' DDIMScheduler with prediction_type="v_prediction" turns the model output into x0 = alpha z - sigma v
    # and eps = alpha v + sigma z inside step(); ours wraps the v-model as an eps-model. Same algebra, float64
    # schedule on both sides: the loops agree to float64 rounding accumulated over the steps (asserted 1e-9).
    model, x_T = _v_star(s64), torch.randn(512, 2, generator=_gen(8), dtype=F64)
    ours = ddim_sample(vpred.eps_model(model, s64), x_T, s64, steps=steps, eta=eta, generator=_gen(9), disable=True)
    scheduler = _swap_to_float64(diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
        timestep_spacing="leading", prediction_type="v_prediction"), s64)
    scheduler.set_timesteps(steps)
    x, generator = x_T.clone(), _gen(9)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, _batch(int(t), 512)), t, x, eta=eta, generator=generator).prev_sample
    assert (ours - x).abs().max().item() < 1e-9


def test_ddpm_on_a_v_model_is_diffusers_v_prediction(s64):
    # DDPMScheduler's step() with v_prediction: x0 = alpha z - sigma v, then the Eq. (7) posterior mean; ours:
    # Eq. (11) with the wrapped eps. The same function given a float64 schedule (tests/test_diffusers_parity.py
    # shows the eps case agrees to ~1e-12 over 1000 steps); asserted 1e-9.
    model, x_T = _v_star(s64), torch.randn(512, 2, generator=_gen(10), dtype=F64)
    ours = ddpm_sample(vpred.eps_model(model, s64), x_T, s64, generator=_gen(11), disable=True)
    scheduler = _swap_to_float64(diffusers.DDPMScheduler(num_train_timesteps=T, clip_sample=False,
                                                         prediction_type="v_prediction", variance_type="fixed_small"),
                                 s64)
    scheduler.set_timesteps(T)
    x, generator = x_T.clone(), _gen(11)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, _batch(int(t), 512)), t, x, generator=generator).prev_sample
    assert (ours - x).abs().max().item() < 1e-9


def test_diffusers_get_velocity_is_v_target(s64):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T)
    scheduler.alphas_cumprod = s64.alpha_bar.clone()
    x0, eps = torch.randn(8, 2, generator=_gen(12), dtype=F64), torch.randn(8, 2, generator=_gen(13), dtype=F64)
    tt = torch.tensor([0, 1, 50, 300, 600, 900, 998, 999])
    assert (scheduler.get_velocity(x0, eps, tt) - vpred.v_target(x0, eps, tt, s64)).abs().max() < 1e-12


def test_config_differs_from_ddpm_only_in_the_prediction():
    config = vpred.train_config("swissroll", "quick")
    assert config.pop("prediction") == "v" and config == ddpm.train_config("swissroll", "quick")


# --- command line ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vpred")
    result = refimpl("vpred", "train", "--data", "swissroll", "--steps", "3", "--out", "run", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_cli_trains_and_samples(run):
    result = refimpl("vpred", "sample", "--ckpt", "run", "--n", "16", "--steps", "5", "--out", "v.png", "--quiet",
                     cwd=run)
    assert result.returncode == 0, result.stderr
    assert (run / "v.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["vpred", "sample", "--ckpt", "run", "--eta", "-1", "--out", "x.png"], "eta"),
    (["vpred", "sample", "--ckpt", "run", "--steps", "1001", "--out", "x.png"], "1001"),
    (["vpred", "sample", "--ckpt", "missing", "--out", "x.png"], "not found"),
    (["ddpm", "sample", "--ckpt", "run", "--out", "x.png"], "vpred"),  # its network predicts v, not eps
])
def test_cli_refuses_bad_input_in_one_line(run, args, fragment):
    assert_refused(refimpl(*args, cwd=run), fragment)


# --- learning: the cached quick run, shared with the LDM page's figure --------------------------------------

@pytest.mark.slow
def test_v_model_learns_the_swiss_roll():
    """20 deterministic DDIM steps of the quick v-prediction model land near the data: the learning check of every
    2-D toy model (tests/learning.py: sliced Wasserstein below the midpoint of the data-to-data floor and a
    moment-matched Gaussian)."""
    from figures.zoo.vpred import vpred_checkpoint
    from learning import assert_near_the_data

    assert_near_the_data(vpred.sample_from_checkpoint(vpred_checkpoint("swissroll", "quick"), 2000, steps=20,
                                                      disable=True))


@pytest.mark.slow
def test_v_model_predicts_x0_at_the_noisiest_step_where_the_eps_model_cannot():
    """Progressive Distillation's reason for v (Sec. 4): at code t = 999 (alpha_t = 0.0064) the eps model's
    x0 = (z - sigma eps_hat) / alpha multiplies its noise error by sigma / alpha = 157, while the v model's
    x0 = alpha z - sigma v_hat does not. The same fresh points and noise for both models (figures.zoo.vpred.x0_errors):
    the per-point difference of squared errors, eps minus v, must be positive by more than 3 SE of its mean."""
    from figures.zoo.vpred import TIMES, x0_errors

    errors = x0_errors("quick")
    diff = (errors["eps"][TIMES.index(999)] - errors["v"][TIMES.index(999)]).double()
    assert diff.mean() > 3 * diff.std() / diff.numel() ** 0.5, (diff.mean().item(), diff.std().item())
