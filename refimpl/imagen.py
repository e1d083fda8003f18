"""Imagen: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding"
(NeurIPS 2022), arXiv 2205.11487, at toy scale: captioned 8x8 digits, then 8x8 -> 16x16 super-resolution.

- Frozen text encoder (Sec. 2.1): the captions are embedded by a text-only language model that never sees an
  image and is never updated: the encoder of our small T5 (refimpl.t5, span corruption on this site's notes).
  Because it is frozen, the embeddings of the fixed caption set are computed once (:func:`embed_captions`).
- Conditioning: the pooled (mean over tokens) text embedding is added to the timestep embedding, and the
  denoiser cross-attends to the whole embedding sequence (refimpl.transformer.CrossAttentionBlock, LDM's).
  10% of the captions are dropped in training (a learned null token is all the model then sees), so that
  classifier-free guidance works: eps~ = w eps(z_t, c) + (1 - w) eps(z_t) (Sec. 2.2, refimpl.guidance.cfg_eps).
- Large guidance weights (Sec. 2.3): at every sampling step the predicted x_0 is clipped to [-1, 1] (static
  thresholding) or, dynamic thresholding, s = max(1, p-th percentile of |x_0|) per sample, x_0 <- clip(x_0, -s, s) / s.
- Cascade (Sec. 2.4): a super-resolution diffusion model 8x8 -> 16x16, conditioned on the low-resolution image
  (bilinearly upsampled and concatenated to x_t) with noise conditioning augmentation: the low-resolution input
  is corrupted with Gaussian noise of a random level during training, and the level is given to the model;
  sampling uses a fixed level. There is no 16x16 digit data set offline: the 16x16 "truth" is the bicubic
  upsampling of an 8x8 digit (:func:`high_res`), a fixed function of the low-resolution image.

Sampling is DDPM's ancestral sampler (posterior of DDPM Eqs. 6-7 around the thresholded x_0), the same step as
diffusers' DDPMScheduler. Timesteps are 0-indexed in code (code t = paper t - 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.captions import caption, templates
from refimpl.checkpoint import load_module
from refimpl.core import LineageError, gaussian_like, progress
from refimpl.data import HOLDOUT, training_digits
from refimpl.nets import ResBlock, timestep_embedding
from refimpl.schedules import Schedule, linear_betas
from refimpl.training import build_seeded, fit_config
from refimpl.transformer import CrossAttentionBlock

CAPTION_DROP = 0.1  # Imagen, like GLIDE and CFG: share of training captions replaced by the null condition
THRESHOLDS = ("none", "static", "dynamic")
PERCENTILE = 0.995  # the dynamic thresholding percentile p (diffusers' default dynamic_thresholding_ratio)
AUG_MAX = 0.5       # training aug levels a ~ U[0, AUG_MAX] (our choice)
AUG_SAMPLE = 0.2    # the fixed aug level used when sampling the cascade (our choice)


# --- frozen text encoder ----------------------------------------------------------------------------------

def caption_texts() -> list[str]:
    """The caption set: the 8 English and Chinese templates of refimpl.captions (CLIP's) for each digit,
    digit-major (captions 8k..8k+7 name digit k)."""
    return [caption(template, k) for k in range(10) for template in templates()]


# --8<-- [start:encoder]
class FrozenTextEncoder:
    """Imagen Sec. 2.1: a text-only language model's encoder, frozen. Wraps a trained refimpl.t5.T5 (its encoder
    stack only) and its character tokenizer; the weights never receive gradients."""

    def __init__(self, t5, tokenizer):
        self.t5, self.tokenizer = t5.eval().requires_grad_(False), tokenizer
        self.dim = t5.width

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, dim) of the T5 encoder's final layer norm, and the padding mask (B, L), True at
        padding. Characters outside the T5 vocabulary are refused (they would all read as <unk>)."""
        if not texts or any(not text for text in texts):
            raise LineageError("captions must be non-empty (the empty condition is a dropped caption)")
        ids = nn.utils.rnn.pad_sequence([self.tokenizer.encode(t, strict=True) for t in texts], batch_first=True,
                                        padding_value=self.tokenizer.pad)
        lengths = torch.tensor([len(t) for t in texts])
        pad = torch.arange(ids.shape[1])[None] >= lengths[:, None]
        device = next(self.t5.parameters()).device
        return self.t5.encode(ids.to(device), pad.to(device)).float().cpu(), pad

    def digest(self) -> str:
        """The encoder's weight digest (refimpl.checkpoint.weights_digest): a run's config names the encoder it was
        trained on."""
        from refimpl.checkpoint import weights_digest

        return weights_digest(self.t5)


