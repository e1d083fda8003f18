"""Scaling laws (refimpl.scaling): the Chinchilla fit recovers a known law, the closed-form compute-optimal allocation
is the minimum of the law along 6 N D = C, parameters are counted as the papers count them, and the cached grid of
figures/zoo/scaling.py really learns (bigger and longer is better, everything beats the unigram baseline); the command
line refuses bad input in one line."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.special import huber as scipy_huber

from refimpl import gpt, scaling
from refimpl.cli import main as cli_main
from refimpl.llama import Llama, swiglu_hidden
from refimpl.core import LineageError
from refimpl.scaling import Law

torch.set_num_threads(1)
#: Chinchilla Eq. (10), the paper's fitted law, as a realistic test case
CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


# --- closed form -------------------------------------------------------------------------------------------------

def test_huber_and_the_objectives_gradient():
    # The Huber loss is scipy's (Huber 1964); the analytic gradient of Chinchilla Eq. (11) matches central finite
    # differences. Step 1e-6 on O(1) coordinates: truncation ~1e-12 and rounding ~1e-16/1e-6 = 1e-10 of an O(1)-O(10)
    # objective, so 1e-5 (relative to the gradient's scale) is far above both.
    r = np.linspace(-0.01, 0.01, 41)
    assert np.allclose(scaling.huber(r, 1e-3), scipy_huber(1e-3, r), rtol=0, atol=1e-15)
    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(9, 14, 20), rng.uniform(10, 16, 20)
    log_l = np.log(CHINCHILLA.loss(np.exp(log_n), np.exp(log_d))) + rng.normal(0, 0.01, 20)
    theta = np.array([5.5, 6.2, 0.4, 0.3, 0.25])
    _, grad = scaling._objective(theta, log_n, log_d, log_l, 1e-3)
    h = 1e-6
    numeric = [(scaling._objective(theta + h * e, log_n, log_d, log_l, 1e-3)[0]
                - scaling._objective(theta - h * e, log_n, log_d, log_l, 1e-3)[0]) / (2 * h) for e in np.eye(5)]
    assert np.allclose(grad, numeric, rtol=0, atol=1e-5 * max(1.0, np.abs(grad).max()))


def _design(law: Law):
    """A 6 x 6 grid of (N, D), each spanning two decades around the law's scales, and its exact losses."""
    N, D = (np.array(x, dtype=float) for x in zip(*itertools.product(np.geomspace(1e4, 1e6, 6),
                                                                      np.geomspace(1e5, 1e7, 6))))
    return N, D, law.loss(N, D)


def test_fit_recovers_a_known_law_without_noise():
    # Exact losses of a law inside the fit's family: the minimum of Eq. (11) is zero at the true parameters, and near it
    # every residual is below delta, where the Huber loss is r^2/2, a smooth least-squares problem that L-BFGS solves
    # to its tolerance (relative objective change 2e-9): parameters to ~1e-4 relative; 1e-3 leaves room for it.
    truth = Law(E=1.2, A=80.0, B=300.0, alpha=0.4, beta=0.3)
    N, D, L = _design(truth)
    fit = scaling.fit_law(N, D, L)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, key) == pytest.approx(getattr(truth, key), rel=1e-3), key
    assert fit.exponents == pytest.approx(truth.exponents, abs=1e-3)


def test_fit_recovers_a_known_law_within_its_standard_error():
    # Log losses with Gaussian noise sigma = 2e-3 (the order of delta, so the Huber loss is partly linear). The
    # tolerance is 5 standard errors of the least-squares estimate at the truth (Gauss-Newton: cov = sigma^2 (J^T J)^-1
    # with J the Jacobian of log L in (a, b, e, alpha, beta); delta method for the exponent a = beta / (alpha + beta)).
    # The Huber estimate is a little less efficient than least squares under Gaussian noise (~0.9-1.0 here); 5 standard
    # errors leaves a chance of order 1e-6 of a false failure for a correct fit.
    truth = Law(E=1.2, A=80.0, B=300.0, alpha=0.4, beta=0.3)
    N, D, L = _design(truth)
    sigma = 2e-3
    noisy = L * np.exp(np.random.default_rng(1).normal(0, sigma, L.size))
    fit = scaling.fit_law(N, D, noisy)
    terms = np.stack([math.log(truth.A) - truth.alpha * np.log(N), math.log(truth.B) - truth.beta * np.log(D),
                      np.full(N.size, math.log(truth.E))])
    w = np.exp(terms - np.logaddexp.reduce(terms, axis=0))  # d log L / d (a, b, e)
    J = np.stack([w[0], w[1], w[2], -w[0] * np.log(N), -w[1] * np.log(D)], axis=1)
    cov = sigma ** 2 * np.linalg.inv(J.T @ J)
    s = truth.alpha + truth.beta
    grad_a = np.array([0, 0, 0, -truth.beta / s ** 2, truth.alpha / s ** 2])  # d a / d theta
    se_a = math.sqrt(grad_a @ cov @ grad_a)
    assert abs(fit.exponents[0] - truth.exponents[0]) < 5 * se_a, (fit, se_a)
    for i, key in enumerate(("alpha", "beta"), start=3):
        assert abs(getattr(fit, key) - getattr(truth, key)) < 5 * math.sqrt(cov[i, i]), key


