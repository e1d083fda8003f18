"""Imagen (refimpl.imagen): thresholding against a direct percentile computation and against diffusers'
DDPMScheduler, noise conditioning augmentation in closed form, the frozen text encoder, learning, CLI."""

import shutil

import numpy as np
import pytest
import torch

from refimpl import imagen
from refimpl.schedules import make_schedule
from tests.clitools import assert_refused, refimpl

FLOAT32_EPS = torch.finfo(torch.float32).eps


def tiny_encoder(seed: int = 0) -> imagen.FrozenTextEncoder:
    """A randomly initialised 1-layer T5 over the captions' characters: a frozen text-only encoder for tests that
    need one but not a trained one."""
    from refimpl.t5 import T5
    from refimpl.text import CharTokenizer

    tokenizer = CharTokenizer.from_text("".join(imagen.caption_texts()))
    torch.manual_seed(seed)
    return imagen.FrozenTextEncoder(T5(len(tokenizer), width=32, depth=1, heads=4), tokenizer)


def wide_x0(seed: int = 0, shape=(6, 1, 8, 8)) -> torch.Tensor:
    """Predicted x_0 with rows of different spreads, so that s = 1 for some rows and s > 1 for others."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.3, 0.8, 1.5, 3.0, 10.0, 100.0])[: shape[0]].reshape(-1, 1, 1, 1)
    return torch.randn(shape, generator=g) * scale


# --- thresholding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
def test_dynamic_threshold_matches_numpy_percentile(p):
    x0 = wide_x0()
    got = imagen.dynamic_threshold(x0, p)
    flat = x0.flatten(1).double().numpy()
    s = np.maximum(1.0, np.quantile(np.abs(flat), p, axis=1))[:, None]  # numpy's default: linear interpolation
    want = (np.clip(flat, -s, s) / s).reshape(x0.shape)
    # float32 against float64: torch.quantile rounds the position (n - 1) p = 62.7 (ulp 3.8e-6, times a gap between
    # neighbouring order statistics below s / 10 here) and a + (b - a) frac (3 roundings), then the division
    # rounds once: s is off by < ~5 ulps relatively, and the outputs, bounded by 1, by < 8 float32 ulps
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=8 * FLOAT32_EPS)
    assert got.abs().max() <= 1.0
    inside = x0.clamp(-0.9, 0.9)  # every percentile of |x| is below 1, so s = 1: the values are left alone
    assert torch.equal(imagen.dynamic_threshold(inside, p), inside)


def test_dynamic_threshold_keeps_float64():
    """Float64 input: the quantile is taken in float64 too, so it matches numpy to float64 rounding (a few ulps of
    values bounded by 1: 1e-14 is ~45 ulps of slack); a float32 quantile would be off by up to ~1e-6."""
    x0 = wide_x0().double()
    got = imagen.dynamic_threshold(x0, 0.995)
    flat = x0.flatten(1).numpy()
    s = np.maximum(1.0, np.quantile(np.abs(flat), 0.995, axis=1))[:, None]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), (np.clip(flat, -s, s) / s).reshape(x0.shape), rtol=0, atol=1e-14)


def test_static_threshold_is_clipping():
    x0 = wide_x0()
    assert torch.equal(imagen.static_threshold(x0), x0.clamp(-1, 1))
    assert torch.equal(imagen.threshold(x0, "none"), x0)


def ddpm_scheduler(kind: str, p: float = imagen.PERCENTILE, sample_max_value: float = 1e9):
    """diffusers' DDPMScheduler with our schedule (T = 100, DDPM betas rescaled) and the x_0 treatment ``kind``;
    ``sample_max_value`` huge = Imagen's s without an upper bound."""
    from diffusers import DDPMScheduler

    T = 100
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=0.1 / T, beta_end=20.0 / T, beta_schedule="linear",
                              variance_type="fixed_small", clip_sample=kind == "static", clip_sample_range=1.0,
                              thresholding=kind == "dynamic", dynamic_thresholding_ratio=p,
                              sample_max_value=sample_max_value)
    scheduler.set_timesteps(T)
    return scheduler


@pytest.mark.parametrize("p", [0.9, 0.995])
def test_dynamic_threshold_matches_diffusers(p):
    x0 = wide_x0()
    # the same float32 operations in the same order (quantile, clamp at 1, clamp, divide): bit for bit
    assert torch.equal(imagen.dynamic_threshold(x0, p), ddpm_scheduler("dynamic", p)._threshold_sample(x0))


