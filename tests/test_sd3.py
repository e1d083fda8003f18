"""Stable Diffusion 3 (refimpl.sd3): logit-normal timestep sampling in closed form and against diffusers, the MM-DiT
joint block against diffusers' JointTransformerBlock (with its pinned (scale, shift) swap), and the traced anatomy."""

import math

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch
from diffusers.models.attention import JointTransformerBlock
from diffusers.training_utils import compute_density_for_timestep_sampling

from refimpl import flow, sd3

torch.set_num_threads(1)
F64 = torch.float64


# --- logit-normal timesteps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.5, 0.6), (-1.0, 2.0)])
def test_sampler_is_diffusers_and_follows_the_density(mean, std):
    """The same draws as diffusers' compute_density_for_timestep_sampling("logit_normal") from the same generator
    (one normal draw per timestep, then a sigmoid: equal up to float32 rounding of mean + std z); and 20000 draws
    pass a Kolmogorov-Smirnov test against the CDF Phi((logit t - m) / s) at the 1% level (D < 1.63 / sqrt(N))."""
    ours = sd3.sample_logit_normal(20000, mean, std, torch.Generator().manual_seed(0))
    ref = compute_density_for_timestep_sampling("logit_normal", 20000, logit_mean=mean, logit_std=std,
                                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    t = ours.double().sort().values
    cdf = 0.5 * (1 + torch.erf((torch.log(t) - torch.log1p(-t) - mean) / (std * math.sqrt(2))))
    n = t.numel()
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max().item()
    assert ks < 1.63 / math.sqrt(n), ks


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (1.1, 0.5)])
def test_density_is_a_density_and_a_gaussian_over_log_snr(mean, std):
    """It integrates to 1 (trapezoid over logit(t) in [-30, 30], where it is a Gaussian: error < 1e-10), and over
    lambda = log-SNR = -2 logit(t) it is exactly N(-2m, (2s)^2): pi(t(lambda)) |dt/dlambda| with
    dt/dlambda = -t (1 - t) / 2 (float64 rounding)."""
    u = torch.linspace(-30, 30, 200001, dtype=F64)
    t = torch.sigmoid(u)
    integral = torch.trapezoid(sd3.logit_normal_density(t, mean, std) * t * (1 - t), u).item()  # dt = t(1-t) du
    assert abs(integral - 1) < 1e-10, integral
    lam = torch.linspace(-10, 10, 101, dtype=F64)
    t = torch.sigmoid(-lam / 2)
    torch.testing.assert_close(sd3.log_snr(t), lam, rtol=0, atol=1e-12)
    gauss = torch.exp(-0.5 * ((lam + 2 * mean) / (2 * std)) ** 2) / (2 * std * math.sqrt(2 * math.pi))
    torch.testing.assert_close(sd3.logit_normal_density(t, mean, std) * t * (1 - t) / 2, gauss, rtol=1e-10, atol=0)


@pytest.mark.parametrize("shift", [2.0, 3.0])
def test_timestep_shift_translates_the_logit(shift):
    """The shift of refimpl.flow.time_grid (diffusers' t -> a t / (1 + (a - 1) t)) adds log a to logit(t) at every
    point of the grid, so it turns logit-normal(m, s) into logit-normal(m + log a, s) (float64 rounding)."""
    plain, shifted = flow.time_grid(50).double()[1:-1], flow.time_grid(50, shift).double()[1:-1]

    def logit(x):
        return torch.log(x) - torch.log1p(-x)

    torch.testing.assert_close(logit(shifted) - logit(plain), torch.full_like(plain, math.log(shift)),
                               rtol=0, atol=1e-6)


def test_loss_trains_at_logit_normal_timesteps():
    """loss_logit_normal is rectified flow's least squares at the timesteps sample_logit_normal draws from the same
    generator: a model that returns the exact target has zero loss, and the model sees exactly those t."""
    x, eps = torch.randn(64, 2, dtype=F64), torch.randn(64, 2, dtype=F64)
    seen = []

    def exact(x_t, t):
        seen.append(t)
        return eps - x

    assert sd3.loss_logit_normal(exact, x, eps, torch.Generator().manual_seed(3)).item() == 0.0
    torch.testing.assert_close(seen[0], sd3.sample_logit_normal(64, generator=torch.Generator().manual_seed(3)).double(),
                               rtol=0, atol=0)


