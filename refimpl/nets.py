"""Noise-prediction networks: the sinusoidal time embedding, an MLP for 2-D toys, a small U-Net for 8x8 digits.

Both networks are ``model(x_t, t) -> eps`` with the output shaped like ``x_t``, unless an
``out_dim`` (MLP) / ``out_channels`` (U-Net) asks for more outputs (improved DDPM's learned
variance needs eps and v: twice the input's). Both take
an optional ``cond_emb`` (shape ``(B, model.emb_dim)``) that is added to the time
embedding, so a later paper (class guidance, CFG) can condition them without a new class;
built with ``num_classes`` they also embed class labels ``y`` themselves, with one extra
label, ``num_classes``, for "no class" (the null label of classifier-free guidance).
:class:`EncoderNet` is the noise-aware image encoder (the U-Net's downsampling half, as in
the classifiers of Dhariwal & Nichol 2021): ``encoder(x_t, t) -> (B, out_dim)``.
:func:`model_config` / :func:`model_from_config` turn a model into JSON and back, which is
how a checkpoint rebuilds its network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError


# --8<-- [start:timestep_embedding]
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (int or float) timesteps ``t`` of shape ``(B,)`` -> ``(B, dim)``.

    Transformer positional encoding (Vaswani et al. 2017, Sec. 3.5), used for t by DDPM
    (Ho et al. 2020, Appendix B), laid out like DDPM's code: ``[sin(t w_i), cos(t w_i)]``
    with ``w_i = max_period^(-i / (dim/2 - 1))``. Continuous t in [0, 1] should be scaled
    up (e.g. by 1000) first, or all its embeddings look alike.
    """
    t = torch.as_tensor(t).reshape(-1).float()
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))  # odd dim: one zero column
# --8<-- [end:timestep_embedding]


def _outputs(value: int | None, default: int, name: str) -> int:
    """The number of output channels: ``default`` (the input's) unless ``value`` is a positive int."""
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LineageError(f"{name} must be a positive integer, got {value!r}")
    return value


def _batch_t(t, x: torch.Tensor) -> torch.Tensor:
    """Accept t as a python number, a 0-d tensor or a (B,) tensor; return (B,) on x's device."""
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class _Labels(nn.Module):
    """Class-label embedding with a null label: ``y`` in 0..num_classes-1, or ``num_classes`` for no class."""

    def __init__(self, num_classes: int | None, emb_dim: int):
        super().__init__()
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                        or num_classes <= 0):
            raise LineageError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, emb: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            return emb
        if self.table is None:
            raise LineageError("this model was built without num_classes: it takes no class labels")
        return emb + self.table(torch.as_tensor(y, device=emb.device).expand(emb.shape[0]))


