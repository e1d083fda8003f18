"""InstructGPT: Ouyang et al., "Training language models to follow instructions with human feedback" (NeurIPS 2022;
arXiv 2203.02155), with PPO (Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347).

The three steps of the paper's Figure 2, on the toy preference problem of refimpl.preferences (P prompts, K whole
responses, a tabular softmax policy):

1. supervised fine-tuning (:func:`sft`): maximum likelihood on labeller demonstrations gives pi^SFT;
2. a reward model (:func:`fit_reward_model`) fitted to labelled comparisons of SFT samples by the Bradley-Terry
   loss (Eq. (1));
3. reinforcement learning (:func:`ppo`): maximise Eq. (2),
   E_{y ~ pi}[r_theta(x, y) - beta log(pi(y | x) / pi^SFT(y | x))] (+ gamma E[log pi(x_pretrain)], which the toy
   has no pretraining text for: gamma = 0, the paper's "PPO" rather than "PPO-ptx"), with PPO's clipped surrogate
   (PPO Eq. (7)). The KL penalty enters as the paper and its predecessors write it, a per-sample reward
   R = r - beta log(pi_old / pi^SFT) computed at sampling time.

On a bandit the per-sample penalty is exact, not an approximation: E_{y ~ pi}[grad log pi(y) (r - beta log(pi/pi_ref))]
is the gradient of the objective (the missing -beta E[grad log pi] is zero), so PPO's fixed point is the objective's
maximiser pi* = pi^SFT exp(r_theta / beta) / Z (refimpl.preferences.optimal_policy).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from refimpl.preferences import (Comparisons, Task, bradley_terry_nll, centred, minimise, sample_comparisons,
                                 sample_demonstrations)

#: PPO's settings per preset: iterations (rollouts), samples per prompt per rollout, epochs per rollout (the step
#: size is :func:`ppo`'s default, 1 / beta)
PPO_SETTINGS = {"quick": {"iterations": 150, "batch": 256, "epochs": 4},
                "full": {"iterations": 1000, "batch": 4096, "epochs": 4}}


# --8<-- [start:sft_rm]
def sft(x: torch.Tensor, y: torch.Tensor, prompts: int, responses: int) -> torch.Tensor:
    """Step 1, supervised fine-tuning: the logits (P, K) that minimise the cross-entropy -mean log pi(y | x) of the
    demonstrations (x, y), starting from the uniform policy. For a table the optimum is known: the empirical
    frequencies of the demonstrations, which the tests check."""
    def loss(theta):
        return -F.log_softmax(theta, dim=1)[x, y].mean()

    return minimise(loss, torch.zeros(prompts, responses, dtype=torch.float64))


def fit_reward_model(data: Comparisons, prompts: int, responses: int) -> torch.Tensor:
    """Step 2, the reward model: the reward table (P, K) that minimises the Bradley-Terry loss (Eq. (1)) on the
    labelled comparisons, centred per prompt (the labels only see differences within a prompt)."""
    return centred(minimise(lambda r: bradley_terry_nll(r, data), torch.zeros(prompts, responses, dtype=torch.float64)))
# --8<-- [end:sft_rm]


# --8<-- [start:ppo]
def penalised_reward(reward: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """InstructGPT's per-sample reward (the bracket of Eq. (2)): r(x, y) - beta log(pi_old(y | x) / pi_ref(y | x)),
    evaluated at the sampled responses (all arguments gathered at them, same shape)."""
    return reward - beta * (logp_old - ref_logp)


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantage: torch.Tensor,
                      clip: float = 0.2) -> torch.Tensor:
    """PPO Eq. (7), L^CLIP = E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)] with rho = pi(y | x) / pi_old(y | x),
    per sample (to be averaged and maximised). At rho = 1 its gradient is the policy gradient A grad log pi; a
    sample whose ratio has left [1 - eps, 1 + eps] in the direction its advantage pushes contributes no gradient."""
    ratio = torch.exp(logp - logp_old)
    return torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)


def ppo(ref_logits: torch.Tensor, reward: torch.Tensor, beta: float, *, iterations: int, batch: int, epochs: int = 4,
        lr: float | None = None, clip: float = 0.2, generator: torch.Generator | None = None,
        start: torch.Tensor | None = None, callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Step 3: PPO against the reward model ``reward`` (P, K) with the KL penalty to pi^SFT = softmax(ref_logits),
    starting from pi^SFT as InstructGPT does (or from the logits ``start``). Each iteration samples ``batch``
    responses per prompt from the current policy, scores them with :func:`penalised_reward`, takes the advantage
    A = R - (the prompt's batch mean of R) (an episode is one step, so the critic is one number per prompt,
    V(x) = E[R]), and takes ``epochs`` gradient ascent steps of size ``lr`` on the clipped surrogate of that batch
    (summed over prompts, averaged over samples). ``lr`` defaults to 1 / beta: near pi* the objective's Hessian in
    the logits is -beta (diag pi - pi pi^T), so steps of 1 / beta take beta out of the rate of contraction (which
    still depends on pi*: responses it makes rare converge slowly). ``callback(iteration, logits)`` is called after
    each iteration. Returns the final logits (P, K)."""
    ref_logp = F.log_softmax(ref_logits, dim=1)
    lr = 1.0 / beta if lr is None else lr
    theta = (ref_logits if start is None else start).detach().clone()
    for it in range(iterations):
        with torch.no_grad():  # rollout: sample from pi_old and score
            logp_old = F.log_softmax(theta, dim=1)
            y = torch.multinomial(logp_old.exp(), batch, replacement=True, generator=generator)  # (P, batch)
            old = logp_old.gather(1, y)
            r = penalised_reward(reward.gather(1, y), old, ref_logp.gather(1, y), beta)
            advantage = r - r.mean(dim=1, keepdim=True)
        for _ in range(epochs):  # several epochs on the same samples: what the clipping makes safe
            theta.requires_grad_(True)
            gain = clipped_surrogate(F.log_softmax(theta, dim=1).gather(1, y), old, advantage, clip).mean(dim=1).sum()
            (grad,) = torch.autograd.grad(gain, theta)
            theta = (theta + lr * grad).detach()
        if callback is not None:
            callback(it, theta)
    return theta
