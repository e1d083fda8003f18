"""refimpl.glide: captions and tokenizer (refimpl.captions), caption dropout, noised CLIP (refimpl.clip.CLIP) and its gradient, both guidances, CLI, learning.

Exact checks run on small untrained models (guidance identities hold for any network); the learning
checks use the cached quick models and samples of figures/zoo/glide.py (trained once, shared with the figures).
"""

import math

import pytest
import torch

from refimpl import captions, glide
from refimpl.clip import CLIP
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.ddim import ddim_sample
from refimpl.ddpm import ddpm_sample
from refimpl.guidance import cfg_model
from refimpl.schedules import make_schedule

# The networks of refimpl.nets embed time in float32, so the exact identities are checked in float32: the same
# O(1) quantities computed in a different order or batch (2B rows vs B) differ by rounding, float32 eps = 1.2e-7
# times the ~100 accumulated operations of a small network, ~1e-5 at most.
TOL32 = 1e-5


def _tiny(seed: int = 0):
    """A small diffusion model and noised CLIP with the quick text encoder, random weights."""
    text = glide.TEXT
    torch.manual_seed(seed)
    model = glide.TextConditionalUNet({"kind": "unet", "in_channels": 1, "base": 8, "channel_mults": [1, 2],
                                       "time_dim": 32}, text).eval()
    clip = CLIP({"kind": "encoder", "in_channels": 1, "base": 8, "channel_mults": [1, 2],
                             "time_dim": 32}, text, 16).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)  # zero-initialised: an untrained U-Net outputs 0
    return model, clip


# --- captions and tokens ------------------------------------------------------------------

def test_captions_round_trip_and_name_one_digit():
    for label in range(10):
        texts = captions.captions(label)
        assert len(set(texts)) == len(texts) == 2 * len(captions.TEMPLATES)
        tokens = captions.tokenize(texts)
        assert tokens.shape == (len(texts), captions.MAX_LEN)
        assert captions.detokenize(tokens) == texts
        for text in texts:  # exactly one digit named, and it is the label
            named = [w for w in text.split() if w in captions.NUMBER_WORDS or w.isdigit()]
            assert named in ([captions.NUMBER_WORDS[label]], [str(label)])
    empty = captions.tokenize([""])
    assert empty.tolist() == [[1] + [0] * (captions.MAX_LEN - 1)]  # <start>, then padding
    assert captions.detokenize(captions.tokenize(["The  Digit three"])) == ["the digit three"]


def test_tokenizer_refuses_unknown_words_and_long_captions():
    with pytest.raises(LineageError, match=rf"unknown word 'cat'.*{len(captions.VOCAB)} tokens"):
        captions.tokenize(["a cat"])
    with pytest.raises(LineageError, match="at most"):
        captions.tokenize(["the digit three three three"])
    with pytest.raises(LineageError, match="0..9"):
        captions.captions(10)


def test_caption_dropout_rate():
    """Empty-caption rate = p within 5 binomial standard errors, sqrt(p (1 - p) / n) = 0.0028 at n = 20000
    (a false failure has probability ~6e-7); the kept captions are untouched."""
    n, p = 20_000, glide.CAPTION_DROP
    generator = torch.Generator().manual_seed(0)
    tokens = captions.random_captions(torch.randint(0, 10, (n,), generator=generator), generator)
    dropped = captions.drop_captions(tokens, p, generator)
    empty = (dropped == captions.tokenize([""])).all(1)
    assert abs(empty.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(dropped[~empty], tokens[~empty])
    assert p == 0.2  # GLIDE Sec. 4.2


# --- noised CLIP ------------------------------------------------------------------------

def test_clip_logits_are_scaled_cosines():
    _, clip = _tiny()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])
    tokens = captions.tokenize(["3", "the digit five", "a handwritten nine"])
    f, g = clip.image_features(x, t), clip.text_features(tokens)
    assert (f.norm(dim=1) - 1).abs().max() < TOL32 and (g.norm(dim=1) - 1).abs().max() < TOL32
    assert (clip(x, tokens, t) - clip.logit_scale.exp() * f @ g.T).abs().max() < 15 * TOL32  # logits up to 1/0.07
    assert abs(clip.logit_scale.exp().item() - 1 / 0.07) < 15 * TOL32  # CLIP's initial temperature


