"""ControlNet (refimpl/controlnet.py): the edge map in closed form, exactness at initialisation (zero
convolutions), where the gradients go, learning (generated digits follow the control map), the command line."""

import math

import pytest
import torch

from refimpl import controlnet, ldm
from refimpl.captions import tokenize
from refimpl.training import build_seeded
from tests.clitools import assert_refused, refimpl

CHANCE_BAR = 0.1 + 10 * math.sqrt(0.1 * 0.9 / 100)  # chance + 10 binomial SE for 100 samples = 0.4


def controlled(seed: int = 0) -> controlnet.ControlledDenoiser:
    base = build_seeded(ldm.LatentDenoiser, ldm.train_config("quick")["diffusion"]).eval()
    torch.manual_seed(seed)
    torch.nn.init.normal_(base.conv_out.weight, std=0.1)  # zero at init in LatentDenoiser; trained ones are not
    return controlnet.ControlledDenoiser(base, controlnet.ControlNet(base))


def inputs(n: int = 4):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    return (torch.randn(n, 2, 4, 4, generator=g), torch.randint(0, 1000, (n,), generator=g),
            tokenize(["the digit three", "", "seven", "a handwritten one"][:n]), controlnet.edges(images))


def test_edges_of_a_vertical_bar_in_closed_form():
    """Ink 1 in column 3 only (x = +1 there, -1 elsewhere). Sobel d/dcol at (row i, col c) is
    sum_k w_k (ink[i+k, c+1] - ink[i+k, c-1]) with row weights w = (1, 2, 1): in the interior rows (all three
    neighbours present) +-4 in columns 2 and 4, 0 elsewhere, and d/drow = 0 (ink constant down a column). At the
    top and bottom rows zero padding gives |grad| = sqrt(3^2 + 1^2) < 4 at most. So the maximum is 4 and the
    normalised map is exactly 1 in columns 2 and 4 of the interior rows, 0 in the others."""
    image = -torch.ones(1, 1, 8, 8)
    image[..., 3] = 1.0
    e = controlnet.edges(image)[0, 0]
    assert e.max().item() == 1.0 and e.min().item() >= 0.0
    interior = e[1:-1]
    assert (interior[:, [2, 4]] == 1).all() and (interior[:, [0, 1, 3, 5, 6, 7]] == 0).all()
    assert torch.equal(controlnet.edges(-torch.ones(2, 1, 8, 8)), torch.zeros(2, 1, 8, 8))  # blank: no NaN


def test_zero_convolutions_make_the_output_equal_the_base_exactly_at_init():
    model = controlled()
    z, t, tokens, maps = inputs()
    with torch.no_grad():
        expected = model.base(z, t, tokens)
        for scale in (1.0, 0.5, 3.0):
            assert torch.equal(model(z, t, tokens, maps, scale), expected)


def test_only_the_controlnet_trains_and_zero_convs_get_the_first_gradients():
    """Sec. 3.1: with Z = 0 the gradient of the loss w.r.t. Z's weight is (dL/dy) times the copy's features,
    non-zero, while everything behind Z gets exactly zero gradient; after one step Z != 0 and the copy learns."""
    model = controlled()
    z, t, tokens, maps = inputs()
    target = torch.randn_like(z)

    def step():
        model.zero_grad(set_to_none=True)
        (model(z, t, tokens, maps) - target).pow(2).mean().backward()

    step()
    assert all(p.grad is None and not p.requires_grad for p in model.base.parameters())
    zero = {id(p) for conv in model.control.zero for p in conv.parameters()}
    for name, p in model.control.named_parameters():
        assert p.grad is not None, name
        assert (p.grad.abs().sum() > 0) == (id(p) in zero), name
    with torch.no_grad():
        for p in model.control.parameters():
            p -= 0.1 * p.grad
    step()
    assert model.control.conv_in.weight.grad.abs().sum() > 0
    assert model.control.res.conv1.weight.grad.abs().sum() > 0


def test_the_copy_starts_as_the_base_encoder():
    model = controlled()
    for mine, theirs in ((model.control.conv_in, model.base.conv_in), (model.control.res, model.base.res[0]),
                         (model.control.cross, model.base.cross[0])):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(mine.parameters(), theirs.parameters()))


def test_diffusers_controlnet_from_unet_copies_the_encoder_and_starts_at_zero():
    """diffusers' ControlNetModel.from_unet copies the U-Net's encoder weights, and every residual it returns is
    exactly zero at initialisation (zero_module on each output block), as in Eq. (2). Its condition encoder
    deviates from the paper's description that the diffusers docstring itself quotes (four 4x4 convolutions with
    stride 2, ReLU, channels 16-32-64-128, Gaussian weights): 3x3 kernels, SiLU, channels (16, 32, 96, 256), and a
    zero-initialised last layer -- the same choice as ours (the residual at init does not depend on the map)."""
    from diffusers import ControlNetModel

    unet = ldm.tiny_stable_diffusion().unet
    net = ControlNetModel.from_unet(unet)
    assert torch.equal(net.conv_in.weight, unet.conv_in.weight)
    assert net.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()
    embedding = net.controlnet_cond_embedding
    kernels = {conv.kernel_size for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]}
    assert kernels == {(3, 3)} and torch.count_nonzero(embedding.conv_out.weight) == 0
    g = torch.Generator().manual_seed(0)
    latents, image = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)  # f = 8
    with torch.no_grad():
        down, mid = net(latents, 10, encoder_hidden_states=torch.randn(1, 5, 32, generator=g), controlnet_cond=image,
                        return_dict=False)
    assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])


# --- learning (the cached quick run, shared with the figures) ------------------------------

@pytest.mark.slow
def test_generated_digits_follow_the_control_map():
    """100 held-out edge maps, empty caption: at conditioning scale 0 (the base model) the classifier reads the
    map's digit at about chance; with the ControlNet in > 0.4 = chance + 10 binomial SE of the samples."""
    from figures.zoo.controlnet import controlnet_samples
    from refimpl.digits_eval import read_as

    samples = controlnet_samples("quick")
    assert read_as(samples["zero"], samples["labels"]) < CHANCE_BAR
    assert read_as(samples["empty"], samples["labels"]) > CHANCE_BAR


# --- command line ------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_trains_samples_and_refuses(tmp_path):
    from figures.zoo.ldm import ldm_checkpoint

    base = str(ldm_checkpoint("quick"))
    result = refimpl("controlnet", "train", "--base", base, "--steps", "3", "--out", "run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = refimpl("controlnet", "sample", "--base", base, "--ckpt", "run", "--n", "3", "--out", "x.png",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    for argv, fragment in (
            (["train", "--base", "none", "--out", "r2"], "not found"),
            (["train", "--base", base, "--steps", "-1", "--out", "r2"], "positive"),
            (["sample", "--base", base, "--ckpt", "run", "--conditioning-scale", "-1", "--out", "x.png"],
             "conditioning-scale"),
            (["sample", "--base", base, "--ckpt", "run", "--n", "400", "--out", "x.png"], "held-out"),
            (["sample", "--base", base, "--ckpt", f"{base}/diffusion", "--out", "x.png"], "not 'controlnet'")):
        assert_refused(refimpl("controlnet", *argv, cwd=tmp_path), fragment)
