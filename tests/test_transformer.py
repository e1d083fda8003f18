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
from refimpl.transformer import Block, MultiHeadAttention, TransformerStack

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
        w_qkv, b_qkv = attn.qkv.weight, attn.qkv.bias
        expected = torch.zeros_like(x)
        for b in range(2):
            heads = []
            for h in range(2):
                rows = slice(4 * h, 4 * h + 4)
                q = x[b] @ w_qkv[rows].T + b_qkv[rows]
                k = x[b] @ w_qkv[8:16][rows].T + b_qkv[8:16][rows]
                v = x[b] @ w_qkv[16:24][rows].T + b_qkv[16:24][rows]
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
