"""T5: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer" (2019),
arXiv 1910.10683.

Every task is text in, text out (Sec. 2.4). The model (Sec. 2.1) is the encoder-decoder Transformer of Vaswani et
al. with three changes: a layer norm that only rescales (RMSNorm, no bias, no mean subtraction) placed on the
input of each residual branch (pre-norm), no bias in any dense layer, and no absolute positions: a learned
scalar per head and *bucket* of relative offset is added to every self-attention logit, the buckets exact for
small offsets and logarithmically wider up to an offset of 128 (32 buckets), one table per stack shared by all
its layers. The encoder-decoder attention has no position bias. Pre-training is span corruption (the format of
Sec. 3.1.4, Fig. 2; random spans as in Sec. 3.3.4 with the final models' 15% and mean span length 3, Sec. 3.7):
each corrupted span is replaced in the input by a unique sentinel token, and the target lists the spans, each
after its sentinel, then a final sentinel.

The building blocks are :class:`refimpl.transformer.Block` with ``norm="rms", bias=False, scale=False,
activation="relu"``; the tokenizer and the corpus (this repository's notes, one token per character) are those
of :mod:`refimpl.text`. Weights and logits match transformers' ``T5ForConditionalGeneration`` (tests/test_t5.py).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.text import SENTINELS, CharTokenizer
from refimpl.transformer import Block

NOISE_DENSITY = 0.15  # Sec. 3.1.4 / 3.3.4: fraction of the tokens corrupted
MEAN_SPAN = 3.0       # Sec. 3.3.4: mean length of a corrupted span
PLACEHOLDER = "<>"    # how `fill` marks a missing span on the command line


# --8<-- [start:bucket]
def relative_position_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """T5 Sec. 2.1: the bucket of each relative offset ``rel = key position - query position`` (int64).

    ``bidirectional`` (the encoder) gives half of the buckets to keys after the query (rel > 0) and half to keys
    at or before it; causal (the decoder) gives them all to rel <= 0 (later keys are masked anyway and land in
    bucket 0). Within a half of n buckets, distances d < n/2 have a bucket each; larger ones share
    n/2 + floor(log(d / (n/2)) / log(max_distance / (n/2)) * n/2) buckets, so bucket widths grow geometrically,
    and every d >= max_distance falls into the last bucket."""
    if bidirectional:
        num_buckets //= 2
        offset = (rel > 0).long() * num_buckets
        distance = rel.abs()
    else:
        offset = torch.zeros_like(rel)
        distance = (-rel).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    wide = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < exact, distance, wide)
# --8<-- [end:bucket]


# --8<-- [start:bias]
class RelativePositionBias(nn.Module):
    """One learned scalar per bucket and head (T5 Sec. 2.1), computed once per forward pass and added to the
    self-attention logits of every layer of a stack: returns (1, heads, L_q, L_k)."""

    def __init__(self, heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, query_len: int, key_len: int) -> torch.Tensor:
        device = self.embedding.weight.device
        rel = torch.arange(key_len, device=device)[None, :] - torch.arange(query_len, device=device)[:, None]
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]
# --8<-- [end:bias]


# --8<-- [start:model]
class T5(nn.Module):
    """Encoder-decoder Transformer of T5 Sec. 2.1: a shared token embedding (no positions, no scaling), ``depth``
    pre-RMSNorm encoder blocks and ``depth`` decoder blocks (causal self-attention + attention over the encoder's
    output), a final RMSNorm per stack, and logits tied to the embedding: ``(h * width**-0.5) @ E^T``."""

    def __init__(self, vocab_size: int, width: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 4,
                 num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.width = width
        self.embed = nn.Embedding(vocab_size, width)

        def block(cross: bool) -> Block:
            return Block(width, heads, mlp_ratio, norm="rms", bias=False, scale=False, activation="relu",
                         cross=cross, eps=1e-6)

        self.encoder = nn.ModuleList(block(False) for _ in range(depth))
        self.decoder = nn.ModuleList(block(True) for _ in range(depth))
        self.encoder_bias = RelativePositionBias(heads, True, num_buckets, max_distance)
        self.decoder_bias = RelativePositionBias(heads, False, num_buckets, max_distance)
        self.encoder_norm, self.decoder_norm = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self._init(width, heads, mlp_ratio)

    @torch.no_grad()
    def _init(self, width: int, heads: int, mlp_ratio: int) -> None:
        """T5's initialisation as transformers' T5PreTrainedModel._init_weights does it: unit-variance embedding;
        the 1/sqrt(d_k) that T5's attention omits is folded into the query weights' std (width * d_k)^-1/2."""
        nn.init.normal_(self.embed.weight, std=1.0)
        for bias in (self.encoder_bias, self.decoder_bias):
            nn.init.normal_(bias.embedding.weight, std=width ** -0.5)
        for block in [*self.encoder, *self.decoder]:
            for attn in (block.attn, getattr(block, "cross", None)):
                if attn is not None:
                    nn.init.normal_(attn.q.weight, std=(width * width // heads) ** -0.5)
                    nn.init.normal_(attn.k.weight, std=width ** -0.5)
                    nn.init.normal_(attn.v.weight, std=width ** -0.5)
                    nn.init.normal_(attn.out.weight, std=width ** -0.5)
            nn.init.normal_(block.mlp[0].weight, std=width ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=(mlp_ratio * width) ** -0.5)

    def encode(self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) input ids -> (B, L, width); ``padding_mask`` (B, L) True at padding."""
        h, bias = self.embed(inputs), self.encoder_bias(inputs.shape[1], inputs.shape[1])
        for block in self.encoder:
            h = block(h, key_padding_mask=padding_mask, position_bias=bias)
        return self.encoder_norm(h)

    def decode(self, decoder_inputs: torch.Tensor, memory: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M) decoder ids (targets shifted right) and the encoder's output -> (B, M, vocab) logits."""
        h, bias = self.embed(decoder_inputs), self.decoder_bias(decoder_inputs.shape[1], decoder_inputs.shape[1])
        for block in self.decoder:
            h = block(h, causal=True, position_bias=bias, context=memory, context_padding_mask=padding_mask)
        return (self.decoder_norm(h) * self.width ** -0.5) @ self.embed.weight.T

    def forward(self, inputs: torch.Tensor, decoder_inputs: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(decoder_inputs, self.encode(inputs, padding_mask), padding_mask)
# --8<-- [end:model]


# --8<-- [start:span_corrupt]
def _composition(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """A uniformly random way to write ``total`` as an ordered sum of ``parts`` positive integers."""
    cuts = (torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).sort().values.tolist()
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def span_corrupt(ids: torch.Tensor, tokenizer: CharTokenizer, generator: torch.Generator,
                 density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 Sec. 3.1.4 (Fig. 2) with the counts of Sec. 3.3.4: of L tokens, N = round(density * L) are corrupted,
    in k = round(N / mean_span) spans. Span lengths are a uniform random composition of N into k parts, the kept
    stretches one of L - N into k parts, alternating kept, corrupted, kept, ... Returns ``(inputs, targets)``:
    the inputs keep the text with span i replaced by sentinel i; the targets are sentinel i followed by span i
    for every span, then sentinel k, which ends the target."""
    length = ids.numel()
    if length < 2:
        raise LineageError("span corruption needs at least 2 tokens")
    noise = min(max(round(density * length), 1), length - 1)
    spans = max(round(noise / mean_span), 1)
    if spans > SENTINELS - 1 or length - noise < spans:
        raise LineageError(f"cannot corrupt {length} tokens into {spans} spans (at most 15, with text between)")
    inputs, targets, start = [], [], 0
    for i, (keep, drop) in enumerate(zip(_composition(length - noise, spans, generator),
                                         _composition(noise, spans, generator))):
        sentinel = torch.tensor([tokenizer.sentinel(i)])
        inputs += [ids[start:start + keep], sentinel]
        targets += [sentinel, ids[start + keep:start + keep + drop]]
        start += keep + drop
    targets.append(torch.tensor([tokenizer.sentinel(spans)]))
    return torch.cat(inputs), torch.cat(targets)
# --8<-- [end:span_corrupt]


# --8<-- [start:batch]
def collate(pairs: list[tuple[torch.Tensor, torch.Tensor]], pad: int) -> dict[str, torch.Tensor]:
    """Pad ``(inputs, targets)`` pairs into a batch: ``inputs`` (B, L) and its ``padding_mask``; ``decoder_inputs``
    = targets shifted right behind the start token, which is the padding id (transformers' ``_shift_right`` with
    T5's ``decoder_start_token_id`` = pad); ``labels`` = targets, -100 (ignored by the loss) after each target's end."""
    inputs = nn.utils.rnn.pad_sequence([p[0] for p in pairs], batch_first=True, padding_value=pad)
    labels = nn.utils.rnn.pad_sequence([p[1] for p in pairs], batch_first=True, padding_value=-100)
    decoder_inputs = torch.cat([torch.full_like(labels[:, :1], pad), labels[:, :-1]], dim=1).masked_fill(
        labels == -100, pad)
    return {"inputs": inputs, "padding_mask": inputs == pad, "decoder_inputs": decoder_inputs, "labels": labels}


def corrupted_batch(ids: torch.Tensor, tokenizer: CharTokenizer, length: int, batch: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``batch`` random windows of ``length`` characters of ``ids``, span-corrupted and collated."""
    from refimpl.text import windows

    rows = windows(ids, length, batch, generator)
    return collate([span_corrupt(row, tokenizer, generator) for row in rows], tokenizer.pad)


def target_nll(model: T5, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token cross-entropy (nats) of the targets, (B, M), 0 where the label is -100."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(batch["inputs"], batch["decoder_inputs"], batch["padding_mask"])
    return F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none")
# --8<-- [end:batch]


# ---------------------------------------------------------------------------------------------------------------
# Training on the repository's notes
# ---------------------------------------------------------------------------------------------------------------

#: sizes per preset (the algorithm is the same): windows of ``length`` characters, of which 15% are corrupted
PRESETS = {
    "quick": {"width": 96, "depth": 2, "heads": 4, "length": 64, "steps": 300, "batch_size": 32, "lr": 3e-3},
    "full": {"width": 512, "depth": 6, "heads": 8, "length": 256, "steps": 20000, "batch_size": 128, "lr": 1e-3},
}


def text_data() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor, str]:
    """The notes (refimpl.text.corpus): tokenizer over train + held-out text, both as ids, and the sha256 of the
    training text (recorded in configs, so editing the notes changes a cached model's key). Read it once and pass
    it to :func:`train_config`, :func:`train` and :func:`evaluate`, so that all three see the same text."""
    from refimpl.text import corpus

    train, held_out = corpus()
    tokenizer = CharTokenizer.from_text(train + held_out)
    return (tokenizer, tokenizer.encode(train), tokenizer.encode(held_out),
            hashlib.sha256(train.encode("utf-8")).hexdigest())


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0, data=None) -> dict:
    """The JSON config of a span-corruption run on the notes (``data``: :func:`text_data`, read if not given):
    model sizes, tokenizer characters, text hash."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    tokenizer, _, _, digest = data or text_data()
    model = {"vocab_size": len(tokenizer), "width": sizes["width"], "depth": sizes["depth"], "heads": sizes["heads"],
             "mlp_ratio": 4, "num_buckets": 32, "max_distance": 128}
    return {"data": "notes", "text_sha256": digest, "chars": tokenizer.chars, "model": model,
            "length": sizes["length"], "density": NOISE_DENSITY, "mean_span": MEAN_SPAN, "seed": seed,
            "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, data=None, device=None, resume: bool = True, progress: bool = True):
    """Pre-train with span corruption (T5 Sec. 3.3.4): cross-entropy of the targets given the corrupted input,
    on random windows of the notes' training text (``data``: :func:`text_data`, read if not given).
    Returns (model, loss history)."""
    from refimpl.training import fit

    tokenizer, train_ids, _, digest = data or text_data()
    if digest != config["text_sha256"] or tokenizer.chars != config["chars"]:
        raise LineageError("the notes changed since this config was made: make a new config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        model = T5(**config["model"])

    def loss_fn(model, generator):
        batch = corrupted_batch(train_ids, tokenizer, config["length"], config["batch_size"], generator)
        return target_nll(model, batch).sum() / (batch["labels"] != -100).sum()

    history = fit(model, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="t5", config=config,
                  device=device, seed=config["seed"], batch_size=config["batch_size"], resume=resume,
                  progress=progress)
    return model, history
# --8<-- [end:train]


def evaluate(model: T5, config: dict, *, data=None, windows: int = 256, seed: int = 1) -> dict[str, float]:
    """Held-out span corruption: ``windows`` seeded windows of the held-out notes, corrupted as in training.
    Returns the model's mean cross-entropy over all target tokens (``target``) and over the corrupted characters
    only (``span``, the sentinels excluded), the add-one unigram cross-entropy of the same characters
    (``unigram``, refimpl.text.unigram_nll: a model that ignores the context), and the standard error of the
    mean per-window difference span - unigram (``se``; windows are drawn independently)."""
    from refimpl.text import unigram_nll

    tokenizer, train_ids, held_ids, _ = data or text_data()
    batch = corrupted_batch(held_ids, tokenizer, config["length"], windows, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        nll = target_nll(model.eval(), batch).cpu()
    labels = batch["labels"]
    is_char = labels >= len(tokenizer) - len(tokenizer.chars)  # ids after the special tokens
    table = {int(c): unigram_nll(train_ids, c.reshape(1), len(tokenizer)) for c in labels[is_char].unique()}
    unigram = torch.zeros_like(nll)
    unigram[is_char] = torch.tensor([table[int(c)] for c in labels[is_char]])
    per_window = ((nll - unigram) * is_char).sum(1) / is_char.sum(1)
    return {"target": float(nll.sum() / (labels != -100).sum()), "span": float(nll[is_char].mean()),
            "unigram": float(unigram[is_char].mean()), "se": float(per_window.std() / math.sqrt(windows)),
            "tokens": int(is_char.sum())}


def load(ckpt) -> tuple[T5, CharTokenizer]:
    """Rebuild a checkpoint's model (CPU, eval mode) and its tokenizer from the recorded config."""
    from refimpl import checkpoint

    def build(data):
        CharTokenizer(data.config["chars"])  # a config without a vocabulary is a corrupt checkpoint too
        return T5(**data.config["model"])

    model, data = checkpoint.load_module(ckpt, expect_model="t5", build=build)
    return model, CharTokenizer(data.config["chars"])


# --8<-- [start:fill]
@torch.no_grad()
def fill(model: T5, tokenizer: CharTokenizer, text: str, *, max_new_tokens: int = 64) -> tuple[str, str]:
    """Fill the spans marked ``<>`` in ``text``: the i-th mark becomes sentinel i, the decoder generates the
    targets greedily from the start token until it emits the closing sentinel (or ``max_new_tokens``), and each
    generated span replaces its mark. Returns (filled text, generated targets)."""
    pieces = text.split(PLACEHOLDER)
    spans = len(pieces) - 1
    if not 1 <= spans < SENTINELS:
        raise LineageError(f"mark 1 to {SENTINELS - 1} missing spans with {PLACEHOLDER!r}, found {spans}")
    ids = [tokenizer.encode(pieces[0])]
    for i, piece in enumerate(pieces[1:]):
        ids += [torch.tensor([tokenizer.sentinel(i)]), tokenizer.encode(piece)]
    device = next(model.parameters()).device
    inputs = torch.cat(ids)[None].to(device)
    memory = model.encode(inputs)
    out = torch.tensor([[tokenizer.pad]], device=device)
    for _ in range(max_new_tokens):
        token = model.decode(out, memory)[0, -1].argmax()
        out = torch.cat([out, token.reshape(1, 1)], dim=1)
        if int(token) == tokenizer.sentinel(spans):
            break
    spans_out: dict[int, list[int]] = {}
    for token in out[0, 1:].tolist():  # sentinel i opens span i; characters go to the open span
        if tokenizer.sentinel(0) <= token < tokenizer.sentinel(0) + SENTINELS:
            current = spans_out.setdefault(token - tokenizer.sentinel(0), [])
        elif spans_out:
            current.append(token)
    filled = pieces[0] + "".join(tokenizer.decode(spans_out.get(i, [])) + piece for i, piece in enumerate(pieces[1:]))
    return filled, tokenizer.decode(out[0, 1:])
# --8<-- [end:fill]
