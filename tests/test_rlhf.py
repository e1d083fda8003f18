"""InstructGPT's RLHF (refimpl.rlhf) on the toy preference problem (refimpl.preferences): supervised fine-tuning and
the Bradley-Terry reward model against their closed forms, PPO's clipped surrogate and per-sample KL penalty against
the exact policy gradient, and learning: PPO reaches the optimum of its reward model, and the reward model recovers
the true reward within its standard errors. Everything is float64."""

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from refimpl import checkpoint, preferences, rlhf
from refimpl.__main__ import PAPERS
from refimpl.cli import main
from refimpl.preferences import Comparisons

torch.set_num_threads(1)
F64 = torch.float64
BETA = preferences.BETA


@pytest.fixture(scope="module")
def run(instructgpt_run):
    """The quick run of the site's figures: seed 0, SFT -> reward model -> PPO (tests/conftest.py)."""
    return instructgpt_run


def _gradient(loss, at: torch.Tensor) -> torch.Tensor:
    at = at.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(at), at)
    return grad


# --- step 1: supervised fine-tuning ------------------------------------------------------------------------------

def test_sft_reaches_the_empirical_frequencies():
    """For a table, maximum likelihood on demonstrations is the empirical frequency p_hat. The cross-entropy's
    gradient with respect to prompt x's logits is exactly (n_x / N)(pi_x - p_hat_x), so at the returned logits
    max |pi - p_hat| = max |grad| N / n_x: the test reads the gradient and asserts that identity's bound."""
    task = preferences.make_task(3, 4, 1)
    x, y = preferences.sample_demonstrations(task, 150, torch.Generator().manual_seed(1))
    logits = rlhf.sft(x, y, 3, 4)
    counts = torch.zeros(3, 4, dtype=F64).index_put_((x, y), torch.ones(len(x), dtype=F64), accumulate=True)
    p_hat = counts / counts.sum(dim=1, keepdim=True)
    grad = _gradient(lambda t: -F.log_softmax(t, dim=1)[x, y].mean(), logits)
    bound = grad.abs().max() * len(x) / counts.sum(dim=1).min()
    assert bound < 1e-8  # converged (the Newton iterations stop at max |grad| 1e-12)
    assert (F.softmax(logits, dim=1) - p_hat).abs().max() <= bound * (1 + 1e-6) + 1e-15


# --- step 2: the Bradley-Terry reward model ----------------------------------------------------------------------

def _random_comparisons(prompts=3, responses=4, n=50, seed=0) -> Comparisons:
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(prompts).repeat_interleave(n)
    pair = torch.stack([torch.randperm(responses, generator=g)[:2] for _ in range(len(x))])
    return Comparisons(x, pair[:, 0], pair[:, 1])


def test_bradley_terry_gradient_is_the_closed_form():
    """d/dr of -log sigmoid(r_w - r_l) is -(1 - sigmoid(r_w - r_l)) at r_w and +(1 - sigmoid(.)) at r_l (InstructGPT
    Eq. (1)); autograd of the mean agrees with that sum to float64 rounding."""
    data = _random_comparisons()
    reward = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    push = 1 - torch.sigmoid(reward[data.x, data.chosen] - reward[data.x, data.rejected])
    expected = torch.zeros(3, 4, dtype=F64)
    expected.index_put_((data.x, data.chosen), -push / len(data), accumulate=True)
    expected.index_put_((data.x, data.rejected), push / len(data), accumulate=True)
    torch.testing.assert_close(_gradient(lambda r: preferences.bradley_terry_nll(r, data), reward), expected,
                               rtol=0, atol=1e-15)


def test_bradley_terry_sees_only_differences_within_a_prompt():
    """Adding any constant c(x) to a prompt's rewards changes no label probability (float64 rounding)."""
    data = _random_comparisons()
    reward = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    shift = torch.tensor([[5.0], [-2.0], [0.3]], dtype=F64)
    torch.testing.assert_close(preferences.bradley_terry_nll(reward + shift, data),
                               preferences.bradley_terry_nll(reward, data), rtol=1e-14, atol=0)


