"""NCSN (Song & Ermon 2019): the noise levels, Langevin dynamics against closed forms, annealing against plain
Langevin on far-apart modes, the sigma^2-weighted denoising score matching objective at and around its exact
minimiser, the command line, and (slow) the quick model the site shows.

Every tolerance below is a multiple of a Monte Carlo standard error computed from the same samples (4 standard
errors: a false alarm about once in 16 000 runs per comparison), unless a comment derives it otherwise.
"""

import math

import pytest
import torch

from clitools import assert_refused, refimpl
from learning import assert_near_the_data
from refimpl import ncsn
from refimpl.core import LineageError
from refimpl.ddpm import train as ddpm_train
from refimpl.ddpm import train_config as ddpm_train_config
from refimpl.mixture import GaussianMixture, mixture_2d

torch.set_num_threads(1)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _toy_sigmas():
    return ncsn.geometric_sigmas(ncsn.TOY["sigma_1"], ncsn.TOY["sigma_L"], ncsn.TOY["L"])


# ---------------------------------------------------------------- noise levels

def test_geometric_sigmas_descend_with_a_constant_ratio():
    sigmas = ncsn.geometric_sigmas(1.0, 0.01, 10)  # the official image setting (configs/anneal.yml)
    assert sigmas.dtype == F64 and sigmas.shape == (10,)
    assert sigmas[0].item() == pytest.approx(1.0, rel=1e-12) and sigmas[-1].item() == pytest.approx(0.01, rel=1e-12)
    ratios = sigmas[:-1] / sigmas[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, 100 ** (1 / 9)), rtol=1e-12)
    assert ncsn.geometric_sigmas(0.5, 0.5, 1).tolist() == [0.5]


@pytest.mark.parametrize("args", [(0.01, 1.0, 10), (1.0, 0.0, 10), (1.0, 0.01, 0), (1.0, 0.01, 2.5), (1.0, 0.5, 1)])
def test_geometric_sigmas_refuse_bad_levels(args):
    with pytest.raises(LineageError):
        ncsn.geometric_sigmas(*args)


# ---------------------------------------------------------------- Langevin dynamics against closed forms

@pytest.mark.parametrize("s, ratio", [(0.7, 0.5), (2.0, 0.2)])
def test_langevin_stationary_variance_of_a_gaussian(s, ratio):
    """Exact score of N(0, s^2): one step is x' = (1 - alpha / (2 s^2)) x + sqrt(alpha) z, an AR(1) with
    coefficient rho = 1 - alpha / (2 s^2). Its stationary variance v solves v = rho^2 v + alpha:
    v = alpha / (1 - rho^2) = s^2 / (1 - alpha / (4 s^2)), larger than s^2: the step bias of unadjusted
    Langevin. From x = 0, after K steps the variance is v (1 - rho^(2K)); K = 200 makes rho^(2K) < 1e-20.
    The sample variance of N chains has standard error v sqrt(2 / (N - 1))."""
    n, alpha = 20_000, ratio * s * s
    x_T = torch.zeros(n, 1, dtype=F64)
    # one level: Algorithm 1 is plain Langevin dynamics with alpha = eps
    x = ncsn.annealed_langevin_sample(lambda x, i: -x / s**2, x_T, torch.tensor([1.0]), eps=alpha,
                                      steps_per_level=200, generator=_gen(0), disable=True)
    v = s * s / (1 - alpha / (4 * s * s))
    se = v * math.sqrt(2 / (n - 1))
    assert abs(x.var().item() - v) < 4 * se
    assert abs(x.var().item() - s * s) > 4 * se  # the bias is real at this step size (ratio / 4 of s^2 >> se)


def test_langevin_step_is_eq_1():
    x, score, noise = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0]), torch.tensor([2.0, -1.0])
    assert torch.allclose(ncsn.langevin_step(x, score, 0.04, noise), torch.tensor([1.01 + 0.4, -2.0 + 0.08 - 0.2]))


