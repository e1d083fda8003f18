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
"""

from __future__ import annotations

import torch
from torch import nn

from refimpl.core import LineageError
from refimpl.transformer import Block, rotary_tables


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
