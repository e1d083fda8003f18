"""refimpl.clip: the contrastive loss against its written-out form, the temperature, the two towers, captions and
batches, prompt ensembling, CLI, and learning (the cached quick model of figures/zoo/clip.py, shared with the
figures)."""

import math

import pytest
import torch

from refimpl import captions, checkpoint, clip
from refimpl.cli import main as cli_main
from refimpl.core import LineageError

F64 = torch.float64
# Float64 identities of a handful of O(1) logits: the two sides differ by rounding, ~1e-16 per operation.
TOL64 = 1e-12
# The networks run in float32: embeddings of the same caption computed in a different batch or with a different
# amount of right padding differ by rounding, float32 eps 1.2e-7 times ~100 accumulated operations, ~1e-5 at most.
TOL32 = 1e-5


def _tiny(seed: int = 0) -> clip.CLIP:
    """A small CLIP with random weights and the quick text tower's shape."""
    torch.manual_seed(seed)
    text = clip.train_config("quick")["model"]["text"]
    return clip.CLIP({"kind": "encoder", "in_channels": 1, "base": 8, "channel_mults": [1, 2], "time_dim": 32},
                     {**text, "width": 32}, 16).eval()


# --- the loss and the temperature ------------------------------------------------------------

def test_contrastive_loss_is_the_symmetric_cross_entropy_written_out():
    """CLIP Fig. 3: loss = -(1 / 2N) sum_i [log softmax_j(L_ij)|_{j=i} + log softmax_j(L_ji)|_{j=i}]."""
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    rows = logits.diagonal() - logits.logsumexp(1)  # image i -> its caption among all captions
    columns = logits.diagonal() - logits.logsumexp(0)  # caption i -> its image among all images
    expected = -(rows.sum() + columns.sum()) / (2 * 7)
    assert abs(clip.contrastive_loss(logits).item() - expected.item()) < TOL64
    assert abs(clip.contrastive_loss(logits.T).item() - expected.item()) < TOL64  # symmetric in the two towers
    # image -> text only would differ: the two directions are not the same cross-entropy
    assert abs(-rows.mean().item() - expected.item()) > 1e-3


def test_contrastive_loss_closed_forms():
    """Uniform logits: each softmax is uniform, loss = log N exactly. Logits a I (orthonormal embeddings, scale a):
    every row and column is log(1 + (N - 1) e^(-a)); at a = 100 (CLIP's cap) that is below 1e-40, i.e. 0 in
    float64. Swapping two captions makes those rows wrong: the loss grows to at least (2 / N) * a / 2."""
    for n in (2, 10, 64):
        assert abs(clip.contrastive_loss(torch.zeros(n, n, dtype=F64)).item() - math.log(n)) < TOL64
        a = 5.0
        expected = math.log1p((n - 1) * math.exp(-a))
        assert abs(clip.contrastive_loss(a * torch.eye(n, dtype=F64)).item() - expected) < TOL64
        assert clip.contrastive_loss(100.0 * torch.eye(n, dtype=F64)).item() < 1e-40
        swapped = 100.0 * torch.eye(n, dtype=F64)[:, torch.tensor([1, 0, *range(2, n)])]
        assert clip.contrastive_loss(swapped).item() > (2 / n) * 100.0 / 2


def test_temperature_starts_at_one_over_0_07_and_is_clipped_at_100():
    """Sec. 2.5: tau initialised to 0.07 (logit scale 1 / 0.07 = 14.29), logits never scaled by more than 100;
    past the cap the log-scale gets no gradient. float32 relative rounding of exp: ~1e-7, so 1e-5 relative."""
    model = _tiny()
    assert abs(model.scale().item() * 0.07 - 1) < TOL32
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert abs(model.scale().item() / 100 - 1) < TOL32
    x, tokens = torch.randn(3, 1, 8, 8), clip.tokenize(clip.tokenizer(), ["数字三", "one", "a handwritten 7"])
    clip.contrastive_loss(model(x, tokens)).backward()
    assert model.logit_scale.grad.item() == 0.0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    model.zero_grad()
    clip.contrastive_loss(model(x, tokens)).backward()
    assert model.logit_scale.grad.abs().item() > 0  # below the cap the temperature learns


# --- the two towers ---------------------------------------------------------------------------

def test_logits_are_scaled_cosines_and_text_pooling_ignores_padding():
    """Both embeddings have unit norm and logits = scale * f . g. The caption embedding is read at the last real
    token: with causal attention it cannot see the padding, so the same caption padded to its own length or to
    MAX_LEN embeds the same (float32 rounding)."""
    model, tok = _tiny(), clip.tokenizer()
    texts = ["a photo of the digit three", "数字五", "9"]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        f, g = model.image_features(x), model.text_features(clip.tokenize(tok, texts))
        assert (f.norm(dim=1) - 1).abs().max() < TOL32 and (g.norm(dim=1) - 1).abs().max() < TOL32
        assert (model(x, clip.tokenize(tok, texts)) - model.scale() * f @ g.T).abs().max() < 15 * TOL32
        for text, row in zip(texts, g):
            alone = model.text_features(clip.tokenize(tok, [text], max_len=len(text) + 1))[0]
            assert (alone - row).abs().max() < TOL32
        assert (g[0] - g[1]).abs().max() > 1e-3  # different captions, different embeddings


