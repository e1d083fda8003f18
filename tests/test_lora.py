"""LoRA (refimpl/lora.py): exactness at initialisation, merge/unmerge, what trains, the parameter count, learning on
the LDM (a slanted writer) and on the GPT (Python source), and the command line."""

import math

import pytest
import torch

from refimpl import ldm, lora
from refimpl.captions import tokenize
from refimpl.gpt import GPT, lm_loss
from refimpl.training import build_seeded
from refimpl.transformer import MultiHeadAttention
from tests.clitools import assert_refused, refimpl

U = 2.0 ** -24  # float32 unit roundoff


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab_size=30, max_len=16, width=32, depth=2, heads=4)


def small_ldm() -> ldm.LatentDenoiser:
    return build_seeded(ldm.LatentDenoiser, ldm.train_config("quick")["diffusion"]).eval()


def test_lora_linear_equals_the_base_layer_exactly_at_init():
    """B = 0, so (alpha / r) B A x adds exact zeros: torch.equal, not approximately."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 7)
    x = torch.randn(5, 12)
    adapter = lora.LoRALinear(base, r=3, alpha=6.0)
    assert torch.equal(adapter(x), base(x))
    assert adapter.scaling == 2.0 and torch.count_nonzero(adapter.lora_A) == 3 * 12


def test_adapters_take_the_base_layers_dtype():
    """A float64 base gets float64 adapters (and a CUDA base CUDA ones, by the same code: tests/test_gpu.py runs
    models there); before, they were made in the default dtype and forward failed on the matmul."""
    base = torch.nn.Linear(12, 7).double()
    adapter = lora.LoRALinear(base, r=3, alpha=6.0)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert adapter.lora_A.dtype == adapter.lora_B.dtype == torch.float64
    assert torch.equal(adapter(x), base(x))


def test_adapted_models_equal_their_base_exactly_at_init():
    gpt = small_gpt().eval()
    tokens = torch.randint(0, 30, (3, 16), generator=torch.Generator().manual_seed(1))
    before = gpt(tokens)
    lora.apply_lora(gpt, r=4, alpha=8.0, targets=("q", "v"))
    assert torch.equal(gpt(tokens), before)

    model = small_ldm()
    z, t, caption = torch.randn(4, 2, 4, 4), torch.tensor([0, 10, 500, 999]), tokenize(["the digit three"] * 4)
    with torch.no_grad():
        before = model(z, t, caption)
        lora.apply_lora(model, r=4, alpha=4.0, within=model.cross)
        assert torch.equal(model(z, t, caption), before)


def test_merge_then_unmerge_restores_the_weights():
    """merge: W1 = fl(W0 + D), unmerge: W2 = fl(W1 - D) with the same D (computed twice, identically). Each
    float32 operation has relative error <= u = 2^-24, so |W2 - W0| <= u |W0 + D| + u |W1 - D| <= 2u (|W0| + |D|)
    + O(u^2) elementwise; we allow 2.01 u (|W0| + |D|). Merged and unmerged forwards both approximate
    (W0 + D) x + b; each is a sum of at most n = d_in + r + 2 rounded terms, so each is off by at most
    n u M (Higham's gamma_n), M = |W0||x| + |D||x| + (alpha/r)|B||A||x| + |b|: they differ by <= 2 n u M."""
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 16)
    w0 = base.weight.detach().clone()
    adapter = lora.LoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        adapter.lora_B.normal_()  # a trained-looking update
    x = torch.randn(8, 32)
    unmerged = adapter(x)
    delta = adapter.delta().detach()
    adapter.merge()
    assert adapter.merged and torch.allclose(base.weight, w0 + delta, rtol=0, atol=0)
    magnitude = (x.abs() @ w0.abs().T + x.abs() @ delta.abs().T + base.bias.abs()
                 + adapter.scaling * (x.abs() @ adapter.lora_A.abs().T) @ adapter.lora_B.abs().T).detach()
    assert ((adapter(x) - unmerged).abs() <= 2 * (32 + 4 + 2) * U * magnitude).all()
    adapter.unmerge()
    assert not adapter.merged
    assert ((base.weight - w0).abs() <= 2.01 * U * (w0.abs() + delta.abs())).all()


def test_only_the_adapters_receive_gradients():
    """At B = 0 the gradient reaches B (dL/dB = g (A x)^T != 0) but not yet A (dL/dA = B^T g x^T = 0)."""
    gpt = small_gpt()
    adapters = lora.apply_lora(gpt, r=2, alpha=2.0, targets=("q", "v"))
    tokens = torch.randint(0, 30, (4, 17), generator=torch.Generator().manual_seed(2))
    lm_loss(gpt, tokens).backward()
    for name, p in gpt.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(a.lora_B.grad.abs().sum() > 0 and torch.count_nonzero(a.lora_A.grad) == 0 for a in adapters)


