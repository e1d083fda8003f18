"""ControlNet: Zhang, Rao, Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models" (ICCV 2023),
arXiv 2302.05543, on this project's quick latent diffusion model (refimpl.ldm).

Sec. 3.1: a trained block F(x; Theta) is locked; a trainable copy F(x; Theta_c) takes the input plus a condition
c through a zero-initialised 1x1 convolution Z, and its output returns through a second zero convolution
(Eq. 2): y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2). With both zero convolutions at zero,
y_c = y: training starts from the unchanged model, and no random noise reaches the locked features.
Sec. 3.2: on Stable Diffusion, the copy is the U-Net's encoder (and middle block); a tiny convolutional network
E turns the 512x512 condition image into a 64x64 feature map c_f = E(c_i) added to the copy's input; the copy's
outputs, through zero convolutions, are added to the locked decoder's skip connections.

Our denoiser (refimpl.ldm.LatentDenoiser) has no down/up path and no skip connections: conv_in, res[0], cross[0],
res[1], cross[1], conv_out. We call its first half (conv_in, res[0], cross[0]) the "encoder" and copy it; the
condition encoder maps an 8x8 edge map to the 4x4 latent grid (one stride-2 convolution, like the paper's f = 8
network at our f = 2) and is added after the copy's conv_in (as in the ControlNet code's hint block); the copy's
two feature maps (after conv_in and after cross[0]) return through zero 1x1 convolutions, added to the locked
model's features at the same depths. The caption encoder tau_theta is locked and shared.

The condition: :func:`edges`, the Sobel gradient magnitude of the 8x8 digit, normalised to a maximum of 1 per
image (a soft edge map, our stand-in for the paper's Canny edges).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.nets import timestep_embedding

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


# --8<-- [start:edges]
def edges(images: torch.Tensor) -> torch.Tensor:
    """The control map of digits (B, 1, 8, 8) in [-1, 1]: the Sobel gradient magnitude of the ink (x + 1) / 2
    (zero padding: background beyond the border), divided by its maximum per image -> (B, 1, 8, 8) in [0, 1]."""
    ink = (images.float() + 1.0) / 2.0
    kernels = torch.stack([SOBEL_X, SOBEL_X.T])[:, None].to(images.device)  # d/dcol and d/drow
    grad = F.conv2d(ink, kernels, padding=1)
    magnitude = grad.pow(2).sum(1, keepdim=True).sqrt()
    return magnitude / magnitude.flatten(1).amax(1).clamp_min(1e-8)[:, None, None, None]
# --8<-- [end:edges]


def zero_conv(channels: int, out: int | None = None) -> nn.Conv2d:
    """A 1x1 convolution with weight and bias initialised to zero (Sec. 3.1, "zero convolution")."""
    conv = nn.Conv2d(channels, out or channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


# --8<-- [start:controlnet]
class ControlNet(nn.Module):
    """The trainable side of Eq. (2) for a refimpl.ldm.LatentDenoiser ``base``: a copy of its encoder half
    (conv_in, res[0], cross[0]), the condition encoder E (8x8 edge map -> width x 4x4, last layer zero), and two
    zero convolutions. ``forward`` returns the residuals to add to the locked model's features after conv_in
    and after cross[0]."""

    def __init__(self, base: nn.Module, hidden: int = 16):
        super().__init__()
        width = base.width
        self.config = {"hidden": hidden}
        self.conv_in = copy.deepcopy(base.conv_in)  # Theta_c starts as a copy of Theta
        self.res = copy.deepcopy(base.res[0])
        self.cross = copy.deepcopy(base.cross[0])
        self.hint = nn.Sequential(  # E(c): 8x8 -> 4x4, the latent grid (the paper's tiny network, Sec. 3.2)
            nn.Conv2d(1, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            zero_conv(hidden, width))
        self.requires_grad_(True)  # the copied layers may come from a frozen base
        self.zero = nn.ModuleList(zero_conv(width) for _ in range(2))

    def forward(self, z, emb, context, pad, condition) -> list[torch.Tensor]:
        h = self.conv_in(z) + self.hint(condition)
        first = self.zero[0](h)
        h = self.cross(self.res(h, emb), context, pad)
        return [first, self.zero[1](h)]


class ControlledDenoiser(nn.Module):
    """eps(z_t, t, y, c): the locked LatentDenoiser ``base`` (frozen) plus a :class:`ControlNet` whose residuals,
    times ``conditioning_scale`` (diffusers' name), are added to the base's features (Eq. 2)."""

    def __init__(self, base: nn.Module, control: ControlNet | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.control = control or ControlNet(base)

    def forward(self, z, t, tokens, condition, conditioning_scale: float = 1.0) -> torch.Tensor:
        base = self.base
        context, pad = base.encode_text(tokens.to(z.device))
        t = torch.as_tensor(t, device=z.device).expand(z.shape[0])
        emb = base.time_mlp(timestep_embedding(t, base.width))
        residuals = self.control(z, emb, context, pad, condition.to(z.device))
        h = base.conv_in(z) + conditioning_scale * residuals[0]
        h = base.cross[0](base.res[0](h, emb), context, pad) + conditioning_scale * residuals[1]
        h = base.cross[1](base.res[1](h, emb), context, pad)
        return base.conv_out(F.silu(base.norm_out(h)))
# --8<-- [end:controlnet]


# --- training, sampling, evaluation -------------------------------------------------------

#: sizes per preset (the preset changes sizes, never the algorithm)
PRESETS = {
    "quick": {"steps": 600, "batch_size": 64, "lr": 1e-3, "hidden": 16},
    "full": {"steps": 10000, "batch_size": 256, "lr": 1e-4, "hidden": 64},
}
CAPTION_DROP = 0.5  # Sec. 3.3: 50% of the text prompts are replaced by empty strings in training


def train_config(base, preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """Config of a ControlNet on the LDM run ``base`` (a refimpl.ldm run directory), conditioned on :func:`edges`."""
    from refimpl import ldm
    from refimpl.checkpoint import weights_digest

    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    _, model, _, _ = ldm.load(base)
    return {"base": "ldm", "base_weights": weights_digest(model), "condition": "sobel-edges",
            "model": {"hidden": p["hidden"]}, "caption_drop": CAPTION_DROP, "steps": steps or p["steps"],
            "batch_size": p["batch_size"], "lr": p["lr"], "seed": seed}


def _controlled(base, config: dict) -> tuple[ControlledDenoiser, tuple]:
    """The locked LDM of ``base`` wrapped with a fresh ControlNet (seeded from config["seed"]), and the run's
    (autoencoder, schedule, scale)."""
    from refimpl import ldm
    from refimpl.checkpoint import weights_digest

    autoencoder, model, schedule, scale = ldm.load(base)
    if weights_digest(model) != config.get("base_weights"):
        raise LineageError(f"{base} is not the LDM this ControlNet was made for (weights differ)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        control = ControlNet(model, **config["model"])
    return ControlledDenoiser(model, control), (autoencoder, schedule, scale)


# --8<-- [start:train]
def train(config: dict, base, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Train only the ControlNet (the checkpoint holds only its weights): DDPM's L_simple on the latents of the
    training digits, conditioned on their captions (config["caption_drop"] emptied) and on their edge maps.
    Returns (controlled denoiser, (autoencoder, schedule, scale), loss history)."""
    from refimpl import ldm
    from refimpl.ddpm import loss_simple
    from refimpl.captions import drop_captions, random_captions
    from refimpl.training import fit_config

    device = torch.device(device or "cpu")
    model, (autoencoder, schedule, scale) = _controlled(base, config)
    model.base.to(device)
    autoencoder, schedule = autoencoder.to(device), schedule.to(device)
    images, labels = ldm.training_digits()
    conditions = edges(images)

    def loss_fn(control, generator):
        index = torch.randint(0, images.shape[0], (config["batch_size"],), generator=generator)
        tokens = drop_captions(random_captions(labels[index], generator), config["caption_drop"], generator)
        with torch.no_grad():
            z = scale * ldm.sample_latent(*autoencoder.encode(images[index].to(device)), generator)
        return loss_simple(lambda z_t, t: model(z_t, t, tokens, conditions[index]), z, schedule, generator)

    history = fit_config(model.control, loss_fn, config, out, "controlnet", device, resume, progress)
    return model.eval(), (autoencoder, schedule, scale), history
# --8<-- [end:train]


def load(ckpt, base) -> tuple[ControlledDenoiser, tuple]:
    """A trained ControlNet on its base LDM: (controlled denoiser, (autoencoder, schedule, scale)), eval mode."""
    from refimpl import checkpoint

    built: dict = {}

    def build(data):
        built["model"], built["rest"] = _controlled(base, data.config)
        return built["model"].control  # the checkpoint holds the ControlNet's weights only

    checkpoint.load_module(ckpt, expect_model="controlnet", build=build)
    return built["model"].eval(), built["rest"]


# --8<-- [start:sample]
@torch.no_grad()
def sample(model: ControlledDenoiser, autoencoder, schedule, scale: float, texts: list[str],
           conditions: torch.Tensor, *, guidance_scale: float = 3.0, conditioning_scale: float = 1.0,
           steps: int = 50, seed: int = 0, device=None) -> torch.Tensor:
    """One digit per (caption, control map): DDIM with classifier-free guidance on the caption
    (refimpl.glide.cfg_model); the control map stays in both halves of the guided batch (as in diffusers'
    StableDiffusionControlNetPipeline)."""
    from refimpl.ddim import ddim_sample
    from refimpl.captions import tokenize
    from refimpl.ldm import cfg_model

    if not guidance_scale >= 0:
        raise LineageError(f"guidance scale must be >= 0, got {guidance_scale}")
    device = torch.device(device or "cpu")
    model, autoencoder, schedule = model.to(device).eval(), autoencoder.to(device).eval(), schedule.to(device)
    conditions = conditions.to(device)

    def conditioned(z, t, tokens):
        repeat = conditions.repeat(z.shape[0] // conditions.shape[0], 1, 1, 1)
        return model(z, t, tokens, repeat, conditioning_scale)

    z_T = torch.randn((len(texts), model.base.config["latent_channels"], 4, 4),
                      generator=torch.Generator().manual_seed(seed)).to(device)
    z_0 = ddim_sample(cfg_model(conditioned, tokenize(texts).to(device), guidance_scale), z_T, schedule,
                      steps=steps, disable=True)
    return autoencoder.decode(z_0 / scale)
# --8<-- [end:sample]


def control_maps(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge maps of ``n`` held-out digits (never seen by the LDM or the ControlNet) and their labels."""
    from refimpl import ldm

    images, labels = ldm.held_out()
    if not 0 <= offset < offset + n <= images.shape[0]:
        raise LineageError(f"only {images.shape[0]} held-out digits")
    return edges(images[offset:offset + n]), labels[offset:offset + n]


def control_accuracy(model, autoencoder, schedule, scale, *, n: int = 100, caption: str = "",
                     conditioning_scale: float = 1.0, device=None) -> float:
    """Share of samples (held-out edge maps, ``caption`` for all) that refimpl.digits_eval.classifier() reads as
    the digit whose edge map controlled them."""
    from refimpl.digits_eval import classifier

    conditions, labels = control_maps(n)
    x = sample(model, autoencoder, schedule, scale, [caption] * n, conditions, conditioning_scale=conditioning_scale,
               device=device)
    with torch.no_grad():
        return (classifier()(x.cpu().clamp(-1, 1)).argmax(1) == labels).float().mean().item()
