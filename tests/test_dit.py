"""DiT (refimpl.dit): patchify, adaLN-Zero, the paper's Gflops, parity with diffusers' DiTTransformer2DModel and its
pinned deviations from DiT's code, the command line, and the cached quick family (learning and scaling)."""

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clitools import assert_refused, refimpl
from refimpl import dit
from refimpl.embeddings import fourier_features

torch.set_num_threads(1)


def _random(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """``model`` with every weight redrawn from N(0, std^2): no zero-initialised gate hides a path."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()


def _inputs(channels=1, size=8, n=5, classes=10):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, channels, size, size, generator=g), torch.tensor([0, 10, 500, 999, 3])[:n],
            torch.randint(0, classes + 1, (n,), generator=g))


# --- patches and positions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_unpatchify_inverts_patchify_and_the_embedding_is_a_linear_map_of_the_patches(p):
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    tokens = dit.patchify(x, p)
    assert tokens.shape == (3, (8 // p) ** 2, p * p * 2)
    assert torch.equal(dit.unpatchify(tokens, p, 2), x)  # a permutation of the entries: exact
    if p < 8:  # token 1 is the patch right of token 0 (row-major); its first entries, all channels of its corner
        assert torch.equal(tokens[0, 1, :2], x[0, :, 0, p])
    model = dit.DiT(patch_size=p, in_channels=2, width=32, depth=1, heads=2).double()
    conv = model.embed(x).flatten(2).transpose(1, 2)
    weight = model.embed.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (width, p p C) in patchify's order
    # the same products summed in another order: float64 rounding, ~1e-16 of values ~1
    torch.testing.assert_close(conv, tokens @ weight.T + model.embed.bias, rtol=0, atol=1e-12)


def test_patch_size_must_divide_the_image():
    with pytest.raises(dit.LineageError, match="patch size 3"):
        dit.patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(dit.LineageError, match="patch size 3"):
        dit.DiT(patch_size=3)


def test_positions_and_timestep_features_are_diffusers():
    """2-D sine-cosine positions equal diffusers' get_2d_sincos_pos_embed (MAE's layout; base_size = the grid's
    side, as its PatchEmbed passes it, or the positions are rescaled); the timestep features
    with freq_shift = 1 equal diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1), those of DiT's
    code (freq_shift = 0) do not. Float32 sin/cos of the same arguments: a few ulp."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

    for width, side in ((32, 4), (64, 2), (48, 8)):
        ref = torch.as_tensor(get_2d_sincos_pos_embed(width, side, base_size=side, output_type="pt")).float()
        torch.testing.assert_close(dit.position_embedding(width, side), ref, rtol=0, atol=1e-6)
    t = torch.tensor([0, 1, 17, 500, 999])
    ref = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    torch.testing.assert_close(fourier_features(t, 256, freq_shift=1), ref, rtol=0, atol=1e-5)
    assert (fourier_features(t, 256, freq_shift=0) - ref).abs().max() > 0.1


# --- adaLN-Zero --------------------------------------------------------------------------------------------------

def test_adaln_zero_starts_every_block_as_the_identity_and_the_network_at_zero():
    model = dit.DiT(patch_size=2, width=32, depth=3, heads=2)
    x, t, y = _inputs()
    assert torch.equal(model(x, t, y=y), torch.zeros_like(x))
    h, c = torch.randn(5, 16, 32), torch.randn(5, 32)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    # only the gates zero: with every other weight random the block is still the identity (the gates alone close
    # both residual branches); one nonzero gate opens its branch
    block = _random(dit.DiTBlock(32, 2))
    with torch.no_grad():
        block.ada.weight[64:96].zero_(), block.ada.bias[64:96].zero_()       # attention gate
        block.ada.weight[160:192].zero_(), block.ada.bias[160:192].zero_()   # MLP gate
    assert torch.equal(block(h, c), h)
    with torch.no_grad():
        block.ada.bias[64] = 1.0
    assert not torch.equal(block(h, c), h)


def test_the_label_and_the_timestep_reach_the_output():
    model = _random(dit.DiT(patch_size=2, width=32, depth=2, heads=2))
    x, t, y = _inputs()
    base = model(x, t, y=y)
    assert (model(x, t, y=(y + 1) % 11) - base).abs().max() > 1e-3
    assert (model(x, t + 1, y=y) - base).abs().max() > 1e-4
    null = torch.full_like(y, 10)
    assert torch.equal(model(x, t), model(x, t, y=null))  # y=None is the null label


