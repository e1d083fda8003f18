"""Latent diffusion: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022),
arXiv 2112.10752, at toy scale: captioned 8x8 digits, the text-to-image recipe that Stable Diffusion scaled up.

- Perceptual compression (Sec. 3.1): a KL-regularised autoencoder, encoder E -> (mean, log-variance) of a
  latent z of c channels at 1/f resolution, decoder D. Here f = 2 and c = 2: an 8x8 digit -> a 4x4x2 latent
  (32 numbers for 64 pixels). The loss is an L1 reconstruction plus a KL term of weight 1e-6 (the paper's
  "KL-reg"); the paper adds a perceptual and a patch-based adversarial loss, which we skip (8x8 digits have no
  texture to sharpen). Like Stable Diffusion, the latents are multiplied by a scale factor 1 / std(z) measured
  on the training set, so the diffusion model sees unit-variance data.
- Latent diffusion (Sec. 3.2, Eq. 2): DDPM's L_simple on the scaled latents z = s E(x), with a small
  denoiser eps_theta(z_t, t, tau_theta(y)).
- Conditioning (Sec. 3.3, Eq. 3): cross-attention, Q = W_Q phi(z_t) from the denoiser's flattened feature map,
  K = W_K tau_theta(y), V = W_V tau_theta(y) from every token of the caption encoder tau_theta (a Transformer
  trained jointly with the denoiser, Eq. 3's objective); padded tokens are masked out as keys. 10% of the
  captions are replaced by the empty caption, so classifier-free guidance (refimpl.guidance.cfg_eps) works.
- Sampling: DDIM (refimpl.ddim) in latent space, then x = D(z / s).

Captions and the word tokenizer are refimpl.captions'. Timesteps are 0-indexed in code (code t = paper t - 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refimpl import guidance
from refimpl.captions import MAX_LEN, VOCAB, drop_captions, random_captions, tokenize
from refimpl.checkpoint import load_module, weights_digest
from refimpl.core import LineageError
from refimpl.data import HOLDOUT, held_out_digits, training_digits
from refimpl.nets import ResBlock, timestep_embedding
from refimpl.schedules import Schedule, make_schedule
from refimpl.training import build_seeded, fit_config
from refimpl.transformer import CrossAttentionBlock, TransformerStack

CAPTION_DROP = 0.1  # share of empty captions in training (the null condition of classifier-free guidance)


# --8<-- [start:autoencoder]
class Autoencoder(nn.Module):
    """LDM Sec. 3.1 / App. G, the KL-regularised first stage: x (B, 1, 8, 8) -> q(z | x) = N(mean, diag(exp(logvar)))
    over z (B, c, 8/f, 8/f) with f = 2 (one stride-2 convolution), and a decoder back to pixels."""

    def __init__(self, latent_channels: int = 2, width: int = 32):
        super().__init__()
        self.config = {"latent_channels": latent_channels, "width": width}
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),  # 8x8 -> 4x4: f = 2
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * latent_channels, 1))  # mean and log-variance
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2.0, mode="nearest"),  # 4x4 -> 8x8
            nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 1, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E(x): the mean and log-variance of q(z | x) (log-variance clamped to [-30, 20] like the LDM code's
        DiagonalGaussianDistribution, so exp never overflows)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z): pixels in about [-1, 1]."""
        return self.decoder(z)


def sample_latent(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014)."""
    eps = torch.randn(mean.shape, generator=generator).to(mean.device)
    return mean + (0.5 * logvar).exp() * eps


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, in closed form:
    sum over latent dimensions of (mean^2 + exp(logvar) - 1 - logvar) / 2."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, kl_weight: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """L1 reconstruction of a reparameterised sample plus ``kl_weight`` times the KL to N(0, I), both summed over
    an example's pixels / latent dimensions and averaged over the batch (the normalisation of the LDM code's
    LPIPSWithDiscriminator with its perceptual and adversarial terms off)."""
    mean, logvar = model.encode(x)
    recon = model.decode(sample_latent(mean, logvar, generator))
    return (recon - x).abs().flatten(1).sum(1).mean() + kl_weight * kl_to_standard_normal(mean, logvar).mean()


@torch.no_grad()
def latent_scale(model: Autoencoder, images: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Stable Diffusion's latent scale factor: 1 / std of the sampled latents of the training images (the LDM
    code's ``scale_by_std``; SD v1 recorded 0.18215 for its autoencoder), so s * z has unit variance."""
    z = sample_latent(*model.encode(images), generator)
    return float(1.0 / z.flatten().std())
# --8<-- [end:autoencoder]


