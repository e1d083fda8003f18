"""A minimal Transformer: Vaswani et al., "Attention Is All You Need" (2017), arXiv 1706.03762, in the pre-LN layout.

Multi-head scaled dot-product attention (Sec. 3.2.1, Eq. 1: softmax(Q K^T / sqrt(d_k)) V; Sec. 3.2.2: h heads
of width d_k = width / h, concatenated and projected), a position-wise MLP (Sec. 3.3, here with GELU and a 4x
hidden width), residual connections and learned position embeddings. The paper normalises after each residual
(post-LN: LN(x + sublayer(x))); we use the pre-LN order of GPT-2 and of the GLIDE/CLIP text encoders,
x + sublayer(LN(x)), with a final LayerNorm after the last block.

Masks: ``causal=True`` lets position i attend only to positions j <= i (the decoder's masking, Sec. 3.2.3);
``key_padding_mask`` (B, L) bool, True at padding, removes padded positions as keys, so they cannot change
the other positions' outputs. Every query must keep at least one key (a sequence of padding only, with no
start token, has none: its attention weights would be 0/0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from refimpl.core import LineageError


# --8<-- [start:attention]
class MultiHeadAttention(nn.Module):
    """Vaswani et al. Sec. 3.2: ``heads`` parallel scaled dot-product attentions (Eq. 1) of width
    d_k = width / heads over (B, L, width) inputs, concatenated and projected back to ``width``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise LineageError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, *, causal: bool = False,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, width = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads)  # (B, heads, L, L)
        blocked = torch.zeros(n, n, dtype=torch.bool, device=x.device)
        if causal:
            blocked = torch.ones_like(blocked).triu(1)  # query i may not see key j > i
        if key_padding_mask is not None:
            blocked = blocked | key_padding_mask[:, None, None, :].to(x.device)
        weights = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, width))
# --8<-- [end:attention]


# --8<-- [start:block]
class Block(nn.Module):
    """One pre-LN Transformer block (GPT-2 order): x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), MultiHeadAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, *, causal: bool = False,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal=causal, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.ln2(x))
# --8<-- [end:block]


# --8<-- [start:stack]
class TransformerStack(nn.Module):
    """Token embedding + learned position embedding (or none: ``positions=False``), ``depth`` pre-LN
    :class:`Block` s, a final LayerNorm: ``(B, L)`` int64 tokens -> ``(B, L, width)`` features.
    ``causal`` is fixed at construction (an encoder sees both sides, a GPT-style decoder only the left)."""

    def __init__(self, vocab_size: int, max_len: int, width: int = 64, depth: int = 2, heads: int = 4,
                 causal: bool = False, positions: bool = True):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth, heads=heads,
                           causal=causal, positions=positions)
        self.max_len, self.causal = max_len, causal
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(0.02 * torch.randn(max_len, width)) if positions else None
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.shape[-1] > self.max_len:
            raise LineageError(f"sequence of {tokens.shape[-1]} tokens is longer than max_len {self.max_len}")
        h = self.token(tokens)
        if self.position is not None:
            h = h + self.position[: tokens.shape[-1]]
        for block in self.blocks:
            h = block(h, causal=self.causal, key_padding_mask=key_padding_mask)
        return self.ln_final(h)
# --8<-- [end:stack]

