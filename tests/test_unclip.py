"""refimpl.unclip: shapes, the prior's x0-prediction loss, x0 <-> eps, classifier-free guidance, embedding dropout,
the command line, and learning on the cached quick run (variations vs image-to-image, text to image).

Exact checks run on small untrained models; the learning checks use the cached run and measurements of
figures/zoo/unclip.py (trained once on the cached quick CLIP, shared with the figures).
"""

import math
import shutil

import pytest
import torch

from refimpl import unclip
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.schedules import q_sample
from refimpl.schedules import Schedule, linear_betas, make_schedule

DIM = 32  # the quick CLIP's embedding size


def _untrained_decoder(seed: int = 0) -> unclip.Decoder:
    """A small decoder with random weights; its zero-initialised output conv is randomised, or it would output 0."""
    torch.manual_seed(seed)
    model = unclip.Decoder(DIM, base=8, time_dim=32).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)
    return model


def test_shapes():
    """The prior maps (B, dim) noised embeddings to (B, dim) predicted embeddings; the decoder maps (B, 1, 8, 8)
    digits to (B, 1, 8, 8) noise predictions, and its output depends on z_i (the projected embedding is used)."""
    prior = unclip.Prior(DIM, hidden=16, depth=2, time_dim=8)
    z = torch.randn(5, DIM)
    assert prior(z, torch.arange(5), torch.randn(5, DIM)).shape == (5, DIM)
    decoder = _untrained_decoder()
    x, t = torch.randn(5, 1, 8, 8), torch.full((5,), 300)
    with torch.no_grad():
        out = decoder(x, t, torch.randn(5, DIM))
        assert out.shape == (5, 1, 8, 8)
        assert not torch.equal(out, decoder(x, t, torch.zeros(5, DIM)))


def test_prior_loss_is_the_x0_prediction_error():
    """unCLIP Sec. 2.2: the loss is || f(z_i^(t), t, z_t) - z_i ||^2, not the eps error. (1) Recomputed by hand from
    the same draws (t, then eps, from a generator with the same seed) it agrees to float32 rounding: the same
    operations in the same order, so we allow 1e-6 relative (a few ulp). (2) An oracle that returns the unnoised
    z_i exactly scores 0.0 exactly; one that returns the noise eps scores far above 0."""
    torch.manual_seed(0)
    prior = unclip.Prior(DIM, hidden=16, depth=2, time_dim=8)
    schedule = make_schedule("linear", 1000)
    z_i, z_t = torch.randn(64, DIM), torch.randn(64, DIM)
    loss = unclip.prior_loss(prior, z_i, z_t, schedule, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (64,), generator=generator)
    eps = torch.randn(z_i.shape, generator=generator)
    a = schedule.alpha_bar[t][:, None]
    noised = a.sqrt() * z_i + (1 - a).sqrt() * eps
    by_hand = (prior(noised, t, z_t) - z_i).pow(2).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    oracle = lambda z_noisy, t, z_t: z_i  # noqa: E731
    assert unclip.prior_loss(oracle, z_i, z_t, schedule, torch.Generator().manual_seed(3)).item() == 0.0
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (64,), generator=generator)
    eps = torch.randn(z_i.shape, generator=generator)
    wrong = lambda z_noisy, t, z_t: eps  # noqa: E731
    # E||eps - z_i||^2 per element = 2 for independent N(0, 1): far from 0
    assert unclip.prior_loss(wrong, z_i, z_t, schedule, torch.Generator().manual_seed(3)).item() > 1.0


def test_eps_from_x0_inverts_the_forward_process():
    """eps_from_x0(q_sample(x0, t, eps), t, x0) = eps (DDPM Eq. 4 solved for eps), at every t of a float64
    schedule. The division by sqrt(1 - alpha_bar_t) >= sqrt(beta_1) = 0.01 amplifies rounding (~1e-16) at most
    100-fold; 1e-12 absolute leaves a wide margin."""
    schedule = Schedule(linear_betas(1000).double())
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(1000)
    x0 = torch.randn(1000, DIM, generator=generator, dtype=torch.float64)
    eps = torch.randn(1000, DIM, generator=generator, dtype=torch.float64)
    recovered = unclip.eps_from_x0(q_sample(x0, t, eps, schedule), t, x0, schedule)
    assert torch.allclose(recovered, eps, rtol=0, atol=1e-12)


