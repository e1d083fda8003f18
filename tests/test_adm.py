"""Classifier guidance (ADM, arXiv 2105.05233): the classifier gradient, Algorithm 1 with exact pieces on a labelled
Gaussian mixture, the command line, and (slow) the quick noisy digits classifier and guided digits of the shared
quick DDPM model.
"""

import math

import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import adm
from refimpl.core import LineageError
from refimpl.ddpm import ddpm_sample
from refimpl.guidance import labelled_mixture_2d
from refimpl.mixture import by_level, eps_model
from refimpl.nets import EncoderNet
from refimpl.schedules import Schedule, linear_betas

torch.set_num_threads(1)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the classifier gradient

def test_classifier_grad_matches_central_differences():
    # A tiny EncoderNet in float64. Central differences have truncation error h^2 f''' / 6 ~ 1e-12 (h = 1e-5,
    # O(1) derivatives) and rounding error ~ eps |f| / h ~ 1e-11; 1e-7 leaves four orders of margin, while a wrong
    # class or a missing log_softmax changes the gradient by O(1e-2) or more (checked below).
    net = EncoderNet(base=8, channel_mults=(1, 2), time_dim=16, out_dim=3).double().eval()
    # the sinusoidal time embedding is float32 (refimpl.nets.timestep_embedding); it depends on t only, so casting
    # it to float64 keeps every x-dependent operation in float64
    net.time_mlp.register_forward_pre_hook(lambda module, args: tuple(a.double() for a in args))
    x = torch.randn(4, 1, 8, 8, generator=_gen(0), dtype=F64)
    t = torch.tensor([0, 10, 500, 999])
    y = torch.tensor([0, 2, 1, 2])
    grad = adm.classifier_grad(net, x, t, y)
    h = 1e-5

    def log_p(z):
        with torch.no_grad():
            return torch.log_softmax(net(z, t), -1)[torch.arange(4), y]

    for pixel in ((0, 0, 3), (0, 4, 4), (0, 7, 1)):
        step = torch.zeros_like(x)
        step[(slice(None), *pixel)] = h
        numeric = (log_p(x + step) - log_p(x - step)) / (2 * h)
        assert (grad[(slice(None), *pixel)] - numeric).abs().max().item() < 1e-7
    assert (adm.classifier_grad(net, x, t, (y + 1) % 3) - grad).abs().max().item() > 1e-2
    # an int label is broadcast over the batch
    assert torch.equal(adm.classifier_grad(net, x, t, 2), adm.classifier_grad(net, x, t, torch.full((4,), 2)))


