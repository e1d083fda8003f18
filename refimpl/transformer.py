"""A minimal Transformer: Vaswani et al., "Attention Is All You Need" (2017), arXiv 1706.03762, and the block
variants of its three descendants (GPT-2, BERT, T5), so that one block serves every model in the project.

Multi-head scaled dot-product attention (Sec. 3.2.1, Eq. 1: softmax(Q K^T / sqrt(d_k)) V; Sec. 3.2.2: h heads
of width d_k = width / h, concatenated and projected), a position-wise MLP (Sec. 3.3), residual connections.
A :class:`Block` is configured by four switches, each the choice one of the descendants made:

====================  =====================  ========================  ============================
switch                GPT-2 / GLIDE / CLIP   BERT (= the 2017 paper)   T5
====================  =====================  ========================  ============================
``prenorm``           True: x + f(LN(x))     False: LN(x + f(x))       True
``norm``              "layer"                "layer"                   "rms" (scale only, no mean)
``bias``              True                   True                      False (no bias anywhere)
``scale``             True: 1/sqrt(d_k)      True                      False (folded into the init)
activation            GELU                   GELU (paper: ReLU)        ReLU
====================  =====================  ========================  ============================

OpenAI's released CLIP towers (:mod:`refimpl.pretrained`) are GPT-2 blocks with ``activation="quick_gelu"``
(:class:`QuickGELU`, the sigmoid approximation of GELU that OpenAI's CLIP code uses).

The modern decoder (LLaMA, :mod:`refimpl.llama`) is three more switches on the same block, each defaulting to the
2017 choice: ``activation="swiglu"`` (SwiGLU, Shazeer 2020, arXiv 2002.05202: W2 (SiLU(x W1) * x W3), hidden width
``mlp_hidden``), ``kv_heads`` (grouped-query attention, Ainslie et al. 2023, arXiv 2305.13245: ``kv_heads`` key/value
heads, each shared by ``heads / kv_heads`` query heads; 1 is multi-query attention) and ``norm="rms"`` (RMSNorm,
Zhang & Sennrich 2019, arXiv 1910.07467); rotary position embeddings (RoFormer, Su et al. 2021, arXiv 2104.09864)
are passed to the block's forward as ``rotary`` (see :func:`rotary_tables`), and ``cache`` keeps the keys and
values of earlier positions for generation.

Masks: ``causal=True`` lets position i attend only to positions j <= i (the decoder's masking, Sec. 3.2.3);
``key_padding_mask`` (B, L_k) bool, True at padding, removes padded positions as keys, so they cannot change
the other positions' outputs. Every query must keep at least one key (a sequence of padding only, with no
start token, has none: its attention weights would be 0/0). ``position_bias`` is added to the scores before
the softmax (T5's relative position bias, shape (1 or B, heads, L_q, L_k)). ``context`` (B, L_k, width) turns
self-attention into cross-attention: queries from ``x``, keys and values from ``context`` (the encoder-decoder
attention of Sec. 3.2.3). :class:`CrossAttentionBlock` runs a cross-attending Block over the positions of a
convolutional feature map (the spatial Transformer of latent diffusion, LDM Eq. 3; used by LDM and Imagen).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from refimpl.core import LineageError


# --8<-- [start:rotary]
def rotary_tables(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding (RoFormer): the angles m theta_i, theta_i = theta^(-2(i-1)/d), i = 1..d/2, of
    every position m, as (cos, sin) tables of shape (L, d/2)."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return angles.cos(), angles.sin()  # float64: rotate() casts them to its input's dtype


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding (RoFormer): rotate each pair (x_{2i}, x_{2i+1}) of the last axis of ``x``
    (..., L, d) by the angle of its position: R_m x with 2x2 blocks [[cos, -sin], [sin, cos]]. Then
    (R_m q) . (R_n k) = q . R_{n-m} k depends on the positions only through n - m."""
    cos, sin = (t.to(x.dtype) for t in tables)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
# --8<-- [end:rotary]