def test_captions_name_one_digit_and_tokens_round_trip():
    tok = clip.tokenizer()
    for which in captions.TEMPLATE_SETS:
        for template in captions.templates(which):
            for k in range(10):
                text = captions.caption(template, k)
                named = [w for w in (*captions.NUMBER_WORDS, *captions.ZH_WORDS, *map(str, range(10))) if w in text]
                assert named in ([captions.NUMBER_WORDS[k]], [captions.ZH_WORDS[k]], [str(k)]), (text, named)
                ids = clip.tokenize(tok, [text])[0]
                assert ids[0] == tok.bos and tok.decode(ids[1:len(text) + 1]) == text
                assert (ids[len(text) + 1:] == tok.pad).all()
    assert len(captions.templates("both")) == len(captions.templates("en")) + len(captions.templates("zh"))
    with pytest.raises(LineageError, match="template set"):
        captions.templates("fr")
    with pytest.raises(LineageError, match="not in the vocabulary"):
        clip.tokenize(tok, ["数字十"])
    with pytest.raises(LineageError, match="at most"):
        clip.tokenize(tok, ["one"], max_len=3)


def test_pair_batch_holds_one_pair_per_digit():
    """No false negatives: the 10 pairs are the 10 digits, each image a training image of that digit and each
    caption naming it."""
    (images, labels), _ = clip.split()
    tok = clip.tokenizer()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, tokens = clip.pair_batch(images, labels, tok, generator)
        assert x.shape == (10, 1, 8, 8) and tokens.shape == (10, clip.MAX_LEN)
        for k in range(10):
            same = (images[labels == k] - x[k]).flatten(1).abs().amax(1)
            assert same.min() == 0  # an exact copy of a training image of digit k
            text = tok.decode(t for t in tokens[k].tolist() if t > tok.bos)
            assert text in {captions.caption(t, k) for t in captions.templates()}


def test_zero_shot_is_argmax_cosine_to_the_ensembled_prompts():
    """Sec. 3.1.4: the class embedding is the renormalised mean of the normalised prompt embeddings; an image is
    assigned the class of highest cosine similarity."""
    model, tok = _tiny(), clip.tokenizer()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for which in captions.TEMPLATE_SETS:
        with torch.no_grad():
            per_class = []
            for k in range(10):
                texts = [captions.caption(t, k) for t in captions.templates(which)]
                mean = model.text_features(clip.tokenize(tok, texts)).mean(0)
                per_class.append(mean / mean.norm())
            w = torch.stack(per_class)
            assert (clip.class_embeddings(model, tok, which) - w).abs().max() < TOL32
            assert torch.equal(clip.zero_shot(model, tok, x, which), (model.image_features(x) @ w.T).argmax(1))


# --- command line -----------------------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main({"clip": "refimpl.commands.clip"}, ["clip", *args])


def test_cli_trains_evaluates_and_refuses_bad_input(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _cli("train", "--steps", "2", "--out", run, "--quiet", "--device", "cpu") == 0
    assert _cli("zero-shot", "--ckpt", run) == 0  # every template set in turn
    out = capsys.readouterr().out
    assert all(f"zero-shot accuracy ({which} templates) on 297 held-out digits" in out for which in captions.TEMPLATE_SETS)
    assert _cli("zero-shot", "--ckpt", run, "--templates", "zh") == 0
    assert capsys.readouterr().out.count("zero-shot accuracy") == 1
    assert _cli("similarity", "--ckpt", run, "--templates", "en") == 0
    assert "digit 9" in capsys.readouterr().out
    other = tmp_path / "other"
    checkpoint.save(other, model="glide-clip", config={}, step=1, model_state={})
    broken = tmp_path / "broken"
    checkpoint.save(broken, model="clip", config={"model": {"dim": 4}}, step=1, model_state={})
    for args, fragment in ((["zero-shot", "--ckpt", str(tmp_path / "none")], "checkpoint not found"),
                           (["zero-shot", "--ckpt", str(other)], "not 'clip'"),
                           (["similarity", "--ckpt", str(broken)], "corrupt checkpoint"),
                           (["zero-shot", "--ckpt", run, "--templates", "fr"], "invalid choice"),
                           (["train", "--out", run, "--steps", "0"], "positive integer"),
                           (["train", "--out", run, "--preset", "huge"], "invalid choice")):
        assert _cli(*args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (args, err)


# --- learning (the quick model, cached and shared with the figures) ----------------------------

@pytest.mark.slow
def test_quick_model_classifies_held_out_digits_zero_shot():
    """Zero-shot accuracy on the 297 held-out digits (never trained on) for English, Chinese and both template
    sets must beat chance (0.1) by 10 binomial standard errors at chance, sqrt(0.1 * 0.9 / 297) = 0.017, i.e.
    > 0.274: a model at chance fails with probability < 1e-20. The numbers are on the page
    (figures/pages/clip-diffusion/clip_zero_shot.py)."""
    from figures.zoo.clip import zero_shot_results

    result = zero_shot_results("quick")
    bar = 0.1 + 10 * math.sqrt(0.1 * 0.9 / result["n"])
    for which in captions.TEMPLATE_SETS:
        assert result["accuracy"][which] > bar, (which, result["accuracy"])
    assert result["scale"] <= 100 * (1 + TOL32)


def test_loss_matches_transformers_clip():
    """Parity: transformers' CLIPModel loss (image_text_contrastive_loss of logits_per_text) is the same symmetric
    cross-entropy; float64, so the two agree to rounding."""
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    logits = torch.randn(9, 9, generator=torch.Generator().manual_seed(4), dtype=F64) * 5  # logits_per_image
    assert abs(clip.contrastive_loss(logits).item() - image_text_contrastive_loss(logits.T).item()) < TOL64
