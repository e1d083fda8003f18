"""Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): the guided noise prediction of Eq. (6) built from one
batched forward pass, its endpoints and two conventions, label dropout of Algorithm 1, the command line, and the
fidelity/diversity trade-off on digits (learning, marked slow).

Unit checks run a small random labelled U-Net in float32 (unit roundoff u = 6e-8; the network's time embedding is
float32). Its eps values are O(1) (at most about 2 here) and Eq. (6) weights them by at most 7.5, so the two
conventions, algebraically equal, differ by a few roundings of numbers below 30: < 1e-5. A batched forward may sum
in another order than two separate ones, changing each of the ~20 layers by about sqrt(fan-in <= 600) u = 1.5e-6
relatively: < 1e-4 in all. Asserted 1e-4 (measured: 0 and 1e-6). Wrong formulas miss by more than 1e-2.
"""

import math

import pytest
import torch

from refimpl.cfg import diversity, drop_labels, guided_model, loss_cfg, train_config
from refimpl.cli import main
from refimpl.core import LineageError
from refimpl.nets import UNet, null_label
from refimpl.schedules import make_schedule

torch.set_num_threads(1)

TOL = 1e-4


@pytest.fixture(scope="module")
def net():
    """A labelled U-Net with random weights everywhere (the zero-initialised last conv too, or eps would be 0)."""
    torch.manual_seed(0)
    net = UNet(base=16, num_classes=10).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    torch.nn.init.normal_(net.conv_out.bias, std=0.1)
    torch.nn.init.normal_(net.labels.table.weight)
    return net


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 250, 500, 800, 999])
    return x, t