def test_callback_gets_every_level_and_tweedie_x0():
    """Data N(mu, s^2 I): at level sigma, E[x_0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu) exactly, and Tweedie's
    x + sigma^2 score gives the same (float64 rounding only)."""
    mu, s = torch.tensor([0.3, -1.0], dtype=F64), 0.5
    gaussian = GaussianMixture.single(mu, s * s * torch.eye(2, dtype=F64))
    sigmas = ncsn.geometric_sigmas(2.0, 0.1, 4)
    seen = []

    def check(i, x, x0_pred):
        seen.append(i)
        sigma2 = sigmas[i].item() ** 2
        assert torch.allclose(x0_pred, mu + s * s / (s * s + sigma2) * (x - mu), atol=1e-12)

    x_T = torch.randn(50, 2, generator=_gen(1), dtype=F64)
    ncsn.annealed_langevin_sample(ncsn.exact_score_model(gaussian, sigmas), x_T, sigmas, eps=1e-3,
                                  steps_per_level=3, generator=_gen(2), callback=check, disable=True)
    assert seen == [0, 1, 2, 3]


def test_sampler_refuses_bad_settings_before_any_model_call():
    calls = []
    for kwargs in ({"steps_per_level": 0}, {"eps": 0.0}, {"eps": -1e-5}):
        with pytest.raises(LineageError):
            ncsn.annealed_langevin_sample(lambda x, i: calls.append(i), torch.zeros(2, 2), torch.ones(1),
                                          disable=True, **kwargs)
    assert calls == []


def test_annealed_langevin_with_exact_scores_recovers_the_mixture_weights():
    """Algorithm 1 with the toy settings (sigma 5 -> 0.03, L = 10, eps = 1.8e-4, T = 100) and the exact noised
    scores of mixture_2d, from a uniform start on [-3, 3]^2. Under the target q_sigma_L the mean responsibility
    of component k is exactly pi_k (E_q[r_k] = integral of pi_k N_k), and Var r_k <= pi_k (1 - pi_k), so
    the binomial standard error sqrt(pi_k (1 - pi_k) / N) bounds the Monte Carlo error. (The step bias of
    at most 5 % on variances, alpha_i / (4 sigma_i^2) <= eps / (4 sigma_L^2), changes shapes, not weights.)"""
    mixture, sigmas, n = mixture_2d(), _toy_sigmas(), 10_000
    x_T = (torch.rand(n, 2, generator=_gen(3), dtype=F64) * 2 - 1) * ncsn.TOY["init_box"]
    x = ncsn.annealed_langevin_sample(ncsn.exact_score_model(mixture, sigmas), x_T, sigmas, eps=ncsn.TOY["eps"],
                                      steps_per_level=ncsn.TOY["steps_per_level"], generator=_gen(4), disable=True)
    weights = mixture.weights
    recovered = mixture.noised(1.0, sigmas[-1].item()).responsibilities(x).mean(0)
    se = (weights * (1 - weights) / n).sqrt()
    assert ((recovered - weights).abs() < 4 * se).all(), (recovered, weights)


def test_annealing_recovers_unequal_weights_where_plain_langevin_does_not():
    """The slow-mixing example of the official toy code (runners/toy_runner.py), with its settings:
    0.8 N((5,5), I) + 0.2 N((-5,-5), I), a uniform start on [-8, 8]^2; plain Langevin: 1000 steps of size 0.1
    on the score of the smallest level; annealed: sigma 20 -> 1 (L = 10), eps = 0.1, T = 100 (the same 1000 score calls).
    Both targets have the mode weights 0.8 / 0.2 (noise does not change them). The big mode's weight is
    the mean responsibility, binomial standard error se = sqrt(0.8 * 0.2 / N).
    Plain Langevin hardly ever crosses between modes 14 apart, so it keeps the split of the uniform start
    (about 0.51: the basin boundary is the line x + y = -ln(4) / 10). Measured (N = 4000): plain 0.508,
    annealed 0.781. Asserted: plain is off by more than 10 se, annealing moves it by more than 10 se
    of the difference, and ends at least 4 times closer to 0.8."""
    mixture, n = ncsn.two_mode_mixture(), 4000
    x_T = (torch.rand(n, 2, generator=_gen(5), dtype=F64) * 2 - 1) * 8

    def big_mode_weight(sigmas, eps, steps):
        x = ncsn.annealed_langevin_sample(ncsn.exact_score_model(mixture, sigmas), x_T, sigmas, eps=eps,
                                          steps_per_level=steps, generator=_gen(6), disable=True)
        return mixture.noised(1.0, sigmas[-1].item()).responsibilities(x)[:, 0].mean().item()

    plain = big_mode_weight(torch.tensor([1.0], dtype=F64), 0.1, 1000)
    annealed = big_mode_weight(ncsn.geometric_sigmas(20.0, 1.0, 10), 0.1, 100)
    se = math.sqrt(0.8 * 0.2 / n)
    assert 0.8 - plain > 10 * se, plain
    assert annealed - plain > 10 * math.sqrt(2) * se, (plain, annealed)
    assert abs(annealed - 0.8) < abs(plain - 0.8) / 4, (plain, annealed)


