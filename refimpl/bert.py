"""BERT: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
(NAACL 2019), arXiv 1810.04805, at toy scale: a character-level masked language model of this repository's notes.

- Model (Sec. 3, "Model Architecture"): a bidirectional Transformer encoder, i.e. the 2017 paper's post-LN block
  (refimpl.transformer.Block with ``prenorm=False``) and GELU (BERT's choice; the 2017 paper used ReLU), no causal
  mask. Input = token embedding + learned position embedding, then LayerNorm (Sec. 3, "Input/Output
  Representations", Fig. 2). We train on single-segment text, so there is no segment (token-type) embedding and
  no [CLS]/[SEP] tokens; ``segments=2`` adds the segment embeddings E_A, E_B (Fig. 2) that released BERT weights
  carry (:mod:`refimpl.pretrained`).
- Task #1, masked LM (Sec. 3.1): 15% of the positions are chosen; a chosen token is replaced by <mask> 80% of the
  time, by a random token 10% of the time and left unchanged 10% of the time; the cross-entropy is taken on the
  chosen positions only. Task #2, next sentence prediction, is skipped.
- MLM head (as the released BERT code and transformers' BertForMaskedLM): dense + GELU + LayerNorm, then an output
  layer whose weight is the token embedding (tied) plus a per-token bias.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.text import SPECIALS, CharTokenizer
from refimpl.transformer import Block

EPS = 1e-5  # LayerNorm epsilon of every norm (torch's default; BERT's code and transformers use 1e-12)
PLACEHOLDER = "[MASK]"  # what a user types for a masked character in fill()


# --8<-- [start:model]
class BERT(nn.Module):
    """Masked-LM BERT: ``(B, L)`` int64 tokens -> ``(B, L, vocab_size)`` logits. Every position attends to every
    non-padding position on both sides (``key_padding_mask`` (B, L), True at padding). ``segments`` > 0 adds a
    segment embedding (``segment_ids`` (B, L), default all 0: sentence A); ``eps`` is every LayerNorm's epsilon
    (released BERT weights: 1e-12)."""

    def __init__(self, vocab_size: int, max_len: int, width: int = 64, depth: int = 2, heads: int = 4, *,
                 segments: int = 0, eps: float = EPS):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth, heads=heads)
        if (segments, eps) != (0, EPS):  # recorded only when set: the trained runs' configs stay as they were
            self.config |= dict(segments=segments, eps=eps)
        self.max_len = max_len
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_len, width)
        self.segment = nn.Embedding(segments, width) if segments else None
        self.ln_embed = nn.LayerNorm(width, eps=eps)
        self.blocks = nn.ModuleList(Block(width, heads, prenorm=False, eps=eps) for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=eps))
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))  # output weight = self.token.weight (tied)
        self.apply(_init)

    def encode(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final hidden vectors T_i (B, L, width) (Sec. 3, Fig. 1)."""
        if tokens.shape[-1] > self.max_len:
            raise LineageError(f"sequence of {tokens.shape[-1]} tokens is longer than max_len {self.max_len}")
        h = self.token(tokens) + self.position.weight[: tokens.shape[-1]]
        if self.segment is not None:  # Fig. 2: token + segment + position embeddings
            h = h + self.segment(torch.zeros_like(tokens) if segment_ids is None else segment_ids)
        h = self.ln_embed(h)
        for block in self.blocks:
            h = block(h, key_padding_mask=key_padding_mask)  # causal=False: bidirectional
        return h

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head on hidden vectors (..., width) -> logits (..., vocab_size)."""
        return self.head(hidden) @ self.token.weight.T + self.out_bias

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(self.encode(tokens, key_padding_mask, segment_ids))
# --8<-- [end:model]


def _init(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02^2), biases 0 (transformers' BertConfig default initializer_range 0.02)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --8<-- [start:masking]
MASK_RATE, TO_MASK, TO_RANDOM = 0.15, 0.8, 0.1  # Sec. 3.1: 15% chosen; 80% <mask>, 10% random, 10% unchanged


def mask_tokens(ids: torch.Tensor, tokenizer: CharTokenizer, generator: torch.Generator | None = None,
                rate: float = MASK_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT Sec. 3.1, Task #1: choose round(rate * L) positions of each row of ``ids`` (B, L) uniformly at random
    (at least one; as the released code, which masks a fixed number per sequence), then replace each chosen token
    by <mask> with probability 0.8, by a random character with probability 0.1 (special tokens are never drawn;
    it may equal the original), else keep it. Returns (inputs, chosen), ``chosen`` (B, L) bool."""
    b, n = ids.shape
    k = max(1, round(rate * n))
    order = torch.rand((b, n), generator=generator).argsort(dim=1)
    chosen = torch.zeros((b, n), dtype=torch.bool).scatter_(1, order[:, :k], True)
    u = torch.rand((b, n), generator=generator)
    random_ids = torch.randint(len(SPECIALS), len(tokenizer), (b, n), generator=generator)
    inputs = ids.cpu().clone()
    inputs[chosen & (u < TO_MASK)] = tokenizer.mask
    swap = chosen & (u >= TO_MASK) & (u < TO_MASK + TO_RANDOM)
    inputs[swap] = random_ids[swap]
    return inputs.to(ids.device), chosen.to(ids.device)


