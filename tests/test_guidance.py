"""Classifier guidance (ADM, arXiv 2105.05233) and classifier-free guidance (Ho & Salimans, arXiv 2207.12598)
against closed forms on a labelled Gaussian mixture: the exact classifier and its gradient, the endpoints and
conventions of both guidance rules, the tilted density that CFG's exact eps belongs to, the equivalence of the two
rules, Algorithm 1 against Algorithm 2, and DDIM sampling with exact guided pieces (p(x | y) reproduced at scale 1,
fidelity up and diversity down at scale > 1).

Closed-form identities are float64: the quantities are O(1..10) and every path takes a few dozen operations, so
rounding is ~1e-14; asserted 1e-10 unless stated. Where a wrong formula (a flipped sign) must fail, the test checks
that it misses by more than 1e-2, eight orders of magnitude above that tolerance.
"""

import math

import pytest
import torch

from refimpl.core import LineageError
from refimpl.ddim import ddim_sample
from refimpl.ddpm import reverse_step
from refimpl.guidance import (LabelledMixture, cfg_eps, classifier_guided_eps, classifier_guided_mean,
                              guided_eps_model, labelled_mixture_2d)
from refimpl.mixture import mixture_2d

torch.set_num_threads(1)

F64 = torch.float64
TOL = 1e-10
LEVELS = (1.0, 0.9, 0.3, 0.02)  # alpha_bar: the data, little, much and nearly all noise


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def data():
    return labelled_mixture_2d()


def _points(n=256, seed=0):
    """Points spread over the data's range and beyond (scale +-4), boundaries between classes included."""
    return 2.0 * torch.randn(n, 2, generator=_gen(seed), dtype=F64)


