"""What InstructGPT's RLHF (refimpl.rlhf) and DPO (refimpl.dpo) share: a preference problem small enough that its
answers are known exactly.

The problem is a contextual bandit, the one-step episode that RLHF makes of a language model: a prompt x (one of P),
a whole response y (one of K), a policy pi(y | x) = softmax(theta[x])_y with one logit per (prompt, response), and
labellers who compare two responses by a hidden reward r(x, y) through the Bradley-Terry model (DPO Eq. (1))

    p(y1 > y2 | x) = sigmoid(r(x, y1) - r(x, y2)).

Both papers maximise the same KL-regularised objective (InstructGPT Eq. (2) without its pretraining term; DPO
Eq. (3)), J(pi) = E_{y ~ pi}[r(x, y)] - beta KL(pi(. | x) || pi_ref(. | x)), whose maximiser is (DPO Eq. (4))

    pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x),

and for every policy J(pi*) - J(pi) = beta KL(pi || pi*) exactly (:func:`objective`): the distance of a trained
policy from pi*, in units of beta, is what it leaves of the objective on the table. With a table of P x K numbers
pi* is computed exactly, so every trained policy can be measured against it.

Everything here works in float64 on tensors shaped (P, K): log-probabilities ``logp``, rewards ``reward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

F64 = torch.float64

#: the toy's sizes per preset: prompts P, responses K, demonstrations and labelled comparisons per prompt
SIZES = {"quick": {"prompts": 4, "responses": 5, "demonstrations": 200, "comparisons": 1000},
         "full": {"prompts": 64, "responses": 16, "demonstrations": 2000, "comparisons": 20000}}
#: the KL coefficient beta of the site's runs (rewards are on the Bradley-Terry scale, r ~ N(0, 1))
BETA = 0.5


@dataclass(frozen=True)
class Task:
    """The hidden truth of a toy preference problem: the labellers' reward r(x, y) and the log-probabilities of the
    demonstrations they write for supervised fine-tuning, both (P, K)."""

    reward: torch.Tensor
    demonstrator: torch.Tensor

    @property
    def prompts(self) -> int:
        return self.reward.shape[0]

    @property
    def responses(self) -> int:
        return self.reward.shape[1]


@dataclass(frozen=True)
class Comparisons:
    """Labelled pairs, one row each: prompt ``x``, the preferred response ``chosen`` (y_w) and the other one
    ``rejected`` (y_l), int64 tensors of the same length."""

    x: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return self.x.numel()


def make_task(prompts: int = 4, responses: int = 5, seed: int = 0, *, reward_scale: float = 1.0,
              demo_scale: float = 0.5) -> Task:
    """A random task: rewards r ~ N(0, reward_scale^2) and demonstrator logits ~ N(0, demo_scale^2), independent of
    each other (what labellers write is not what they prefer most), seeded."""
    g = torch.Generator().manual_seed(seed)
    reward = reward_scale * torch.randn(prompts, responses, generator=g, dtype=F64)
    demonstrator = F.log_softmax(demo_scale * torch.randn(prompts, responses, generator=g, dtype=F64), dim=1)
    return Task(reward, demonstrator)


def sample_demonstrations(task: Task, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n demonstrations per prompt, y ~ demonstrator(. | x): the (x, y) pairs of supervised fine-tuning."""
    y = torch.multinomial(task.demonstrator.exp(), n, replacement=True, generator=generator)
    return torch.arange(task.prompts).repeat_interleave(n), y.reshape(-1)


def sample_comparisons(task: Task, logp: torch.Tensor, n: int, generator: torch.Generator) -> Comparisons:
    """n labelled pairs per prompt: two different responses drawn from the policy ``logp`` (y1 ~ pi, then y2 ~ pi
    restricted to y != y1, as when labellers rank several distinct samples of the SFT model), labelled by the
    Bradley-Terry model with the task's reward (DPO Eq. (1))."""
    probs = logp.exp().repeat_interleave(n, dim=0)
    y = torch.multinomial(probs, 2, replacement=False, generator=generator)
    x = torch.arange(task.prompts).repeat_interleave(n)
    first_wins = torch.rand(x.numel(), generator=generator, dtype=F64) < torch.sigmoid(
        task.reward[x, y[:, 0]] - task.reward[x, y[:, 1]])
    return Comparisons(x, torch.where(first_wins, y[:, 0], y[:, 1]), torch.where(first_wins, y[:, 1], y[:, 0]))