# --8<-- [start:denoiser]
class LatentDenoiser(nn.Module):
    """eps_theta(z_t, t, tau_theta(y)) on (B, c, 4, 4) latents: conv in, ResBlock (refimpl.nets, time embedding),
    cross-attention block (refimpl.transformer.CrossAttentionBlock), ResBlock, cross-attention block, conv out
    (zero-initialised). The caption encoder tau_theta is a refimpl.transformer.TransformerStack of the same width
    over refimpl.captions' word tokens, trained jointly (LDM Eq. 3); ``forward(z_t, t, tokens)``."""

    def __init__(self, latent_channels: int = 2, width: int = 64, heads: int = 4, time_dim: int = 128,
                 text_depth: int = 2):
        super().__init__()
        self.config = {"latent_channels": latent_channels, "width": width, "heads": heads, "time_dim": time_dim,
                       "text_depth": text_depth}
        self.width = width
        self.text = TransformerStack(len(VOCAB), MAX_LEN, width, text_depth, heads)  # tau_theta
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.res = nn.ModuleList(ResBlock(width, width, time_dim) for _ in range(2))
        self.cross = nn.ModuleList(CrossAttentionBlock(width, heads) for _ in range(2))
        self.norm_out = nn.GroupNorm(8, width)
        self.conv_out = nn.Conv2d(width, latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tau_theta(y) (B, MAX_LEN, width) and the padding mask (True at <pad>)."""
        pad = tokens == 0
        return self.text(tokens, key_padding_mask=pad), pad

    def forward(self, z: torch.Tensor, t, tokens: torch.Tensor) -> torch.Tensor:
        context, pad = self.encode_text(tokens.to(z.device))
        t = torch.as_tensor(t, device=z.device).expand(z.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.width))
        h = self.conv_in(z)
        for res, cross in zip(self.res, self.cross):
            h = cross(res(h, emb), context, pad)
        return self.conv_out(F.silu(self.norm_out(h)))
# --8<-- [end:denoiser]


# --8<-- [start:sample]
def cfg_model(model, tokens: torch.Tensor, guidance_scale: float):
    """Classifier-free guidance on a caption: eps(z_t | empty) + s (eps(z_t | y) - eps(z_t | empty)) as a
    two-argument ``model(z_t, t)`` for the samplers (refimpl.guidance.cfg_model, the empty caption as the null
    condition; s = 1: no guidance)."""
    return guidance.cfg_model(model, tokens, guidance_scale, null=tokenize([""]))


@torch.no_grad()
def sample(autoencoder: Autoencoder, model: LatentDenoiser, texts: list[str] | torch.Tensor, schedule: Schedule,
           scale: float, *,
           guidance_scale: float = 3.0, steps: int = 50, seed: int = 0, device=None,
           disable: bool = True) -> torch.Tensor:
    """One image per caption (``texts``: captions, or their tokens for a vocabulary refimpl.captions.tokenize does
    not know, such as DreamBooth's extended one): z_T ~ N(0, I) (B, c, 4, 4) from ``seed``, DDIM (eta 0, ``steps``
    steps) on eps(z_t | empty) + s (eps(z_t | y) - eps(z_t | empty)) (:func:`cfg_model`; s = 1: no guidance), then
    x = D(z_0 / scale)."""
    from refimpl.ddim import ddim_sample

    if not guidance_scale >= 0:
        raise LineageError(f"guidance scale must be >= 0, got {guidance_scale}")
    device = torch.device(device or "cpu")
    autoencoder, model, schedule = autoencoder.to(device).eval(), model.to(device).eval(), schedule.to(device)
    tokens = (texts if isinstance(texts, torch.Tensor) else tokenize(texts)).to(device)
    shape = (len(texts), model.config["latent_channels"], 4, 4)
    z_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    z_0 = ddim_sample(cfg_model(model, tokens, guidance_scale), z_T, schedule, steps=steps, disable=disable)
    return autoencoder.decode(z_0 / scale)
# --8<-- [end:sample]


# --- training ----------------------------------------------------------------------

#: sizes per preset; a preset changes sizes, never the algorithm (f = 2, c = 2, KL weight 1e-6, T = 1000 linear)
PRESETS = {
    "quick": {"ae_steps": 1000, "ae_width": 16, "steps": 2000, "width": 32, "text_depth": 1, "batch_size": 64,
              "lr": 2e-3},
    "full": {"ae_steps": 20000, "ae_width": 64, "steps": 60000, "width": 128, "text_depth": 4, "batch_size": 256,
             "lr": 2e-4},
}
KL_WEIGHT = 1e-6


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The last refimpl.data.HOLDOUT digits and labels, never seen by either stage (refimpl.data.held_out_digits)."""
    return held_out_digits()


def train_config(preset: str = "quick", *, steps: int | None = None, ae_steps: int | None = None,
                 seed: int = 0) -> dict:
    """Both stages' JSON configs: ``{"autoencoder": ..., "diffusion": ...}``."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    common = {"data": "digits", "held_out": HOLDOUT, "seed": seed, "batch_size": p["batch_size"], "lr": p["lr"]}
    autoencoder = {**common, "model": {"latent_channels": 2, "width": p["ae_width"]}, "kl_weight": KL_WEIGHT,
                   "steps": ae_steps or p["ae_steps"]}
    diffusion = {**common, "model": {"latent_channels": 2, "width": p["width"], "heads": 4, "time_dim": 4 * p["width"],
                                     "text_depth": p["text_depth"]},
                 "schedule": "linear", "T": 1000, "caption_drop": CAPTION_DROP, "steps": steps or p["steps"]}
    return {"autoencoder": autoencoder, "diffusion": diffusion}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Stage 1: the autoencoder (L1 + KL_WEIGHT * KL) on the training digits; then the scale factor
    s = 1 / std(z); stage 2: L_simple on s * z with captions (refimpl.captions') of which config["caption_drop"]
    are emptied. With ``out``, the stages' checkpoints go to out/autoencoder and out/diffusion (each resumable).
    Returns (autoencoder, denoiser, scale, {"autoencoder": history, "diffusion": history})."""
    from refimpl.ddpm import loss_simple

    device = torch.device(device or "cpu")
    images, labels = training_digits()
    ae_config, dm_config = config["autoencoder"], dict(config["diffusion"])
    autoencoder = build_seeded(Autoencoder, ae_config)

    def ae_loss(model, generator):
        index = torch.randint(0, images.shape[0], (ae_config["batch_size"],), generator=generator)
        return autoencoder_loss(model, images[index].to(device), ae_config["kl_weight"], generator)

    ae_out = None if out is None else Path(out) / "autoencoder"
    ae_history = fit_config(autoencoder, ae_loss, ae_config, ae_out, "ldm-autoencoder", device, resume, progress)
    autoencoder.eval().requires_grad_(False)
    scale = latent_scale(autoencoder, images.to(device), torch.Generator().manual_seed(ae_config["seed"]))
    dm_config.update(scale_factor=scale, autoencoder=weights_digest(autoencoder))
    schedule = make_schedule(dm_config["schedule"], dm_config["T"]).to(device)
    model = build_seeded(LatentDenoiser, dm_config)

    def dm_loss(model, generator):
        index = torch.randint(0, images.shape[0], (dm_config["batch_size"],), generator=generator)
        tokens = drop_captions(random_captions(labels[index], generator), dm_config["caption_drop"], generator)
        with torch.no_grad():
            z = scale * sample_latent(*autoencoder.encode(images[index].to(device)), generator)
        return loss_simple(lambda z_t, t: model(z_t, t, tokens), z, schedule, generator)

    dm_out = None if out is None else Path(out) / "diffusion"
    dm_history = fit_config(model, dm_loss, dm_config, dm_out, "ldm", device, resume, progress)
    return autoencoder, model.eval(), scale, {"autoencoder": ae_history, "diffusion": dm_history}
# --8<-- [end:train]


def load(ckpt) -> tuple[Autoencoder, LatentDenoiser, Schedule, float]:
    """Rebuild a run written by :func:`train` (``ckpt``/autoencoder and ``ckpt``/diffusion) on CPU, eval mode:
    (autoencoder, denoiser, schedule, scale factor)."""
    autoencoder, _ = load_module(Path(ckpt) / "autoencoder", expect_model="ldm-autoencoder",
                                 build=lambda data: Autoencoder(**data.config["model"]))
    model, data = load_module(Path(ckpt) / "diffusion", expect_model="ldm",
                              build=lambda data: LatentDenoiser(**data.config["model"]))
    config = data.config
    if config.get("autoencoder") != weights_digest(autoencoder):
        raise LineageError(f"{ckpt}: the diffusion model was trained on another autoencoder than the one stored")
    return autoencoder, model, make_schedule(config["schedule"], config["T"]), float(config["scale_factor"])


# --- the anatomy of Stable Diffusion -----------------------------------------------------

#: Stable Diffusion v1 at 512x512 (CompVis/stable-diffusion model card and configs; see docs/latent/ldm.md)
SD_V1_512 = (("tokens", (1, 77)), ("text embeddings", (1, 77, 768)), ("latents z_T", (1, 4, 64, 64)),
             ("U-Net eps", (1, 4, 64, 64)), ("decoded image", (1, 3, 512, 512)))


class _ShapeTrace:
    """Forward hooks that record the shapes of a pipeline's stages (the first call of each stage only)."""

    def __init__(self):
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.handles = []

    def record(self, name: str, value: torch.Tensor) -> None:
        self.shapes.setdefault(name, tuple(value.shape))

    def hook(self, module: nn.Module, stages: dict) -> None:
        """After each forward of ``module``, record ``stages[name](args, output)`` for every stage name."""
        def record(module, args, output):
            for name, pick in stages.items():
                self.record(name, pick(args, output))
        self.handles.append(module.register_forward_hook(record))

    def remove(self) -> list[tuple[str, tuple[int, ...]]]:
        """Remove the hooks; the recorded shapes in the order of :data:`SD_V1_512`."""
        for handle in self.handles:
            handle.remove()
        order = [name for name, _ in SD_V1_512]
        return sorted(self.shapes.items(), key=lambda item: order.index(item[0]))


def tiny_stable_diffusion(seed: int = 0):
    """diffusers' StableDiffusionPipeline built offline from tiny random-weight components (never from_pretrained):
    a 2-level UNet2DConditionModel with cross-attention (width 32), a 4-level AutoencoderKL (f = 2^3 = 8, 4 latent
    channels, like SD v1's), a 2-layer transformers CLIPTextModel (width 32, 77 positions), SD's DDIM schedule
    (scaled_linear betas 0.00085..0.012). There is no tokenizer: prompts go in as ``prompt_embeds``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=8, sample_size=64)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=1,
                                            eos_token_id=2, pad_token_id=0))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def trace_stable_diffusion(pipe=None, *, size: int = 64, steps: int = 3, guidance_scale: float = 7.5,
                           seed: int = 0) -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """Run a (tiny) StableDiffusionPipeline for one prompt and record, with forward hooks, the shapes of
    tokens -> text embeddings -> latents -> U-Net eps -> decoded image. Under classifier-free guidance the U-Net
    sees the batch twice (empty prompt and prompt); the trace records the first of the two halves' shapes
    as the per-prompt shape. Returns (trace, image (1, 3, size, size) in [0, 1])."""
    pipe = pipe or tiny_stable_diffusion(seed)
    trace = _ShapeTrace()
    trace.hook(pipe.text_encoder, {"text embeddings": lambda args, out: out[0]})
    trace.hook(pipe.unet, {"latents z_T": lambda args, out: args[0][:1], "U-Net eps": lambda args, out: out[0][:1]})
    trace.hook(pipe.vae.decoder, {"decoded image": lambda args, out: out})
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, pipe.text_encoder.config.vocab_size, (1, 77), generator=generator)
    trace.record("tokens", tokens)
    embeddings = pipe.text_encoder(tokens)[0]
    empty = pipe.text_encoder(torch.zeros_like(tokens))[0]
    try:
        image = pipe(prompt_embeds=embeddings, negative_prompt_embeds=empty, height=size, width=size,
                     num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
                     generator=generator).images
    finally:
        shapes = trace.remove()
    return shapes, image


@torch.no_grad()
def trace_ours(autoencoder: Autoencoder, model: LatentDenoiser, schedule: Schedule, scale: float, *,
               caption: str = "the digit three", steps: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """The same trace for our LDM: tokens -> tau_theta(y) -> latents -> eps -> decoded digit."""
    trace = _ShapeTrace()
    trace.hook(model.text, {"text embeddings": lambda args, out: out[:1]})
    trace.hook(model, {"latents z_T": lambda args, out: args[0][:1], "U-Net eps": lambda args, out: out[:1]})
    trace.hook(autoencoder.decoder, {"decoded image": lambda args, out: out})
    trace.record("tokens", tokenize([caption]))
    try:
        sample(autoencoder, model, [caption], schedule, scale, steps=steps)
    finally:
        shapes = trace.remove()
    return shapes


def anatomy(autoencoder: Autoencoder | None = None, model: LatentDenoiser | None = None,
            schedule: Schedule | None = None, scale: float = 1.0) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """The shape traces, as data: ``sd_v1_512`` (Stable Diffusion v1's documented shapes), ``tiny_sd`` (diffusers'
    pipeline with tiny components, traced), ``ours`` (our LDM, traced; random weights unless a model is given)."""
    if model is None:
        config = train_config("quick")
        autoencoder, model = build_seeded(Autoencoder, config["autoencoder"]), build_seeded(LatentDenoiser, config["diffusion"])
        schedule = make_schedule("linear", 1000)
    return {"sd_v1_512": list(SD_V1_512), "tiny_sd": trace_stable_diffusion()[0],
            "ours": trace_ours(autoencoder, model.eval(), schedule, scale)}