def test_the_expected_loss_is_minimised_by_the_true_reward():
    """With the labels replaced by their Bradley-Terry probabilities, the loss of every pair (y1, y2) is
    p l(y1 > y2) + (1 - p) l(y2 > y1), whose gradient vanishes exactly where r_hat(y1) - r_hat(y2) = r(y1) - r(y2):
    the likelihood is a proper scoring rule, so the reward model is consistent. Zero to float64 rounding."""
    reward = torch.randn(1, 4, dtype=F64, generator=torch.Generator().manual_seed(4))

    def expected_loss(r):
        total = 0
        for i in range(4):
            for j in range(i + 1, 4):
                p = torch.sigmoid(reward[0, i] - reward[0, j])
                one = lambda w, l: Comparisons(torch.tensor([0]), torch.tensor([w]), torch.tensor([l]))  # noqa: E731
                total = total + (p * preferences.bradley_terry_nll(r, one(i, j))
                                 + (1 - p) * preferences.bradley_terry_nll(r, one(j, i)))
        return total

    assert _gradient(expected_loss, reward).abs().max() < 1e-15
    assert _gradient(expected_loss, reward + 0.1 * torch.arange(4.0, dtype=F64)).abs().max() > 1e-3


def test_two_responses_have_the_closed_form_logit():
    """With K = 2 the maximum-likelihood reward difference is logit(w / n), w the wins of response 0 in n
    comparisons. The loss's derivative along d = r_0 - r_1 is sigmoid(d) - w / n, so |sigmoid(d_hat) - w / n| is
    bounded by the returned table's gradient (read, not assumed)."""
    wins, n = 37, 50
    data = Comparisons(torch.zeros(n, dtype=torch.long), torch.tensor([0] * wins + [1] * (n - wins)),
                       torch.tensor([1] * wins + [0] * (n - wins)))
    reward = rlhf.fit_reward_model(data, 1, 2)
    grad = _gradient(lambda r: preferences.bradley_terry_nll(r, data), reward)
    assert abs(torch.sigmoid(reward[0, 0] - reward[0, 1]).item() - wins / n) <= grad.abs().max().item() + 1e-15
    assert grad.abs().max() < 1e-9
    torch.testing.assert_close(reward.sum(), torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-15)  # centred


def test_reward_model_recovers_the_reward_within_its_standard_errors(run):
    """The maximum-likelihood reward is asymptotically normal around the true reward with the covariance C = (the
    Fisher information)^+ (refimpl.preferences.bradley_terry_covariance), so sum_x e_x^T C_x^+ e_x of the centred
    errors e is chi-square with P (K - 1) degrees of freedom: asserted below its 99.9% quantile. (Over 40 seeds its
    mean was 14.9 for 16 degrees of freedom, so the asymptotics hold at these 1000 comparisons per prompt.)"""
    task, out = run
    cov = preferences.bradley_terry_covariance(task.reward, out["data"])
    error = out["reward_model"] - preferences.centred(task.reward)
    flat = torch.full_like(cov[0], 1 / task.responses)  # C^+ = (C + u u^T)^-1 - u u^T, u = 1 / sqrt(K) its null space
    stat = sum(float(e @ (torch.linalg.inv(c + flat) - flat) @ e) for e, c in zip(error, cov))
    assert stat < chi2.ppf(0.999, task.prompts * (task.responses - 1)), stat
    torch.testing.assert_close(out["reward_model"].sum(dim=1), torch.zeros(task.prompts, dtype=F64), rtol=0, atol=1e-12)


# --- step 3: PPO with the KL penalty -----------------------------------------------------------------------------

def test_the_per_sample_penalty_gives_the_exact_policy_gradient():
    """E_{y ~ pi}[grad log pi(y) R(y)] with InstructGPT's per-sample reward R = r - beta log(pi / pi_ref) is the
    gradient of the objective E[r] - beta KL(pi || pi_ref) (the term -beta E[grad log pi] it leaves out is zero):
    exact sums over the K responses, float64 rounding."""
    g = torch.Generator().manual_seed(5)
    theta, ref, reward = (torch.randn(3, 5, dtype=F64, generator=g) for _ in range(3))
    ref_logp = F.log_softmax(ref, dim=1)
    exact = _gradient(lambda t: preferences.objective(F.log_softmax(t, dim=1), ref_logp, reward, BETA).sum(), theta)
    logp = F.log_softmax(theta, dim=1)
    big_r = rlhf.penalised_reward(reward, logp, ref_logp, BETA)
    score = torch.eye(5, dtype=F64)[None] - logp.exp()[:, None, :]  # grad_theta log pi(y) = e_y - pi, row y
    torch.testing.assert_close(torch.einsum("py,py,pyk->pk", logp.exp(), big_r, score), exact, rtol=0, atol=1e-14)


