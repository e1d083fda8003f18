"""refimpl.bert: masking rates (Sec. 3.1), the loss on chosen positions only, bidirectional attention and the
padding mask, parity with transformers' BertForMaskedLM, learning on the notes, the command line.

Exact checks run on small random models; the learning check uses the cached quick run of figures/zoo/bert.py
(trained once, shared with the figures).
"""

import json
import math

import pytest
import torch

from refimpl import bert
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.text import SPECIALS, CharTokenizer

TOKENIZER = CharTokenizer("abcdefghij")  # 10 characters: a random replacement equals the original w.p. 1/10


def _random_model(seed: int = 0, **sizes) -> bert.BERT:
    """A small BERT whose every parameter is N(0, 0.3^2): far from the init, so parity compares real arithmetic."""
    torch.manual_seed(seed)
    model = bert.BERT(**{"vocab_size": len(TOKENIZER), "max_len": 16, "width": 32, "depth": 2, "heads": 4, **sizes})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(len(SPECIALS), len(TOKENIZER), (b, n), generator=torch.Generator().manual_seed(seed))


# --- masking (Sec. 3.1) ---------------------------------------------------------------------------------

def test_mask_tokens_chooses_15_percent_and_splits_80_10_10():
    b, n = 4000, 64
    ids = _ids(b, n)
    inputs, chosen = bert.mask_tokens(ids, TOKENIZER, torch.Generator().manual_seed(1))
    k = round(0.15 * n)
    assert (chosen.sum(1) == k).all()  # exactly round(15% of L) per sequence
    assert torch.equal(inputs[~chosen], ids[~chosen])  # positions that are not chosen are never touched
    # each position is chosen with probability k / n: per-position frequency over b rows has binomial SE
    # sqrt(p (1 - p) / b) = 0.0057; 5 SE bounds the largest of 64 deviations (P(fail) < 64 * 6e-7)
    p = k / n
    assert (chosen.float().mean(0) - p).abs().max() < 5 * math.sqrt(p * (1 - p) / b)
    m = int(chosen.sum())  # 40 000 chosen positions
    x, y = inputs[chosen], ids[chosen]
    masked = (x == TOKENIZER.mask).float().mean().item()
    other = ((x != TOKENIZER.mask) & (x != y)).float().mean().item()
    kept = (x == y).float().mean().item()
    # expected: <mask> 0.8; a random character that differs 0.1 * 9/10; unchanged 0.1 + 0.1 * 1/10 (the random
    # draw may hit the original). Binomial SE over m draws: <= sqrt(0.25 / m) = 0.0025; tolerance 5 SE.
    tol = 5 * math.sqrt(0.25 / m)
    assert abs(masked - 0.8) < tol and abs(other - 0.09) < tol and abs(kept - 0.11) < tol
    swapped = x[(x != TOKENIZER.mask) & (x != y)]
    assert swapped.min() >= len(SPECIALS)  # random replacements are characters, never special tokens
    # and every character is drawn (uniform over 10: each ~ 360 times, P(any missing) ~ 10 (9/10)^3600 = 0)
    assert set(swapped.tolist()) == set(range(len(SPECIALS), len(TOKENIZER)))


def test_mlm_loss_is_cross_entropy_on_chosen_positions_only():
    model, ids = _random_model(), _ids(8, 16)
    loss = bert.mlm_loss(model, ids, TOKENIZER, torch.Generator().manual_seed(3))
    inputs, chosen = bert.mask_tokens(ids, TOKENIZER, torch.Generator().manual_seed(3))  # the same draws
    logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits[chosen], ids[chosen])
    everywhere = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    # same float32 arithmetic in a different batch layout: rounding ~ 1e-7 relative on an O(1) loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(everywhere.item() - expected.item()) > 1e-2  # averaging over all positions would be different


# --- attention: both sides, padding hidden ---------------------------------------------------------------

