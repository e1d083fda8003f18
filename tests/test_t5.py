"""refimpl.t5: relative position buckets, causality, span corruption, transformers parity, fill, learning, CLI.

Exact checks run on small untrained models; the learning check uses the cached quick model of
figures/zoo/t5.py (trained once, shared with the figures).
"""

import math
from fractions import Fraction

import pytest
import torch

from refimpl import checkpoint, t5
from refimpl.cli import main as cli_main
from refimpl.text import SENTINELS, CharTokenizer

TOKENIZER = CharTokenizer("abcdefghijklmnopqrstuvwxyz ")


def _direct_bucket(rel: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> int:
    """The bucket from the description of T5 Sec. 2.1, written as thresholds in exact rational arithmetic: a half of
    n buckets, n/2 of them exact (distance d < n/2), then bucket b >= n/2 holds the d with
    (d / (n/2))^(n/2) >= (max_distance / (n/2))^(b - n/2), the largest such b, capped at n - 1."""
    n, offset = num_buckets, 0
    if bidirectional:
        n //= 2
        offset, d = (n if rel > 0 else 0), abs(rel)
    else:
        d = max(-rel, 0)
    exact = n // 2
    if d < exact:
        return offset + d
    b = exact
    while b + 1 < n and Fraction(d, exact) ** (n - exact) >= Fraction(max_distance, exact) ** (b + 1 - exact):
        b += 1
    return offset + b


OFFSETS = [*range(-300, 301)] + [-10_000, 10_000]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_the_direct_computation(bidirectional, num_buckets, max_distance):
    rel = torch.tensor(OFFSETS)
    got = t5.relative_position_bucket(rel, bidirectional, num_buckets, max_distance).tolist()
    assert got == [_direct_bucket(r, bidirectional, num_buckets, max_distance) for r in OFFSETS]


def test_bucket_landmarks():
    """Hand-checked values of the paper's 32 buckets up to offset 128 (rel = key - query)."""
    b = lambda r, bidirectional: int(t5.relative_position_bucket(torch.tensor(r), bidirectional))  # noqa: E731
    # encoder: 16 buckets per direction, 0..7 exact, keys after the query in 16..31
    assert [b(r, True) for r in (0, -1, -7, -8, -127, -128, -10_000)] == [0, 1, 7, 8, 15, 15, 15]
    assert [b(r, True) for r in (1, 7, 8, 128, 10_000)] == [17, 23, 24, 31, 31]
    # decoder: all 32 buckets for keys at or before the query, 0..15 exact; later keys (masked) in bucket 0
    assert [b(r, False) for r in (0, -1, -15, -16, -128, -10_000, 1, 50)] == [0, 1, 15, 16, 31, 31, 0, 0]


def _tiny(seed: int = 0, vocab: int = 40) -> t5.T5:
    torch.manual_seed(seed)
    return t5.T5(vocab, width=32, depth=2, heads=4).eval()


def test_decoder_is_causal_and_encoder_bidirectional():
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(20, 40, (2, 30), generator=g), torch.randint(20, 40, (2, 12), generator=g)
    y2 = y.clone()
    y2[:, 7:] = torch.randint(20, 40, (2, 5), generator=g)
    with torch.no_grad():
        memory = model.encode(x)
        # exact equality: a causal mask removes the later positions from the softmax entirely
        assert torch.equal(model.decode(y, memory)[:, :7], model.decode(y2, memory)[:, :7])
        assert not torch.equal(model.decode(y, memory)[:, 7:], model.decode(y2, memory)[:, 7:])
        x2 = x.clone()
        x2[:, -1] = (x[:, -1] - 20 + 1) % 20 + 20  # change the last input token only
        # the first position sees it: one of ~30 keys changes, an O(1/30) share of its attention, so its output
        # moves by ~1e-2; float32 rounding alone would move it by ~1e-6
        assert (model.encode(x2)[:, 0] - memory[:, 0]).abs().max() > 1e-3


# --- span corruption ----------------------------------------------------------------------------------------

def _reassemble(inputs: torch.Tensor, targets: torch.Tensor, tokenizer: CharTokenizer) -> list[int]:
    """Put each span of ``targets`` (sentinel i, span i, ..., closing sentinel) back in place of sentinel i."""
    sentinels = {tokenizer.sentinel(i) for i in range(SENTINELS)}
    spans, current = {}, None
    for token in targets.tolist():
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs.tolist():
        out += spans[token] if token in sentinels else [token]
    return out


@pytest.mark.parametrize("length", [10, 64, 257])
def test_span_corruption_reassembles_the_text_with_the_paper_s_counts(length):
    g = torch.Generator().manual_seed(length)
    for _ in range(50):
        ids = torch.randint(20, len(TOKENIZER), (length,), generator=g)
        inputs, targets = t5.span_corrupt(ids, TOKENIZER, g)
        assert _reassemble(inputs, targets, TOKENIZER) == ids.tolist()
        noise = round(0.15 * length)  # T5 Sec. 3.3.4: the counts are fixed, the positions random
        spans = round(noise / 3)
        assert targets.numel() == noise + spans + 1  # every span behind its sentinel, plus the closing sentinel
        assert inputs.numel() == length - noise + spans
        assert int(targets[-1]) == TOKENIZER.sentinel(spans)
        assert [t for t in inputs.tolist() if t < 20] == [TOKENIZER.sentinel(i) for i in range(spans)]


def test_span_lengths_follow_a_uniform_random_composition():
    """With L = 64: N = round(9.6) = 10 corrupted tokens in k = round(10/3) = 3 spans. A uniformly random
    composition of N into k positive parts has P(first part = j) = C(N-j-1, k-2) / C(N-1, k-1) = (9 - j) / 36,
    mean N/k = 10/3. The first span of independent draws is i.i.d. from that law, so its sample mean and the
    frequency of j = 1 are compared with 4 standard errors (a false failure has probability ~6e-5 each)."""
    n, N, k = 4000, 10, 3
    law = {j: math.comb(N - j - 1, k - 2) / math.comb(N - 1, k - 1) for j in range(1, N - k + 2)}
    assert abs(sum(law.values()) - 1) < 1e-12
    mean = sum(j * p for j, p in law.items())
    sd = math.sqrt(sum((j - mean) ** 2 * p for j, p in law.items()))
    g, ids = torch.Generator().manual_seed(0), torch.full((64,), 20)
    first = []
    for _ in range(n):
        inputs, targets = t5.span_corrupt(ids, TOKENIZER, g)
        first.append(int((targets[1:] >= 20).int().argmin()))  # characters before the second sentinel
    first = torch.tensor(first, dtype=torch.float64)
    assert abs(mean - N / k) < 1e-12
    assert abs(float(first.mean()) - mean) < 4 * sd / math.sqrt(n)
    p1 = law[1]
    assert abs(float((first == 1).double().mean()) - p1) < 4 * math.sqrt(p1 * (1 - p1) / n)
    assert set(first.long().tolist()) <= set(law)


def test_collate_shifts_the_targets_right_behind_the_pad_token():
    pairs = [(torch.tensor([21, 4, 22]), torch.tensor([4, 23, 24, 5])), (torch.tensor([25, 4]), torch.tensor([4, 26, 5]))]
    batch = t5.collate(pairs, TOKENIZER.pad)
    assert batch["inputs"].tolist() == [[21, 4, 22], [25, 4, 0]]
    assert batch["padding_mask"].tolist() == [[False] * 3, [False, False, True]]
    assert batch["labels"].tolist() == [[4, 23, 24, 5], [4, 26, 5, -100]]
    assert batch["decoder_inputs"].tolist() == [[0, 4, 23, 24], [0, 4, 26, 0]]


# --- parity with transformers -------------------------------------------------------------------------------

def _to_transformers(model: t5.T5, width: int, depth: int, heads: int, vocab: int):
    """transformers' T5ForConditionalGeneration with our weights (tiny config, no dropout, eager attention)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=vocab, d_model=width, d_kv=width // heads, d_ff=4 * width, num_layers=depth,
        num_decoder_layers=depth, num_heads=heads, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, feed_forward_proj="relu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
        tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, attn_implementation="eager")
    hf = transformers.T5ForConditionalGeneration(config).eval()
    state = {"shared.weight": model.embed.weight, "encoder.final_layer_norm.weight": model.encoder_norm.weight,
             "decoder.final_layer_norm.weight": model.decoder_norm.weight,
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": model.encoder_bias.embedding.weight,
             "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": model.decoder_bias.embedding.weight}
    for stack, blocks in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, block in enumerate(blocks):
            prefix = f"{stack}.block.{i}.layer"
            sublayers = [("0", "SelfAttention", block.attn, block.ln1)]
            if stack == "decoder":
                sublayers.append(("1", "EncDecAttention", block.cross, block.ln_cross))
            for index, name, attn, norm in sublayers:
                for theirs, ours in (("q", attn.q), ("k", attn.k), ("v", attn.v), ("o", attn.out)):
                    state[f"{prefix}.{index}.{name}.{theirs}.weight"] = ours.weight
                state[f"{prefix}.{index}.layer_norm.weight"] = norm.weight
            ff = len(sublayers)
            state[f"{prefix}.{ff}.DenseReluDense.wi.weight"] = block.mlp[0].weight
            state[f"{prefix}.{ff}.DenseReluDense.wo.weight"] = block.mlp[2].weight
            state[f"{prefix}.{ff}.layer_norm.weight"] = block.ln2.weight
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not unexpected
    assert set(missing) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    # the three are tied to `shared` (transformers' T5 always ties them)
    assert hf.lm_head.weight.data_ptr() == hf.shared.weight.data_ptr() == hf.encoder.embed_tokens.weight.data_ptr()
    return hf


def test_logits_and_loss_match_transformers_t5():
    """Same weights, same float32 computation up to the order of operations: each logit (|logit| <~ 10) comes out
    of ~4 residual sublayers per stack of width-32 dot products, so reordering can move it by ~100 float32
    roundings of relative size 1.2e-7, i.e. ~1e-4 at most; we allow 1e-4 absolute on the logits and the loss.
    Inputs of 200 tokens reach the logarithmic buckets and the catch-all beyond offset 128; row 1 is padded."""
    width, depth, heads, vocab = 32, 2, 4, 50
    model = _tiny(1, vocab)
    hf = _to_transformers(model, width, depth, heads, vocab)
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randint(20, vocab, (3, 200), generator=g), torch.randint(4, vocab, (3, 150), generator=g)
    padding = torch.zeros_like(x, dtype=torch.bool)
    padding[1, 150:] = True
    x[padding] = 0
    labels[2, 100:] = -100
    decoder_inputs = t5.collate([(x[0], labels[0])], 0)["decoder_inputs"]  # shift as T5 does ...
    assert torch.equal(hf._shift_right(labels[:1]), decoder_inputs)  # ... and as transformers does
    decoder_inputs = hf._shift_right(labels)
    with torch.no_grad():
        ours = model(x, decoder_inputs, padding)
        out = hf(input_ids=x, attention_mask=(~padding).long(), labels=labels)
        nll = t5.target_nll(model, {"inputs": x, "padding_mask": padding, "decoder_inputs": decoder_inputs,
                                    "labels": labels})
    assert ours.abs().max() > 1  # not trivially small logits
    assert (ours - out.logits).abs().max() < 1e-4
    assert abs(float(nll.sum() / (labels != -100).sum()) - float(out.loss)) < 1e-4


# --- fill -----------------------------------------------------------------------------------------------------

class _Scripted(torch.nn.Module):
    """A stand-in model whose decoder emits a fixed token sequence (to test fill's bookkeeping exactly)."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.dummy = script, vocab, torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def encode(self, inputs):
        self.seen = inputs
        return inputs

    def decode(self, decoder_inputs, memory):
        logits = torch.zeros(1, decoder_inputs.shape[1], self.vocab)
        logits[0, -1, self.script[decoder_inputs.shape[1] - 1]] = 1.0
        return logits


def test_fill_puts_each_generated_span_in_its_place():
    tok = TOKENIZER
    s0, s1, s2 = (tok.sentinel(i) for i in range(3))
    script = [s0, *tok.encode("big").tolist(), s1, *tok.encode("cat").tolist(), s2, *tok.encode("zzz").tolist()]
    model = _Scripted(script, len(tok))
    filled, generated = t5.fill(model, tok, "a <> dog and a <>")
    assert model.seen[0].tolist() == [*tok.encode("a ").tolist(), s0, *tok.encode(" dog and a ").tolist(), s1]
    assert generated == "<extra_0>big<extra_1>cat<extra_2>"  # stops at the closing sentinel
    assert filled == "a big dog and a cat"
    filled, generated = t5.fill(model, tok, "a <> dog and a <>", max_new_tokens=3)
    assert (filled, generated) == ("a bi dog and a ", "<extra_0>bi")  # cut short: the missing span stays empty


# --- learning ---------------------------------------------------------------------------------------------------

def test_quick_model_beats_the_unigram_baseline_on_held_out_spans():
    """The quick model, on span corruption of held-out notes, predicts the corrupted characters better than the
    add-one unigram model of the training text (a model that ignores the context). The margin is 10 standard
    errors of the mean per-window difference (refimpl.t5.evaluate: 256 independently drawn windows), so the
    gap cannot be chance; and the loss falls during training (first held-out point vs last, same margin)."""
    from figures.zoo.t5 import held_out_curve, t5_checkpoint

    curve = held_out_curve(t5_checkpoint("quick"))
    first, last = curve[0], curve[-1]
    assert last["tokens"] > 2000
    assert last["unigram"] - last["span"] > 10 * last["se"], last
    assert first["span"] - last["span"] > 10 * last["se"], (first, last)


# --- command line -------------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    code = cli_main({"t5": "refimpl.commands.t5"}, ["t5", *argv])
    return code, capsys.readouterr()


def _refused(argv, capsys, fragment):
    code, captured = _cli(argv, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refimpl: error:") and fragment in lines[0], captured.err


def test_cli_trains_resumes_and_fills(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")
    out = tmp_path / "run"
    code, captured = _cli(["train", "--steps", "2", "--out", str(out), "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and "trained t5 for 2 steps" in captured.out
    code, captured = _cli(["train", "--steps", "3", "--out", str(out), "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and "resuming" in captured.err and checkpoint.load(out).step == 3
    code, captured = _cli(["fill", "--ckpt", str(out), "--text", "扩散模型<>噪声", "--max-new-tokens", "4",
                           "--device", "cpu"], capsys)
    assert code == 0 and captured.out.startswith("targets: ") and "filled:  扩散模型" in captured.out


def test_cli_refuses_bad_input(tmp_path, capsys):
    _refused(["train", "--steps", "0", "--out", str(tmp_path / "x")], capsys, "positive integer")
    _refused(["train", "--preset", "huge", "--out", str(tmp_path / "x")], capsys, "invalid choice")
    _refused(["fill", "--ckpt", str(tmp_path / "missing"), "--text", "a <>"], capsys, "checkpoint not found")
    other = tmp_path / "other"
    checkpoint.save(other, model="ddpm", config={}, step=1, model_state={"w": torch.zeros(1)})
    _refused(["fill", "--ckpt", str(other), "--text", "a <>"], capsys, "not 't5'")
    broken = tmp_path / "broken"
    checkpoint.save(broken, model="t5", config={"model": {"vocab_size": 30}, "chars": "ab"}, step=1,
                    model_state={"w": torch.zeros(1)})
    _refused(["fill", "--ckpt", str(broken), "--text", "a <>"], capsys, "corrupt checkpoint")
    good = tmp_path / "good"
    model = t5.T5(len(TOKENIZER), width=16, depth=1, heads=2)
    checkpoint.save(good, model="t5", config={"model": {"vocab_size": len(TOKENIZER), "width": 16, "depth": 1,
                                                        "heads": 2}, "chars": TOKENIZER.chars},
                    step=1, model_state=model.state_dict())
    _refused(["fill", "--ckpt", str(good), "--text", "no span here"], capsys, "found 0")
    _refused(["fill", "--ckpt", str(good), "--text", "<>" * SENTINELS], capsys, f"found {SENTINELS}")