def mlm_loss(model: BERT, ids: torch.Tensor, tokenizer: CharTokenizer,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Sec. 3.1: the cross-entropy of the original tokens, taken at the chosen positions only (the MLM head runs on
    their final hidden vectors T_i alone)."""
    inputs, chosen = mask_tokens(ids, tokenizer, generator)
    return F.cross_entropy(model.predict(model.encode(inputs)[chosen]).float(), ids[chosen])  # head on T_i chosen
# --8<-- [end:masking]


# --8<-- [start:fill]
def fill(model: BERT, tokenizer: CharTokenizer, text: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """Predict every :data:`PLACEHOLDER` in ``text`` from both sides in one forward pass (each masked character
    independently, as the MLM objective trains it): per placeholder, the ``k`` most probable characters with their
    probabilities, best first (the first is the greedy top-1). Special tokens are never proposed."""
    pieces = text.split(PLACEHOLDER)
    if len(pieces) == 1:
        raise LineageError(f"text {text!r} has no {PLACEHOLDER} to fill")
    ids = [tokenizer.encode(piece) for piece in pieces]
    mask = torch.tensor([tokenizer.mask])
    tokens = torch.cat([t for piece in ids[:-1] for t in (piece, mask)] + [ids[-1]])
    if tokens.numel() > model.max_len:
        raise LineageError(f"text of {tokens.numel()} characters is longer than the model's {model.max_len}")
    device = model.out_bias.device
    with torch.no_grad():
        logits = model(tokens[None].to(device))[0, tokens.to(device) == tokenizer.mask]
    probs = logits.float().softmax(-1)[:, len(SPECIALS):]  # renormalising is unnecessary for the ranking
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(tokenizer.chars[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]
# --8<-- [end:fill]


# --- data, training and evaluation --------------------------------------------------

def text_data(chars: str | None = None) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """``(tokenizer, train_ids, held_out_ids)`` of the notes (refimpl.text.corpus). The tokenizer has ``chars``
    (a checkpoint's vocabulary; characters added to the notes since then become <unk>), else every character of
    both parts."""
    from refimpl.text import corpus

    train_text, held_text = corpus()
    tokenizer = CharTokenizer(chars if chars is not None else "".join(sorted(set(train_text + held_text))))
    return tokenizer, tokenizer.encode(train_text), tokenizer.encode(held_text)


#: sizes per preset; a preset changes sizes, never the algorithm. quick: ~35 s on one CPU thread
PRESETS = {
    "quick": {"model": {"max_len": 64, "width": 64, "depth": 2, "heads": 4}, "steps": 500, "batch_size": 32,
              "lr": 2e-3, "warmup": 40},
    "full": {"model": {"max_len": 128, "width": 256, "depth": 6, "heads": 8}, "steps": 20000, "batch_size": 128,
             "lr": 5e-4, "warmup": 1000},
}


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of an MLM run on the notes: the vocabulary (``chars``) and a hash of the training text are
    recorded, so the checkpoint keeps decoding after the notes change, a cached model retrains when they do, and
    resuming a run after the notes changed is refused (refimpl.training.fit compares the configs)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    tokenizer, train_ids, _ = text_data()
    text_hash = hashlib.sha256(train_ids.numpy().tobytes()).hexdigest()[:16]  # ids + chars fix the text
    return {"data": "notes", "train_ids_sha256": text_hash, "chars": tokenizer.chars,
            "model": {"vocab_size": len(tokenizer), **sizes["model"]}, "seed": seed,
            "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"],
            "warmup": sizes["warmup"]}


def build(config: dict) -> BERT:
    """The untrained model of ``config``, its initial weights drawn from config["seed"] (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return BERT(**config["model"])


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Masked-LM pre-training (Sec. 3.1, Task #1 only) on random windows of the notes. Returns (model, history)."""
    from refimpl.text import windows
    from refimpl.training import fit

    tokenizer, train_ids, _ = text_data(config["chars"])
    model = build(config)

    def loss_fn(model, generator):
        ids = windows(train_ids, config["model"]["max_len"], config["batch_size"], generator)
        return mlm_loss(model, ids.to(model.out_bias.device), tokenizer, generator)

    history = fit(model, loss_fn, steps=config["steps"], lr=config["lr"], warmup=config["warmup"], out=out,
                  model_name="bert", config=config, device=device, seed=config["seed"],
                  batch_size=config["batch_size"], resume=resume, progress=progress)
    return model, history
# --8<-- [end:train]


@torch.no_grad()
def held_out_scores(model: BERT, tokenizer: CharTokenizer, train_ids: torch.Tensor, held_ids: torch.Tensor,
                    seed: int = 0) -> dict[str, float]:
    """Masked-token cross-entropy (nats/token) on the held-out notes, cut into consecutive windows of max_len and
    masked as in training (seeded), next to the add-one unigram baseline (refimpl.text.unigram_nll) on the same
    target characters; and the top-1 accuracy of both (the unigram guesses the most frequent training character).
    Keys: ``model``, ``unigram``, ``model_top1``, ``unigram_top1``, ``targets`` (how many masked positions)."""
    from refimpl.text import unigram_nll

    n = model.max_len
    ids = held_ids[: held_ids.numel() // n * n].reshape(-1, n)
    inputs, chosen = mask_tokens(ids, tokenizer, torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    device = model.out_bias.device
    logits = torch.cat([model(batch.to(device)).float().cpu() for batch in inputs.split(256)])
    model.train(was_training)
    targets = ids[chosen]
    return {"model": F.cross_entropy(logits[chosen], targets).item(),
            "unigram": unigram_nll(train_ids, targets, len(tokenizer)),
            "model_top1": (logits[chosen].argmax(-1) == targets).float().mean().item(),
            "unigram_top1": (targets == torch.bincount(train_ids).argmax()).float().mean().item(),
            "targets": int(chosen.sum())}


def load(ckpt) -> tuple[BERT, CharTokenizer]:
    """Rebuild a checkpoint's model and tokenizer from its recorded config, on CPU in eval mode."""
    from refimpl import checkpoint

    def build(data):
        _tokenizer(data.config)  # a bad vocabulary is a corrupt checkpoint too
        return BERT(**data.config["model"])

    model, data = checkpoint.load_module(ckpt, expect_model="bert", build=build)
    return model, _tokenizer(data.config)


def _tokenizer(config: dict) -> CharTokenizer:
    """The tokenizer of a checkpoint's config; characters that do not make one raise ValueError."""
    try:
        return CharTokenizer(config["chars"])
    except LineageError as err:
        raise ValueError(str(err)) from None