def test_the_objective_is_maximised_by_pi_star():
    """J(pi*) - J(pi) = beta KL(pi || pi*) for every pi (expand log pi* = log pi_ref + r / beta - log Z), and
    J(pi*) = beta log Z: so pi* is the unique maximiser and PPO's target. Float64 rounding."""
    g = torch.Generator().manual_seed(6)
    ref_logp = F.log_softmax(torch.randn(3, 5, dtype=F64, generator=g), dim=1)
    reward = torch.randn(3, 5, dtype=F64, generator=g)
    star = preferences.optimal_policy(ref_logp, reward, BETA)
    best = preferences.objective(star, ref_logp, reward, BETA)
    torch.testing.assert_close(best, BETA * torch.logsumexp(ref_logp + reward / BETA, dim=1), rtol=0, atol=1e-14)
    for _ in range(20):
        logp = F.log_softmax(3 * torch.randn(3, 5, dtype=F64, generator=g), dim=1)
        torch.testing.assert_close(best - preferences.objective(logp, ref_logp, reward, BETA),
                                   BETA * preferences.kl(logp, star), rtol=0, atol=1e-13)
        assert (preferences.objective(logp, ref_logp, reward, BETA) < best).all()


def test_at_pi_star_every_sample_has_the_same_penalised_reward():
    """At pi* the penalised reward r - beta log(pi* / pi_ref) = beta log Z(x) for every response: every advantage
    is zero, so PPO's updates stop exactly there (no noise floor). One PPO iteration from pi* moves nothing but
    rounding."""
    g = torch.Generator().manual_seed(7)
    ref_logp = F.log_softmax(torch.randn(3, 5, dtype=F64, generator=g), dim=1)
    reward = torch.randn(3, 5, dtype=F64, generator=g)
    star = preferences.optimal_policy(ref_logp, reward, BETA)
    big_r = rlhf.penalised_reward(reward, star, ref_logp, BETA)
    torch.testing.assert_close(big_r, (BETA * torch.logsumexp(ref_logp + reward / BETA, dim=1))[:, None].expand(3, 5),
                               rtol=0, atol=1e-14)
    moved = rlhf.ppo(ref_logp, reward, BETA, iterations=1, batch=64, epochs=4, lr=2.0, generator=g, start=star)
    torch.testing.assert_close(F.log_softmax(moved, dim=1), star, rtol=0, atol=1e-12)


def test_clipped_surrogate_clips_only_in_the_direction_the_advantage_pushes():
    """PPO Eq. (7): at rho = 1 the gradient is A grad log pi (the policy gradient); once rho has left
    [1 - eps, 1 + eps] in the direction A pushes (rho > 1 + eps with A > 0, rho < 1 - eps with A < 0) the sample
    gives no gradient; moved the other way, min() keeps the unclipped term and the gradient is rho A."""
    def grad(log_ratio, advantage):
        logp = torch.tensor(log_ratio, dtype=F64, requires_grad=True)
        rlhf.clipped_surrogate(logp, torch.tensor(0.0, dtype=F64), torch.tensor(advantage, dtype=F64)).backward()
        return logp.grad.item()

    assert grad(0.0, 1.5) == pytest.approx(1.5, abs=1e-15) and grad(0.0, -0.7) == pytest.approx(-0.7, abs=1e-15)
    assert grad(0.3, 1.0) == 0.0 and grad(-0.3, -1.0) == 0.0          # beyond the clip, pushed further: stopped
    rho = torch.exp(torch.tensor(-0.3, dtype=F64)).item()
    assert grad(-0.3, 1.0) == pytest.approx(rho, abs=1e-15)          # below 1 - eps but A > 0: pulled back
    assert grad(0.3, -1.0) == pytest.approx(-1 / rho, abs=1e-15)     # above 1 + eps but A < 0: pulled back