# --- Gflops --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, width, depth, out", [(1, 32, 1, None), (2, 64, 3, None), (4, 96, 2, 2), (8, 32, 2, None)])
def test_forward_gflops_counts_every_multiply_accumulate(p, width, depth, out):
    """torch's FlopCounterMode counts 2 flops per multiply-accumulate of every matrix product and convolution the
    forward pass runs; half of it is forward_gflops exactly (integer counts)."""
    model = dit.DiT(patch_size=p, width=width, depth=depth, heads=4, out_channels=out)
    x, t, y = _inputs(n=1)
    with FlopCounterMode(display=False) as counter:
        model(x, t, y=y)
    assert counter.get_total_flops() == round(2e9 * dit.forward_gflops(model.config))


def test_forward_gflops_reproduces_the_papers_counts():
    """DiT-XL/2 on 32 x 32 x 4 latents (256 x 256 images), learned variance (8 output channels): 118.6 Gflops
    (the paper's count), and 525 at 512 x 512 (64 x 64 latents; the official README's table)."""
    depth, width, _ = dit.PAPER_SIZES["XL"]
    xl2 = dict(width=width, depth=depth, patch_size=2, in_channels=4, out_channels=8)
    assert round(dit.forward_gflops({**xl2, "input_size": 32}), 1) == 118.6
    assert round(dit.forward_gflops({**xl2, "input_size": 64})) == 525


# --- parity with diffusers -----------------------------------------------------------------------------------------

def _diffusers(model: dit.DiT, norm_eps: float) -> torch.nn.Module:
    c = model.config
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=c["heads"], attention_head_dim=c["width"] // c["heads"], in_channels=c["in_channels"],
        out_channels=c["out_channels"], num_layers=c["depth"], sample_size=c["input_size"],
        patch_size=c["patch_size"], num_embeds_ada_norm=c["num_classes"], norm_eps=norm_eps)
    ref.load_state_dict(dit.diffusers_state_dict(model), strict=True)
    return ref.eval()


@pytest.mark.parametrize("p", [2, 4])
def test_parity_with_diffusers_dit_transformer(p):
    """Our DiT with diffusers' two settings (freq_shift = 1, norm_eps = its 1e-5 default) computes what
    DiTTransformer2DModel computes with the weights copied across (learned variance: 2C outputs; 3 channels, 7
    classes). Float32, outputs ~1 after a few blocks: ~1e-6 rounding (measured 4e-7), asked 1e-5."""
    model = _random(dit.DiT(patch_size=p, in_channels=3, out_channels=6, width=32, depth=2, heads=4,
                            num_classes=7, freq_shift=1, norm_eps=1e-5))
    x, t, y = _inputs(channels=3, classes=7)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y=y), _diffusers(model, 1e-5)(x, t, class_labels=y).sample,
                                   rtol=0, atol=1e-5)


def test_dits_code_deviates_from_diffusers_by_the_timestep_frequencies_and_an_epsilon():
    """Pinned: the same weights in DiT's own layout (freq_shift = 0, both layer norms at eps 1e-6) and in diffusers'
    default DiTTransformer2DModel (freq_shift 1, second norm at eps 1e-5) give different outputs. The frequencies
    make a visible difference; the epsilon alone a tiny one, but a real one: moving eps by 9e-6 against token
    variances of order 0.1-1 changes the normalised values by ~1e-5 relative, while the same configuration on both
    sides differs only by float32 rounding (~1e-7 relative); asked: 5x the rounding difference (measured 27x)."""
    paper = _random(dit.DiT(patch_size=2, width=32, depth=2, heads=4))
    x, t, y = _inputs()
    with torch.no_grad():
        ref = _diffusers(paper, 1e-5)(x, t, class_labels=y).sample
        assert (paper(x, t, y=y) - ref).abs().max() > 1e-2
        shifted = dit.DiT(**{**paper.config, "freq_shift": 1})
        shifted.load_state_dict(paper.state_dict())
        eps_only = (shifted.eval()(x, t, y=y) - ref).abs().max()
        matched = _diffusers(paper, 1e-6)(x, t, class_labels=y).sample
        rounding = (shifted(x, t, y=y) - matched).abs().max()
        assert 5 * rounding < eps_only < 1e-3, (eps_only, rounding)
        torch.testing.assert_close(shifted(x, t, y=y), matched, rtol=0, atol=1e-5)


