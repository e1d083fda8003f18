"""Sparse mixture-of-experts feed-forward layers: Fedus, Zoph & Shazeer, "Switch Transformers: Scaling to Trillion
Parameter Models with Simple and Efficient Sparsity" (2021), arXiv 2101.03961, and Jiang et al., "Mixtral of
Experts" (2024), arXiv 2401.04088.

A :class:`SparseMoE` layer replaces the one MLP of a Transformer block by ``experts`` MLPs (the "experts", each a
SwiGLU as in Mixtral) and a router, a linear map without bias from the token's features to one logit per expert:

- Switch Eq. (1): the router probabilities p(x) = softmax(x W_r); Switch Eq. (2): y = sum over the chosen experts
  T of p_i(x) E_i(x). The Switch layer routes every token to its top-1 expert only (k = 1) and keeps the gate value
  p_i(x), so the router gets a gradient through it (``renormalize=False``).
- Mixtral Sec. 2.1: G(x) = Softmax(TopK(x W_g)) and y = sum_i G(x)_i SwiGLU_i(x) with K = 2: the softmax of the
  two largest logits, which equals the two largest softmax probabilities divided by their sum (``renormalize=True``,
  what transformers' ``MixtralTopKRouter`` computes).
- Switch Eq. (3): each expert takes at most ``capacity`` tokens per batch, (tokens / experts) * capacity factor
  (times k for k > 1, rounded down here). Tokens beyond it are dropped in order (first choices before second
  choices, earlier tokens first): the expert does not compute them and the block's residual connection carries
  them to the next layer unchanged. ``capacity_factor=None`` drops nothing (Mixtral's inference).
- Switch Eqs. (4)-(6): the auxiliary load-balancing loss N * sum_i f_i P_i, with f_i the fraction of tokens whose
  first choice is expert i and P_i the mean router probability of expert i (:func:`load_balancing_loss`).

:class:`MoELlama` is :class:`refimpl.llama.Llama` (RMSNorm, rotary attention with GQA, no biases) with every block's
MLP switched to a :class:`SparseMoE`: Mixtral's architecture is Mistral 7B's (a LLaMA-style decoder) with 8 SwiGLU
experts per layer, 2 per token. Training is GPT's causal language modelling on the notes (:mod:`refimpl.gpt`'s
text, windows, loss and held-out evaluation) plus ``aux_coef`` times the layers' mean load-balancing loss (the
Switch paper's alpha = 10^-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.gpt import check_notes, lm_loss, load_notes_model, text_data
from refimpl.llama import Llama, swiglu_hidden
from refimpl.text import CharTokenizer, windows
from refimpl.transformer import SwiGLU

# --8<-- [start:route]
def route(logits: torch.Tensor, top_k: int, *, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router's decision for (T, N) logits: the probabilities p(x) = softmax(logits) (Switch Eq. 1; in float32
    at least), the ``top_k`` chosen experts of every token (T, k), best first, and their gate values (T, k): p_i(x)
    itself (Switch, Eq. 2) or, with ``renormalize``, p_i(x) / sum of the chosen p_j(x) = Softmax(TopK(logits))_i
    (Mixtral Sec. 2.1)."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # bf16 -> float32
    gates, index = probs.topk(top_k, dim=-1)
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return probs, index, gates


def expert_capacity(tokens: int, experts: int, capacity_factor: float, top_k: int = 1) -> int:
    """Switch Eq. (3): the tokens one expert may take, (tokens per batch / number of experts) * capacity factor,
    times k when each token makes k choices; rounded down."""
    return int(top_k * tokens * capacity_factor / experts)


def capacity_mask(index: torch.Tensor, experts: int, capacity: int | None) -> torch.Tensor:
    """Which of the (T, k) choices ``index`` an expert keeps (bool, (T, k)) when it takes at most ``capacity``
    tokens: in order, every token's first choice before any second choice, earlier tokens first; the rest are
    dropped. ``capacity=None`` keeps everything."""
    if capacity is None:
        return torch.ones_like(index, dtype=torch.bool)
    order = index.T.reshape(-1)  # (k * T,): all first choices in token order, then all second choices, ...
    one_hot = F.one_hot(order, experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # the choice's place in its expert's queue, from 0
    return (position < capacity).reshape(index.shape[1], index.shape[0]).T
# --8<-- [end:route]


# --8<-- [start:aux]
def load_balancing_loss(probs: torch.Tensor, index: torch.Tensor, experts: int, *,
                        all_choices: bool = False) -> torch.Tensor:
    """Switch Eqs. (4)-(6) without alpha: N * sum_i f_i * P_i, where f_i (Eq. 5) is the fraction of the T tokens
    whose first choice (the argmax of p(x)) is expert i and P_i (Eq. 6) the mean router probability of expert i.
    1 when the first choices are spread evenly, N when every token goes to one expert with probability 1. Only
    P carries a gradient (f counts).

    ``all_choices=True`` counts every one of the k choices in f (so sum_i f_i = k, and even routing gives k):
    transformers' ``load_balancing_loss_func`` (which also pools all layers' tokens before the product)."""
    chosen = index if all_choices else index[:, :1]
    f = torch.bincount(chosen.reshape(-1), minlength=experts).to(probs.dtype) / index.shape[0]
    P = probs.mean(dim=0)
    return experts * (f * P).sum()
# --8<-- [end:aux]


def expert_load(index: torch.Tensor, experts: int, kept: torch.Tensor | None = None) -> torch.Tensor:
    """The fraction of the (kept) choices ``index`` (T, k) that each expert receives, (N,), summing to 1."""
    chosen = index.reshape(-1) if kept is None else index[kept]
    counts = torch.bincount(chosen, minlength=experts).double()
    return counts / counts.sum().clamp_min(1)


def max_load(load: torch.Tensor) -> torch.Tensor:
    """N * max_i load_i for loads (..., N) summing to 1: 1 when the experts share evenly, N when one takes all;
    it is also the smallest capacity factor (Switch Eq. 3) at which no expert drops a choice of that batch."""
    return load.shape[-1] * load.amax(dim=-1)


# --8<-- [start:layer]
class SparseMoE(nn.Module):
    """A sparse MoE feed-forward layer (Switch Eq. 2, Mixtral Sec. 2.1): a router (linear, no bias) and
    ``experts`` SwiGLU MLPs of hidden width ``hidden``; every token is computed by its ``top_k`` experts only, and
    their outputs are summed with the gate values. ``capacity_factor`` (None: no limit) caps the tokens per expert
    (Switch Eq. 3); a dropped choice contributes nothing. The last call's routing is kept in ``self.routing``:
    ``probs`` (T, N), ``index`` (T, k) and ``kept`` (T, k), for the auxiliary loss and the utilisation."""

    def __init__(self, width: int, hidden: int, experts: int = 4, top_k: int = 2, *, renormalize: bool = True,
                 capacity_factor: float | None = None):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise LineageError(f"top_k must be in 1..{experts} (the number of experts), got {top_k}")
        if top_k == 1 and renormalize:
            raise LineageError("top_k=1 with renormalised gates gives every token the gate 1, so the router gets "
                               "no gradient: Switch keeps p_i(x) (renormalize=False)")
        if capacity_factor is not None and capacity_factor <= 0:
            raise LineageError(f"capacity_factor must be positive, got {capacity_factor}")
        self.top_k, self.renormalize, self.capacity_factor = top_k, renormalize, capacity_factor
        self.router = nn.Linear(width, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(width, hidden) for _ in range(experts))
        self.routing: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])  # (T, width): every token of the batch is routed on its own
        probs, index, gates = route(self.router(h), self.top_k, renormalize=self.renormalize)
        capacity = None if self.capacity_factor is None else expert_capacity(
            h.shape[0], len(self.experts), self.capacity_factor, self.top_k)
        kept = capacity_mask(index, len(self.experts), capacity)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where((index == e) & kept)  # the tokens that expert e computes, and which choice
            if token.numel():
                out.index_add_(0, token, gates[token, slot, None].to(h.dtype) * expert(h[token]))
        self.routing = {"probs": probs, "index": index, "kept": kept}
        return out.reshape(x.shape)
# --8<-- [end:layer]


# --8<-- [start:model]
class MoELlama(Llama):
    """:class:`refimpl.llama.Llama` with every block's MLP switched to a :class:`SparseMoE` of ``experts`` SwiGLU
    experts of hidden width ``expert_hidden``, ``top_k`` per token (Mixtral: 8 experts, 2 per token, renormalised
    gates; Switch: k = 1 and p_i(x) as the gate, ``renormalize=False``)."""

    def __init__(self, vocab_size: int, width: int = 64, depth: int = 2, heads: int = 4, kv_heads: int | None = None,
                 expert_hidden: int | None = None, eps: float = 1e-5, theta: float = 10000.0, *, experts: int = 4,
                 top_k: int = 2, renormalize: bool = True, capacity_factor: float | None = None):
        expert_hidden = expert_hidden or swiglu_hidden(width)
        super().__init__(vocab_size, width, depth, heads, kv_heads, expert_hidden, eps, theta)
        for block in self.blocks:  # the switch: one MoE layer in place of each block's MLP
            block.mlp = SparseMoE(width, expert_hidden, experts, top_k, renormalize=renormalize,
                                  capacity_factor=capacity_factor)
        self.config = {**{k: v for k, v in self.config.items() if k != "mlp_hidden"}, "expert_hidden": expert_hidden,
                       "experts": experts, "top_k": top_k, "renormalize": renormalize,
                       "capacity_factor": capacity_factor}

    def routings(self) -> list[dict[str, torch.Tensor]]:
        """The last forward's routing of every layer (see :class:`SparseMoE`)."""
        return [block.mlp.routing for block in self.blocks]

    def aux_loss(self) -> torch.Tensor:
        """The mean over layers of each layer's load-balancing loss (Switch Eq. 4 without alpha) on the last
        forward's tokens."""
        n = self.config["experts"]
        return torch.stack([load_balancing_loss(r["probs"], r["index"], n) for r in self.routings()]).mean()