def test_ppo_reaches_the_optimum_of_its_reward_model(run):
    """PPO's fixed point is pi*(r_hat) = pi_SFT exp(r_hat / beta) / Z (the advantage vanishes only there, see above),
    and its error is pure optimisation: no sampling noise floor. The requirement: what PPO leaves is under a tenth
    of the error the finite comparisons leave in any route, E[KL(pi*(r_hat) || pi*(r))] ~= tr((diag pi* - pi* pi*^T)
    C) / (2 beta^2) (refimpl.preferences.predicted_kl), so that at this sample size PPO and DPO are
    indistinguishable."""
    task, out = run
    ref = F.log_softmax(out["sft"], dim=1)
    star = preferences.optimal_policy(ref, task.reward, BETA)
    star_hat = preferences.optimal_policy(ref, out["reward_model"], BETA)
    statistical = preferences.predicted_kl(star, preferences.bradley_terry_covariance(task.reward, out["data"]), BETA)
    ppo_logp = F.log_softmax(out["ppo"], dim=1)
    assert preferences.kl(ppo_logp, star_hat).mean() < 0.1 * statistical.mean()
    assert preferences.kl(ref, star_hat).mean() > 10 * statistical.mean()  # and it had a long way to go


def test_ppo_moves_toward_the_preferred_responses(run):
    """How far PPO moved, under the true reward: E_pi[r] of pi*(r_hat) differs from E_pi*[r] by a . delta / beta
    to first order (a = pi* (r - E_pi* r), delta the reward model's error), standard error
    refimpl.preferences.reward_standard_error; PPO's E[r] is within 4 of those standard errors (of the prompt
    average) of pi*'s, and pi*'s gain over SFT exceeds that margin, so the move toward preferred responses is
    measured, not noise. Its win rate against SFT is above one half."""
    task, out = run
    ref = F.log_softmax(out["sft"], dim=1)
    star = preferences.optimal_policy(ref, task.reward, BETA)
    cov = preferences.bradley_terry_covariance(task.reward, out["data"])
    se = preferences.reward_standard_error(star, task.reward, cov, BETA).pow(2).sum().sqrt() / task.prompts
    got = preferences.measure(F.log_softmax(out["ppo"], dim=1), ref, star, task.reward)
    best = preferences.measure(star, ref, star, task.reward)
    start = preferences.measure(ref, ref, star, task.reward)
    assert abs(got["reward"] - best["reward"]) < 4 * se
    assert best["reward"] - start["reward"] > 8 * se
    assert got["win"] > 0.5


# --- the command line ----------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    code = main(PAPERS, ["rlhf", *argv])
    return code, capsys.readouterr()


def test_cli_trains_and_writes_the_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    code, captured = _cli(["train", "--iterations", "20", "--out", str(out)], capsys)
    assert code == 0, captured.err
    assert "reward model: largest error" in captured.out and "PPO" in captured.out
    saved = checkpoint.load(out, expect_model="rlhf")
    assert saved.config["iterations"] == 20 and saved.config["beta"] == BETA
    assert set(saved.model_state) == {"sft_logits", "reward_model", "ppo_logits", "true_reward"}
    # one comparison per prompt leaves responses no comparison touches: no standard errors, but no traceback either
    code, captured = _cli(["train", "--comparisons", "1", "--iterations", "5", "--out", str(out)], capsys)
    assert code == 0 and "no standard errors" in captured.out, captured.err


def _refused(argv, capsys, fragment):
    code, captured = _cli(argv, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refimpl: error:") and fragment in lines[0], captured.err


def test_cli_refuses_bad_input(tmp_path, capsys):
    out = str(tmp_path / "x")
    _refused(["train", "--beta", "0", "--out", out], capsys, "positive number")
    _refused(["train", "--beta", "nan", "--out", out], capsys, "positive number")
    _refused(["train", "--responses", "1", "--out", out], capsys, "at least 2")
    _refused(["train", "--comparisons", "0", "--out", out], capsys, "positive integer")
    _refused(["train", "--clip", "1.5", "--out", out], capsys, "--clip must be below 1")
    _refused(["train", "--preset", "huge", "--out", out], capsys, "invalid choice")
    _refused(["train", "--device", "cuda", "--out", out], capsys, "unrecognized arguments")
    other = tmp_path / "other"
    checkpoint.save(other, model="ddpm", config={}, step=1, model_state={"w": torch.zeros(1)})
    _refused(["train", "--out", str(other)], capsys, "not 'rlhf'")
