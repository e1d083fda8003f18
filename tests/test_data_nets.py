"""refimpl.data (toys, digits, batch samplers) and refimpl.nets (time embedding, MLP, U-Net, configs)."""

import json

import pytest
import torch

from refimpl.core import LineageError
from refimpl.data import DATASETS, TOY_2D, digits, sampler, toy_2d
from refimpl.nets import (EncoderNet, MLPDenoiser, UNet, build_model, model_config, model_from_config,
                          null_label, timestep_embedding)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOY_2D)
def test_toy_deterministic_shape_and_scale(name):
    a = toy_2d(name, 20000, gen(0))
    assert a.shape == (20000, 2) and a.dtype == torch.float32
    assert torch.equal(a, toy_2d(name, 20000, gen(0)))
    assert not torch.equal(a, toy_2d(name, 20000, gen(1)))
    assert a.mean(0).abs().max() < 0.05
    assert 0.9 < a.var(0).mean() < 1.1  # average per-coordinate variance ~ 1 (module docstring)
    assert a.abs().max() < 6


def test_toy_bad_input():
    with pytest.raises(LineageError, match="unknown dataset 'spiral'.*swissroll, moons, 8gaussians, checkerboard"):
        toy_2d("spiral", 10, gen(0))
    for n in (0, -3, 2.5, "7"):
        with pytest.raises(LineageError, match="positive integer"):
            toy_2d("moons", n, gen(0))


def test_digits():
    images, labels = digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert torch.equal(labels.unique(), torch.arange(10))
    images[0] = 5.0  # a copy: the cache is untouched
    assert digits()[0].max().item() == 1.0


@pytest.mark.parametrize("name", DATASETS)
def test_sampler_deterministic(name):
    a, b, c = sampler(name, gen(3)), sampler(name, gen(3)), sampler(name, gen(4))
    x = a(16)
    assert x.shape[0] == 16 and x.dtype == torch.float32
    assert torch.equal(x, b(16)) and not torch.equal(x, c(16))
    assert not torch.equal(a(16), x)  # the stream moves on


def test_sampler_labels_and_errors():
    images, labels = sampler("digits", gen(0), labels=True)(32)
    assert images.shape == (32, 1, 8, 8) and labels.shape == (32,)
    full_images, full_labels = digits()
    index = torch.randint(0, 1797, (32,), generator=gen(0))
    assert torch.equal(images, full_images[index]) and torch.equal(labels, full_labels[index])
    with pytest.raises(LineageError, match="has no labels"):
        sampler("moons", gen(0), labels=True)
    with pytest.raises(LineageError, match="unknown dataset"):
        sampler("cifar10", gen(0))
    with pytest.raises(LineageError, match="batch size"):
        sampler("digits", gen(0))(0)


def test_timestep_embedding():
    t = torch.arange(1000)
    emb = timestep_embedding(t, 32)
    assert emb.shape == (1000, 32)
    assert torch.cdist(emb, emb).add(torch.eye(1000) * 1e3).min() > 1e-3  # all distinct
    assert torch.allclose(emb[0], torch.cat([torch.zeros(16), torch.ones(16)]))  # [sin 0, cos 0]
    halves = torch.tensor([0.5, 1.5, 2.5])
    assert torch.allclose(timestep_embedding(t.float() + 0.5, 32)[:3], timestep_embedding(halves, 32))
    assert timestep_embedding(torch.tensor([3, 4]), 7).shape == (2, 7)


def test_mlp_shapes_and_t_forms():
    model = MLPDenoiser()
    x = torch.randn(5, 2)
    t = torch.full((5,), 7)
    out = model(x, t)
    assert out.shape == x.shape
    assert torch.equal(out, model(x, 7)) and torch.equal(out, model(x, torch.tensor(7)))
    assert model(x, t, cond_emb=torch.randn(5, model.emb_dim)).shape == x.shape
    assert MLPDenoiser(data_dim=3, hidden=16, depth=1)(torch.randn(4, 3), torch.rand(4)).shape == (4, 3)