def null_label(model: nn.Module) -> int:
    """The label that means "no class" for a model built with ``num_classes`` (it is ``num_classes``)."""
    if getattr(model, "labels", None) is None or model.labels.num_classes is None:
        raise LineageError("this model was built without num_classes: it has no null label")
    return model.labels.num_classes


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for low-dimensional data: ``depth`` SiLU layers, time features added to each."""

    def __init__(self, data_dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 out_dim: int | None = None, num_classes: int | None = None):
        super().__init__()
        out_dim = _outputs(out_dim, data_dim, "out_dim")
        self.config = dict(data_dim=data_dim, hidden=hidden, depth=depth, time_dim=time_dim)
        if out_dim != data_dim:  # recorded only when it differs, so eps-only configs stay as they were
            self.config["out_dim"] = out_dim
        if num_classes is not None:
            self.config["num_classes"] = num_classes
        self.time_dim, self.emb_dim = time_dim, hidden
        self.labels = _Labels(num_classes, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(data_dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, t, cond_emb: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        t = _batch_t(t, x)
        if cond_emb is None and y is None and t.numel() > 1 and bool((t == t[0]).all()):
            t = t[:1]  # a sampler's step: one t for the whole batch, so its half of the network runs on one row
        emb = self.labels(self.time_mlp(timestep_embedding(t, self.time_dim)), y)
        if cond_emb is not None:
            emb = emb + cond_emb
        emb = F.silu(emb)
        h = self.inp(x)
        for layer, proj in zip(self.layers, self.time_proj):
            h = layer(F.silu(h)) + proj(emb)
        return self.out(F.silu(h))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class ResBlock(nn.Module):
    """DDPM residual block: GroupNorm, SiLU, 3x3 conv, + per-channel shift from the embedding, again, skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels, with a residual connection (DDPM's attention block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hgt * wid).unbind(1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        h = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hgt, wid)
        return x + self.proj(h)


class UNet(nn.Module):
    """A small DDPM-style U-Net (Ho et al. 2020, Sec. 4 / Appendix B) for 8x8 images.

    One ResBlock per resolution; a 2x downsample between levels (8 -> 4 with the default
    ``channel_mults=(1, 2)``); in the middle ResBlock, self-attention (if ``attention``),
    ResBlock; the way up concatenates the skips. The last conv is zero-initialised, so
    the untrained network predicts eps = 0 exactly. ``out_channels`` defaults to ``in_channels``.
    """

    def __init__(self, in_channels: int = 1, base: int = 32, channel_mults=(1, 2), time_dim: int = 128,
                 attention: bool = True, out_channels: int | None = None, num_classes: int | None = None):
        super().__init__()
        mults = [int(m) for m in channel_mults]
        out_channels = _outputs(out_channels, in_channels, "out_channels")
        self.config = dict(in_channels=in_channels, base=base, channel_mults=mults, time_dim=time_dim,
                           attention=attention)
        if out_channels != in_channels:  # recorded only when it differs, so eps-only configs stay as they were
            self.config["out_channels"] = out_channels
        if num_classes is not None:
            self.config["num_classes"] = num_classes
        self.base, self.emb_dim = base, time_dim
        self.labels = _Labels(num_classes, time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = base
        for i, c_out in enumerate(chans):
            self.down.append(ResBlock(c, c_out, time_dim))
            c = c_out
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, time_dim)
        self.mid_attn = SelfAttention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, time_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            self.up.append(ResBlock(c + chans[i], chans[i], time_dim))
            c = chans[i]
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t, cond_emb: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.labels(self.time_mlp(timestep_embedding(_batch_t(t, x), self.base)), y)
        if cond_emb is not None:
            emb = emb + cond_emb
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class EncoderNet(nn.Module):
    """A noise-aware image encoder ``(x_t, t) -> (B, out_dim)``: the U-Net's downsampling half (one ResBlock per
    resolution, 2x downsampling between levels), a middle ResBlock, then GroupNorm, SiLU, a spatial mean and a
    linear head. Dhariwal & Nichol (2021, Sec. 4) build their noisy classifier from the downsampling trunk of their
    U-Net with attention pooling at 8x8; at our 8x8 input a plain mean over the 4x4 map does the pooling."""

    def __init__(self, in_channels: int = 1, base: int = 32, channel_mults=(1, 2), time_dim: int = 128,
                 out_dim: int = 10):
        super().__init__()
        mults = [int(m) for m in channel_mults]
        out_dim = _outputs(out_dim, 1, "out_dim")
        self.config = dict(in_channels=in_channels, base=base, channel_mults=mults, time_dim=time_dim,
                           out_dim=out_dim)
        self.base, self.emb_dim = base, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        self.blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = base
        for i, m in enumerate(mults):
            self.blocks.append(ResBlock(c, base * m, time_dim))
            c = base * m
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(mults) - 1 else nn.Identity())
        self.mid = ResBlock(c, c, time_dim)
        self.norm_out = _norm(c)
        self.head = nn.Linear(c, out_dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(_batch_t(t, x), self.base))
        h = self.conv_in(x)
        for block, down in zip(self.blocks, self.downsample):
            h = down(block(h, emb))
        h = F.silu(self.norm_out(self.mid(h, emb)))
        return self.head(h.mean(dim=(2, 3)))


#: model kind (as written in a checkpoint's config) -> class
MODEL_KINDS: dict[str, type[nn.Module]] = {"mlp": MLPDenoiser, "unet": UNet, "encoder": EncoderNet}


def build_model(kind: str, **kwargs: Any) -> nn.Module:
    """Construct a model of ``kind`` ("mlp", "unet" or "encoder") with constructor ``kwargs``."""
    if kind not in MODEL_KINDS:
        raise LineageError(f"unknown model kind {kind!r} (choose from {', '.join(MODEL_KINDS)})")
    try:
        return MODEL_KINDS[kind](**kwargs)
    except TypeError as err:
        raise LineageError(f"bad arguments for a {kind!r} model: {err}") from None


def model_config(model: nn.Module) -> dict[str, Any]:
    """JSON description ``{"kind": ..., **constructor arguments}`` of a model built here."""
    for kind, cls in MODEL_KINDS.items():
        if type(model) is cls:
            return {"kind": kind, **model.config}
    raise TypeError(f"{type(model).__name__} is not one of refimpl.nets.MODEL_KINDS")


def model_from_config(cfg: dict[str, Any], seed: int | None = None) -> nn.Module:
    """Inverse of :func:`model_config` (fresh weights; load a state dict into it). With ``seed``, the initial
    weights are drawn from that seed instead of the global RNG (whose state is left as it was), so a config
    and its seed fix the trained model."""
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise LineageError(f"not a model config (no 'kind'): {cfg!r}")
    kwargs = {k: v for k, v in cfg.items() if k != "kind"}
    if seed is None:
        return build_model(cfg["kind"], **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg["kind"], **kwargs)