def _max_err(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- the labelled mixture and its exact classifier

def test_labelled_mixture_is_consistent(data):
    assert data.classes == 3
    torch.testing.assert_close(data.prior, torch.tensor([0.35, 0.30, 0.35], dtype=F64), rtol=0, atol=1e-15)
    x = _points()
    for a in LEVELS:
        log_py = data.log_class_prob(x, a)
        # p(y | x_t) sums to 1 over the classes, and the law of total probability holds: p(x) = sum_y p(y) p(x | y)
        assert _max_err(torch.logsumexp(log_py, -1), torch.zeros(len(x), dtype=F64)) < TOL
        joint = torch.stack([data.conditional(y).vp(a).log_prob(x) for y in range(3)], -1) + data.prior.log()
        assert _max_err(torch.logsumexp(joint, -1), data.mixture.vp(a).log_prob(x)) < TOL
        # p(y | x_t) is the summed responsibility of y's components of the noised mixture (the brief's definition)
        r = data.mixture.vp(a).responsibilities(x)
        summed = torch.stack([r[:, data.labels == y].sum(-1) for y in range(3)], -1)
        assert _max_err(log_py.exp(), summed) < TOL


def test_labelled_mixture_refuses_bad_input():
    mix = mixture_2d()
    with pytest.raises(LineageError, match="one per component"):
        LabelledMixture(mix, [0, 1, 2])
    with pytest.raises(LineageError, match="one per component"):
        LabelledMixture(mix, [0, 1, 2, 3, -1])
    with pytest.raises(LineageError, match="at least one"):
        LabelledMixture(mix, [0, 0, 2, 2, 2])  # class 1 has no component
    data = LabelledMixture(mix, [0, 1, 1, 0, 1])
    for bad in (2, -1, 1.0, True):
        with pytest.raises(LineageError, match="class must be"):
            data.conditional(bad)


@pytest.mark.parametrize("a", LEVELS)
def test_grad_log_class_prob_is_the_autograd_gradient(data, a):
    # Closed form: grad log p(y | x_t) = score of p_t(x | y) - score of p_t(x). Reference: autograd of the log of the
    # summed responsibilities (an independent path through GaussianMixture.responsibilities). Points at 2 standard
    # deviations keep every responsibility far from underflow, so the log is exact to rounding.
    x = _points(seed=1).requires_grad_(True)
    r = data.mixture.vp(a).responsibilities(x)
    for y in range(3):
        (grad,) = torch.autograd.grad(r[:, data.labels == y].sum(-1).log().sum(), x, retain_graph=True)
        assert _max_err(data.grad_log_class_prob(x.detach(), y, a), grad) < 1e-9  # |grad| up to ~30 here


# ---------------------------------------------------------------- classifier guidance (ADM Algorithms 1 and 2)

@pytest.mark.parametrize("a", LEVELS[1:])
def test_classifier_guidance_scale_1_is_conditional_scale_0_unconditional(data, a):
    x = _points(seed=2)
    for y in range(3):
        eps_u, grad = data.eps(x, a), data.grad_log_class_prob(x, y, a)
        assert _max_err(classifier_guided_eps(eps_u, grad, a, 1.0), data.eps(x, a, y)) < TOL
        assert torch.equal(classifier_guided_eps(eps_u, grad, a, 0.0), eps_u)
        # a flipped sign (eps + sqrt(1 - alpha_bar) s grad) guides away from y: it must miss the conditional eps
        assert _max_err(classifier_guided_eps(eps_u, grad, a, -1.0), data.eps(x, a, y)) > 1e-2


def test_algorithm_1_mean_shift_against_algorithm_2(s64, data):
    # Algorithm 2's eps_hat put into DDPM's reverse-step mean (Eq. 11) shifts it by (beta_t / sqrt(alpha_t)) s g;
    # Algorithm 1 with Sigma = beta_t shifts it by beta_t s g: exactly sqrt(alpha_t) times the former, so the two
    # algorithms differ by beta_t (1 / sqrt(alpha_t) - 1) s g ~ beta_t^2 s g / 2 per step (<= 2e-4 s |g| here).
    x, y, s = _points(seed=3), 1, 2.5
    for t in (1, 100, 500, 999):
        a = s64.alpha_bar[t].item()
        eps_u, grad = data.eps(x, a), data.grad_log_class_prob(x, y, a)
        zero = torch.zeros_like(x)
        mean_u = reverse_step(x, t, eps_u, s64, zero, "fixed_large")
        mean_2 = reverse_step(x, t, classifier_guided_eps(eps_u, grad, a, s), s64, zero, "fixed_large")
        shift_1 = classifier_guided_mean(mean_u, s64.betas[t], grad, s) - mean_u
        assert _max_err(shift_1, s64.alphas[t].sqrt() * (mean_2 - mean_u)) < TOL
        assert _max_err(shift_1, s * s64.betas[t] * grad) < TOL


# ---------------------------------------------------------------- classifier-free guidance (Ho & Salimans Eq. 6)

def test_cfg_endpoints_and_the_two_conventions(data):
    x = _points(seed=4)
    eps_c, eps_u = data.eps(x, 0.3, 2), data.eps(x, 0.3)
    assert torch.equal(cfg_eps(eps_c, eps_u, w=0.0), eps_c)  # w = 0: the conditional model
    assert torch.equal(cfg_eps(eps_c, eps_u, w=-1.0), eps_u)  # w = -1: the unconditional model
    # diffusers' "no guidance": eps_u + 1 * (eps_c - eps_u) is eps_c up to rounding (not bit for bit)
    assert _max_err(cfg_eps(eps_c, eps_u, guidance_scale=1.0), eps_c) < TOL
    for w in (-0.5, 0.3, 1.0, 6.5):
        # the same value by two algebraic forms: (1 + w) c - w u and u + (1 + w)(c - u) round differently (~1e-15)
        assert _max_err(cfg_eps(eps_c, eps_u, w=w), cfg_eps(eps_c, eps_u, guidance_scale=1 + w)) < TOL
    assert _max_err(cfg_eps(eps_c, eps_u, w=1.0), cfg_eps(eps_c, eps_u, guidance_scale=1.0)) > 1e-2  # s != w
    for kwargs in ({}, {"w": 1.0, "guidance_scale": 2.0}):
        with pytest.raises(LineageError, match="exactly one"):
            cfg_eps(eps_c, eps_u, **kwargs)


@pytest.mark.parametrize("a", LEVELS[1:])
def test_cfg_is_the_eps_of_the_tilted_density(data, a):
    # With exact pieces, Eq. (6) is -sqrt(1 - alpha_bar) grad [(1 + w) log p_t(x | y) - w log p_t(x)], the eps of
    # p_t(x | y)^(1 + w) p_t(x)^(-w) ∝ p_t(x | y) p^i(y | x_t)^w. Reference: autograd of that log-density.
    x = _points(seed=5).requires_grad_(True)
    for y in range(3):
        eps_c, eps_u = data.eps(x.detach(), a, y), data.eps(x.detach(), a)
        for w in (0.5, 2.0, 4.0):
            log_tilted = (1 + w) * data.conditional(y).vp(a).log_prob(x) - w * data.mixture.vp(a).log_prob(x)
            (score,) = torch.autograd.grad(log_tilted.sum(), x)
            expected = -math.sqrt(1 - a) * score
            assert _max_err(cfg_eps(eps_c, eps_u, w=w), expected) < 1e-9  # |eps| up to ~100 at w = 4
            # the flipped sign, (1 - w) eps_c + w eps_u, is the eps of another density and must fail this test
            assert _max_err(cfg_eps(eps_c, eps_u, w=-w), expected) > 1e-2


def test_classifier_guidance_with_scale_s_is_cfg_with_w_s_minus_1(s64, data):
    # Ho & Salimans Sec. 3.1: "Applying classifier guidance with weight w + 1 to an unconditional model would
    # theoretically lead to the same result as applying classifier guidance with weight w to a conditional model",
    # since p(z | c) p(c | z)^w ∝ p(z) p(c | z)^(w + 1); and with the exact (implicit) classifier both are Eq. (6).
    # Checked through guided_eps_model on one batch that mixes timesteps, against the exact pieces.
    x = _points(seed=6)
    t = torch.tensor([0, 10, 250, 500, 999] * 52 + [123] * 4)[: len(x)]
    for y in range(3):
        for s in (0.0, 1.0, 2.5, 5.0):
            cg = guided_eps_model(data, s64, y, classifier_scale=s)(x, t)
            cfg = guided_eps_model(data, s64, y, w=s - 1)(x, t)
            assert _max_err(cg, cfg) < TOL
            assert _max_err(cfg, guided_eps_model(data, s64, y, guidance_scale=s)(x, t)) < TOL
        for a in LEVELS[1:]:
            grad, w = data.grad_log_class_prob(x, y, a), 1.5
            on_conditional = classifier_guided_eps(data.eps(x, a, y), grad, a, w)
            assert _max_err(on_conditional, classifier_guided_eps(data.eps(x, a), grad, a, w + 1)) < TOL
    exact = guided_eps_model(data, s64, 1, w=0.0)(x.float(), t)  # float32 in, float32 out
    assert exact.dtype == torch.float32 and exact.shape == x.shape
    for kwargs in ({}, {"w": 1.0, "classifier_scale": 2.0}):
        with pytest.raises(LineageError, match="exactly one"):
            guided_eps_model(data, s64, 0, **kwargs)
    with pytest.raises(LineageError, match="class must be"):
        guided_eps_model(data, s64, 3, w=1.0)


# ---------------------------------------------------------------- sampling with exact guided pieces (DDIM, eta = 0)

N = 4000  # guided DDIM paths: 100 steps take ~0.4 s on one CPU thread
REF = 200_000  # direct draws from p(x | y) for the exact reference values
Y = 1  # the class the exact classifier gets wrong most often (~10% of its own draws)


@pytest.fixture(scope="module")
def runs(s64, data):
    """x_0 from DDIM (eta = 0) for classifier scales 1 and 3 (100 steps) and scale 1 with 200 steps, all from the
    same x_T, and a reference sample of p(x | y)."""
    x_T = torch.randn(N, 2, generator=_gen(3), dtype=F64)
    out = {(s, steps): ddim_sample(guided_eps_model(data, s64, Y, classifier_scale=s), x_T, s64, steps=steps,
                                   disable=True)
           for s, steps in ((1.0, 100), (1.0, 200), (3.0, 100))}
    out["ref"] = data.conditional(Y).sample(REF, _gen(4))[0]
    return out


def _richardson(per_sample_100, per_sample_200):
    """DDIM (eta = 0) is first order in 1/steps (tests/test_ddim.py measures the order), so the mean of
    2 f(x_200) - f(x_100) has no O(1/steps) bias; from the same x_T the pairs are per-path, so its Monte Carlo
    standard error is std(2 f_200 - f_100) / sqrt(N). Returns (estimate, standard error)."""
    r = 2 * per_sample_200 - per_sample_100
    return r.mean().item(), r.std().item() / math.sqrt(len(r))


def test_ddim_with_the_exact_conditional_eps_reproduces_p_x_given_y(data, runs):
    # Two statistics of x_0 against their exact values under p(x | y) (from REF direct draws): the fraction that the
    # exact classifier p(y | x_0) assigns to y, and E log p(x_0 | y), the cross-entropy of figures/lib/closed_form.py.
    # Tolerance: 4 combined standard errors (Richardson estimate and reference, independent). With a bias
    # c1 / steps + c2 / steps^2, Richardson leaves -c2 / (2 steps^2) = -c2 / 2e4. Measured biases of E log p are
    # 0.048 and 0.027 nats at 100 and 200 steps (c1 ~ 4.3); even c2 = 10 c1 would leave 2e-3 nats, a seventh of
    # one standard error (1.5e-2 nats; fraction: 5e-3). Measured: Richardson - exact = 4.8e-3 nats (0.3 SE) and
    # -5.4e-3 for the fraction (1.1 SE; exact fraction 0.902).
    x100, x200, ref = runs[(1.0, 100)], runs[(1.0, 200)], runs["ref"]
    cond = data.conditional(Y)

    def is_y(x):
        return (data.log_class_prob(x).argmax(-1) == Y).to(F64)

    for f in (is_y, cond.log_prob):
        est, se = _richardson(f(x100), f(x200))
        exact = f(ref)
        se_exact = exact.std().item() / math.sqrt(REF)
        assert abs(est - exact.mean().item()) < 4 * math.hypot(se, se_exact), (f, est, exact.mean().item(), se)


def test_guidance_trades_diversity_for_fidelity(data, runs):
    # Scale 3 against scale 1 (both 100 steps, same x_T, so per-path differences give paired standard errors):
    # more samples classified as y (fidelity), a smaller trace of the sample covariance (diversity), and samples
    # pushed away from the other classes, as in Ho & Salimans' Fig. 2 ("each conditional places probability mass
    # farther away from other classes"), measured as the distance from the unconditional mean. Because of that push
    # the mean distance to the class mean does not fall: measured 0.853 at scale 1, 0.826 at 2, 1.020 at 3 (class 1).
    # Each change must exceed 4 paired standard errors (measured: from 13 (fraction) to several tens of them).
    x1, x3 = runs[(1.0, 100)], runs[(3.0, 100)]
    centre = data.mixture.mean()

    def paired(f):
        d = f(x3) - f(x1)
        return d.mean().item(), d.std().item() / math.sqrt(N)

    rise, se = paired(lambda x: (data.log_class_prob(x).argmax(-1) == Y).to(F64))
    assert rise > 4 * se, (rise, se)
    # trace of the sample covariance = mean of |x - sample mean|^2; the paired SE treats the sample means as fixed
    # (their own fluctuation changes the trace by O(1/N), negligible against its O(1/sqrt(N)) error)
    change, se = paired(lambda x: ((x - x.mean(0)) ** 2).sum(-1))
    assert change < -4 * se, (change, se)
    away, se = paired(lambda x: (x - centre).norm(dim=-1))
    assert away > 4 * se, (away, se)