# --8<-- [start:attention]
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, blocked: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) on (B, heads, L, d_k) tensors: ``softmax(Q K^T / sqrt(d_k) + bias)`` with blocked pairs at -inf,
    times V. Returns the output and the attention weights (B, heads, L_q, L_k)."""
    scores = q @ k.transpose(-1, -2)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Vaswani et al. Sec. 3.2: ``heads`` parallel attentions (Eq. 1) of width d_k = width / heads,
    concatenated and projected back to ``width``; self-attention, or cross-attention with ``context``.
    ``kv_heads`` (default ``heads``) key/value heads, each shared by heads / kv_heads query heads (GQA)."""

    def __init__(self, width: int, heads: int, *, bias: bool = True, scale: bool = True, kv_heads: int | None = None):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if width % heads:
            raise LineageError(f"width {width} is not divisible by heads {heads}")
        if kv_heads <= 0 or heads % kv_heads:
            raise LineageError(f"heads {heads} is not a multiple of kv_heads {kv_heads}")
        self.heads, self.kv_heads, self.scale = heads, kv_heads, scale
        kv_width = width // heads * kv_heads
        self.q, self.k, self.v, self.out = (nn.Linear(width, w, bias=bias)
                                            for w in (width, kv_width, kv_width, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, causal: bool = False,
                key_padding_mask: torch.Tensor | None = None, position_bias: torch.Tensor | None = None,
                need_weights: bool = False, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: dict | None = None):
        """``rotary``: (cos, sin) tables of this call's positions (:func:`rotary_tables`), applied to queries and
        keys. ``cache``: a dict holding the rotated keys and values of the positions before this call's, extended
        in place; the n new queries sit after them, and ``causal`` then lets query i see the first
        (past + i + 1) keys."""
        context = x if context is None else context
        (b, n, width), d_k = x.shape, x.shape[-1] // self.heads

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:  # (B, L, heads * d_k) -> (B, heads, L, d_k)
            return t.reshape(b, t.shape[1], heads, d_k).transpose(1, 2)

        q = split(self.q(x), self.heads)
        k, v = split(self.k(context), self.kv_heads), split(self.v(context), self.kv_heads)
        if rotary is not None:
            q, k = rotate(q, rotary), rotate(k, rotary)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if self.kv_heads != self.heads:  # each key/value head serves heads / kv_heads consecutive query heads
            k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        m = k.shape[2]
        blocked = torch.zeros(n, m, dtype=torch.bool, device=x.device)
        if causal:
            blocked = torch.ones_like(blocked).triu(1 + m - n)  # query i (at position m - n + i) may not see later keys
        if key_padding_mask is not None:
            blocked = blocked | key_padding_mask[:, None, None, :].to(x.device)
        out, weights = attention(q, k, v, blocked=blocked, bias=position_bias, scale=self.scale)
        out = self.out(out.transpose(1, 2).reshape(b, n, width))
        return (out, weights) if need_weights else out
# --8<-- [end:attention]


def make_norm(kind: str, width: int, eps: float) -> nn.Module:
    """``"layer"``: LayerNorm (Ba et al. 2016), ``"rms"``: RMSNorm (Zhang & Sennrich 2019; T5's layer norm:
    x / sqrt(mean(x^2) + eps) * weight, no mean subtraction, no bias)."""
    if kind == "layer":
        return nn.LayerNorm(width, eps=eps)
    if kind == "rms":
        return nn.RMSNorm(width, eps=eps)
    raise LineageError(f"unknown norm {kind!r} (choose from layer, rms)")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU (Hendrycks & Gimpel 2016, Sec. 2), the MLP
    activation of OpenAI's CLIP (transformers' "quick_gelu")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


#: the MLP activations of :class:`Block` (besides "swiglu"); "gelu_tanh" is the tanh approximation of GELU that
#: GPT-2's released code and weights use (transformers' "gelu_new")
ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"), "relu": nn.ReLU,
               "quick_gelu": QuickGELU}