def test_diffusers_default_sample_max_value_makes_dynamic_thresholding_static():
    """diffusers clamps s to [1, sample_max_value]; with the default sample_max_value = 1.0, thresholding=True is
    plain clipping to [-1, 1], not Imagen's dynamic thresholding (s = max(1, percentile), no upper bound)."""
    x0 = wide_x0()
    default = ddpm_scheduler("dynamic", sample_max_value=1.0)._threshold_sample(x0)
    assert torch.equal(default, imagen.static_threshold(x0))
    assert not torch.allclose(default, imagen.dynamic_threshold(x0))


def test_the_rescaled_schedule_reaches_the_alpha_bar_its_docstring_quotes():
    """make_imagen_schedule: at T = 100 the betas sum to DDPM's total and alpha_bar_T = 2.0e-5, against DDPM's
    4.0e-5 at T = 1000 (quoted to two digits: +-0.05e-5)."""
    ours, ddpm = imagen.make_imagen_schedule(100), make_schedule("linear", 1000)
    assert float(ours.betas.double().sum()) == pytest.approx(float(ddpm.betas.double().sum()), rel=1e-6)
    assert float(ours.alpha_bar[-1]) == pytest.approx(2.0e-5, abs=0.05e-5)
    assert float(ddpm.alpha_bar[-1]) == pytest.approx(4.0e-5, abs=0.05e-5)


@pytest.mark.parametrize("kind", imagen.THRESHOLDS)
def test_sampler_matches_diffusers_ddpm_scheduler(kind):
    """Our sampler and a DDPMScheduler loop, same model, same x_T, same noise generator seed."""
    schedule = imagen.make_imagen_schedule(100)

    def model(x, t):  # a fixed eps-model whose x_0 predictions exceed [-1, 1], so that thresholding acts
        return 0.5 * x + 0.1 * torch.sin(3.0 * x)

    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    ours = imagen.sample(model, x_T, schedule, thresholding=kind, generator=torch.Generator().manual_seed(2),
                         disable=True)
    scheduler, x, generator = ddpm_scheduler(kind), x_T.clone(), torch.Generator().manual_seed(2)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), int(t), x, generator=generator).prev_sample
    # the step coefficients differ in float32 rounding (diffusers recomputes beta_t = 1 - abar_t / abar_{t-1}):
    # a few ulps per step of values of size <= 8 (the unthresholded run reaches |x| ~ 6.5), accumulated over 100
    # steps: 100 * 4 * 1.2e-7 * 8 ~ 3.8e-4 (measured: 1.8e-4 without thresholding, 3e-5 with)
    assert x.abs().max() < 8
    torch.testing.assert_close(ours, x, rtol=0, atol=100 * 4 * FLOAT32_EPS * 8)
    assert ours.abs().max() > 0.1  # not a trivial all-zeros agreement


def test_sampler_refuses_bad_thresholding_before_calling_the_model():
    def model(x, t):
        raise AssertionError("called")

    with pytest.raises(imagen.LineageError, match="unknown thresholding"):
        imagen.sample(model, torch.zeros(1, 1, 8, 8), imagen.make_imagen_schedule(100), thresholding="soft")
    with pytest.raises(imagen.LineageError, match="percentile"):
        imagen.sample(model, torch.zeros(1, 1, 8, 8), imagen.make_imagen_schedule(100), p=1.5)


# --- noise conditioning augmentation ------------------------------------------------------------------------