def test_guided_model_of_cfg_runs_on_a_dit():
    """refimpl.cfg's guidance wrapper needs only the null label and ``net(x, t, y=...)``: at guidance scale 1 it is
    the conditional prediction (the unconditional half weighs (1 - s) = 0), up to float32 rounding of the mix."""
    from refimpl.cfg import guided_model

    model = _random(dit.DiT(patch_size=2, width=32, depth=2, heads=2))
    x, t, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(guided_model(model, 3, guidance_scale=1.0)(x, t), model(x, t, y=torch.full((5,), 3)),
                                   rtol=0, atol=1e-6)


# --- command line --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    result = refimpl("dit", "train", "--size", "S", "--patch", "4", "--steps", "3", "--out", "run", "--quiet",
                     cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_cli_trains_resumes_and_samples(run):
    before = (run / "run" / "config.json").read_bytes()
    result = refimpl("dit", "train", "--size", "S", "--patch", "4", "--steps", "3", "--out", "run", "--quiet",
                     cwd=run)
    assert result.returncode == 0, result.stderr
    assert (run / "run" / "config.json").read_bytes() == before
    result = refimpl("dit", "sample", "--ckpt", "run", "--label", "7", "--n", "8", "--steps", "5", "--out", "s.png",
                     "--quiet", cwd=run)
    assert result.returncode == 0, result.stderr
    assert (run / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["dit", "train", "--size", "XXL", "--out", "x"], "XXL"),
    (["dit", "train", "--patch", "3", "--out", "x"], "patch"),
    (["dit", "train", "--size", "S", "--patch", "4", "--steps", "4", "--out", "run"], "decays its learning rate"),
    (["dit", "sample", "--ckpt", "missing", "--out", "x.png"], "not found"),
    (["dit", "sample", "--ckpt", "run", "--label", "10", "--out", "x.png"], "label"),
])
def test_cli_refuses_bad_input_in_one_line(run, args, fragment):
    assert_refused(refimpl(*args, cwd=run), fragment)


# --- learning and scaling: the cached quick family, shared with the DiT page's figures ---------------------------

@pytest.fixture(scope="module")
def measured():
    from figures.zoo.dit import measure

    return measure("quick")


@pytest.mark.slow
def test_held_out_loss_falls_with_every_step_up_in_gflops(measured):
    """The paper's scaling claim in miniature, on the metric with the least noise: ordered by forward Gflops, every
    member's held-out denoising loss is below the previous one's, by more than 3 standard errors of the per-digit
    paired difference (same digits, timesteps and noise for all; at 3 SE a reversed true order would show up this
    way with probability ~0.1%). The step from S/2 to B/4 adds depth and width, the others halve the patch."""
    rows, data = measured["rows"], measured["data"]
    order = sorted(rows, key=lambda k: rows[k]["mflops"])
    assert order == ["S/4", "S/2", "B/4", "B/2"], order
    for smaller, larger in zip(order, order[1:]):
        diff = data[f"loss/{smaller}"] - data[f"loss/{larger}"]
        se = diff.std() / diff.numel() ** 0.5
        assert diff.mean() > 3 * se, (smaller, larger, diff.mean().item(), se.item())


@pytest.mark.slow
def test_the_larger_size_draws_the_digits_it_is_asked_for(measured):
    """Both B members draw recognisable, class-conditional digits: the digits classifier reads at least half of
    their 300 samples as the digit asked for (chance is 10%; at 300 samples the binomial SE is <= 2.9 points), and
    each B member's samples are nearer the held-out digits (Fréchet distance) than either S member's by at least a
    factor 2."""
    rows = measured["rows"]
    for big in ("B/4", "B/2"):
        assert rows[big]["read_as_asked"] >= 0.5, rows[big]
        for small in ("S/4", "S/2"):
            assert 2 * rows[big]["fd"] < rows[small]["fd"], (big, small, rows[big]["fd"], rows[small]["fd"])