# ---------------------------------------------------------------- the objective l(theta; sigma) and L(theta; {sigma_i})

@pytest.mark.parametrize("level", range(10))
def test_weighted_dsm_is_minimised_by_the_exact_score(level):
    """For each level sigma, with x~ = x + sigma z and the exact score s* of q_sigma:

    - at the optimum, lambda(sigma) l(s*; sigma) = 1/2 E||sigma s* + z||^2 = D/2 - sigma^2/2 E||s*||^2, because
      E[z | x~] = -sigma s*(x~) (Tweedie) makes E[s* . z] = -sigma E||s*||^2. (D/2 is lambda/2 E||grad log
      q(x~|x)||^2 = sigma^2/2 E||z||^2 / sigma^2.) Per sample the two sides differ by sigma s*.z +
      sigma^2 ||s*||^2, which has mean 0;
    - at s* + delta(x~), the loss grows by sigma^2/2 E||delta||^2: the cross term sigma^2 E[delta . (s* + z/sigma)]
      vanishes since E[z/sigma | x~] = -s*. Per sample the excess minus sigma^2/2 ||delta||^2 is
      sigma delta . (sigma s* + z), again of mean 0.

    Both are checked to 4 standard errors of those mean-zero per-sample differences (N = 20 000). (The excess itself
    is not compared with 0 sample by sample: at the smallest levels sigma^2/2 E||delta||^2 ~ 1e-5 is below its
    Monte Carlo error; the identity is what pins it.)"""
    mixture, sigmas, n = mixture_2d(), _toy_sigmas(), 20_000
    sigma = sigmas[level].item()
    x0, _ = mixture.sample(n, _gen(10 + level))
    z = torch.randn(n, 2, generator=_gen(40 + level), dtype=F64)
    i = torch.full((n,), level, dtype=torch.long)
    exact = ncsn.exact_score_model(mixture, sigmas)
    delta = lambda x: 0.3 * torch.tanh(x + 0.5)  # noqa: E731  any function of x~ alone
    at_exact = ncsn.dsm_terms(exact, x0, i, z, sigmas)
    at_perturbed = ncsn.dsm_terms(lambda x, i: exact(x, i) + delta(x), x0, i, z, sigmas)
    x_noisy = x0 + sigma * z
    s_star = mixture.noised(1.0, sigma).score(x_noisy)

    def within_4_se(differences):
        return abs(differences.mean().item()) < 4 * differences.std().item() / math.sqrt(n)

    assert within_4_se(at_exact - (1.0 - 0.5 * sigma**2 * s_star.pow(2).sum(1)))
    expected_excess = 0.5 * sigma**2 * delta(x_noisy).pow(2).sum(1)  # > 0: s* is the minimiser
    assert within_4_se(at_perturbed - at_exact - expected_excess)


def test_dsm_loss_averages_the_levels_it_draws():
    """L(theta; {sigma_i}) with one uniform level per example: replaying the generator gives the same draws, and
    the loss is the mean of the per-example terms; with many examples every level is drawn."""
    sigmas, x0 = _toy_sigmas(), torch.randn(4096, 2, generator=_gen(7), dtype=F64)
    exact = ncsn.exact_score_model(mixture_2d(), sigmas)
    loss = ncsn.dsm_loss(exact, x0, sigmas, _gen(8))
    replay = _gen(8)
    i = torch.randint(0, len(sigmas), (x0.shape[0],), generator=replay)
    z = torch.randn(x0.shape, generator=replay, dtype=F64)
    assert torch.equal(loss, ncsn.dsm_terms(exact, x0, i, z, sigmas).mean())
    assert torch.unique(i).tolist() == list(range(len(sigmas)))