# --8<-- [start:closed_form]
def bradley_terry_nll(reward: torch.Tensor, data: Comparisons) -> torch.Tensor:
    """The reward model's loss (InstructGPT Eq. (1), DPO Eq. (2)): -mean log sigmoid(r(x, y_w) - r(x, y_l)), the
    negative log-likelihood of the labels under the Bradley-Terry model with reward table ``reward`` (P, K)."""
    return -F.logsigmoid(reward[data.x, data.chosen] - reward[data.x, data.rejected]).mean()


def optimal_policy(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi*(y | x) = log pi_ref(y | x) + r(x, y) / beta - log Z(x) (DPO Eq. (4)): the maximiser of the
    KL-regularised objective :func:`objective`."""
    return F.log_softmax(ref_logp + reward / beta, dim=1)


def objective(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """J(pi)(x) = E_{y ~ pi}[r(x, y) - beta log(pi(y | x) / pi_ref(y | x))] per prompt, shape (P,): InstructGPT's
    RL objective (Eq. (2)) with gamma = 0, which is DPO's Eq. (3): E[r] - beta KL(pi || pi_ref)."""
    return (logp.exp() * (reward - beta * (logp - ref_logp))).sum(dim=1)
# --8<-- [end:closed_form]


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per prompt, shape (P,), from log-probabilities (terms with p = 0 count 0; rounding can leave an
    exact zero at -1e-17, which is returned as 0)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(dim=1).clamp_min(0)


def total_variation(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Total-variation distance per prompt, shape (P,): half the L1 distance of the two distributions."""
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(dim=1)


def expected_reward(logp: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """E_{y ~ pi}[r(x, y)] per prompt, shape (P,)."""
    return (logp.exp() * reward).sum(dim=1)


def win_rate(logp: torch.Tensor, other_logp: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Per prompt, the probability that a labeller prefers a response of ``logp`` to one of ``other_logp``, both
    drawn independently: sum_{y, y'} pi(y) pi'(y') sigmoid(r(y) - r(y')) (a tie y = y' counts one half)."""
    pair = torch.sigmoid(reward[:, :, None] - reward[:, None, :])
    return torch.einsum("pi,pij,pj->p", logp.exp(), pair, other_logp.exp())


def centred(reward: torch.Tensor) -> torch.Tensor:
    """A reward table with each prompt's mean subtracted: preferences (Bradley-Terry) and the optimal policy do not
    change when a constant per prompt is added, so rewards are compared in this form."""
    return reward - reward.mean(dim=1, keepdim=True)


def bradley_terry_covariance(reward: torch.Tensor, data: Comparisons) -> torch.Tensor:
    """The asymptotic covariance of the maximum-likelihood reward table, one (K, K) matrix per prompt, shape
    (P, K, K): the pseudo-inverse of the Fisher information sum_pairs p (1 - p) (e_w - e_l)(e_w - e_l)^T with
    p = sigmoid(r_w - r_l) (the constant direction, which the labels cannot see, is left out: the covariance of the
    centred estimate)."""
    prompts, responses = reward.shape
    diff = F.one_hot(data.chosen, responses).to(F64) - F.one_hot(data.rejected, responses).to(F64)
    p = torch.sigmoid(reward[data.x, data.chosen] - reward[data.x, data.rejected])
    info = torch.zeros(prompts, responses, responses, dtype=F64)
    info.index_add_(0, data.x, (p * (1 - p))[:, None, None] * diff[:, :, None] * diff[:, None, :])
    # the constant u = 1 / sqrt(K) spans the information's null space, so its pseudo-inverse is
    # (info + u u^T)^-1 - u u^T: exact, where a thresholded pinv would mistake rounding for information
    flat = torch.full((responses, responses), 1.0 / responses, dtype=F64)
    return torch.linalg.inv(info + flat) - flat


def predicted_kl(logp_star: torch.Tensor, covariance: torch.Tensor, beta: float) -> torch.Tensor:
    """The expected KL(pi_hat || pi*) per prompt, shape (P,), when pi_hat is the optimal policy of a reward estimate
    with error covariance ``covariance`` (P, K, K): to second order KL = delta^T (diag pi* - pi* pi*^T) delta
    / (2 beta^2) for a reward error delta, whose expectation is tr((diag pi* - pi* pi*^T) C) / (2 beta^2)."""
    p = logp_star.exp()
    fisher = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("pij,pji->p", fisher, covariance) / (2 * beta ** 2)


def reward_standard_error(logp_star: torch.Tensor, reward: torch.Tensor, covariance: torch.Tensor,
                          beta: float) -> torch.Tensor:
    """The standard error of E_{pi_hat}[r] per prompt, shape (P,), for pi_hat the optimal policy of a reward
    estimate with error covariance ``covariance``: to first order E_{pi_hat}[r] - E_{pi*}[r] = a . delta / beta
    with a = pi* (r - E_{pi*}[r]), so its variance is a^T C a / beta^2."""
    a = logp_star.exp() * (reward - expected_reward(logp_star, reward)[:, None])
    return torch.einsum("pi,pij,pj->p", a, covariance, a).clamp_min(0).sqrt() / beta


def measure(logp: torch.Tensor, ref_logp: torch.Tensor, star_logp: torch.Tensor,
            reward: torch.Tensor) -> dict[str, float]:
    """How far a policy got, averaged over prompts (uniform): ``kl_star`` KL(pi || pi*) and ``tv_star`` the
    total-variation distance to pi*, ``kl_ref`` KL(pi || pi_ref), ``reward`` E_pi[r] under the true reward and
    ``win`` the win rate against pi_ref (:func:`win_rate`)."""
    return {"kl_star": kl(logp, star_logp).mean().item(), "tv_star": total_variation(logp, star_logp).mean().item(),
            "kl_ref": kl(logp, ref_logp).mean().item(), "reward": expected_reward(logp, reward).mean().item(),
            "win": win_rate(logp, ref_logp, reward).mean().item()}


def minimise(loss: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, *, tolerance: float = 1e-12,
             max_iter: int = 100) -> torch.Tensor:
    """The minimiser, from ``start``, of a smooth convex ``loss`` of a (P, K) table whose rows do not interact (one
    term per prompt, so the Hessian is block diagonal) and see only differences within a row (every row of the
    gradient sums to zero): damped Newton steps, one K x K system per prompt, with a backtracking line search,
    until the largest gradient entry is below ``tolerance`` (float64). The toy problems are tiny and convex, so the
    trainers solve them to convergence instead of taking a fixed number of noisy steps; the constant direction
    u = 1 / sqrt(K), which the loss cannot see, is kept out of every step by solving with H + u u^T."""
    theta = start.detach().clone().to(F64)
    responses = theta.shape[1]
    flat = torch.full((responses, responses), 1.0 / responses, dtype=F64)
    for _ in range(max_iter):
        theta.requires_grad_(True)
        value = loss(theta)
        (grad,) = torch.autograd.grad(value, theta, create_graph=True)
        if grad.abs().max() < tolerance:
            break
        # column k of every prompt's block at once: the rows do not interact
        hessian = torch.stack([torch.autograd.grad(grad[:, k].sum(), theta, retain_graph=True)[0]
                               for k in range(responses)], dim=2)
        grad, value, theta = grad.detach(), value.detach(), theta.detach()
        # flat directions: a response no comparison touches (zero gradient there, so a zero step) and a pair one
        # side always wins (its curvature vanishes as the loss runs off to infinity); a whisker of damping keeps
        # the system solvable in both
        damping = 1e-9 * hessian.abs().amax(dim=(1, 2), keepdim=True) + 1e-12
        step = torch.linalg.solve(hessian + flat + damping * torch.eye(responses, dtype=F64),
                                  grad.unsqueeze(-1)).squeeze(-1)
        size = 1.0
        with torch.no_grad():  # Armijo backtracking (a NaN loss counts as no decrease)
            while not loss(theta - size * step) <= value - 1e-4 * size * (grad * step).sum() and size > 1e-12:
                size /= 2
        theta = theta - size * step
    return theta.detach()