def test_closed_form_allocation_is_the_minimum_along_the_compute_constraint():
    # Chinchilla Eq. (4) against a brute-force search: L(N, C / (6 N)) on 200001 log-spaced N over nine decades
    # (spacing 1e-4 in log N), then the closed form must sit within one grid step of the grid's argmin and give a loss
    # no higher than it (up to float64 rounding of L ~ 2, 1e-12).
    for C in (1e18, 5.76e23, 1e26):  # 5.76e23: Gopher's budget, where the paper's Table 3 puts Approach 1's optimum
        n = np.geomspace(1e6, 1e15, 200001)
        losses = CHINCHILLA.loss(n, C / (6 * n))
        n_opt, d_opt = CHINCHILLA.compute_optimal(C)
        assert abs(math.log(n_opt) - math.log(n[losses.argmin()])) <= math.log(n[1] / n[0]) + 1e-12
        assert CHINCHILLA.loss(n_opt, d_opt) <= losses.min() + 1e-12
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-12)
    a, b = CHINCHILLA.exponents
    (n1, d1), (n2, d2) = (CHINCHILLA.compute_optimal(c) for c in (1e20, 1e22))
    assert math.log(n2 / n1) / math.log(100) == pytest.approx(a, abs=1e-12) and a + b == pytest.approx(1.0)
    assert math.log(d2 / d1) / math.log(100) == pytest.approx(b, abs=1e-12)
    assert round(a, 2) == 0.45  # beta / (alpha + beta) of the rounded Eq. (10); the paper's Table 2 says 0.46


@pytest.mark.parametrize("width,depth,heads,kv_heads", [(16, 2, 2, 2), (24, 3, 4, 2), (48, 2, 2, 1)])
def test_parameter_counts_match_a_hand_count(width, depth, heads, kv_heads):
    model = Llama(100, width=width, depth=depth, heads=heads, kv_heads=kv_heads)
    counts = scaling.parameter_counts(model)
    assert counts == scaling.hand_count(100, width, depth, heads, kv_heads, swiglu_hidden(width))
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_kaplans_twelve_l_d_squared():
    # Kaplan Eq. (2.1): N ~ 12 n_layer d^2 for d_attn = d_model and two MLP matrices of width 4d. The SwiGLU MLP of
    # width 8d/3 has the same 8 d^2 (exact when 3 divides 8d and 8 divides it: d = 48 gives 128), so with multi-head
    # attention the count is exactly 12 n_layer d^2 plus the norms' gains: n_layer 2d + d.
    model = Llama(100, width=48, depth=2, heads=2)
    assert model.config["mlp_hidden"] == 128
    assert scaling.parameter_counts(model)["non_embedding"] == 12 * 2 * 48 ** 2 + 2 * 2 * 48 + 48


def test_transformers_counts_an_untied_output_layer_as_non_embedding():
    # transformers' num_parameters(exclude_embeddings=True) leaves out the weights of nn.Embedding modules only. For
    # LLaMA's untied output layer (an nn.Linear) it therefore reports Kaplan's N plus V d: the output layer is a
    # vocabulary matrix, which Kaplan's definition ("excluding all vocabulary and positional embeddings") excludes.
    import transformers

    model = Llama(100, width=16, depth=2, heads=2)
    c = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=c["mlp_hidden"], num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, tie_word_embeddings=False))
    counts = scaling.parameter_counts(model)
    assert hf.num_parameters() == counts["total"]
    assert hf.num_parameters(exclude_embeddings=True) == counts["non_embedding"] + 100 * 16


def test_grid_config_and_runs():
    data = gpt.text_data()
    state = torch.get_rng_state()
    grid = scaling.grid_config("quick", data=data)
    assert torch.equal(state, torch.get_rng_state())  # built on the meta device: nothing drawn
    p = scaling.PRESETS["quick"]
    assert [int(w) for w in grid["models"]] == p["widths"] and grid["steps"] == p["steps"]
    config = scaling.run_config(grid, p["widths"][0], p["steps"][-1])
    assert config["lr_decay"] == "cosine" and config["warmup"] == round(0.1 * p["steps"][-1])
    assert scaling.tokens(config) == p["steps"][-1] * p["batch_size"] * p["context"]
    with pytest.raises(LineageError, match="unknown preset"):
        scaling.grid_config("huge", data=data)


# --- learning: the cached grid ------------------------------------------------------------------------------------