@pytest.mark.parametrize("r", [1, 4, 8])
def test_trainable_parameter_count_matches_the_formula(r):
    """r (d_in + d_out) per adapted matrix (Sec. 4.1): the LDM's 2 cross-attention blocks hold 2 attentions each
    (self and cross), 4 projections of width x width each."""
    model = small_ldm()
    adapters = lora.apply_lora(model, r=r, alpha=r, within=model.cross)
    width = model.width
    shapes = [(width, width)] * 16
    assert len(adapters) == 16
    assert lora.trainable_parameters(model) == lora.lora_parameter_count(shapes, r) == 16 * r * 2 * width
    attentions = [m for m in model.text.modules() if isinstance(m, MultiHeadAttention)]
    assert attentions and all(isinstance(m.q, torch.nn.Linear) for m in attentions)  # the caption encoder untouched


def test_apply_lora_refuses_unknown_targets():
    from refimpl.core import LineageError

    with pytest.raises(LineageError):
        lora.apply_lora(torch.nn.Linear(3, 3), r=2, alpha=2.0)
    with pytest.raises(LineageError):
        lora.LoRALinear(torch.nn.Linear(3, 3), r=0, alpha=1.0)


# --- learning (the cached quick runs, shared with the figures) ------------------------------

@pytest.mark.slow
def test_lora_teaches_the_ldm_the_slanted_writer():
    """The writer's shear moves the mean skew of real digits by about +0.5 (refimpl.styles). With 100 samples and a
    per-image skew SD of about 0.12-0.2, the SE of a mean skew is <= 0.02; we require the LoRA samples' mean skew to
    exceed the base's by 0.2 (half the shear, > 10 SE). Legibility: after undoing the shear (styles.shear by -SHEAR)
    the classifier reads the captioned digit in > 0.1 + 10 SE = 0.4 of the samples (binomial SE at chance 0.03)."""
    from figures.zoo.lora import style_samples
    from refimpl.digits_eval import read_as
    from refimpl.styles import SHEAR, shear, skew

    samples = style_samples("quick")
    shift = skew(samples["lora"]).mean() - skew(samples["base"]).mean()
    assert shift > 0.2, shift
    bar = 0.1 + 10 * math.sqrt(0.1 * 0.9 / 100)
    assert read_as(shear(samples["lora"].clamp(-1, 1), -SHEAR), samples["labels"]) > bar


@pytest.mark.slow
def test_lora_adapts_the_gpt_to_python_source():
    """Held-out loss on the Python source (~9,800 characters; per-character losses have SD ~2 nats, so the SE of
    the mean is ~0.02): LoRA must lower it by more than 0.5 nats (25 SE) with < 2% of the parameters trainable,
    and full fine-tuning, which trains every weight, must reach a lower loss still."""
    from figures.zoo.lora import gpt_results

    results = gpt_results("quick")
    low, full = results["lora"], results["full"]
    assert low["after"] < low["before"] - 0.5, low
    assert low["trainable"] < 0.02 * low["total"]
    assert full["after"] < low["after"], (full, low)


# --- command line ------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_trains_samples_and_refuses(tmp_path):
    from figures.zoo.ldm import ldm_checkpoint

    base = str(ldm_checkpoint("quick"))
    result = refimpl("lora", "train", "--base", base, "--steps", "3", "--out", "run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4096 trainable parameters" in result.stdout
    result = refimpl("lora", "sample", "--base", base, "--ckpt", "run", "--caption", "the digit 3", "--n", "2",
                     "--merge", "--out", "x.png", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    for argv, fragment in (
            (["train", "--base", "none", "--out", "r2"], "not found"),
            (["train", "--base", base, "--full", "--rank", "2", "--out", "r2"], "--full"),
            (["train", "--base", base, "--rank", "0", "--out", "r2"], "positive"),
            (["sample", "--base", base, "--ckpt", "run", "--caption", "a cat", "--out", "x.png"], "unknown word"),
            (["sample", "--base", base, "--ckpt", f"{base}/diffusion", "--caption", "three", "--out", "x.png"],
             "not one of"),
            (["train-gpt", "--base", base, "--out", "r3"], "checkpoint")):
        assert_refused(refimpl("lora", *argv, cwd=tmp_path), fragment)