def test_every_position_sees_both_sides_and_padding_is_hidden():
    model, ids = _random_model(), _ids(1, 12)
    base = model(ids)[0]
    later = ids.clone()
    later[0, 9] = len(SPECIALS) + (later[0, 9] - len(SPECIALS) + 1) % 10  # another character at position 9
    changed = (model(later)[0] - base).abs().amax(-1)
    # O(1) logits of a random model move by O(0.1) when the context changes; float32 rounding is ~1e-6
    assert (changed[:9] > 1e-3).all()  # positions BEFORE 9 change too: no causal mask (GPT's would keep them)
    pad = torch.zeros(1, 12, dtype=torch.bool)
    pad[0, 9:] = True  # positions 9.. are padding: changing them must not move positions 0..8
    a, b = model(ids, key_padding_mask=pad)[0], model(later, key_padding_mask=pad)[0]
    # masked keys get weight exactly 0, so 0 * v adds nothing: equal up to float32 rounding (1e-6 on O(1))
    torch.testing.assert_close(a[:9], b[:9], rtol=0, atol=1e-6)


# --- parity with transformers ---------------------------------------------------------------------------

def _hf_copy(model: bert.BERT, eps: float = bert.EPS):
    """transformers' BertForMaskedLM from a tiny BertConfig with our weights (one token type, zeroed)."""
    transformers = pytest.importorskip("transformers")
    c = model.config
    config = transformers.BertConfig(vocab_size=c["vocab_size"], hidden_size=c["width"],
                                     num_hidden_layers=c["depth"], num_attention_heads=c["heads"],
                                     intermediate_size=4 * c["width"], max_position_embeddings=c["max_len"],
                                     type_vocab_size=1, hidden_act="gelu", layer_norm_eps=eps,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.BertForMaskedLM._from_config(config, attn_implementation="eager").eval()
    ours = model.state_dict()
    state = {"bert.embeddings.word_embeddings.weight": ours["token.weight"],
             "bert.embeddings.position_embeddings.weight": ours["position.weight"],
             "bert.embeddings.token_type_embeddings.weight": torch.zeros(1, c["width"]),
             "bert.embeddings.LayerNorm.weight": ours["ln_embed.weight"],
             "bert.embeddings.LayerNorm.bias": ours["ln_embed.bias"],
             "cls.predictions.transform.dense.weight": ours["head.0.weight"],
             "cls.predictions.transform.dense.bias": ours["head.0.bias"],
             "cls.predictions.transform.LayerNorm.weight": ours["head.2.weight"],
             "cls.predictions.transform.LayerNorm.bias": ours["head.2.bias"],
             "cls.predictions.bias": ours["out_bias"]}
    names = {"attn.q": "attention.self.query", "attn.k": "attention.self.key", "attn.v": "attention.self.value",
             "attn.out": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "mlp.0": "intermediate.dense", "mlp.2": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(c["depth"]):
        for src, dst in names.items():
            for kind in ("weight", "bias"):
                state[f"bert.encoder.layer.{i}.{dst}.{kind}"] = ours[f"blocks.{i}.{src}.{kind}"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                                               "bert.embeddings.position_ids"}  # tied to embedding / bias
    return hf


def test_logits_match_transformers_bert_for_masked_lm():
    model = _random_model()
    hf = _hf_copy(model)
    ids = _ids(3, 16, seed=5)
    pad = torch.zeros(3, 16, dtype=torch.bool)
    pad[1, 11:] = True
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=(~pad).long()).logits
        ours = model(ids, key_padding_mask=pad)
    # float32: the two compute the same sums in a different order (HF scales q k^T after the product, uses its own
    # GELU and LayerNorm calls); unit roundoff 6e-8 grows through ~2 layers x ~10 ops of width 32-128 to ~1e-6
    # relative; logits here are O(10), so 1e-4 absolute is ~10x that bound (and a real mismatch moves them by O(1))
    torch.testing.assert_close(ours[~pad], theirs[~pad], rtol=0, atol=1e-4)
    assert ours.abs().max() > 1.0  # the comparison is not between near-zero logits


def test_transformers_default_layer_norm_eps_is_bert_codes_1e_12():
    transformers = pytest.importorskip("transformers")
    assert transformers.BertConfig().layer_norm_eps == 1e-12 and bert.EPS == 1e-5  # the page's note


def test_transformers_collator_picks_a_random_count_and_draws_from_the_whole_vocabulary():
    """The page's notes on DataCollatorForLanguageModeling: each token is chosen independently (Bernoulli 0.15, so the
    count per sequence varies; the released BERT code and ours choose exactly round(0.15 n)), and the random 10%
    is uniform over the whole vocabulary, special tokens and the original token included."""
    transformers = pytest.importorskip("transformers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "b": 6}  # 7 ids, 2 characters
    collator = transformers.DataCollatorForLanguageModeling(transformers.BertTokenizer(vocab=vocab), seed=0)
    collator.generator = torch.Generator().manual_seed(0)  # what its get_generator(0) builds for "pt" tensors
    ids = torch.randint(5, 7, (8000, 64), generator=torch.Generator().manual_seed(0))
    inputs, labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=torch.zeros_like(ids, dtype=torch.bool))
    chosen = labels != -100
    assert chosen.sum(1).min() < round(0.15 * 64) < chosen.sum(1).max()
    x, y, m = inputs[chosen], ids[chosen], int(chosen.sum())  # ~77 000 chosen positions
    tol = 5 * math.sqrt(0.25 / m)  # 5 binomial SE (at most 0.0018 each)
    # uniform over 7 ids: the random 10% lands on the original w.p. 1/7, on [MASK] w.p. 1/7, on the other 4
    # special tokens w.p. 4/7 (kept: 0.1143, against 0.1 if the original were excluded: 8 SE apart)
    assert abs((x == y).float().mean().item() - (0.1 + 0.1 / 7)) < tol
    assert abs((x == 4).float().mean().item() - (0.8 + 0.1 / 7)) < tol
    assert abs((x < 4).float().mean().item() - 0.1 * 4 / 7) < tol


# --- fill-mask ------------------------------------------------------------------------------------------

def test_fill_returns_k_sorted_candidates_per_placeholder_and_refuses_bad_text():
    model = _random_model()
    out = bert.fill(model, TOKENIZER, f"ab{bert.PLACEHOLDER}cd{bert.PLACEHOLDER}", k=3)
    assert len(out) == 2 and all(len(c) == 3 for c in out)
    for cands in out:
        probs = [p for _, p in cands]
        assert probs == sorted(probs, reverse=True) and all(ch in TOKENIZER.chars for ch, _ in cands)
    with pytest.raises(LineageError, match="no"):
        bert.fill(model, TOKENIZER, "abcd")
    with pytest.raises(LineageError, match="longer"):
        bert.fill(model, TOKENIZER, "a" * 16 + bert.PLACEHOLDER)


# --- learning (cached quick run, shared with the figures) -----------------------------------------------

def test_quick_run_beats_the_unigram_baseline_on_held_out_notes():
    from figures.zoo.bert import bert_run

    run = json.loads((bert_run("quick") / "held_out.json").read_text())
    final = run["held_out"][-1]
    # paired difference on the same ~2000 held-out masked characters: the per-character difference (unigram minus
    # model) has a standard deviation of ~1.4 nats (measured), so the SE of the mean gap is ~1.4 / sqrt(2000) =
    # 0.03 nats; a 0.3-nat margin is 10 SE (the quick run's gap was ~1 nat when this was written)
    assert final["targets"] > 1000
    assert final["model"] < final["unigram"] - 0.3
    losses = [v for _, v in run["train"]]
    assert losses[-1] < losses[0] - 1.0  # the training loss falls (from ~log V = 7.0 at the start)


# --- command line ---------------------------------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main({"bert": "refimpl.commands.bert"}, ["bert", *args])


def test_cli_trains_fills_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli("train", "--steps", "2", "--out", str(out), "--quiet", "--device", "cpu") == 0
    assert "held-out masked-token loss" in capsys.readouterr().out
    assert _cli("fill", "--ckpt", str(out), "--text", "扩散[MASK]型", "--top-k", "3", "--device", "cpu") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[MASK] #1:") and printed[-1].startswith("greedy: 扩散") and len(printed) == 2
    for args, fragment in ((("fill", "--ckpt", str(out), "--text", "no placeholder"), "no [MASK]"),
                           (("fill", "--ckpt", str(tmp_path / "missing"), "--text", "[MASK]"), "not found"),
                           (("fill", "--ckpt", str(out), "--text", "[MASK]", "--top-k", "0"), "positive"),
                           (("train", "--steps", "0", "--out", str(out)), "positive"),
                           (("train", "--preset", "huge", "--out", str(out)), "huge")):
        assert _cli(*args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], err
