"""GPT: a decoder-only Transformer trained as a causal language model. Radford et al. 2018 (GPT-1, "Improving
Language Understanding by Generative Pre-Training"), Radford et al. 2019 (GPT-2, "Language Models are Unsupervised
Multitask Learners"), Brown et al. 2020 (GPT-3, "Language Models are Few-Shot Learners", arXiv 2005.14165).

The model is GPT-2's layout: token + learned position embeddings, pre-LN blocks with a causal mask
(:class:`refimpl.transformer.TransformerStack`), a final LayerNorm, and an output layer that reuses the token
embedding matrix (weight tying). The objective is GPT-1 Eq. (1): maximise sum_i log P(u_i | u_<i), i.e. minimise
the cross-entropy of every next character given the characters before it in a window of ``context`` characters.
Data: this repository's notes (:mod:`refimpl.text`), one token per character.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.text import CharTokenizer, corpus, windows
from refimpl.transformer import TransformerStack


# --8<-- [start:model]
class GPT(nn.Module):
    """Causal Transformer language model: ``(B, L)`` int64 tokens -> ``(B, L, vocab_size)`` next-token logits.
    The output layer is the transposed token embedding (GPT-2 ties them; no output bias). ``activation`` and
    ``eps`` (every LayerNorm's epsilon) default to this page's model; real GPT-2 weights need
    ``activation="gelu_tanh"`` (:mod:`refimpl.pretrained`)."""

    def __init__(self, vocab_size: int, max_len: int, width: int = 96, depth: int = 3, heads: int = 4, *,
                 activation: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth, heads=heads)
        if (activation, eps) != ("gelu", 1e-5):  # recorded only when set: the trained runs' configs stay as they were
            self.config |= dict(activation=activation, eps=eps)
        self.max_len = max_len
        self.body = TransformerStack(vocab_size, max_len, width, depth, heads, causal=True, activation=activation,
                                     eps=eps)
        # wte ~ N(0, 0.02) as in GPT-2's code: nn.Embedding's N(0, 1) would make the tied logits huge at init
        nn.init.normal_(self.body.token.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.body(tokens) @ self.body.token.weight.T


def lm_loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """GPT-1 Eq. (1) as a mean cross-entropy (nats/token): position i of ``window[:, :-1]`` predicts
    ``window[:, i + 1]``; the causal mask makes the prediction depend on tokens <= i only."""
    logits = model(window[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), window[:, 1:].reshape(-1))
# --8<-- [end:model]


def held_out_losses(model: nn.Module, ids: torch.Tensor, *, context: int | None = None,
                    batch: int = 64) -> torch.Tensor:
    """Cross-entropy (nats) of every character of ``ids[1:]``, in text order (float64), given what precedes it
    inside consecutive, non-overlapping windows of ``context`` predictions (default ``model.max_len``;
    deterministic: every target is scored once; a window's first prediction sees one character of context).
    Any causal language model ``model(tokens) -> logits`` will do (GPT, LLaMA)."""
    n = context or model.max_len
    starts = list(range(0, ids.numel() - 1, n))
    losses = torch.empty(ids.numel() - 1, dtype=torch.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        lengths = {s: min(n + 1, ids.numel() - s) for s in starts}  # the last window may be shorter
        for length in sorted(set(lengths.values())):
            same = [s for s in starts if lengths[s] == length]
            for part in [same[i: i + batch] for i in range(0, len(same), batch)]:
                chunk = torch.stack([ids[s: s + length] for s in part])
                logits = model(chunk[:, :-1].to(device)).float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1).to(device),
                                       reduction="none").reshape(len(part), length - 1).double().cpu()
                for s, row in zip(part, loss):
                    losses[s: s + length - 1] = row
    model.train(was_training)
    return losses


def held_out_loss(model: nn.Module, ids: torch.Tensor, *, context: int | None = None, batch: int = 64) -> float:
    """Mean of :func:`held_out_losses` (nats/char). Compare with :func:`refimpl.text.unigram_nll` on the same
    targets ``ids[1:]``."""
    return float(held_out_losses(model, ids, context=context, batch=batch).mean())


# --8<-- [start:generate]
def next_token(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``logits`` (B, V): from softmax(logits / temperature) restricted to the ``top_k`` largest
    logits (the samples released with GPT-2 include top-k with k = 40). ``temperature == 0`` or
    ``top_k == 1`` is greedy decoding (argmax)."""
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise LineageError("temperature must be >= 0 and top_k >= 1")
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float().cpu() / temperature  # draw on CPU: the generator is a CPU generator
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: GPT, prompt_ids: torch.Tensor, new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Autoregressive sampling: append ``new_tokens`` tokens to ``prompt_ids`` ((L,) or (B, L)), each drawn by
    :func:`next_token` from the logits at the last position; the model sees the last ``max_len`` tokens."""
    ids = prompt_ids[None] if prompt_ids.dim() == 1 else prompt_ids
    device = next(model.parameters()).device
    ids = ids.to(device)
    for _ in range(new_tokens):
        logits = model(ids[:, -model.max_len:])[:, -1]
        pick = next_token(logits, temperature=temperature, top_k=top_k, generator=generator)
        ids = torch.cat([ids, pick.to(device)[:, None]], dim=1)
    return ids[0] if prompt_ids.dim() == 1 else ids
# --8<-- [end:generate]


# --- training ----------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm
PRESETS = {
    "quick": {"model": {"width": 96, "depth": 3, "heads": 4, "max_len": 64}, "steps": 250, "batch_size": 32,
              "lr": 3e-3, "warmup": 25},
    "full": {"model": {"width": 384, "depth": 6, "heads": 6, "max_len": 256}, "steps": 5000, "batch_size": 64,
             "lr": 1e-3, "warmup": 200},
}


def text_data() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor, str]:
    """``(tokenizer, train ids, held-out ids, sha256 of the training text)`` of the repository's notes; the
    tokenizer covers the training and held-out characters."""
    train_text, held_text = corpus()
    tok = CharTokenizer.from_text(train_text + held_text)
    return tok, tok.encode(train_text), tok.encode(held_text), hashlib.sha256(train_text.encode()).hexdigest()


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0, data=None) -> dict:
    """The JSON config of a run: model sizes, the tokenizer's characters and the training text's hash
    (``data``: a :func:`text_data` tuple already read; default: read the notes now)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    tok, _, _, text_hash = data or text_data()
    return {"data": "notes", "text_sha256": text_hash, "chars": tok.chars,
            "model": {"vocab_size": len(tok), **sizes["model"]}, "seed": seed, "steps": steps or sizes["steps"],
            "batch_size": sizes["batch_size"], "lr": sizes["lr"], "warmup": sizes["warmup"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True, data=None):
    """Minimise :func:`lm_loss` on random windows of the training text (``data``: a :func:`text_data` tuple
    already read; default: read the notes now). Returns (model, loss history)."""
    data = data or text_data()
    check_notes(config, data)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow config["seed"]; global RNG untouched
        torch.manual_seed(config["seed"])
        model = GPT(**config["model"])
    history = fit_notes(model, config, config["model"]["max_len"], out, model_name="gpt", device=device,
                        resume=resume, progress=progress, data=data)
    return model, history


def check_notes(config: dict, data) -> None:
    """Refuse a config made from other notes than ``data`` (a :func:`text_data` tuple): its characters and
    training text must be the ones the config records."""
    tok, _, _, text_hash = data
    if tok.chars != config["chars"] or text_hash != config["text_sha256"]:
        raise LineageError("the notes changed since this config was made: make a new config (train_config)")


def fit_notes(model: nn.Module, config: dict, context: int, out=None, *, model_name: str, device=None,
              resume: bool = True, progress: bool = True, data=None) -> list[tuple[int, float]]:
    """Train any causal language model on the notes: :func:`lm_loss` on ``config["batch_size"]`` random windows of
    ``context + 1`` training characters per step, with refimpl.training.fit and the steps, lr, warmup, seed and
    learning-rate decay (``lr_decay``, constant when absent) that ``config`` records. Returns the loss history."""
    from refimpl.training import fit

    _, train_ids, _, _ = data or text_data()

    def loss_fn(model, generator):
        window = windows(train_ids, context + 1, config["batch_size"], generator)
        return lm_loss(model, window.to(next(model.parameters()).device))

    return fit(model, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name=model_name, config=config,
               device=device, seed=config["seed"], batch_size=config["batch_size"], warmup=config["warmup"],
               lr_decay=config.get("lr_decay", "constant"), resume=resume, progress=progress)
# --8<-- [end:train]


def load_notes_model(ckpt, cls, model_name: str) -> tuple[nn.Module, CharTokenizer, dict]:
    """Rebuild a checkpoint of a character-level model trained on the notes (``cls(**config["model"])``, CPU, eval
    mode, refused unless written as ``model_name``), its tokenizer and its recorded config."""
    from refimpl import checkpoint

    def build(data):
        CharTokenizer(data.config["chars"])  # a config without a vocabulary is a corrupt checkpoint too
        return cls(**data.config["model"])

    model, data = checkpoint.load_module(ckpt, expect_model=model_name, build=build)
    return model, CharTokenizer(data.config["chars"]), data.config


def load(ckpt) -> tuple[GPT, CharTokenizer]:
    """Rebuild a checkpoint's model (CPU, eval mode) and its tokenizer from the recorded config."""
    model, tok, _ = load_notes_model(ckpt, GPT, "gpt")
    return model, tok