def test_unet_shapes_zero_init_and_size():
    model = UNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"default UNet: {n_params} parameters")
    assert 100_000 < n_params < 1_000_000
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    out = model(x, t)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised last conv
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    out = model(x, t)
    assert torch.count_nonzero(out) > 0
    assert not torch.equal(model(x, t, cond_emb=torch.randn(3, model.emb_dim)), out)
    assert UNet(channel_mults=(1, 2, 2), attention=False)(torch.randn(2, 1, 8, 8), 3).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("make,shape", [(lambda: MLPDenoiser(hidden=16, depth=1, num_classes=3), (4, 2)),
                                        (lambda: UNet(base=16, time_dim=32, num_classes=3), (4, 1, 8, 8))])
def test_class_labels_and_the_null_label(make, shape):
    model = make()
    torch.nn.init.normal_(model.out.weight if isinstance(model, MLPDenoiser) else model.conv_out.weight, std=0.1)
    x, t = torch.randn(shape), torch.tensor([1, 2, 3, 4])
    assert null_label(model) == 3 and model_config(model)["num_classes"] == 3
    outs = [model(x, t, y=torch.full((4,), k)) for k in range(4)]  # classes 0..2 and the null label 3
    assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])
    assert torch.equal(model(x, t, y=torch.tensor(1)), outs[1])  # a 0-d label broadcasts over the batch
    assert torch.equal(model(x, t, y=None), model(x, t))
    with pytest.raises(LineageError, match="without num_classes"):
        MLPDenoiser()(torch.randn(2, 2), 0, y=torch.tensor([0, 1]))
    with pytest.raises(LineageError, match="without num_classes"):
        null_label(UNet())
    with pytest.raises(LineageError, match="num_classes must be a positive integer"):
        UNet(num_classes=0)


def test_unconditional_models_keep_their_parameters():
    """A model built without num_classes has exactly the parameters it had before labels existed (old
    checkpoints load with strict=True)."""
    assert not any("labels" in name for name in MLPDenoiser().state_dict())
    assert not any("labels" in name for name in UNet().state_dict())


def test_encoder_depends_on_the_input_and_the_noise_level():
    torch.manual_seed(0)
    model = EncoderNet(base=16, time_dim=32, out_dim=5)
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == (3, 5)
    assert not torch.equal(out, model(x, torch.tensor([1, 500, 999])))
    assert not torch.equal(out, model(x.flip(-1), torch.tensor([0, 500, 999])))


@pytest.mark.parametrize("kind,kwargs,shape", [
    ("mlp", dict(hidden=32, depth=2), (4, 2)),
    ("unet", dict(base=16, channel_mults=(1, 2), time_dim=32), (2, 1, 8, 8)),
    ("unet", dict(base=16, time_dim=32, num_classes=10), (2, 1, 8, 8)),
    ("encoder", dict(base=16, time_dim=32, out_dim=10), (2, 1, 8, 8)),
])
def test_config_round_trip(kind, kwargs, shape):
    torch.manual_seed(0)
    model = build_model(kind, **kwargs)
    if kind == "unet":
        torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    cfg = model_config(model)
    assert cfg["kind"] == kind
    clone = model_from_config(json.loads(json.dumps(cfg)))
    assert model_config(clone) == cfg
    clone.load_state_dict(model.state_dict())
    x, t = torch.randn(shape), torch.arange(shape[0])
    assert torch.equal(model(x, t), clone(x, t))


def test_build_model_errors():
    with pytest.raises(LineageError, match="unknown model kind 'gan'.*mlp, unet, encoder"):
        build_model("gan")
    with pytest.raises(LineageError, match="bad arguments"):
        build_model("mlp", widht=3)
    with pytest.raises(LineageError, match="not a model config"):
        model_from_config({"hidden": 3})
