"""The modern decoder block: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023),
arXiv 2302.13971, Sec. 2.2, built from the switches of :class:`refimpl.transformer.Block`:

- pre-normalisation with RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467) and no biases (``norm="rms"``,
  ``bias=False``);
- the SwiGLU MLP (Shazeer 2020, arXiv 2002.05202) with hidden width 2/3 * 4d (``activation="swiglu"``);
- rotary position embeddings (Su et al. 2021, arXiv 2104.09864) on queries and keys instead of absolute position
  embeddings (:func:`refimpl.transformer.rotary_tables`);
- grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245; used from Llama 2's larger models on) with
  ``kv_heads`` key/value heads (``kv_heads=heads``: multi-head attention as in LLaMA 1).

Generation keeps each block's keys and values (a KV cache), so each new token costs one position's work instead of
the whole prefix again; :func:`generate` gives the same logits with and without the cache.

Training is GPT's causal language modelling on this repository's notes, one token per character (the text, the
windows, the loss and the held-out evaluation are :mod:`refimpl.gpt`'s); the paper's optimiser settings (AdamW,
beta2 0.95, cosine decay, weight decay 0.1) are replaced by the project's one training loop, as for GPT.
:class:`GPTBlocks` (GPT-2's blocks in LLaMA's frame) is the control the LLaMA page compares the block with.
"""

from __future__ import annotations

import torch
from torch import nn

from refimpl.core import LineageError
from refimpl.gpt import check_notes, fit_notes, load_notes_model, text_data
from refimpl.text import CharTokenizer
from refimpl.transformer import Block, TransformerStack, rotary_tables


