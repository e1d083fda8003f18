"""The reference implementations on a GPU: the same models give the same numbers on CUDA as on the CPU, training
runs there (bf16 autocast, refimpl.training.fit), and what is trained there loads and samples on a CPU.

Skipped, with the reason printed, where no CUDA device exists (CI has none; the project's GPU runs are reported
in the closing notes with the card's name). ``LINEAGE_TEST_DEVICE=cpu`` runs the same code paths CPU-against-CPU
(every comparison then holds exactly), to check the tests themselves on a machine without a GPU.

Tolerances: float32 results on two devices differ only by rounding in a different summation order. One float32
dot product of length n has a relative error up to about n * 2^-24 in the worst case and sqrt(n) * 2^-24
typically; our networks chain a few dozen such sums of length <= ~1000 (3x3 convolutions over 64-128 channels,
attention over <= 64 tokens), so relative differences of 1e-5..1e-4 are rounding; we allow 1e-4 of the output's
scale. TF32 (which rounds matmul inputs to 10 mantissa bits, ~1e-3) is switched off for the comparisons.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("LINEAGE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA device on this machine")

REL = 1e-4  # float32 rounding across devices, see the module docstring


@pytest.fixture(autouse=True)
def no_tf32():
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> None:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    scale = max(a.abs().max().item(), 1e-6)
    assert (a - b).abs().max().item() <= rel * scale, f"max diff {(a - b).abs().max().item():.3g} at scale {scale:.3g}"


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Output layers start at zero (a match that tests nothing): move every weight off its initial value."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _models():
    from refimpl.clip import CLIP
    from refimpl.ldm import LatentDenoiser
    from refimpl.nets import build_model
    from refimpl.transformer import TransformerStack

    torch.manual_seed(0)
    images = torch.randn(8, 1, 8, 8)
    t = torch.randint(0, 1000, (8,))
    yield "unet", build_model("unet", base=32), (images, t)
    yield "mlp", build_model("mlp", data_dim=2, hidden=128, depth=3), (torch.randn(64, 2), torch.randint(0, 1000, (64,)))
    yield "unet-classes", build_model("unet", base=32, num_classes=10), (images, t, None, torch.randint(0, 11, (8,)))
    tokens = torch.randint(2, 27, (8, 5))  # refimpl.captions.VOCAB: 27 words, 0 = <pad>
    tokens[:, -2:] = 0
    yield "ldm", LatentDenoiser(width=32, text_depth=1), (torch.randn(8, 2, 4, 4), t, tokens)
    yield "gpt-body", TransformerStack(64, 32, 48, 2, 4, causal=True), (torch.randint(0, 64, (4, 32)),)
    clip = CLIP({"kind": "encoder", "base": 16}, {"width": 32, "depth": 1, "heads": 4, "vocab_size": 40,
                                                   "max_len": 12}, 16)
    yield "clip", clip, (images, torch.randint(1, 40, (8, 12)))


@pytest.mark.parametrize("name", [name for name, *_ in _models()])
def test_forward_matches_cpu(name):
    model, inputs = next((m, x) for n, m, x in _models() if n == name)
    _perturb(model)
    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
        got = model.to(DEVICE)(*(None if x is None else x.to(DEVICE) for x in inputs))
    for e, g in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else (got,)):
        _close(e, g)


def test_ddim_sampling_matches_cpu():
    # noise is drawn on the CPU (refimpl.core.randn_like on a CPU generator) and moved, so both devices follow
    # the same trajectory; 50 deterministic steps of a random network add rounding at each step, well below
    # 1e-3 of the sample's scale
    from refimpl.ddim import ddim_sample
    from refimpl.nets import build_model
    from refimpl.schedules import make_schedule

    torch.manual_seed(1)
    model = _perturb(build_model("unet", base=32)).eval()
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cpu = ddim_sample(model, x_T, schedule, steps=50, disable=True)
        gpu = ddim_sample(model.to(DEVICE), x_T.to(DEVICE), schedule.to(DEVICE), steps=50, disable=True)
    _close(cpu, gpu, rel=1e-3)


def test_training_on_gpu_then_sampling_on_cpu(tmp_path):
    # the command line on the GPU, end to end: train a quick DDPM there (bf16 autocast), write the checkpoint;
    # then sample from that checkpoint on the CPU and on the GPU from the same seed: the same images up to
    # rounding (DDIM, deterministic; 1e-3 of the scale as in test_ddim_sampling_matches_cpu)
    from refimpl.__main__ import PAPERS
    from refimpl.cli import main
    from refimpl.ddim import ddim_sample
    from refimpl.ddpm import load_for_sampling

    run = tmp_path / "run"
    assert main(PAPERS, ["ddpm", "train", "--data", "digits", "--steps", "30", "--out", str(run), "--device", DEVICE,
                         "--quiet"]) == 0
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    samples = {}
    for device in ("cpu", DEVICE):
        model, schedule, _ = load_for_sampling(run, device=device)
        with torch.no_grad():
            samples[device] = ddim_sample(model, x_T.to(device), schedule.to(device), steps=20, disable=True)
    _close(samples["cpu"], samples[DEVICE], rel=1e-3)


def test_fit_under_autocast_learns_on_gpu():
    # refimpl.training.fit runs loss_fn under bf16 autocast on CUDA: a least-squares fit must still converge.
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per product), so the fitted slope is accurate
    # to ~1e-2, not to float32 precision; the loss starts near 4 (slope 2) and must fall below 1e-2.
    from refimpl.training import fit

    model = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)

    def loss_fn(model, generator):
        x = torch.randn(256, 1, generator=generator).to(DEVICE)
        return ((model(x) - 2.0 * x) ** 2).mean()

    history = fit(model, loss_fn, steps=300, lr=0.05, model_name="linear", config={}, device=DEVICE,
                  progress=False, log_every=50)
    assert history[-1][1] < 1e-2
    assert abs(model.weight.item() - 2.0) < 2e-2


def test_trainers_default_to_the_cpu_even_where_cuda_exists(tmp_path):
    # a trainer called without a device keeps model and data on the CPU (on a GPU machine, fit() once picked CUDA
    # for the model while the trainer put its batches on the CPU)
    from refimpl.ddpm import train, train_config

    model, _ = train(train_config("swissroll", steps=2), tmp_path / "run", progress=False)
    assert next(model.parameters()).device.type == "cpu"