def test_classifier_grad_of_a_linear_softmax_classifier_is_closed_form():
    # logits = W x: grad_x log softmax(W x)_y = W_y - sum_k p_k W_k (float64, a few operations: 1e-12)
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.randn(5, 64, generator=_gen(1), dtype=F64)

        def forward(self, x, t):
            return x.flatten(1) @ self.w.T

    net = Linear()
    x = torch.randn(6, 1, 8, 8, generator=_gen(2), dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    p = torch.softmax(net(x, None), -1)
    expected = (net.w[y] - p @ net.w).reshape(x.shape)
    assert (adm.classifier_grad(net, x, torch.zeros(6, dtype=torch.long), y) - expected).abs().max().item() < 1e-12


# ---------------------------------------------------------------- Algorithm 1 with exact pieces

Y = 1  # the class the exact classifier gets wrong most often (~10% of its own draws)


def _exact_grad(data, schedule, y):
    alpha_bar = schedule.alpha_bar
    return by_level(lambda x, step: data.grad_log_class_prob(x, y, alpha_bar[step].item()))


def test_algorithm_1_scale_0_is_ddpm_and_the_shift_is_s_sigma_g():
    # Short schedule (T = 20): the loop is the same for any T. Scale 0 must be refimpl.ddpm.ddpm_sample bit for bit
    # (same noise draws); with a constant g, every step's mean moves by s sigma_t^2 g exactly, so with eps = 0 the
    # chain is linear and the total shift is s g sum_t sigma_t^2 prod_{u<t} 1/sqrt(alpha_u) (float64: 1e-12).
    data, s20 = labelled_mixture_2d(), Schedule(linear_betas(20, 1e-3, 0.2, dtype=F64))
    x_T = torch.randn(64, 2, generator=_gen(0), dtype=F64)
    model = eps_model(data.mixture, s20)
    plain = ddpm_sample(model, x_T, s20, generator=_gen(1), disable=True)
    zero = adm.guided_ddpm_sample(model, _exact_grad(data, s20, Y), x_T, s20, scale=0.0, generator=_gen(1),
                                  disable=True)
    assert torch.equal(plain, zero)

    g = torch.tensor([0.3, -0.7], dtype=F64)
    no_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    base = adm.guided_ddpm_sample(no_eps, lambda x, t: g.expand_as(x), x_T, s20, scale=0.0, generator=_gen(2),
                                  disable=True)
    shifted = adm.guided_ddpm_sample(no_eps, lambda x, t: g.expand_as(x), x_T, s20, scale=2.5, generator=_gen(2),
                                     disable=True)
    total = 0.0
    for t in range(20):  # the shift added at step t is then scaled by 1/sqrt(alpha_u) for every later step u < t
        total += s20.beta_tilde[t].item() * math.prod(1 / math.sqrt(s20.alphas[u].item()) for u in range(t))
    assert ((shifted - base) - 2.5 * total * g).abs().max().item() < 1e-12


def test_algorithm_1_with_exact_pieces_samples_p_x_given_y():
    # T = 1000 ancestral sampling with the exact unconditional eps and the exact grad log p(y | x_t), scale 1, must
    # sample p(x | y) = p(x) p(y | x) / p(y). Two statistics against their exact values from REF direct draws of
    # p(x | y): the fraction the exact classifier assigns to y (binomial) and E log p(x | y) (sd from the draws).
    # Tolerance 5 combined standard errors. T = 1000 is not exact: for the unlabelled mixture, fixed_small samples
    # are too concentrated by 0.026 nats (tests/test_ddpm_closed_form.py), ~1 SE of E log p here (0.03 nats).
    # Power: unguided samples have 0.31 of class 1, ~90 SE below the exact 0.90.
    data, s64 = labelled_mixture_2d(), Schedule(linear_betas(1000, dtype=F64))
    n, ref_n = 2000, 200_000
    x_T = torch.randn(n, 2, generator=_gen(3), dtype=F64)
    x = adm.guided_ddpm_sample(eps_model(data.mixture, s64), _exact_grad(data, s64, Y), x_T, s64, scale=1.0,
                               generator=_gen(4), disable=True)
    ref = data.conditional(Y).sample(ref_n, _gen(5))[0]
    for f in (lambda z: (data.log_class_prob(z).argmax(-1) == Y).to(F64), data.conditional(Y).log_prob):
        got, exact = f(x), f(ref)
        se = math.hypot(got.std().item() / math.sqrt(n), exact.std().item() / math.sqrt(ref_n))
        assert abs(got.mean().item() - exact.mean().item()) < 5 * se, (got.mean().item(), exact.mean().item(), se)


def test_samplers_refuse_bad_settings():
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    s = Schedule(linear_betas(10))
    x = torch.zeros(2, 2)
    with pytest.raises(LineageError, match="scale"):
        adm.guided_sample(model, model, x, s, scale=-1.0)
    with pytest.raises(LineageError, match="sampler"):
        adm.guided_sample(model, model, x, s, sampler="euler")
    with pytest.raises(LineageError, match="variance"):
        adm.guided_ddpm_sample(model, model, x, s, variance="learned")


# ---------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step DDPM digits run and a 2-step classifier run: enough for the interface, not for quality."""
    work = tmp_path_factory.mktemp("adm")
    for args in (("ddpm", "train", "--data", "digits", "--steps", "2", "--out", "ddpm"),
                 ("adm", "train", "--steps", "2", "--out", "clf")):
        result = refimpl(*args, cwd=work)
        assert result.returncode == 0, result.stderr
    return work


def _main(runs, monkeypatch, *argv):
    """``python -m refimpl adm sample ARGV`` in this process (no interpreter start-up per case)."""
    from refimpl.__main__ import PAPERS
    from refimpl.cli import main

    monkeypatch.chdir(runs)
    return main(PAPERS, ["adm", "sample", *argv])


def test_cli_sample_writes_a_png(runs, monkeypatch):
    for sampler in ("ddim", "ddpm"):
        code = _main(runs, monkeypatch, "--ckpt", "ddpm", "--classifier", "clf", "--label", "3", "--n", "1",
                     "--steps", "2", "--guidance-scale", "2.5", "--sampler", sampler, "--out", f"{sampler}.png",
                     "--quiet")
        assert code == 0
        assert (runs / f"{sampler}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragments", [
    (["--label", "10"], ["digit class 0-9", "10"]),
    (["--label", "-1"], ["digit class 0-9"]),
    (["--label", "three"], ["digit class 0-9"]),
    (["--guidance-scale", "-1"], [">= 0"]),
    (["--guidance-scale", "nan"], [">= 0"]),
    (["--ckpt", "missing"], ["missing"]),
    (["--classifier", "missing"], ["missing"]),
    (["--classifier", "ddpm"], ["adm-classifier"]),  # a DDPM checkpoint is not a classifier
    (["--ckpt", "clf"], ["ddpm"]),  # nor the other way round
    (["--sampler", "euler"], ["euler"]),
])
def test_cli_refuses_bad_input_in_one_line(runs, monkeypatch, capsys, args, fragments):
    defaults = {"--ckpt": "ddpm", "--classifier": "clf", "--label": "3", "--n": "1", "--steps": "2",
                "--out": "x.png"}
    merged = defaults | dict(zip(args[::2], args[1::2]))
    code = _main(runs, monkeypatch, *[item for pair in merged.items() for item in pair])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("refimpl: error:"), (code, lines)
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_cli_refuses_in_one_line_from_the_shell(runs):
    assert_refused(refimpl("adm", "sample", "--ckpt", "ddpm", "--classifier", "clf", "--label", "12", "--out", "x.png",
                           cwd=runs), "digit class 0-9")


# ---------------------------------------------------------------- learning (quick preset, shared cached artifacts)

@pytest.mark.slow
def test_noisy_classifier_is_right_on_clean_digits_and_at_chance_on_noise():
    # Held-out digits (never seen by the classifier), R noise draws each: n = 297 R binomial trials per t, so the
    # accuracy's standard error is at most sqrt(0.25 / n) = 0.015 (R = 4). At code t = 999 (alpha_bar = 4e-5) the
    # image's weight sqrt(alpha_bar) = 0.006 is far below the noise: chance is 1/10 up to the held-out class
    # frequencies (each 0.1 +- 0.02), so accuracy there must be within 0.1 +- (0.03 + 5 SE). At t = 0 the classifier
    # must be worth guiding with: above 0.8 (measured 0.96), and each noisier step must lose accuracy by more than
    # 5 SE of the difference (measured: 0.96, 0.62, 0.11 at t = 0, 300, 999).
    from figures.zoo.adm import classifier_checkpoint
    from refimpl.data import digits
    from refimpl.digits_eval import HOLDOUT
    from refimpl.schedules import make_schedule

    schedule = make_schedule("linear", 1000)
    classifier = adm.load_classifier(classifier_checkpoint("quick"), schedule)
    images, labels = digits()
    r = 4
    x0, y = images[-HOLDOUT:].repeat(r, 1, 1, 1), labels[-HOLDOUT:].repeat(r)
    acc = adm.noisy_accuracy(classifier, x0, y, schedule, (0, 300, 999), _gen(0)).tolist()
    se = [math.sqrt(a * (1 - a) / len(y)) for a in acc]
    assert acc[0] > 0.8, acc
    for i in (0, 1):
        assert acc[i] - acc[i + 1] > 5 * math.hypot(se[i], se[i + 1]), acc
    assert abs(acc[2] - 0.1) < 0.03 + 5 * math.sqrt(0.09 / len(y)), acc


@pytest.mark.slow
def test_guidance_raises_accuracy_and_lowers_diversity_on_digits():
    # The shared quick DDPM digits model guided by the quick classifier (DDIM, Algorithm 2), 100 samples per label,
    # the same x_T for every scale, so differences between scales are per-sample pairs with standard error
    # std(d) / sqrt(n). Accuracy = the digits_eval classifier (trained separately) agrees with the requested label.
    # - s = 0 is the unguided model: requested labels are balanced and independent of x_T, so the expected accuracy
    #   is exactly 1/10 whatever the model's class frequencies; within 5 binomial SE (sqrt(0.09 / n)).
    # - accuracy rises and within-class diversity (mean squared distance of digits_eval features to the mean of
    #   the samples requested with the same label; the class means are treated as fixed, their own error is
    #   O(1/n)) falls at every step of the scales, by more than 4 paired SE. Measured: accuracy 0.11, 0.70, 0.95,
    #   0.995 and spread 428, 230, 109, 44 at s = 0, 1, 3, 10; the smallest step is 6.9 SE (accuracy, 3 -> 10, near
    #   its ceiling: with 30 or 50 samples per label that step was only 3.8-4.1 SE, too close to the bar).
    from figures.zoo.adm import guided_digits, per_sample_stats

    out = guided_digits("quick")
    hit, spread = per_sample_stats(out)
    n = hit.shape[1]
    assert abs(hit[0].mean().item() - 0.1) < 5 * math.sqrt(0.09 / n), hit[0].mean().item()
    for i in range(len(out["scales"]) - 1):
        for stat, sign in ((hit, 1), (spread, -1)):
            d = sign * (stat[i + 1] - stat[i])
            assert d.mean().item() > 4 * d.std().item() / math.sqrt(n), (i, stat.mean(1).tolist())