def swiglu_hidden(width: int, multiple: int = 8) -> int:
    """LLaMA's MLP width: 2/3 of 4d (so SwiGLU's three matrices cost what a 4d two-matrix MLP does), rounded up
    to a multiple of ``multiple`` (256 in the paper's code; 8 here, for small widths)."""
    hidden = 2 * 4 * width // 3
    return multiple * ((hidden + multiple - 1) // multiple)


# --8<-- [start:model]
class Llama(nn.Module):
    """Token embedding, ``depth`` pre-RMSNorm blocks with rotary self-attention (``kv_heads`` key/value heads)
    and SwiGLU MLPs, a final RMSNorm and an untied output projection: ``(B, L)`` tokens -> ``(B, L, vocab)``
    logits. ``theta`` is RoPE's base (10000 in RoFormer and LLaMA)."""

    def __init__(self, vocab_size: int, width: int = 64, depth: int = 2, heads: int = 4, kv_heads: int | None = None,
                 mlp_hidden: int | None = None, eps: float = 1e-5, theta: float = 10000.0):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        mlp_hidden = mlp_hidden or swiglu_hidden(width)
        if width % heads or (width // heads) % 2:
            raise LineageError(f"width / heads must be an even integer (RoPE rotates pairs), got {width} / {heads}")
        self.config = dict(vocab_size=vocab_size, width=width, depth=depth, heads=heads, kv_heads=kv_heads,
                           mlp_hidden=mlp_hidden, eps=eps, theta=theta)
        self.token = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(
            Block(width, heads, norm="rms", bias=False, activation="swiglu", eps=eps, kv_heads=kv_heads,
                  mlp_hidden=mlp_hidden) for _ in range(depth))
        self.norm = nn.RMSNorm(width, eps=eps)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """Logits of ``tokens``; with ``caches`` (one dict per block, empty at the start) the tokens continue the
        cached prefix: their positions start after it, and the caches are extended in place."""
        start = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        positions = torch.arange(start, start + tokens.shape[-1], device=tokens.device)
        tables = rotary_tables(positions, self.config["width"] // self.config["heads"], self.config["theta"])
        h = self.token(tokens)
        for i, block in enumerate(self.blocks):
            h = block(h, causal=True, rotary=tables, cache=None if caches is None else caches[i])
        return self.head(self.norm(h))
# --8<-- [end:model]


# --8<-- [start:generate]
@torch.no_grad()
def generate(model: Llama, prompt: torch.Tensor, new_tokens: int, *, cache: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of ``new_tokens`` after ``prompt`` (B, L). With ``cache`` the prompt runs once and every
    later step feeds only the newest token; without, every step recomputes the whole sequence. Returns the
    tokens (B, L + new_tokens) and the logits that chose each new token (B, new_tokens, vocab)."""
    if new_tokens <= 0:
        raise LineageError(f"new_tokens must be positive, got {new_tokens}")
    caches = [{} for _ in model.blocks] if cache else None
    tokens, chosen = prompt, []
    step_input = prompt
    for _ in range(new_tokens):
        logits = model(step_input, caches) if cache else model(tokens)
        last = logits[:, -1]
        chosen.append(last)
        next_token = last.argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        step_input = next_token
    return tokens, torch.stack(chosen, dim=1)
# --8<-- [end:generate]


def kv_cache_size(depth: int, kv_heads: int, head_dim: int, tokens: int = 1) -> int:
    """Values the KV cache holds for one sequence of ``tokens`` tokens: a key and a value vector of ``head_dim``
    per layer, per key/value head and per token, 2 * depth * kv_heads * head_dim * tokens (times the bytes per value
    for memory). Grouped-query attention divides it by heads / kv_heads."""
    return 2 * depth * kv_heads * head_dim * tokens


# --8<-- [start:baseline]
class GPTBlocks(nn.Module):
    """The control of the page's ablation: GPT-2's blocks in LLaMA's frame. Learned absolute positions added to the
    token embedding, pre-LayerNorm blocks with biases, a GELU MLP of width 4d and multi-head attention
    (:class:`refimpl.transformer.TransformerStack`), then, as in :class:`Llama`, an untied output layer without
    bias; the token and position embeddings start at N(0, 1), the scale of :class:`Llama`'s token embedding (GPT-2
    draws both from N(0, 0.02) and ties the output layer to the token embedding: :class:`refimpl.gpt.GPT`)."""

    def __init__(self, vocab_size: int, max_len: int, width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth, heads=heads)
        self.max_len = max_len
        self.body = TransformerStack(vocab_size, max_len, width, depth, heads, causal=True)
        nn.init.normal_(self.body.position)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(tokens))
# --8<-- [end:baseline]


# --- training ----------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm. The quick model is the one of the page's ablation
#: (figures/zoo/llama.py): its baselines have the same width, depth, heads, context, steps, batch and learning rate
PRESETS = {
    "quick": {"model": {"width": 64, "depth": 2, "heads": 4, "kv_heads": 2}, "context": 64, "steps": 160,
              "batch_size": 16, "lr": 3e-3, "warmup": 16},
    "full": {"model": {"width": 384, "depth": 6, "heads": 6, "kv_heads": 2}, "context": 256, "steps": 5000,
             "batch_size": 64, "lr": 1e-3, "warmup": 200},
}


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0, data=None) -> dict:
    """The JSON config of a run: the whole model config (SwiGLU width, RMSNorm eps, RoPE base included), the context,
    the tokenizer's characters and the training text's hash (``data``: a :func:`refimpl.gpt.text_data` tuple already
    read; default: read the notes now)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    tok, _, _, text_hash = data or text_data()
    with torch.device("meta"):  # only its config: no weights, no draw from the global RNG
        model = Llama(len(tok), **sizes["model"]).config  # the defaults written out: a later default cannot change it
    return {"data": "notes", "text_sha256": text_hash, "chars": tok.chars, "model": model,
            "context": sizes["context"], "seed": seed, "steps": steps or sizes["steps"],
            "batch_size": sizes["batch_size"], "lr": sizes["lr"], "warmup": sizes["warmup"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True, data=None):
    """GPT's objective (:func:`refimpl.gpt.lm_loss`, next character given the previous ones) on random windows of
    ``config["context"] + 1`` characters of the notes, for the LLaMA model. Returns (model, loss history)."""
    from refimpl.training import build_seeded

    data = data or text_data()
    check_notes(config, data)
    model = build_seeded(Llama, config)  # the initial weights follow config["seed"]
    history = fit_notes(model, config, config["context"], out, model_name="llama", device=device, resume=resume,
                        progress=progress, data=data)
    return model, history
# --8<-- [end:train]


def load(ckpt) -> tuple[Llama, CharTokenizer, dict]:
    """Rebuild a checkpoint's model (CPU, eval mode), its tokenizer and its recorded config."""
    return load_notes_model(ckpt, Llama, "llama")