def _paired(a: dict, b) -> tuple[float, float]:
    """Mean and standard error of the paired block differences a - b (b: a run or the unigram block list)."""
    diff = np.array(a["blocks"]) - np.array(b["blocks"] if isinstance(b, dict) else b)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))


@pytest.mark.slow
def test_the_grid_learns_bigger_and_longer_is_better():
    """The cached quick grid. Held-out losses (nats/char) are compared on the same held-out blocks (128 characters;
    neighbouring characters are correlated, blocks much less), so every comparison is a paired difference with its
    standard error over blocks. Bigger is better at the largest budget and longer is better at the largest width:
    each step of the grid lowers the loss by more than 3 standard errors (a one-sided chance below 0.0014 that a
    zero difference passes by luck of the held-out text). Every run beats the add-one unigram baseline by more than 5
    standard errors. The errors do not include retraining with another seed (one seed per run)."""
    from figures.zoo.scaling import fits, results, scaling_grid

    run = scaling_grid("quick")
    res = results(run)
    runs = {(r["width"], r["steps"]): r for r in res["runs"]}
    widths, steps = sorted({w for w, _ in runs}), sorted({s for _, s in runs})
    for small, big in zip(widths, widths[1:]):
        d, se = _paired(runs[big, steps[-1]], runs[small, steps[-1]])
        assert d < -3 * se, (small, big, d, se)
    for short, long in zip(steps, steps[1:]):
        d, se = _paired(runs[widths[-1], long], runs[widths[-1], short])
        assert d < -3 * se, (short, long, d, se)
    for key, r in runs.items():
        d, se = _paired(r, res["unigram_blocks"])
        assert d < -5 * se, (key, d, se)
    grid = res["grid"]
    assert grid == scaling.grid_config("quick") and len(runs) == len(widths) * len(steps)
    for count, summary in fits(run).items():
        law = Law(**{k: summary["law"][k] for k in ("E", "A", "B", "alpha", "beta")})
        N, D, L = (np.array([r[k] for r in res["runs"]], dtype=float) for k in (count, "tokens", "held_out"))
        # the fitted law describes the grid: its rms residual in log loss is the one recorded, and it is a few per
        # cent at most (the law has five parameters for sixteen runs)
        assert np.sqrt(np.mean((np.log(law.loss(N, D)) - np.log(L)) ** 2)) == pytest.approx(summary["residual_rms"])
        assert summary["residual_rms"] < 0.05
        low, high = summary["interval"]["a"]
        assert low <= summary["law"]["a"] <= high or not summary["samples"]


def _cli(*args: str) -> int:
    return cli_main({"scaling": "refimpl.commands.scaling"}, ["scaling", *args])


@pytest.mark.slow
def test_cli_resumes_the_grid_fits_it_and_refuses_bad_input(tmp_path, capsys):
    # `train` on a copy of the cached grid resumes every finished run (nothing left to train) and scores it again on
    # the CPU: the same held-out losses to float64 rounding of the same sums. `fit` prints the law and the exponents.
    from figures.zoo.scaling import results, scaling_grid

    run = scaling_grid("quick")
    copy = tmp_path / "grid"
    shutil.copytree(run, copy)
    assert _cli("train", "--preset", "quick", "--out", str(copy), "--device", "cpu", "--quiet") == 0
    assert "unigram baseline" in capsys.readouterr().out
    old, new = results(run)["runs"], json.loads((copy / "results.json").read_text())["runs"]
    assert [r["held_out"] for r in new] == pytest.approx([r["held_out"] for r in old], abs=1e-9)
    assert _cli("fit", "--grid", str(copy), "--bootstrap", "5") == 0
    out = capsys.readouterr().out
    assert "a (N_opt ~ C^a)" in out and "10-90%" in out
    for argv, fragment in ((["fit", "--grid", str(tmp_path / "missing")], "no grid results"),
                           (["fit", "--grid", str(copy), "--count", "all"], "invalid choice"),
                           (["fit", "--grid", str(copy), "--bootstrap", "-1"], "an integer >= 0"),
                           (["train", "--preset", "huge", "--out", str(copy)], "invalid choice")):
        assert _cli(*argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (argv, err)


def test_the_page_states_the_presets(repo_root):
    # The sizes typed in the page's 动手跑 tabs are the presets' (everything measured comes from generated includes).
    page = (repo_root / "docs" / "llm" / "scaling-laws.md").read_text(encoding="utf-8")
    for name in ("quick", "full"):
        p = scaling.PRESETS[name]
        sizes = (f"宽 {'、'.join(map(str, p['widths']))}，{p['depth']} 层、{p['heads']} 个头；每种宽度训练 "
                 f"{'、'.join(map(str, p['steps']))} 步，batch {p['batch_size']}，上下文 {p['context']} 个字符，"
                 f"峰值学习率 {p['lr']:g}")
        assert sizes in page, name