# --8<-- [end:ppo]


def sft_and_comparisons(task: Task, *, demonstrations: int, comparisons: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, Comparisons]:
    """Step 1 and the data of step 2 on a refimpl.preferences.Task: ``demonstrations`` labeller demonstrations per
    prompt -> the SFT logits; ``comparisons`` labelled pairs per prompt of SFT samples. DPO starts from the same
    two (pi_ref = pi^SFT and the preference data set). The random draws come from ``generator`` in that order."""
    x, y = sample_demonstrations(task, demonstrations, generator)
    sft_logits = sft(x, y, task.prompts, task.responses)
    return sft_logits, sample_comparisons(task, F.log_softmax(sft_logits, dim=1), comparisons, generator)


def instructgpt(task: Task, *, demonstrations: int, comparisons: int, beta: float, iterations: int, batch: int,
                epochs: int = 4, lr: float | None = None, clip: float = 0.2, generator: torch.Generator,
                callback: Callable[[int, torch.Tensor], None] | None = None) -> dict[str, object]:
    """The three steps in order: :func:`sft_and_comparisons`, the reward model, PPO against it. Returns the SFT
    logits ``sft``, the comparisons ``data``, the reward model ``reward_model`` and the PPO logits ``ppo``."""
    sft_logits, data = sft_and_comparisons(task, demonstrations=demonstrations, comparisons=comparisons,
                                           generator=generator)
    reward_model = fit_reward_model(data, task.prompts, task.responses)
    policy = ppo(sft_logits, reward_model, beta, iterations=iterations, batch=batch, epochs=epochs, lr=lr, clip=clip,
                 generator=generator, callback=callback)
    return {"sft": sft_logits, "data": data, "reward_model": reward_model, "ppo": policy}
