"""DPO: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
(NeurIPS 2023; arXiv 2305.18290).

DPO solves InstructGPT's KL-regularised problem (refimpl.rlhf) without a reward model and without sampling. The
maximiser of E[r] - beta KL(pi || pi_ref) is pi_r = pi_ref exp(r / beta) / Z (Eq. (4)), so a reward can be read off
any policy, r(x, y) = beta log(pi(y | x) / pi_ref(y | x)) + beta log Z(x) (Eq. (5)); in the Bradley-Terry model only
reward differences within a prompt appear, Z(x) cancels (Eq. (6)), and fitting the reward model by maximum
likelihood becomes fitting the policy (Eq. (7)):

    L_DPO = -E[log sigmoid(beta log(pi(y_w)/pi_ref(y_w)) - beta log(pi(y_l)/pi_ref(y_l)))].

On the tabular problem of refimpl.preferences every reward table (up to a constant per prompt) is some policy's
implicit reward, so the minimiser of L_DPO on a data set is exactly pi_ref exp(r_hat / beta) / Z with r_hat the
Bradley-Terry maximum-likelihood reward model of the same data (refimpl.rlhf.fit_reward_model): the policy that
PPO converges to against that reward model. The tests check both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refimpl.preferences import Comparisons, minimise


# --8<-- [start:loss]
def implicit_reward(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """r_hat(x, y) = beta log(pi(y | x) / pi_ref(y | x)): Eq. (5) without the beta log Z(x) that no comparison sees."""
    return beta * (logp - ref_logp)


def dpo_loss(logits: torch.Tensor, ref_logp: torch.Tensor, data: Comparisons, beta: float) -> torch.Tensor:
    """Eq. (7): -mean log sigmoid(beta log(pi(y_w)/pi_ref(y_w)) - beta log(pi(y_l)/pi_ref(y_l))) over the
    comparisons, for the policy softmax(logits) (P, K) and the frozen reference log-probabilities ``ref_logp``."""
    margin = implicit_reward(F.log_softmax(logits, dim=1), ref_logp, beta)
    return -F.logsigmoid(margin[data.x, data.chosen] - margin[data.x, data.rejected]).mean()


def train_dpo(ref_logits: torch.Tensor, data: Comparisons, beta: float) -> torch.Tensor:
    """The policy logits (P, K) that minimise :func:`dpo_loss`, starting from the reference policy (DPO initialises
    pi = pi_ref = pi^SFT): one pass of supervised learning on a fixed data set, no reward model, no sampling."""
    ref_logp = F.log_softmax(ref_logits, dim=1)
    return minimise(lambda logits: dpo_loss(logits, ref_logp, data, beta), ref_logits)
# --8<-- [end:loss]
