"""refimpl.ldm: the KL autoencoder (shapes, closed-form KL), cross-attention conditioning (padding, captions), the
tiny offline StableDiffusionPipeline and the shape traces, CLI, and learning on the cached quick run.

Exact checks run on small untrained models; the learning checks use the cached quick run and samples of
figures/zoo/ldm.py (trained once, shared with the figures).
"""

import math
import shutil

import pytest
import torch

from refimpl import ldm
from refimpl.captions import tokenize
from refimpl.cli import main as cli_main
from refimpl.transformer import CrossAttentionBlock


def _untrained_denoiser(seed: int = 0) -> ldm.LatentDenoiser:
    """The quick denoiser with random weights; its zero-initialised output layers are randomised, or the
    network would output 0 (conv_out) and its cross-attention blocks would be the identity (proj_out)."""
    torch.manual_seed(seed)
    model = ldm.LatentDenoiser(**ldm.train_config("quick")["diffusion"]["model"]).eval()
    for layer in (model.conv_out, *(block.proj_out for block in model.cross)):
        torch.nn.init.normal_(layer.weight, std=0.1)
    return model


# --- autoencoder ----------------------------------------------------------------------

def test_autoencoder_shapes_f2_c2():
    """8x8 digits -> 4x4 latents with c = 2 channels (f = 2), and back to 8x8."""
    model = ldm.Autoencoder(latent_channels=2, width=8)
    x = torch.randn(3, 1, 8, 8)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, 2, 4, 4)
    assert model.decode(ldm.sample_latent(mean, logvar)).shape == (3, 1, 8, 8)


def test_kl_closed_form_matches_monte_carlo():
    """KL(q || N(0, I)) = E_q[log q(z) - log N(z; 0, I)]: the closed form against n = 20000 reparameterised samples
    of sample_latent per example. The Monte Carlo mean has standard error std / sqrt(n) (estimated from the same
    samples); we require agreement within 5 SE (a false failure has probability ~6e-7 per example)."""
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 2, 4, 4, generator=generator, dtype=torch.float64)
    logvar = torch.empty(4, 2, 4, 4, dtype=torch.float64).uniform_(-2.0, 1.0, generator=generator)
    closed = ldm.kl_to_standard_normal(mean, logvar)
    n = 20_000
    z = ldm.sample_latent(mean.expand(n, *mean.shape), logvar.expand(n, *logvar.shape), generator).double()
    log_ratio = (-0.5 * logvar - 0.5 * (z - mean) ** 2 / logvar.exp() + 0.5 * z ** 2).flatten(2).sum(2)  # (n, 4)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert torch.all((mc - closed).abs() < 5 * se), (mc, closed, se)
    assert ldm.kl_to_standard_normal(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0  # q = p: KL = 0 exactly


# --- cross-attention -------------------------------------------------------------------

def test_cross_attention_ignores_padded_tokens_exactly():
    """LDM Eq. (3) with a key padding mask: padded caption positions get weight exactly 0 (softmax of -inf), so
    any features there leave the output bit-for-bit unchanged; changing a real token's features changes it."""
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 4).eval()
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    h, context = torch.randn(2, 32, 4, 4), torch.randn(2, 5, 32)
    pad = torch.tensor([[False, False, True, True, True], [False, False, False, True, True]])
    out = block(h, context, pad)
    assert out.shape == h.shape
    garbage = torch.where(pad[..., None], 100 * torch.randn_like(context), context)
    assert torch.equal(block(h, garbage, pad), out)
    changed = context.clone()
    changed[:, 1] += 1.0
    assert not torch.allclose(block(h, changed, pad), out)


def test_denoiser_output_shape_and_caption_dependence():
    """eps_theta(z_t, t, y) has z_t's shape; a different caption changes it, the same caption twice in a batch
    gives the same rows up to float32 rounding (eps 1.2e-7 times ~100 operations: 1e-5)."""
    model = _untrained_denoiser()
    z = torch.randn(1, 2, 4, 4).expand(3, -1, -1, -1)
    t = torch.full((3,), 500)
    with torch.no_grad():
        eps = model(z, t, tokenize(["the digit three", "the digit three", "the digit seven"]))
    assert eps.shape == (3, 2, 4, 4)
    assert torch.allclose(eps[0], eps[1], atol=1e-5)
    assert (eps[0] - eps[2]).abs().max() > 1e-3


# --- Stable Diffusion anatomy ------------------------------------------------------------

def test_tiny_stable_diffusion_pipeline_runs_offline_and_traces_factor_8():
    """diffusers' StableDiffusionPipeline from tiny random components (no download): a 64x64 image in [0, 1];
    the 4-level AutoencoderKL downsamples by f = 2^3 = 8, so the traced latents and eps are (1, 4, 8, 8), the
    text embeddings (1, 77, 32); the documented SD v1 trace has the same structure at 512x512 (f = 8)."""
    pipe = ldm.tiny_stable_diffusion()
    assert pipe.vae_scale_factor == 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    trace, image = ldm.trace_stable_diffusion(pipe, size=64, steps=2)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1
    assert dict(trace) == {"tokens": (1, 77), "text embeddings": (1, 77, 32), "latents z_T": (1, 4, 8, 8),
                           "U-Net eps": (1, 4, 8, 8), "decoded image": (1, 3, 64, 64)}
    sd = dict(ldm.SD_V1_512)
    assert sd["latents z_T"][2] * 8 == sd["decoded image"][2] == 512
    assert [name for name, _ in trace] == [name for name, _ in ldm.SD_V1_512]