def embed_captions(encoder: FrozenTextEncoder, texts: list[str]) -> dict[str, torch.Tensor]:
    """The frozen embeddings of a fixed caption set, computed once: ``embeddings`` (N, L, dim), ``padding`` (N, L)."""
    embeddings, padding = encoder(texts)
    return {"embeddings": embeddings, "padding": padding}
# --8<-- [end:encoder]


# --- the text-conditional denoisers --------------------------------------------------------------------------

# --8<-- [start:conditioning]
class TextConditioning(nn.Module):
    """The frozen embeddings (B, L, text_dim), standardised per feature with the caption table's statistics and
    layer-normalised, become (i) a pooled vector (mean over the caption's tokens, projected to the time-embedding
    width) that is added to the timestep embedding, and (ii) a context sequence for cross-attention: the tokens
    projected to the model width, after a learned null token. A dropped caption (every token marked as padding)
    leaves only the null token and a pooled vector of zeros.

    Why standardise: our small frozen T5 gives nearly parallel vectors for captions that differ in one character
    (cosine 0.94-0.98 at the digit's position), so after a layer norm alone the digit is a small perturbation of a
    shared direction. Subtracting the table's mean and dividing by its spread (buffers ``mean`` and ``std``, set
    by :func:`train` from the frozen table and saved with the weights) makes the differences the signal."""

    def __init__(self, text_dim: int, width: int, time_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("std", torch.ones(text_dim))
        self.norm = nn.LayerNorm(text_dim)
        self.tokens = nn.Linear(text_dim, width)
        self.pooled = nn.Linear(text_dim, time_dim)
        self.null = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)

    def forward(self, embeddings: torch.Tensor, padding: torch.Tensor):
        embeddings = self.norm((embeddings - self.mean) / self.std)
        keep = (~padding).unsqueeze(-1).to(embeddings.dtype)
        pooled = (embeddings * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        context = torch.cat([self.null.expand(embeddings.shape[0], -1, -1), self.tokens(embeddings)], dim=1)
        context_padding = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        return self.pooled(pooled), context, context_padding


def token_statistics(table: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of the frozen embeddings over every non-padding token of a caption
    table (:func:`embed_captions`): the standardisation of :class:`TextConditioning`."""
    tokens = table["embeddings"][~table["padding"]]  # (number of tokens, text_dim)
    return tokens.mean(0), tokens.std(0).clamp_min(1e-6)


def drop_captions(padding: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guidance training: with probability ``p`` a caption's every token becomes padding."""
    drop = torch.rand(padding.shape[0], generator=generator) < p
    return padding | drop[:, None].to(padding.device)
# --8<-- [end:conditioning]


# --8<-- [start:base]
class BaseModel(nn.Module):
    """The base text-to-image denoiser eps_theta(x_t, t, c) on (B, 1, 8, 8) pixels, a two-level U-Net: a ResBlock
    (refimpl.nets; its embedding = time MLP + pooled text) at 8x8, a stride-2 convolution to 4x4, ResBlock and
    cross-attention block over the caption context (refimpl.transformer.CrossAttentionBlock) twice at 4x4, nearest
    upsampling, a ResBlock on [upsampled, 8x8 skip], conv out (zero-initialised)."""

    def __init__(self, text_dim: int, width: int = 32, heads: int = 4, time_dim: int = 128):
        super().__init__()
        self.config = {"text_dim": text_dim, "width": width, "heads": heads, "time_dim": time_dim}
        self.width = width
        self.text = TextConditioning(text_dim, width, time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(1, width, 3, padding=1)
        self.res_in = ResBlock(width, width, time_dim)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.res = nn.ModuleList(ResBlock(width, width, time_dim) for _ in range(2))
        self.cross = nn.ModuleList(CrossAttentionBlock(width, heads) for _ in range(2))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")  # 4x4 -> 8x8
        self.res_out = ResBlock(2 * width, width, time_dim)
        self.norm_out = nn.GroupNorm(8, width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, padding: torch.Tensor):
        pooled, context, context_padding = self.text(embeddings.to(x.device), padding.to(x.device))
        emb = self.time_mlp(timestep_embedding(t, self.width)) + pooled
        skip = self.res_in(self.conv_in(x), emb)
        h = self.down(skip)
        for res, cross in zip(self.res, self.cross):
            h = cross(res(h, emb), context, context_padding)
        h = self.res_out(torch.cat([self.up(h), skip], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
# --8<-- [end:base]


# --8<-- [start:sr]
def high_res(images: torch.Tensor) -> torch.Tensor:
    """The 16x16 "truth" of an 8x8 image: bicubic upsampling, clipped to the data range [-1, 1]."""
    return F.interpolate(images, scale_factor=2.0, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def augment(low: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise conditioning augmentation (Sec. 2.4): z = sqrt(1 - a^2) low + a eps, eps ~ N(0, I), a per-sample aug
    level ``level`` (B,) in [0, 1]: a = 0 leaves the image alone, a = 1 replaces it by noise (variance-preserving,
    like the diffusion forward process)."""
    a = level.to(low.dtype).reshape(-1, *([1] * (low.ndim - 1)))
    return (1 - a**2).sqrt() * low + a * gaussian_like(low, generator)


class SuperResolution(nn.Module):
    """eps_theta(x_t, t, z, a, c) on (B, 1, 16, 16): x_t concatenated with the bilinearly upsampled (augmented)
    low-resolution image z (B, 1, 8, 8); the embedding is time MLP + aug-level MLP (a embedded like a timestep,
    scaled to 0..999) + pooled text. ResBlocks only (no attention at this size; Imagen's 1024x1024 model also drops
    self-attention), conv out zero-initialised."""

    def __init__(self, text_dim: int, width: int = 32, time_dim: int = 128, depth: int = 3):
        super().__init__()
        self.config = {"text_dim": text_dim, "width": width, "time_dim": time_dim, "depth": depth}
        self.width = width
        self.text = TextConditioning(text_dim, width, time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.aug_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(2, width, 3, padding=1)
        self.res = nn.ModuleList(ResBlock(width, width, time_dim) for _ in range(depth))
        self.norm_out = nn.GroupNorm(8, width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, low: torch.Tensor, level: torch.Tensor,
                embeddings: torch.Tensor, padding: torch.Tensor):
        pooled, _, _ = self.text(embeddings.to(x.device), padding.to(x.device))
        emb = (self.time_mlp(timestep_embedding(t, self.width))
               + self.aug_mlp(timestep_embedding(level.to(x.device) * 999.0, self.width)) + pooled)
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        h = self.conv_in(torch.cat([x, up], dim=1))
        for res in self.res:
            h = res(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
# --8<-- [end:sr]


# --- sampling -----------------------------------------------------------------------------------------------

# --8<-- [start:threshold]
def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Imagen Sec. 2.3, static thresholding: clip the predicted x_0 to the data range [-1, 1]."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, p: float = PERCENTILE) -> torch.Tensor:
    """Imagen Sec. 2.3, dynamic thresholding: per sample, s = max(1, p-th quantile of |x_0| over its pixels);
    clip x_0 to [-s, s] and divide by s. With s = 1 this is static thresholding; otherwise pixels are pushed
    inwards from saturation instead of being cut off."""
    if not 0.0 <= p <= 1.0:
        raise LineageError(f"the thresholding percentile must lie in [0, 1], got {p}")
    magnitude = x0.flatten(1).abs()
    magnitude = magnitude.to(torch.promote_types(magnitude.dtype, torch.float32))  # quantile: float32 or float64
    s = torch.quantile(magnitude, p, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def threshold(x0: torch.Tensor, kind: str, p: float = PERCENTILE) -> torch.Tensor:
    """x_0 after "none", "static" or "dynamic" thresholding."""
    if kind == "dynamic":
        return dynamic_threshold(x0, p)
    if kind == "static":
        return static_threshold(x0)
    if kind == "none":
        return x0
    raise LineageError(f"unknown thresholding {kind!r} (choose from {', '.join(THRESHOLDS)})")
# --8<-- [end:threshold]


# --8<-- [start:sample]
@torch.no_grad()
def sample(model, x_T: torch.Tensor, schedule: Schedule, *, thresholding: str = "dynamic", p: float = PERCENTILE,
           generator: torch.Generator | None = None, callback=None, disable: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling (DDPM Algorithm 2 in the x_0 form of Eqs. 6-7 and 15) with the predicted x_0
    thresholded at every step (Imagen Sec. 2.3): x0 = threshold((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)),
    x_{t-1} = mu_tilde(x_t, x0) + sqrt(beta_tilde_t) z, no noise at the last step. ``model(x_t, t) -> eps``;
    ``callback(t, x_{t-1}, x0)`` after each step."""
    from refimpl.ddpm import predict_x0
    from refimpl.schedules import posterior

    threshold(x_T[:1], thresholding, p)  # refuse a bad kind or percentile before any model call
    schedule = schedule.to(x_T.device)
    x = x_T
    for t in progress(range(schedule.T - 1, -1, -1), total=schedule.T, desc="Imagen", disable=disable):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = threshold(predict_x0(x, t_batch, model(x, t_batch), schedule), thresholding, p)
        mean, variance = posterior(x0, x, t_batch, schedule)
        x = mean + variance.sqrt() * gaussian_like(x, generator) if t > 0 else mean
        if callback is not None:
            callback(t, x, x0)
    return x


def guided(model, embeddings: torch.Tensor, padding: torch.Tensor, w: float, **inputs):
    """Imagen Eq. (2), classifier-free guidance: eps~ = w eps(x_t, c) + (1 - w) eps(x_t) (w = 1: the conditional
    model), one batched call on [captions; dropped captions]. ``inputs`` are further per-sample model inputs
    (the super-resolution model's ``low`` and ``level``), repeated for both halves."""
    from refimpl.guidance import cfg_eps

    both = {"embeddings": torch.cat([embeddings, embeddings]), "padding": torch.cat([padding, torch.ones_like(padding)]),
            **{k: torch.cat([v, v]) for k, v in inputs.items()}}

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return cfg_eps(eps_c, eps_u, guidance_scale=w)

    return eps
# --8<-- [end:sample]


@torch.no_grad()
def generate(base: BaseModel, embeddings: torch.Tensor, padding: torch.Tensor, schedule: Schedule, *,
             w: float = 3.0, thresholding: str = "dynamic", seed: int = 0, device=None,
             disable: bool = True) -> torch.Tensor:
    """Base-model samples (B, 1, 8, 8), one per caption embedding, x_T and the noise from ``seed``."""
    device = torch.device(device or "cpu")
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((embeddings.shape[0], 1, 8, 8), generator=generator).to(device)
    eps = guided(base.to(device).eval(), embeddings.to(device), padding.to(device), w)
    return sample(eps, x_T, schedule, thresholding=thresholding, generator=generator, disable=disable)


@torch.no_grad()
def upsample(sr: SuperResolution, low: torch.Tensor, embeddings: torch.Tensor, padding: torch.Tensor,
             schedule: Schedule, *, aug_level: float = AUG_SAMPLE, w: float = 1.0, seed: int = 0, device=None,
             disable: bool = True) -> torch.Tensor:
    """The cascade's second stage: 16x16 samples from 8x8 images ``low``, augmented once at the fixed level
    ``aug_level`` (Sec. 2.4; the model is told the level), static thresholding (the SR stage's x_0 is bounded)."""
    if not 0.0 <= aug_level <= 1.0:
        raise LineageError(f"the aug level must lie in [0, 1], got {aug_level}")
    device = torch.device(device or "cpu")
    generator = torch.Generator().manual_seed(seed)
    level = torch.full((low.shape[0],), float(aug_level))
    z = augment(low.cpu().float(), level, generator).to(device)
    x_T = torch.randn((low.shape[0], 1, 16, 16), generator=generator).to(device)
    eps = guided(sr.to(device).eval(), embeddings.to(device), padding.to(device), w, low=z, level=level.to(device))
    return sample(eps, x_T, schedule, thresholding="static", generator=generator, disable=disable)


# --- training ------------------------------------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm (T = 100 for both stages)
PRESETS = {
    "quick": {"base_steps": 1500, "sr_steps": 400, "width": 32, "sr_width": 16, "batch_size": 64, "lr": 2e-3},
    "full": {"base_steps": 40000, "sr_steps": 20000, "width": 128, "sr_width": 64, "batch_size": 256, "lr": 2e-4},
}
T = 100


def make_imagen_schedule(T: int) -> Schedule:
    """DDPM's linear betas (1e-4 .. 0.02 for T = 1000) rescaled by 1000 / T, so that they sum to what DDPM's do and
    fewer steps reach an alpha_bar_T of the same order (T = 100: 2.0e-5, against DDPM's 4.0e-5; larger betas lose
    more to the second-order terms of log(1 - beta); tests/test_imagen.py): the schedule both stages train and
    sample with."""
    return Schedule(linear_betas(T, beta_start=0.1 / T, beta_end=20.0 / T))


def train_config(encoder: FrozenTextEncoder, preset: str = "quick", *, base_steps: int | None = None,
                 sr_steps: int | None = None, aug_max: float = AUG_MAX, seed: int = 0) -> dict:
    """The two stages' JSON configs ``{"base": ..., "sr": ...}``; both record the frozen encoder's digest.
    ``aug_max = 0`` trains the super-resolution model without noise conditioning augmentation."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if not 0.0 <= aug_max <= 1.0:
        raise LineageError(f"the largest aug level must lie in [0, 1], got {aug_max}")
    p = PRESETS[preset]
    common = {"data": "digits", "held_out": HOLDOUT, "seed": seed, "batch_size": p["batch_size"], "lr": p["lr"],
              "text_encoder": encoder.digest(), "T": T, "caption_drop": CAPTION_DROP}
    return {"base": {**common, "model": {"text_dim": encoder.dim, "width": p["width"], "heads": 4,
                                         "time_dim": 4 * p["width"]}, "steps": base_steps or p["base_steps"]},
            "sr": {**common, "model": {"text_dim": encoder.dim, "width": p["sr_width"], "time_dim": 4 * p["sr_width"],
                                       "depth": 3}, "aug_max": aug_max, "steps": sr_steps or p["sr_steps"]}}


def _batch(table: dict, labels: torch.Tensor, index: torch.Tensor, drop: float, generator: torch.Generator):
    """The frozen embeddings of one random caption of each image's digit, captions dropped with probability drop."""
    per_digit = table["embeddings"].shape[0] // 10
    pick = labels[index] * per_digit + torch.randint(0, per_digit, (index.shape[0],), generator=generator)
    return table["embeddings"][pick], drop_captions(table["padding"][pick], drop, generator)


# --8<-- [start:train]
def train(config: dict, table: dict, out=None, *, device=None, resume: bool = True, progress: bool = True,
          stages: tuple[str, ...] = ("base", "sr")):
    """L_simple (DDPM Eq. 14) for each stage on the training digits and a random caption of each digit, whose
    frozen embeddings are rows of ``table`` (:func:`embed_captions` of :func:`caption_texts`). The base model
    learns 8x8 digits; the super-resolution model learns high_res(x) given augment(x, a), a ~ U[0, aug_max].
    With ``out``, checkpoints go to out/base and out/sr (each resumable). Returns ({stage: model}, {stage: history})."""
    from refimpl.ddpm import loss_simple

    device = torch.device(device or "cpu")
    images, labels = training_digits()
    models, histories = {}, {}
    for stage in stages:
        cfg = config[stage]
        schedule = make_imagen_schedule(cfg["T"]).to(device)
        model = build_seeded(BaseModel if stage == "base" else SuperResolution, cfg)
        model.text.mean, model.text.std = token_statistics(table)

        def loss(model, generator, cfg=cfg, stage=stage, schedule=schedule):
            index = torch.randint(0, images.shape[0], (cfg["batch_size"],), generator=generator)
            emb, pad = _batch(table, labels, index, cfg["caption_drop"], generator)
            emb, pad, x = emb.to(device), pad.to(device), images[index].to(device)
            if stage == "base":
                return loss_simple(lambda x_t, t: model(x_t, t, emb, pad), x, schedule, generator)
            level = torch.rand(x.shape[0], generator=generator) * cfg["aug_max"]
            low = augment(x, level.to(device), generator)
            return loss_simple(lambda x_t, t: model(x_t, t, low, level.to(device), emb, pad), high_res(x), schedule,
                               generator)

        sub = None if out is None else Path(out) / stage
        histories[stage] = fit_config(model, loss, cfg, sub, f"imagen-{stage}", device, resume, progress)
        models[stage] = model.eval()
    return models, histories
# --8<-- [end:train]


def load(run, stage: str) -> tuple[nn.Module, Schedule, dict]:
    """One stage ("base" or "sr") of a run written by :func:`train`, on CPU in eval mode: (model, schedule, config)."""
    def build(data):
        make_imagen_schedule(data.config["T"])  # a config without its schedule is corrupt too
        return (BaseModel if stage == "base" else SuperResolution)(**data.config["model"])

    model, data = load_module(Path(run) / stage, expect_model=f"imagen-{stage}", build=build)
    return model, make_imagen_schedule(data.config["T"]), data.config


def load_encoder(ckpt) -> FrozenTextEncoder:
    """The frozen text encoder from a checkpoint of ``python -m refimpl t5 train``."""
    from refimpl import t5

    return FrozenTextEncoder(*t5.load(ckpt))
