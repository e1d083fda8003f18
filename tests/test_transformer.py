"""refimpl.transformer: shapes, masks, permutation equivariance, agreement with attention written out by hand.

Tolerances: the comparisons are float64 computations of the same sums in a different order (a loop over heads,
queries and keys vs batched matrix products); with O(10) terms of size O(1) the rounding error is ~1e-15, so
1e-12 leaves a wide margin and still fails on any real difference. Exact-equality checks (masked tokens changing
nothing) rely on the masked keys getting weight exp(-inf) = 0 exactly.
"""

import math

import pytest
import torch

from refimpl.core import LineageError
from refimpl.transformer import Block, MultiHeadAttention, TransformerStack, attention

TOL = 1e-12


def _stack(**kwargs) -> TransformerStack:
    torch.manual_seed(0)
    return TransformerStack(**{"vocab_size": 11, "max_len": 6, "width": 16, "depth": 2, "heads": 4,
                               **kwargs}).double().eval()


def test_shapes_and_length_check():
    stack = _stack()
    tokens = torch.randint(0, 11, (3, 6))
    assert stack(tokens).shape == (3, 6, 16)
    assert stack(tokens[:, :4]).shape == (3, 4, 16)
    with pytest.raises(LineageError, match="longer than max_len"):
        stack(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(LineageError, match="divisible"):
        MultiHeadAttention(10, 4)


def test_attention_matches_hand_written_loops():
    """Eq. (1) per head, per query, per key, with the heads concatenated and projected (Sec. 3.2.2)."""
    torch.manual_seed(1)
    attn = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    pad = torch.tensor([[False, False, False, True], [False, False, False, False]])
    for causal in (False, True):
        got = attn(x, causal=causal, key_padding_mask=pad)
        expected = torch.zeros_like(x)
        for b in range(2):
            heads = []
            for h in range(2):
                rows = slice(4 * h, 4 * h + 4)
                q, k, v = (x[b] @ lin.weight[rows].T + lin.bias[rows] for lin in (attn.q, attn.k, attn.v))
                out = torch.zeros(4, 4, dtype=torch.float64)
                for i in range(4):
                    keys = [j for j in range(4) if not pad[b, j] and not (causal and j > i)]
                    scores = torch.stack([q[i] @ k[j] / math.sqrt(4) for j in keys])
                    weights = torch.exp(scores - scores.max())
                    weights = weights / weights.sum()
                    out[i] = sum(wj * v[j] for wj, j in zip(weights, keys))
                heads.append(out)
            expected[b] = torch.cat(heads, dim=1) @ attn.out.weight.T + attn.out.bias
        assert (got - expected).abs().max() < TOL


def test_block_is_pre_ln_residual():
    """Block(x) = y + mlp(LN2(y)) with y = x + attn(LN1(x)): the GPT-2 order, written out."""
    torch.manual_seed(2)
    block = Block(8, 2).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    y = x + block.attn(block.ln1(x))
    assert (block(x) - (y + block.mlp(block.ln2(y)))).abs().max() < TOL


def test_causal_mask_hides_later_tokens():
    stack = _stack(causal=True)
    tokens = torch.randint(0, 11, (2, 6))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 11
    a, b = stack(tokens), stack(changed)
    assert torch.equal(a[:, :4], b[:, :4])  # positions before the change see exactly the same keys
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3  # and the change is visible where allowed


def test_padding_mask_hides_padded_tokens():
    stack = _stack()
    tokens = torch.randint(1, 11, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[:, 4:] = True
    changed = tokens.clone()
    changed[:, 4:] = torch.randint(1, 11, (2, 2))
    a, b = stack(tokens, key_padding_mask=pad), stack(changed, key_padding_mask=pad)
    assert torch.equal(a[:, :4], b[:, :4])
    assert (stack(tokens)[:, :4] - a[:, :4]).abs().max() > 1e-3  # without the mask the padding does matter


def test_permutation_equivariance_without_positions():
    """Without position embeddings (and without a causal mask) attention is a set operation: permuting the
    tokens permutes the outputs the same way."""
    stack = _stack(positions=False)
    tokens = torch.randint(0, 11, (2, 6))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert (stack(tokens[:, perm]) - stack(tokens)[:, perm]).abs().max() < TOL
    with_positions = _stack()
    assert (with_positions(tokens[:, perm]) - with_positions(tokens)[:, perm]).abs().max() > 1e-3


# --- agreement with PyTorch's fused attention and hand-written block variants -----------------------------

def _qkv(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=generator) for _ in range(3))


def test_attention_equals_scaled_dot_product_attention():
    """Eq. (1) against torch.nn.functional.scaled_dot_product_attention (float64, math kernel) with no mask, the
    causal mask, a boolean key padding mask (SDPA's boolean mask is True where attention is *allowed*, ours
    is True where it is blocked) and an additive float bias (SDPA adds a float attn_mask to the scores, as T5's
    position bias). Same sums in another order: TOL (module docstring) applies."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v = _qkv(3)
    pad = torch.tensor([[False, False, True, False, True], [False, False, False, False, False]])
    bias = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    cases = [({}, {}), ({"blocked": causal}, {"is_causal": True}),
             ({"blocked": pad[:, None, None, :]}, {"attn_mask": ~pad[:, None, None, :]}),
             ({"bias": bias}, {"attn_mask": bias})]
    for ours, theirs in cases:
        out, weights = attention(q, k, v, **ours)
        assert (out - sdpa(q, k, v, **theirs)).abs().max() < TOL, ours.keys()
        assert (weights.sum(-1) - 1).abs().max() < TOL
    out, weights = attention(q, k, v, blocked=pad[:, None, None, :])
    assert torch.equal(weights[0, :, :, 2], torch.zeros(3, 5, dtype=torch.float64))  # exp(-inf) = 0 exactly


def _randomise_norms(block: Block) -> None:
    """Non-trivial norm weights (and biases, where there are any), so that a wrong norm cannot pass."""
    generator = torch.Generator().manual_seed(5)
    for norm in (block.ln1, block.ln2):
        norm.weight.data = 1 + 0.5 * torch.randn(norm.weight.shape, dtype=torch.float64, generator=generator)
        if getattr(norm, "bias", None) is not None:
            norm.bias.data = 0.5 * torch.randn(norm.bias.shape, dtype=torch.float64, generator=generator)


def test_block_post_ln_and_rms_norm_written_out():
    """prenorm=False is the 2017 paper's LayerNorm(x + Sublayer(x)) (Sec. 3.1); norm="rms" is T5's
    x / sqrt(mean(x^2) + eps) * weight, with no mean subtraction and no bias; prenorm=True with it: T5's order."""
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(7)
    post = Block(8, 2, prenorm=False).double()
    _randomise_norms(post)
    y = post.ln1(x + post.attn(x))
    assert (post(x) - post.ln2(y + post.mlp(y))).abs().max() < TOL

    torch.manual_seed(8)
    rms = Block(8, 2, norm="rms", bias=False, scale=False, activation="relu", eps=1e-6).double()
    _randomise_norms(rms)

    def rms_norm(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    assert (rms.ln1(x) - rms_norm(x, rms.ln1.weight)).abs().max() < TOL
    y = x + rms.attn(rms_norm(x, rms.ln1.weight))
    assert (rms(x) - (y + rms.mlp(rms_norm(y, rms.ln2.weight)))).abs().max() < TOL
    assert all(layer.bias is None for layer in (rms.attn.q, rms.attn.out, rms.mlp[0], rms.mlp[2]))


def test_cross_attention_shapes_and_context_padding():
    """Cross-attention (Sec. 3.2.3): queries from x (L = 5), keys and values from a context of another length
    (M = 3); a padded context token changes nothing (exactly), and without the mask it does."""
    torch.manual_seed(9)
    block = Block(8, 2, cross=True).double().eval()
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=generator)
    context = torch.randn(2, 3, 8, dtype=torch.float64, generator=generator)
    _, weights = block.cross(x, context, need_weights=True)
    assert block(x, context=context).shape == (2, 5, 8) and weights.shape == (2, 2, 5, 3)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    changed = context.clone()
    changed[0, 2] = torch.randn(8, dtype=torch.float64, generator=generator)
    a = block(x, context=context, context_padding_mask=pad)
    assert torch.equal(a, block(x, context=changed, context_padding_mask=pad))
    assert (block(x, context=context)[0] - block(x, context=changed)[0]).abs().max() > 1e-3