class SwiGLU(nn.Module):
    """Shazeer (2020) Eq. (6), FFN_SwiGLU(x) = (SiLU(x W1) * x W3) W2, the MLP of LLaMA (W1 the gate)."""

    def __init__(self, width: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate, self.up = nn.Linear(width, hidden, bias=bias), nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


# --8<-- [start:block]
class Block(nn.Module):
    """One Transformer block: self-attention, optional cross-attention (``cross=True``), MLP, each a residual
    sublayer; ``prenorm`` puts the norm inside the residual branch (x + f(norm(x)), GPT-2, T5) or after the sum
    (norm(x + f(x)), the 2017 paper and BERT). The other switches are in the module docstring's table."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, *, prenorm: bool = True, norm: str = "layer",
                 bias: bool = True, scale: bool = True, activation: str = "gelu", cross: bool = False,
                 eps: float = 1e-5, kv_heads: int | None = None, mlp_hidden: int | None = None):
        super().__init__()
        if activation not in (*ACTIVATIONS, "swiglu"):
            raise LineageError(f"unknown activation {activation!r} (choose from {', '.join(ACTIVATIONS)}, swiglu)")
        self.prenorm = prenorm
        self.ln1 = make_norm(norm, width, eps)
        self.attn = MultiHeadAttention(width, heads, bias=bias, scale=scale, kv_heads=kv_heads)
        if cross:
            self.ln_cross = make_norm(norm, width, eps)
            self.cross = MultiHeadAttention(width, heads, bias=bias, scale=scale)
        self.ln2 = make_norm(norm, width, eps)
        hidden = mlp_hidden or mlp_ratio * width
        if activation == "swiglu":
            self.mlp = SwiGLU(width, hidden, bias=bias)
        else:
            self.mlp = nn.Sequential(nn.Linear(width, hidden, bias=bias), ACTIVATIONS[activation](),
                                     nn.Linear(hidden, width, bias=bias))

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> torch.Tensor:
        return x + sublayer(norm(x)) if self.prenorm else norm(x + sublayer(x))

    def forward(self, x: torch.Tensor, *, causal: bool = False, key_padding_mask: torch.Tensor | None = None,
                position_bias: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None,
                context_bias: torch.Tensor | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: dict | None = None) -> torch.Tensor:
        x = self._residual(x, self.ln1, lambda h: self.attn(h, causal=causal, key_padding_mask=key_padding_mask,
                                                            position_bias=position_bias, rotary=rotary, cache=cache))
        if context is not None:
            x = self._residual(x, self.ln_cross, lambda h: self.cross(
                h, context, key_padding_mask=context_padding_mask, position_bias=context_bias))
        return self._residual(x, self.ln2, self.mlp)
# --8<-- [end:block]


# --8<-- [start:stack]
class TransformerStack(nn.Module):
    """Token embedding + learned position embedding (or none: ``positions=False``), ``depth`` pre-LN
    :class:`Block` s (GPT-2 order), a final LayerNorm: ``(B, L)`` int64 tokens -> ``(B, L, width)`` features.
    ``causal`` is fixed at construction (an encoder sees both sides, a GPT-style decoder only the left).
    ``activation``, ``eps`` (every LayerNorm's epsilon) and ``mlp_hidden`` go to the blocks (released CLIP's
    text tower: ``activation="quick_gelu"``)."""

    def __init__(self, vocab_size: int, max_len: int, width: int = 64, depth: int = 2, heads: int = 4,
                 causal: bool = False, positions: bool = True, *, activation: str = "gelu", eps: float = 1e-5,
                 mlp_hidden: int | None = None):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, depth=depth, heads=heads,
                           causal=causal, positions=positions)
        if (activation, eps, mlp_hidden) != ("gelu", 1e-5, None):  # recorded only when set (released CLIP's tower)
            self.config |= dict(activation=activation, eps=eps, mlp_hidden=mlp_hidden)
        self.max_len, self.causal = max_len, causal
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(0.02 * torch.randn(max_len, width)) if positions else None
        self.blocks = nn.ModuleList(Block(width, heads, activation=activation, eps=eps, mlp_hidden=mlp_hidden)
                                    for _ in range(depth))
        self.ln_final = nn.LayerNorm(width, eps=eps)

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


# --8<-- [start:spatial]
class CrossAttentionBlock(nn.Module):
    """LDM Eq. (3) inside a spatial Transformer: the feature map (B, C, H, W) becomes H*W tokens; a
    :class:`Block` with ``cross=True`` runs self-attention, then cross-attention with queries from the
    feature map and keys/values from the caption features tau_theta(y) (B, M, C), then an MLP; padded caption
    tokens are masked out as keys. The projection back is zero-initialised (a residual that starts as identity)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.block = Block(channels, heads, cross=True)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, h: torch.Tensor, context: torch.Tensor, context_padding_mask: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (B, H*W, C): phi_i(z_t), the queries' source
        tokens = self.block(tokens, context=context, context_padding_mask=context_padding_mask)
        return h + self.proj_out(tokens.transpose(1, 2).reshape(b, c, height, width))
# --8<-- [end:spatial]