def test_guidance_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    """out_u + s (out_c - out_u): s = 1 gives the conditional prediction, s = 0 the prediction with z_i = 0. In
    float32 the two-step formula rounds twice (~2 ulp of outputs of size ~1), and the batched 2B forward pass
    may sum in another order than a B-row pass; 1e-5 absolute covers both."""
    decoder = _untrained_decoder()
    x, t, z = torch.randn(4, 1, 8, 8), torch.full((4,), 500), torch.randn(4, DIM)
    with torch.no_grad():
        assert torch.allclose(unclip.guided(decoder, z, 1.0)(x, t), decoder(x, t, z), rtol=0, atol=1e-5)
        assert torch.allclose(unclip.guided(decoder, z, 0.0)(x, t), decoder(x, t, torch.zeros_like(z)),
                              rtol=0, atol=1e-5)
    with pytest.raises(LineageError):
        unclip.guided(decoder, z, -1.0)


def test_embedding_dropout_rate_within_binomial_error():
    """drop_embeddings zeroes whole rows with probability p = 0.1 and leaves the other rows untouched. Over
    n = 40000 rows the dropped share has SE sqrt(p (1 - p) / n) = 0.0015; we allow 4 SE (false failure ~6e-5)."""
    n, p = 40_000, unclip.DECODER_EMBEDDING_DROP
    z = torch.randn(n, DIM) + 3.0  # no row is zero by chance
    out = unclip.drop_embeddings(z, p, torch.Generator().manual_seed(0))
    dropped = out.eq(0).all(1)
    assert torch.equal(out[~dropped], z[~dropped])
    assert abs(dropped.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_image_to_image_refuses_a_step_outside_the_schedule():
    decoder = _untrained_decoder()
    with pytest.raises(LineageError, match="t must lie"):
        unclip.image_to_image(decoder, torch.zeros(1, 1, 8, 8), 1000, make_schedule("linear", 1000))


def test_diffusers_text_proj_uses_a_learned_null_and_adds_the_text_embedding():
    """diffusers' UnCLIPTextProjModel (the decoder's conditioning in UnCLIPPipeline), pinned: under CFG the null
    image embedding is its learned parameter (ours is a zero vector; unCLIP Sec. 2.1 allows either), the time
    embedding gets the projection of z_i *plus* that of the text embedding z_t (Sec. 2.1 names only z_i), and z_i
    becomes 4 extra context tokens in front of the text encoder's outputs. Same float32 operations in the same
    order: equal to 1e-6 (a few ulp of values of size ~1)."""
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(0)
    proj = UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=DIM, time_embed_dim=16,
                               cross_attention_dim=8).eval()
    torch.nn.init.normal_(proj.learned_classifier_free_guidance_embeddings)
    z_i, z_t, hidden = torch.randn(2, DIM), torch.randn(4, DIM), torch.randn(4, 5, DIM)  # CFG: (uncond, cond)
    with torch.no_grad():
        context, additive = proj(image_embeddings=z_i, prompt_embeds=z_t, text_encoder_hidden_states=hidden,
                                 do_classifier_free_guidance=True)
        null = proj.learned_classifier_free_guidance_embeddings.expand(2, -1)
        expected = proj.embedding_proj(z_t) + proj.clip_image_embeddings_project_to_time_embeddings(
            torch.cat([null, z_i]))
    assert context.shape == (4, 4 + 5, 8)
    assert torch.allclose(additive, expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # a zero null embedding (ours) would give another time embedding
        zero_null = proj.embedding_proj(z_t[:2]) + proj.clip_image_embeddings_project_to_time_embeddings(
            torch.zeros(2, DIM))
    assert (additive[:2] - zero_null).abs().max() > 1e-3


# --- command line ---------------------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main({"unclip": "refimpl.commands.unclip"}, ["unclip", *args])


def test_cli_trains_resumes_samples_and_refuses(tmp_path, capsys, monkeypatch):
    from refimpl import clip

    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")
    clip_run, run, other = tmp_path / "clip", tmp_path / "run", tmp_path / "other"
    clip.train(clip.train_config("quick", steps=2), clip_run, progress=False)
    small = ("--prior-steps", "3", "--steps", "3", "--quiet")
    assert _cli("train", "--clip", str(clip_run), "--out", str(run), *small) == 0
    assert {p.name for p in run.iterdir()} >= {"clip", "prior", "decoder"}
    assert _cli("train", "--clip", str(clip_run), "--out", str(run), "--prior-steps", "3", "--steps", "5",
                "--quiet") == 0  # resumes the decoder
    assert "step 3" in capsys.readouterr().err
    png = tmp_path / "x.png"
    for argv in (["sample", "--caption", "数字三"], ["variations", "--index", "5"]):
        assert _cli(*argv, "--ckpt", str(run), "--n", "2", "--steps", "2", "--out", str(png), "--quiet") == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
    # a run whose stages were trained on another CLIP than the one stored: refused, not silently decoded
    clip.train(clip.train_config("quick", steps=2, seed=1), tmp_path / "clip1", progress=False)
    assert _cli("train", "--clip", str(tmp_path / "clip1"), "--out", str(other), *small) == 0
    shutil.rmtree(run / "clip")
    shutil.copytree(other / "clip", run / "clip")
    capsys.readouterr()
    for argv, fragment in (
            (["sample", "--ckpt", str(run), "--caption", "three", "--out", str(png)], "another CLIP"),
            (["sample", "--ckpt", str(tmp_path / "none"), "--caption", "three", "--out", str(png)], "no unCLIP run"),
            (["sample", "--ckpt", str(other), "--caption", "a cat", "--out", str(png)], "character"),
            (["sample", "--ckpt", str(other), "--caption", "three", "--decoder-scale", "-1", "--out", str(png)],
             "decoder-scale"),
            (["variations", "--ckpt", str(other), "--index", "297", "--out", str(png)], "--index"),
            (["variations", "--ckpt", str(other), "--out", str(tmp_path / "x.jpg")], "png"),
            (["train", "--clip", str(clip_run), "--out", str(run), *small], "holds another CLIP"),
            (["train", "--clip", str(tmp_path / "none"), "--out", str(tmp_path / "new")], "none"),
            (["train", "--clip", str(clip_run), "--steps", "0", "--out", str(run)], "positive"),
            (["train", "--clip", str(clip_run), "--preset", "huge", "--out", str(run)], "preset")):
        with pytest.raises(SystemExit) as exit_info:
            raise SystemExit(_cli(*argv))
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (argv, err)


# --- learning (the cached quick run, shared with the figures) ----------------------------------

def _chance_bar(n: int, k: float = 6.0) -> float:
    """chance (0.1) + k binomial SE at chance for n samples: a model at chance passes with probability < 1e-9
    for k = 6."""
    return 0.1 + k * math.sqrt(0.1 * 0.9 / n)


@pytest.mark.slow
def test_variations_keep_the_class_of_their_input():
    """unCLIP Sec. 3.1 at toy scale: variations of each of the 297 held-out digits (CLIP image embedding ->
    decoder, two seeds) are read as the input's digit by refimpl.digits_eval.classifier() far more often than
    chance. Each seed's 297 reads are binomial; the mean of the two seeds has SE <= sqrt(0.09 / 297) at chance,
    and we require > 0.1 + 6 SE = 0.21."""
    from figures.zoo.unclip import comparison

    numbers, _ = comparison("quick")
    assert numbers["var"]["kept"] > _chance_bar(numbers["n"]), numbers["var"]


@pytest.mark.slow
def test_variations_move_pixels_more_than_light_image_to_image():
    """The seed note's contrast, measured on the same inputs: image-to-image from t = 250 stays near the input in
    pixels, a variation does not. Per image, d = RMS(variation - x) - RMS(img2img_250 - x) (seed 0); we require
    mean(d) > 4 SE(d) (SE from the 297 paired differences: a one-sided z-test at ~3e-5)."""
    from figures.zoo.unclip import comparison

    _, samples = comparison("quick")
    x = samples["inputs"]
    rms = lambda a: (a - x).pow(2).flatten(1).mean(1).sqrt()  # noqa: E731
    d = rms(samples["var_0"]) - rms(samples["i2i_250_0"])
    assert d.mean() > 4 * d.std() / math.sqrt(d.numel()), (d.mean(), d.std())


@pytest.mark.slow
def test_text_to_image_draws_the_captioned_digit():
    """caption -> CLIP text embedding -> prior -> decoder: 200 samples (20 per digit, EN and ZH templates) are read
    as the captioned digit above 0.1 + 6 SE at chance = 0.227."""
    from figures.zoo.unclip import comparison

    numbers, _ = comparison("quick")
    accuracy = numbers["t2i_accuracy"]
    assert accuracy["all"] > _chance_bar(accuracy["n"]), accuracy