# --- the MM-DiT block --------------------------------------------------------------------------------------------

def _random(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    return module.eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 9, 32, generator=g), torch.randn(2, 5, 32, generator=g), torch.randn(2, 32, generator=g)


@pytest.mark.parametrize("pre_only", [False, True])
def test_joint_block_is_diffusers_joint_transformer_block(pre_only):
    """Weights copied across (sd3.diffusers_state_dict), our JointBlock computes what diffusers' JointTransformerBlock
    computes on both streams; the last block (context_pre_only) returns no text stream in both. Float32, values ~1:
    rounding ~1e-7 (measured 2.4e-7), asked 1e-5."""
    ours = _random(sd3.JointBlock(32, 4, context_pre_only=pre_only))
    ref = JointTransformerBlock(32, 4, 8, context_pre_only=pre_only).eval()
    ref.load_state_dict(sd3.diffusers_state_dict(ours), strict=True)
    x, c, y = _inputs()
    with torch.no_grad():
        (x_ours, c_ours), (c_ref, x_ref) = ours(x, c, y), ref(x, c, y)
    torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=1e-5)
    if pre_only:
        assert c_ours is None and c_ref is None
    else:
        torch.testing.assert_close(c_ours, c_ref, rtol=0, atol=1e-5)


def test_diffusers_splits_the_last_blocks_text_modulation_as_scale_then_shift():
    """Pinned: diffusers' AdaLayerNormContinuous splits its projection as (scale, shift), SD3's code (and ours) as
    (shift, scale). Copied without swapping the halves, the last block computes something else."""
    ours = _random(sd3.JointBlock(32, 4, context_pre_only=True))
    state = sd3.diffusers_state_dict(ours)
    state["norm1_context.linear.weight"], state["norm1_context.linear.bias"] = ours.ada_c.weight, ours.ada_c.bias
    ref = JointTransformerBlock(32, 4, 8, context_pre_only=True).eval()
    ref.load_state_dict(state, strict=True)
    x, c, y = _inputs()
    with torch.no_grad():
        assert (ours(x, c, y)[0] - ref(x, c, y)[1]).abs().max() > 1e-3


def test_information_flows_both_ways_and_zero_gates_make_the_identity():
    """Joint attention: changing the text tokens changes the image stream's output and vice versa (one attention
    over both sequences, not cross-attention one way). With every adaLN regression zero (adaLN-Zero's start), both
    streams pass through unchanged."""
    block = _random(sd3.JointBlock(32, 4))
    x, c, y = _inputs()
    with torch.no_grad():
        x1, c1 = block(x, c, y)
        bump = torch.randn(c.shape, generator=torch.Generator().manual_seed(5))  # not a constant: LayerNorm removes those
        assert (block(x, c + bump, y)[0] - x1).abs().max() > 1e-3
        assert (block(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(6)), c, y)[1] - c1).abs().max() > 1e-3
        for layer in (block.ada_x, block.ada_c):
            layer.weight.zero_(), layer.bias.zero_()
        x0, c0 = block(x, c, y)
    assert torch.equal(x0, x) and torch.equal(c0, c)


def test_anatomy_trace_is_consistent():
    """The traced shapes of the tiny SD3 transformer: (16/2)^2 = 64 image tokens, every block attends over the
    image and text tokens together, and the output (a velocity) has the latents' shape."""
    trace = dict(sd3.trace_sd3_transformer(size=16, text_tokens=12))
    latents, image, text = trace["latents"], trace["image tokens"], trace["text tokens"]
    assert image[1] == (16 // 2) ** 2 and text[1] == 12
    assert trace["joint attention sequence, block 1"] == (1, image[1] + text[1], image[2])
    assert trace["output: velocity v"] == latents