def test_augment_endpoints_and_moments():
    low = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    noise = torch.randn(low.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(imagen.augment(low, torch.zeros(1), torch.Generator().manual_seed(0)), low)  # a = 0: clean
    assert torch.equal(imagen.augment(low, torch.ones(1), torch.Generator().manual_seed(0)), noise)  # a = 1: noise
    a, n = 0.6, 20000
    z = imagen.augment(low.expand(n, -1, -1, -1), torch.full((n,), a), torch.Generator().manual_seed(1))
    # z = sqrt(1 - a^2) low + a eps: per pixel mean sqrt(1 - a^2) low (standard error a / sqrt(n) = 0.0042) and
    # variance a^2 (standard error a^2 sqrt(2 / n) = 0.0036); 5 standard errors, 64 pixels each
    torch.testing.assert_close(z.mean(0), (1 - a**2) ** 0.5 * low[0], rtol=0, atol=5 * a / n**0.5)
    torch.testing.assert_close(z.var(0), torch.full_like(low[0], a**2), rtol=0, atol=5 * a**2 * (2 / n) ** 0.5)


def test_training_aug_levels_and_no_aug_config():
    encoder = tiny_encoder()
    assert imagen.train_config(encoder)["sr"]["aug_max"] == imagen.AUG_MAX
    assert imagen.train_config(encoder, aug_max=0.0)["sr"]["aug_max"] == 0.0
    with pytest.raises(imagen.LineageError, match="aug level"):
        imagen.train_config(encoder, aug_max=1.5)


def test_super_resolution_sees_the_aug_level():
    sr = imagen.SuperResolution(32, width=16, time_dim=32)
    torch.nn.init.normal_(sr.conv_out.weight)  # the zero-initialised output layer would hide every input
    g = torch.Generator().manual_seed(0)
    x, low = torch.randn((2, 1, 16, 16), generator=g), torch.randn((2, 1, 8, 8), generator=g)
    emb, pad = torch.randn((2, 5, 32), generator=g), torch.zeros(2, 5, dtype=torch.bool)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        clean = sr(x, t, low, torch.zeros(2), emb, pad)
        noisy = sr(x, t, low, torch.full((2,), 0.5), emb, pad)
    assert (clean - noisy).abs().max() > 1e-3


# --- frozen text encoder and conditioning ------------------------------------------------------------------

def test_text_encoder_stays_frozen_during_training():
    encoder = tiny_encoder()
    before = {k: v.clone() for k, v in encoder.t5.state_dict().items()}
    digest = encoder.digest()
    config = imagen.train_config(encoder, base_steps=3, sr_steps=3)
    table = imagen.embed_captions(encoder, imagen.caption_texts())
    models, _ = imagen.train(config, table, progress=False)
    assert all(not p.requires_grad for p in encoder.t5.parameters())
    assert all(torch.equal(before[k], v) for k, v in encoder.t5.state_dict().items())
    assert encoder.digest() == digest == config["base"]["text_encoder"]
    trained = dict(models["base"].named_parameters())
    assert not any(name.startswith("t5") for name in trained)  # the encoder is not a submodule of the denoiser
    again, _ = encoder(imagen.caption_texts())
    assert torch.equal(again, table["embeddings"])


def test_embeddings_are_standardised_with_the_tables_statistics():
    """The conditioning's per-feature standardisation: over the table's non-padding tokens, mean 0 and standard
    deviation 1 (float32 sums over ~1000 tokens: |error| well below 1e-4), set by train() and kept by load()."""
    encoder = tiny_encoder()
    table = imagen.embed_captions(encoder, imagen.caption_texts())
    mean, std = imagen.token_statistics(table)
    tokens = (table["embeddings"][~table["padding"]] - mean) / std
    assert tokens.mean(0).abs().max() < 1e-4 and (tokens.std(0) - 1).abs().max() < 1e-4
    models, _ = imagen.train(imagen.train_config(encoder, base_steps=1, sr_steps=1), table, progress=False)
    for model in models.values():
        assert torch.equal(model.text.mean, mean) and torch.equal(model.text.std, std)


def test_dropped_caption_hides_the_text():
    """With every token marked as padding, the model sees only the null token and a zero pooled vector."""
    model = imagen.BaseModel(32, width=16, heads=4, time_dim=32)
    torch.nn.init.normal_(model.conv_out.weight)
    for block in model.cross:
        torch.nn.init.normal_(block.proj_out.weight)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn((2, 1, 8, 8), generator=g), torch.tensor([5, 50])
    pad = imagen.drop_captions(torch.zeros(2, 7, dtype=torch.bool), 1.0)
    a, b = torch.randn((2, 7, 32), generator=g), torch.randn((2, 7, 32), generator=g)
    with torch.no_grad():
        assert torch.equal(model(x, t, a, pad), model(x, t, b, pad))
        keep = torch.zeros_like(pad)
        assert (model(x, t, a, keep) - model(x, t, b, keep)).abs().max() > 1e-3


def test_encoder_refuses_unknown_characters_and_empty_captions():
    encoder = tiny_encoder()
    with pytest.raises(imagen.LineageError, match="not in the vocabulary"):
        encoder(["the digit ☃"])
    with pytest.raises(imagen.LineageError, match="non-empty"):
        encoder([""])


# --- command line ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """A tiny T5 checkpoint (one training step of a 1-layer T5 over the captions' characters) and an imagen run of
    2 + 2 steps trained with it by the CLI, plus a second, different T5."""
    from refimpl.training import fit

    root = tmp_path_factory.mktemp("imagen-cli")
    for name, seed in (("t5", 0), ("t5-other", 1)):
        encoder = tiny_encoder(seed)
        model = encoder.t5.requires_grad_(True)
        config = {"model": {"vocab_size": len(encoder.tokenizer), "width": 32, "depth": 1, "heads": 4},
                  "chars": encoder.tokenizer.chars}
        fit(model, lambda m, g: m.embed.weight.pow(2).mean(), steps=1, lr=1e-3, out=root / name, model_name="t5",
            config=config, progress=False)
    shutil.copytree(root / "t5", root / "wrong" / "base")  # a run directory whose base/ is another paper's model
    result = refimpl("imagen", "train", "--t5", "t5", "--base-steps", "2", "--sr-steps", "2", "--out", "run",
                     "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "frozen T5 encoder" in result.stdout
    return root


def test_cli_trains_and_samples(cli_runs):
    result = refimpl("imagen", "sample", "--ckpt", "run", "--t5", "t5", "--caption", "数字三", "--n", "2",
                     "--out", "out.png", "--quiet", cwd=cli_runs)
    assert result.returncode == 0, result.stderr
    assert (cli_runs / "out.png").stat().st_size > 0


@pytest.mark.parametrize("args, fragment", [
    (["--t5", "t5-other"], "another T5 encoder"),
    (["--t5", "missing"], "missing"),
    (["--ckpt", "wrong"], "not 'imagen-base'"),
    (["--aug-level", "1.5"], "aug level"),
    (["--thresholding", "soft"], "soft"),
    (["--n", "0"], "positive integer"),
])
def test_cli_refuses_bad_input(cli_runs, args, fragment):
    from tests.clitools import with_defaults

    argv = with_defaults(args, ckpt="run", t5="t5", caption="three", n="2", out="bad.png")
    assert_refused(refimpl("imagen", "sample", *argv, "--quiet", cwd=cli_runs), fragment)


# --- learning (the cached quick run, shared with the figures) ------------------------------------------------

@pytest.mark.slow
def test_thresholding_controls_saturation_at_high_guidance():
    """At w = 8 the unthresholded samples leave the data range, static thresholding piles pixels on +-1, and dynamic
    thresholding saturates fewer pixels than static (each share is over 50 * 64 = 3200 pixels)."""
    from figures.zoo.imagen import HIGH_W, samples, saturation

    s = samples("quick")
    assert s[f"w{HIGH_W:g}_none"].abs().max() > 1.0
    # the last step returns the posterior mean at t = 0, x0 * beta_1 / (1 - alpha_bar_1): the ratio is 1 up to the
    # float32 cancellation in 1 - alpha_bar_1 = 1 - (1 - beta_1), a relative error of eps / beta_1 = 1.2e-4 for
    # beta_1 = 0.1 / T = 1e-3 (measured: 1.3e-5)
    beta_1 = imagen.make_imagen_schedule(imagen.T).betas[0].item()
    assert s[f"w{HIGH_W:g}_static"].abs().max() <= 1.0 + FLOAT32_EPS / beta_1
    assert saturation(s[f"w{HIGH_W:g}_dynamic"]) < saturation(s[f"w{HIGH_W:g}_static"])


@pytest.mark.slow
def test_super_resolution_beats_bilinear_on_real_inputs():
    """On 50 held-out real 8x8 digits, the super-resolution samples are closer (RMSE) to the 16x16 truth (bicubic
    upsampling) than bilinear upsampling of the same input is."""
    import torch.nn.functional as F

    from figures.zoo.imagen import samples

    s = samples("quick")
    truth = imagen.high_res(s["real_low"])
    bilinear = F.interpolate(s["real_low"], scale_factor=2.0, mode="bilinear", align_corners=False)

    def rmse(x):
        return (x - truth).pow(2).mean().sqrt().item()

    assert rmse(s["real_noaug"]) < rmse(bilinear)