def test_diffusers_unet_attends_to_padding_unlike_ours():
    """diffusers' StableDiffusionPipeline pads every prompt to 77 tokens and calls the U-Net with
    encoder_hidden_states only (no encoder_attention_mask): the padded positions are keys of every cross-attention,
    so their embeddings change eps (by far more than float32 rounding, ~1e-6 on O(1) outputs: we require 1e-4).
    Ours masks them (test_cross_attention_ignores_padded_tokens_exactly)."""
    pipe = ldm.tiny_stable_diffusion()
    generator = torch.Generator().manual_seed(0)
    z, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 32, generator=generator)
    changed = context.clone()
    changed[:, 10:] = torch.randn(1, 67, 32, generator=generator)  # "padding" after a 10-token prompt
    with torch.no_grad():
        eps, eps_changed = (pipe.unet(z, 500, encoder_hidden_states=c).sample for c in (context, changed))
    assert (eps - eps_changed).abs().max() > 1e-4


def test_our_trace():
    """Our LDM: 5 word tokens -> (1, 5, width) -> latents (1, 2, 4, 4) -> eps (1, 2, 4, 4) -> a (1, 1, 8, 8) digit."""
    config = ldm.train_config("quick")
    trace = ldm.trace_ours(ldm.Autoencoder(**config["autoencoder"]["model"]), _untrained_denoiser(),
                           ldm.make_schedule("linear", 1000), 1.0, steps=2)
    width = config["diffusion"]["model"]["width"]
    assert dict(trace) == {"tokens": (1, 5), "text embeddings": (1, 5, width), "latents z_T": (1, 2, 4, 4),
                           "U-Net eps": (1, 2, 4, 4), "decoded image": (1, 1, 8, 8)}


# --- command line ------------------------------------------------------------------------

def _cli(*argv: str) -> int:
    return cli_main({"ldm": "refimpl.commands.ldm"}, ["ldm", *argv])


def test_cli_trains_resumes_samples_and_refuses(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")
    run, other = tmp_path / "run", tmp_path / "other"
    assert _cli("train", "--ae-steps", "5", "--steps", "5", "--out", str(run), "--quiet") == 0
    assert _cli("train", "--ae-steps", "5", "--steps", "8", "--out", str(run), "--quiet") == 0  # resumes
    assert "step 5" in capsys.readouterr().err
    png = tmp_path / "x.png"
    assert _cli("sample", "--ckpt", str(run), "--caption", "the digit 3", "--n", "2", "--steps", "3",
                "--out", str(png), "--quiet") == 0
    assert png.stat().st_size > 0
    capsys.readouterr()
    # another seed's autoencoder under this run's diffusion model: refused, not silently decoded
    assert _cli("train", "--ae-steps", "5", "--steps", "5", "--seed", "1", "--out", str(other), "--quiet") == 0
    shutil.rmtree(run / "autoencoder")
    shutil.copytree(other / "autoencoder", run / "autoencoder")
    for argv, fragment in (
            (["sample", "--ckpt", str(run), "--caption", "three", "--out", str(png)], "another autoencoder"),
            (["sample", "--ckpt", str(tmp_path / "none"), "--caption", "three", "--out", str(png)], "not found"),
            (["sample", "--ckpt", str(other), "--caption", "a cat", "--out", str(png)], "unknown word"),
            (["sample", "--ckpt", str(other), "--caption", "three", "--guidance-scale", "-1", "--out", str(png)],
             "guidance-scale"),
            (["train", "--steps", "0", "--out", str(run)], "positive"),
            (["train", "--preset", "huge", "--out", str(run)], "preset")):
        with pytest.raises(SystemExit) as exit_info:
            raise SystemExit(_cli(*argv))
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (argv, err)


# --- learning (the cached quick run, shared with the figures) ------------------------------

@pytest.mark.slow
def test_autoencoder_reconstructs_held_out_digits():
    """On the 297 held-out digits (never trained on), D(mean of E(x)) is within one grey level on average: the
    source pixels are integers 0..16 mapped to [-1, 1] in steps of 2/16 = 0.125, so we require mean |x - D(E(x))|
    < 0.125. The scale factor in the run's config is 1 / std of the training latents (recomputed exactly)."""
    from figures.zoo.ldm import ldm_checkpoint

    autoencoder, _, _, scale = ldm.load(ldm_checkpoint("quick"))
    images, _ = ldm.held_out()
    with torch.no_grad():
        error = (autoencoder.decode(autoencoder.encode(images)[0]) - images).abs().mean().item()
    assert error < 0.125, error
    # the same float32 reduction over ~48000 latents: equal on one machine. A run trained on a GPU encoded its
    # latents with TF32 convolutions (cuDNN's default: inputs rounded to 10 mantissa bits, relative error up to
    # 2^-11 ~ 4.9e-4 per product), so the std can move by up to that much; rel 1e-3 (seen on an H200: 5.6e-6)
    train_images, _ = ldm.training_digits()
    recomputed = ldm.latent_scale(autoencoder, train_images, torch.Generator().manual_seed(0))
    assert recomputed == pytest.approx(scale, rel=1e-3)


@pytest.mark.slow
def test_generated_digits_show_the_captioned_digit():
    """Digits generated for "the digit k" (DDIM in latent space, decoded) are read as k by
    refimpl.digits_eval.classifier() far above chance (0.1): with n = 100 samples the binomial SE at chance is
    sqrt(0.1 * 0.9 / 100) = 0.03; we require accuracy > 0.1 + 10 SE = 0.4 without guidance (s = 1) and with
    CFG (s = 3) (a model at chance fails with probability < 1e-15)."""
    from figures.zoo.ldm import accuracy, guided_samples

    samples = guided_samples("quick")
    bar = 0.1 + 10 * math.sqrt(0.1 * 0.9 / samples["labels"].numel())
    for key in ("cfg_1", "cfg_3"):
        assert accuracy(samples, key) > bar, (key, accuracy(samples, key))