def _err(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_endpoints_and_conventions(net, batch):
    x, t = batch
    eps_c, eps_u = net(x, t, y=torch.full((6,), 3)), net(x, t, y=torch.full((6,), null_label(net)))
    assert _err(eps_c, eps_u) > 1e-2  # the label matters, so the checks below can fail
    assert _err(guided_model(net, 3, w=0.0)(x, t), eps_c) < TOL  # w = 0: the conditional model
    assert _err(guided_model(net, 3, w=-1.0)(x, t), eps_u) < TOL  # w = -1: the unconditional model
    assert _err(guided_model(net, 3, guidance_scale=1.0)(x, t), eps_c) < TOL
    assert _err(guided_model(net, 3, guidance_scale=0.0)(x, t), eps_u) < TOL
    for w in (0.5, 2.0, 6.5):  # Eq. (6), and diffusers' guidance_scale = 1 + w gives the same prediction
        eq6 = (1 + w) * eps_c - w * eps_u
        assert _err(guided_model(net, 3, w=w)(x, t), eq6) < TOL
        assert _err(guided_model(net, 3, guidance_scale=1 + w)(x, t), eq6) < TOL
    # a wrong reading of the scale (s used as w) must miss by far more than the tolerance
    assert _err(guided_model(net, 3, guidance_scale=2.0)(x, t), 3 * eps_c - 2 * eps_u) > 1e-2


@torch.no_grad()
def test_one_batched_forward_equals_two_separate_ones(net, batch):
    x, t = batch
    calls = []
    handle = net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        guided = guided_model(net, 7, w=2.0)(x, t)
    finally:
        handle.remove()
    assert calls == [2 * x.shape[0]]  # one network evaluation per step, on the batch [x; x]
    eps_c, eps_u = net(x, t, y=torch.full((6,), 7)), net(x, t, y=torch.full((6,), 10))
    assert _err(guided, 3 * eps_c - 2 * eps_u) < TOL


@torch.no_grad()
def test_one_label_per_sample(net, batch):
    x, t = batch
    labels = torch.tensor([0, 1, 2, 7, 8, 9])
    guided = guided_model(net, labels, guidance_scale=4.0)(x, t)
    for i, y in enumerate(labels.tolist()):
        assert _err(guided[i:i + 1], guided_model(net, y, guidance_scale=4.0)(x[i:i + 1], t[i:i + 1])) < TOL


@pytest.mark.parametrize("kwargs", [dict(), dict(w=1.0, guidance_scale=2.0)])
def test_exactly_one_convention(net, kwargs):
    with pytest.raises(LineageError, match="exactly one"):
        guided_model(net, 3, **kwargs)


@pytest.mark.parametrize("label", [10, -1, 2.0, True, [[1]]])
def test_bad_labels_are_refused(net, label):
    with pytest.raises(LineageError, match="class labels"):
        guided_model(net, label, w=1.0)


def test_a_model_without_classes_is_refused():
    with pytest.raises(LineageError, match="without num_classes"):
        guided_model(UNet(base=16), 3, w=1.0)


def test_label_dropout_rate():
    """Each label is dropped independently with probability p: the dropped fraction of n labels has binomial
    standard error sqrt(p (1 - p) / n) (0.0028 for p = 0.2, n = 20000); allowed 4 SE (a false failure ~6e-5)."""
    n, p = 20_000, 0.2
    y = torch.arange(10).repeat(n // 10)
    c = drop_labels(y, p, null=10, generator=torch.Generator().manual_seed(0))
    dropped = c == 10
    assert abs(dropped.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(c[~dropped], y[~dropped])  # the others keep their label
    assert not (drop_labels(y, 0.0, 10) == 10).any()


def test_the_training_loss_sees_the_dropped_labels(net):
    """Algorithm 1: the network is called once, on the labels after dropout drawn from the training generator."""
    seen = []
    spy = lambda x, t, y: seen.append(y) or torch.zeros_like(x)  # noqa: E731
    spy.labels = net.labels  # null_label(spy) reads the class count from here
    y = torch.arange(10).repeat(20)
    loss_cfg(spy, torch.zeros(200, 1, 8, 8), y, make_schedule("linear", 1000), 0.5, torch.Generator().manual_seed(4))
    assert len(seen) == 1
    assert torch.equal(seen[0], drop_labels(y, 0.5, 10, torch.Generator().manual_seed(4)))
    assert 0 < (seen[0] == 10).sum() < 200


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1])
def test_p_uncond_must_leave_both_models_something_to_learn(p):
    with pytest.raises(LineageError, match="p_uncond"):
        train_config("quick", p_uncond=p)


def test_diversity_of_identical_and_spread_samples():
    labels = torch.tensor([0, 0, 1, 1])
    assert diversity(torch.zeros(4, 3), labels) == 0.0
    # class 0: two points 2 apart; class 1: two points 4 apart -> mean 3
    features = torch.tensor([[0.0, 0], [2, 0], [0, 0], [0, 4]])
    assert abs(diversity(features, labels) - 3.0) < 1e-12


# ---------------------------------------------------------------- exact pieces: where guided sampling ends

def _tilted_moments(data, y, w):
    """Mean and per-axis std of the tilted density p(x | y)^(1 + w) p(x)^(-w), by quadrature on a 0.02 grid over
    [-8, 8]^2. Far out both densities are dominated by std-0.6 components, so the tilted tails are Gaussian with
    std 0.6 and the mass beyond +-8 is negligible (< 1e-20); the Riemann sum of these smooth integrands is exact to
    far below the Monte Carlo errors used below."""
    g = torch.linspace(-8, 8, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    p = torch.softmax((1 + w) * data.conditional(y).log_prob(grid) - w * data.mixture.log_prob(grid), 0)[:, None]
    mean = (p * grid).sum(0)
    return mean, (p * (grid - mean) ** 2).sum(0).sqrt()


def test_guided_sampling_does_not_end_at_the_tilted_density():
    """With exact eps, Eq. (6) is the eps of p_t(x | y)^(1 + w) p_t(x)^(-w) at every noise level, but the guided
    DDIM chain does not end at the tilted *data* density. n = 2000 iid samples: the standard error of a sample mean
    is std / sqrt(n) <= 0.7 / 45 = 0.016. Control (w = 0, the exact conditional model): the sample mean is within 4
    SE of the exact one. Guided (w = 3): DDIM has converged (50 and 200 steps agree to 4 SE), yet the sample mean is
    more than 20 SE away from the tilted mean and the samples are narrower than the tilted density."""
    from refimpl.ddim import ddim_sample
    from refimpl.guidance import guided_eps_model, labelled_mixture_2d
    from refimpl.schedules import Schedule, linear_betas

    data, schedule, n = labelled_mixture_2d(), Schedule(linear_betas(1000, dtype=torch.float64)), 2000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se = 0.7 / math.sqrt(n)

    def run(w, steps):
        return ddim_sample(guided_eps_model(data, schedule, 0, w=w), x_T, schedule, steps=steps, disable=True)

    mean, _ = _tilted_moments(data, 0, 0.0)
    assert (run(0.0, 50).mean(0) - mean).abs().max() < 4 * se
    guided, guided_fine = run(3.0, 50), run(3.0, 200)
    assert (guided.mean(0) - guided_fine.mean(0)).abs().max() < 4 * se
    mean, std = _tilted_moments(data, 0, 3.0)
    assert (guided.mean(0) - mean).norm() > 20 * se, (guided.mean(0), mean)
    # the sample std has relative SE 1 / sqrt(2 (n - 1)) = 1.6% for near-Gaussian samples: 10% is > 6 SE
    assert (guided.std(0) < 0.9 * std).all(), (guided.std(0), std)


# ---------------------------------------------------------------- command line

def _cli(args, capsys):
    from refimpl.__main__ import PAPERS

    code = main(PAPERS, ["cfg", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args, fragment", [
    (["sample", "--ckpt", "nowhere", "--label", "10", "--out", "x.png"], "--label"),
    (["sample", "--ckpt", "nowhere", "--sampler", "ddpm", "--steps", "5", "--out", "x.png"], "--steps"),
    (["sample", "--ckpt", "nowhere", "--out", "x.png"], "nowhere"),
    (["sample", "--ckpt", "nowhere", "--sampler", "euler", "--out", "x.png"], "--sampler"),
    (["sample", "--ckpt", "nowhere", "--out", "x.jpg"], ".png"),
    (["train", "--p-uncond", "1.5", "--out", "run"], "p_uncond"),
    (["train", "--steps", "0", "--out", "run"], "positive"),
])
def test_cli_refuses_bad_input(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(args, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("refimpl: error:"), err
    assert fragment in err[0]


def test_cli_trains_resumes_and_samples(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")
    assert _cli(["train", "--steps", "2", "--out", "run", "--device", "cpu", "--quiet"], capsys)[0] == 0
    assert _cli(["train", "--steps", "2", "--out", "run", "--device", "cpu", "--quiet"], capsys)[0] == 0  # resumes
    code, err = _cli(["train", "--steps", "3", "--out", "run", "--quiet"], capsys)
    assert code == 2 and "decays its learning rate to zero at step 2" in err[0]  # the quick preset's cosine decay
    assert _cli(["sample", "--ckpt", "run", "--label", "4", "--n", "2", "--steps", "2", "--out", "s.png",
                 "--device", "cpu", "--quiet"], capsys)[0] == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    code, err = _cli(["sample", "--ckpt", "run", "--guidance-scale", "nan", "--out", "s.png", "--quiet"], capsys)
    assert code == 2 and "finite" in err[0]
    code, err = _cli(["train", "--steps", "3", "--p-uncond", "0.1", "--out", "run", "--quiet"], capsys)
    assert code == 2 and "p_uncond" in err[0]  # another configuration is not resumed silently


# ---------------------------------------------------------------- learning: the trade-off on digits (slow)

@pytest.fixture(scope="module")
def tradeoff():
    """The cached quick model's guided DDIM samples (figures.zoo.cfg: the same artifacts and metrics as the
    figures): the requested labels, the metrics per scale, and the probe's features per scale (for the bootstrap)."""
    from figures.zoo.cfg import SCALES, tradeoff_metrics, tradeoff_samples
    from refimpl.digits_eval import classifier

    samples, probe = tradeoff_samples("quick"), classifier()
    with torch.no_grad():
        features = {s: probe.features(samples[f"x0_{s:g}"].clamp(-1, 1)) for s in SCALES}
    return samples["labels"], {row["scale"]: row for row in tradeoff_metrics(samples)}, features


def _pooled_se(p1: float, p2: float, n: int) -> float:
    """Standard error of the difference of two proportions of n each under the null of no difference."""
    p = (p1 + p2) / 2
    return math.sqrt(2 * p * (1 - p) / n)


@pytest.mark.slow
def test_guidance_raises_accuracy_on_the_requested_digit(tradeoff):
    """Accuracy of the digits probe on the requested digit. Unguided-unconditional (s = 0) samples ignore the label,
    so their accuracy is 1/10 up to binomial noise (3 SE); the conditional model (s = 1) beats it, and every
    guided scale (s > 1) beats the conditional model, each by more than 3 pooled SE of the difference (a
    two-proportion z-test at 3 sigma); neighbouring guided scales may saturate but not drop by more than 3 SE."""
    labels, metrics, _ = tradeoff
    n = len(labels)
    acc = {s: row["accuracy"] for s, row in metrics.items()}
    print("accuracy per scale", acc)
    assert abs(acc[0.0] - 0.1) < 3 * math.sqrt(0.1 * 0.9 / n)
    assert acc[1.0] - acc[0.0] > 3 * _pooled_se(acc[0.0], acc[1.0], n)
    guided = sorted(s for s in acc if s > 1)
    for s in guided:
        assert acc[s] - acc[1.0] > 3 * _pooled_se(acc[1.0], acc[s], n), (s, acc)
    for s, s_next in zip(guided, guided[1:]):
        assert acc[s_next] >= acc[s] - 3 * _pooled_se(acc[s], acc[s_next], n), (s, acc)


@pytest.mark.slow
def test_guidance_lowers_within_class_diversity(tradeoff):
    """Within-class diversity (refimpl.cfg.diversity of the probe's features) falls at every step up the scales.
    Every scale starts from the same x_T, so the error of a difference is estimated by a paired bootstrap (the same
    resampled sample indices within each digit for both scales, 200 resamples); each drop must exceed 3 SE."""
    labels, metrics, features = tradeoff
    scales = sorted(metrics)
    div = {s: row["diversity"] for s, row in metrics.items()}
    print("diversity per scale", div)
    g = torch.Generator().manual_seed(0)
    by_class = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    boot = {s: [] for s in scales}
    for _ in range(200):
        index = torch.cat([rows[torch.randint(len(rows), (len(rows),), generator=g)] for rows in by_class])
        for s in scales:
            boot[s].append(diversity(features[s][index], labels[index]))
    for s, s_next in zip(scales, scales[1:]):
        se = torch.tensor(boot[s]).sub(torch.tensor(boot[s_next])).std().item()
        assert div[s] - div[s_next] > 3 * se, (s, s_next, div, se)