# ---------------------------------------------------------------- diffusers

def test_diffusers_sde_ve_corrector_is_a_langevin_step_with_an_snr_step_size():
    """diffusers has no scheduler for Algorithm 1. ScoreSdeVeScheduler.step_correct (Score SDE's Langevin corrector)
    takes a step of the same form, x + step * s + sqrt(2 step) z, i.e. our langevin_step with alpha = 2 * step,
    but sets the step from a signal-to-noise ratio, step = 2 (snr * mean ||z|| / mean ||s||)^2 (norms averaged over
    the batch: one step for all samples), instead of alpha_i = eps sigma_i^2 / sigma_L^2. Pinned here to float32
    rounding (the default snr = 0.15)."""
    from diffusers import ScoreSdeVeScheduler

    scheduler = ScoreSdeVeScheduler()
    scheduler.set_timesteps(10)
    x, score = torch.randn(64, 2, generator=_gen(20)), 3.0 * torch.randn(64, 2, generator=_gen(21))
    theirs = scheduler.step_correct(score, x, generator=_gen(22)).prev_sample
    z = torch.randn(64, 2, generator=_gen(22))
    step = 2 * (0.15 * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    assert torch.allclose(theirs, ncsn.langevin_step(x, score, 2 * step.item(), z), atol=1e-5)


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 20-step NCSN swiss-roll run through the CLI and a 2-step DDPM run (a checkpoint of another paper)."""
    work = tmp_path_factory.mktemp("ncsn_cli")
    result = refimpl("ncsn", "train", "--data", "swissroll", "--steps", "20", "--out", "ncsn", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "trained ncsn on swissroll for 20 steps" in result.stdout
    ddpm_train(ddpm_train_config("swissroll", steps=2), work / "ddpm", progress=False)
    return work


def test_cli_sample_writes_a_png(runs, tmp_path):
    result = refimpl("ncsn", "sample", "--ckpt", str(runs / "ncsn"), "--n", "50", "--steps-per-level", "2",
                     "--eps", "1e-4", "--out", "s.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, sigmas, config = ncsn.load_for_sampling(runs / "ncsn")
    assert torch.allclose(sigmas, _toy_sigmas()) and config["steps"] == 20
    assert ncsn.sample_from_checkpoint(runs / "ncsn", 7, steps_per_level=1, disable=True).shape == (7, 2)


@pytest.mark.parametrize("args, fragments", [
    (["train", "--data", "digits", "--out", "x"], ["digits"]),
    (["sample", "--ckpt", "ncsn", "--steps-per-level", "0", "--out", "s.png"], ["positive integer"]),
    (["sample", "--ckpt", "ncsn", "--eps", "-1", "--out", "s.png"], ["positive number"]),
    (["sample", "--ckpt", "ncsn", "--out", "s.jpg"], [".png"]),
    (["sample", "--ckpt", "nowhere", "--out", "s.png"], ["checkpoint not found"]),
    (["sample", "--ckpt", "ddpm", "--out", "s.png"], ["'ddpm'"]),
])
def test_cli_refuses_bad_input_in_one_line(runs, args, fragments):
    assert_refused(refimpl("ncsn", *args, cwd=runs), *fragments)


# ---------------------------------------------------------------- learning (the quick model the site uses)

@pytest.mark.slow
def test_quick_swissroll_model_samples_the_data():
    """The quick NCSN on the swiss roll (cached, shared with the figures), sampled with Algorithm 1 and its
    default settings. Sliced Wasserstein to fresh data against two baselines measured here, as for DDPM: two
    independent data draws of the same size (the floor) and a moment-matched Gaussian. The samples must be
    nearer the floor than the Gaussian: below the midpoint of the two."""
    from figures.zoo.ncsn import ncsn_checkpoint

    n = 2000
    samples = ncsn.sample_from_checkpoint(ncsn_checkpoint("swissroll", "quick"), n, disable=True)
    assert_near_the_data(samples)