def test_clip_gradient_per_row_and_against_finite_differences():
    """clip_grad = grad_x (f(x_t, t) . g(c)) of each row: (a) equal to the autograd gradient of each row alone
    (the summed score separates over rows: EncoderNet normalises per image); (b) its directional derivative
    along a unit direction v equals a float32 central difference with h = 1e-2: rounding 2 eps |F| / (2 h)
    ~ 1e-5 (|F| <= 1, a cosine), truncation h^2 / 6 |F3| ~ 2e-5 for a third directional derivative |F3| <= 1,
    so 1e-3 leaves a wide margin."""
    _, clip = _tiny()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    g = clip.text_features(captions.tokenize(["the digit two", "seven"])).detach()
    grad = glide.clip_grad(clip, x, t, g)
    for row in range(2):
        alone = glide.clip_grad(clip, x[row:row + 1], t[row:row + 1], g[row])
        assert (alone[0] - grad[row]).abs().max() < TOL32
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    v = v / v.flatten(1).norm(dim=1)[:, None, None, None]
    h = 1e-2
    with torch.no_grad():
        score = lambda z: (clip.image_features(z, t) * g).sum(1)  # noqa: E731
        difference = (score(x + h * v) - score(x - h * v)) / (2 * h)
    assert (difference - (grad * v).flatten(1).sum(1)).abs().max() < 1e-3
    assert grad.abs().max() > 1e-3  # not trivially zero


# --- guidance -----------------------------------------------------------------------------

def test_cfg_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    model, _ = _tiny()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 600, 999])
    tokens = captions.tokenize(["the digit one", "4", "a handwritten eight", "the number zero"])
    null = captions.tokenize([""])  # the empty caption: the null condition
    with torch.no_grad():
        conditional, unconditional = model(x, t, tokens), model(x, t, captions.tokenize([""] * 4))
        assert (cfg_model(model, tokens, 1.0, null=null)(x, t) - conditional).abs().max() < TOL32
        assert (cfg_model(model, tokens, 0.0, null=null)(x, t) - unconditional).abs().max() < TOL32
        s = 3.0
        expected = unconditional + s * (conditional - unconditional)
        assert (cfg_model(model, tokens, s, null=null)(x, t) - expected).abs().max() < TOL32
    assert (conditional - unconditional).abs().max() > 1e-6  # the caption matters


def test_clip_guided_eps_shifts_by_the_clip_gradient():
    """DDIM CLIP guidance: eps_hat = eps(x_t | c) - sqrt(1 - alpha_bar_t) s grad_x (f . g) (ADM Alg. 2 form)."""
    model, clip = _tiny()
    schedule = make_schedule("linear", 1000)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([50, 800])
    tokens = captions.tokenize(["six", "the digit two"])
    s = 7.0
    got = glide.clip_guided_model(model, clip, tokens, s, schedule)(x, t)
    with torch.no_grad():
        grad = glide.clip_grad(clip, x, t, clip.text_features(tokens))
        expected = model(x, t, tokens) - (1 - schedule.alpha_bar[t]).sqrt()[:, None, None, None] * s * grad
    assert (got - expected).abs().max() < TOL32
    assert grad.abs().max() > 0


def test_unguided_settings_agree_across_samplers():
    """CLIP scale 0 is the conditional model: ancestral CLIP sampling then draws exactly DDPM Algorithm 2 with
    the same noise, and DDIM with CLIP scale 0 equals DDIM with CFG scale 1 (float32 rounding only). A
    100-step schedule keeps the ancestral runs short; the identities hold for any schedule."""
    model, clip = _tiny()
    schedule = make_schedule("linear", 100)
    tokens = captions.tokenize(["the digit three", "nine"])
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    conditional = lambda x, t: model(x, t, tokens)  # noqa: E731
    with torch.no_grad():
        ancestral = glide.clip_guided_ancestral(model, clip, tokens, x_T, schedule, 0.0,
                                                generator=torch.Generator().manual_seed(4))
        reference = ddpm_sample(conditional, x_T, schedule, generator=torch.Generator().manual_seed(4))
    assert (ancestral - reference).abs().max() < TOL32
    clip_ddim = ddim_sample(glide.clip_guided_model(model, clip, tokens, 0.0, schedule), x_T, schedule, steps=10)
    cfg_ddim = ddim_sample(cfg_model(model, tokens, 1.0, null=captions.tokenize([""])), x_T, schedule, steps=10)
    assert (clip_ddim - cfg_ddim).abs().max() < TOL32