def moe_loss(model: MoELlama, window: torch.Tensor, aux_coef: float) -> torch.Tensor:
    """GPT's next-character cross-entropy (:func:`refimpl.gpt.lm_loss`) plus alpha = ``aux_coef`` times the
    layers' mean load-balancing loss (Switch Eq. 4)."""
    loss = lm_loss(model, window)
    return loss + aux_coef * model.aux_loss() if aux_coef else loss
# --8<-- [end:model]


# --- training ----------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm. The quick model is the LLaMA page's quick model
#: (same width, depth, heads, context, steps, batch, learning rate, seed and training windows) with 4 experts of
#: half the dense MLP's width, 2 per token: the same active MLP parameters per token, twice the total
PRESETS = {
    "quick": {"model": {"width": 64, "depth": 2, "heads": 4, "kv_heads": 2, "experts": 4, "top_k": 2,
                        "expert_hidden": 88}, "context": 64, "steps": 160, "batch_size": 16, "lr": 3e-3,
              "warmup": 16},
    "full": {"model": {"width": 384, "depth": 6, "heads": 6, "kv_heads": 2, "experts": 8, "top_k": 2,
                       "expert_hidden": 512}, "context": 256, "steps": 5000, "batch_size": 64, "lr": 1e-3,
             "warmup": 200},
}
#: alpha of Switch Eq. (4): "sufficiently large to ensure load balancing while small enough to not overwhelm the
#: primary cross-entropy objective" (the paper uses 10^-2 throughout)
AUX_COEF = 1e-2


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0, data=None,
                 aux_coef: float = AUX_COEF) -> dict:
    """The JSON config of a run: the whole model config, ``aux_coef`` (alpha), the context, the tokenizer's
    characters and the training text's hash (``data``: a :func:`refimpl.gpt.text_data` tuple already read)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if aux_coef < 0:
        raise LineageError(f"aux_coef must be >= 0, got {aux_coef}")
    sizes = PRESETS[preset]
    tok, _, _, text_hash = data or text_data()
    with torch.device("meta"):  # only its config: no weights, no draw from the global RNG
        model = MoELlama(len(tok), **sizes["model"]).config
    return {"data": "notes", "text_sha256": text_hash, "chars": tok.chars, "model": model, "aux_coef": aux_coef,
            "context": sizes["context"], "seed": seed, "steps": steps or sizes["steps"],
            "batch_size": sizes["batch_size"], "lr": sizes["lr"], "warmup": sizes["warmup"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True, data=None):
    """:func:`moe_loss` on ``config["batch_size"]`` random windows of ``config["context"] + 1`` training characters
    per step, drawn exactly as :func:`refimpl.gpt.fit_notes` draws them (the same seed gives the LLaMA page's
    batches). Returns (model, loss history)."""
    from refimpl.training import build_seeded, fit

    data = data or text_data()
    check_notes(config, data)
    _, train_ids, _, _ = data
    model = build_seeded(MoELlama, config)  # the initial weights follow config["seed"]

    def loss_fn(model, generator):
        window = windows(train_ids, config["context"] + 1, config["batch_size"], generator)
        return moe_loss(model, window.to(next(model.parameters()).device), config["aux_coef"])

    history = fit(model, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="moe",
                  config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
                  warmup=config["warmup"], resume=resume, progress=progress)
    return model, history
# --8<-- [end:train]


def load(ckpt) -> tuple[MoELlama, CharTokenizer, dict]:
    """Rebuild a checkpoint's model (CPU, eval mode), its tokenizer and its recorded config."""
    return load_notes_model(ckpt, MoELlama, "moe")