# --- command line -------------------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main({"glide": "refimpl.commands.glide"}, ["glide", *args])


def test_cli_trains_samples_and_refuses_bad_input(tmp_path, capsys):
    run, clip = str(tmp_path / "run"), str(tmp_path / "clip")
    assert _cli("train", "--steps", "2", "--out", run, "--quiet", "--device", "cpu") == 0
    assert _cli("train-clip", "--steps", "2", "--out", clip, "--quiet", "--device", "cpu") == 0
    for guidance in ("cfg", "clip"):
        out = tmp_path / f"{guidance}.png"  # DDPM sampling (1000 steps) is checked on the tiny model above
        assert _cli("sample", "--ckpt", run, "--clip", clip, "--caption", "the digit four", "--guidance", guidance,
                    "--steps", "3", "--n", "2", "--out", str(out), "--quiet", "--device", "cpu") == 0
        assert out.stat().st_size > 0
    capsys.readouterr()
    for extra, fragment in ((["--caption", "a cat"], "unknown word 'cat'"),
                            (["--caption", "three", "--guidance", "clip"], "needs --clip"),
                            (["--caption", "three", "--ckpt", clip], "not 'glide'")):
        base = {"--ckpt": run, "--out": str(tmp_path / "x.png")} | dict(zip(extra[::2], extra[1::2]))
        assert _cli("sample", *[item for pair in base.items() for item in pair]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], err


# --- learning (quick models, cached and shared with the figures) --------------------------

@pytest.mark.slow
def test_guided_digits_show_the_captioned_digit():
    """Digits generated for "the digit k" are classified as k by refimpl.digits_eval.classifier() far above
    chance (0.1) for CFG (s = 3) and CLIP guidance (s = 30): with n = 100 samples the binomial SE at chance is
    sqrt(0.1 * 0.9 / 100) = 0.03, so we require accuracy > 0.1 + 10 SE = 0.4 (a model at chance fails with
    probability < 1e-15; the quick models measure far above it). The unguided conditional model already
    learns the captions: its accuracy, too, must clear the bar."""
    from figures.zoo.glide import guided_samples
    from refimpl.digits_eval import classifier

    samples = guided_samples("quick")
    labels = samples["labels"]
    bar = 0.1 + 10 * math.sqrt(0.1 * 0.9 / labels.numel())
    with torch.no_grad():
        for key in ("cfg_1", "cfg_3", "clip_30"):
            accuracy = (classifier()(samples[key].clamp(-1, 1)).argmax(1) == labels).float().mean().item()
            assert accuracy > bar, (key, accuracy)


@pytest.mark.slow
def test_noised_clip_reads_digits_zero_shot():
    """Zero-shot classification by the noised CLIP (pick the caption "the digit k" most similar to x_t) on the
    297 digits that refimpl.digits_eval holds out (the CLIP saw every digit in training, but never this noise):
    at t = 0 (code) accuracy must beat chance by 10 binomial SEs, sqrt(0.1 * 0.9 / 297) = 0.017 -> > 0.27."""
    from figures.zoo.glide import clip_checkpoint
    from refimpl.data import digits
    from refimpl.digits_eval import HOLDOUT

    clip, schedule = glide.load(clip_checkpoint("quick"), "glide-clip")
    images, labels = (a[-HOLDOUT:] for a in digits())
    accuracy = glide.zero_shot_accuracy(clip, schedule, images, labels, 0, torch.Generator().manual_seed(0))
    assert accuracy > 0.1 + 10 * math.sqrt(0.1 * 0.9 / HOLDOUT), accuracy
