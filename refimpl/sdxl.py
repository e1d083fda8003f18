"""SDXL: Podell et al., "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis" (ICLR 2024;
arXiv 2307.01952).

SDXL keeps latent diffusion (refimpl.ldm: a KL autoencoder with f = 8 and 4 latent channels, a U-Net with
cross-attention, 1000 discrete DDPM steps, eps prediction) and changes what goes into and around the U-Net:

1. Architecture and scale (Sec. 2.1): the U-Net drops the transformer blocks at the highest feature level and the
   lowest level altogether, and puts 2 and 10 transformer blocks per attention layer at the two lower levels
   (Stable Diffusion 1.x: one everywhere). The text context is two encoders' penultimate hidden states concatenated
   along the feature axis, CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280): 2048 (:func:`text_conditioning`); the
   pooled bigG embedding conditions the model too. :data:`ORIGINAL_UNETS` holds the official configs,
   :data:`UNET_CONFIGS` the same U-Nets as diffusers configs, and :func:`parameter_counts` counts them without
   allocating a weight (the meta device), split into transformer blocks and the rest.
2. Micro-conditioning (Sec. 2.2) and multi-aspect training (Sec. 2.3): six integers, the original image size
   c_size = (h, w), the crop c_crop = (c_top, c_left) and the target (bucket) size (h_tgt, w_tgt)
   (:func:`micro_conditioning_ids`), each embedded with Fourier (sinusoidal) features of width 256
   (:func:`refimpl.embeddings.fourier_features`), concatenated with the pooled text embedding and projected by a two-layer MLP; the
   result is added to the timestep embedding (:class:`AddedConditioning`). On the data side: a random crop that
   reports where it cut (:func:`random_crop`), and buckets of about 1024^2 pixels (:data:`BUCKETS`,
   :func:`nearest_bucket`, :func:`bucket_example`).
3. The refiner (Sec. 2.5): a second latent diffusion model for the last, low-noise steps; conditioned on one text
   encoder (bigG) and on (c_size, c_crop, aesthetic score) instead of the target size (:func:`refiner_ids`).
   diffusers' base pipeline stops at ``denoising_end`` and the refiner starts at ``denoising_start``, two halves
   of one timestep schedule (:func:`split_timesteps`).

:func:`trace_sdxl_unet` records the shapes through a tiny diffusers UNet2DConditionModel with SDXL's added
conditioning. diffusers is imported only inside the functions that build its models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.embeddings import fourier_features

#: the two text encoders' hidden widths, CLIP ViT-L/14 then OpenCLIP ViT-bigG/14, and bigG's pooled width
TEXT_WIDTHS = (768, 1280)
POOLED_WIDTH = 1280
FOURIER_DIM = 256   # Fourier features per conditioning scalar (ConcatTimestepEmbedderND outdim in the configs)
N_IDS = 6           # original (h, w), crop (top, left), target (h, w)
N_REFINER_IDS = 5   # original (h, w), crop (top, left), aesthetic score
T_TRAIN = 1000      # discrete training timesteps (the configs' num_idx)

#: the official U-Net configs, as their YAML files state them (only the keys that shape the network):
#: Stable Diffusion v1 (CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml, unet_config) and
#: SDXL base and refiner (Stability-AI/generative-models configs/inference/sd_xl_base.yaml and
#: sd_xl_refiner.yaml, network_config)
ORIGINAL_UNETS: dict[str, dict] = {
    "sd15": {"in_channels": 4, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
             "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8, "transformer_depth": 1,
             "context_dim": 768},
    "sdxl-base": {"adm_in_channels": 2816, "num_classes": "sequential", "in_channels": 4, "out_channels": 4,
                  "model_channels": 320, "attention_resolutions": [4, 2], "num_res_blocks": 2,
                  "channel_mult": [1, 2, 4], "num_head_channels": 64, "use_linear_in_transformer": True,
                  "transformer_depth": [1, 2, 10], "context_dim": 2048},
    "sdxl-refiner": {"adm_in_channels": 2560, "num_classes": "sequential", "in_channels": 4, "out_channels": 4,
                     "model_channels": 384, "attention_resolutions": [4, 2], "num_res_blocks": 2,
                     "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "use_linear_in_transformer": True,
                     "transformer_depth": 4, "context_dim": [1280, 1280, 1280, 1280]},
}

#: the same three U-Nets as diffusers UNet2DConditionModel configs (the unet/config.json of the released
#: checkpoints; diffusers' ``attention_head_dim`` is the number of heads, a naming slip it keeps for old configs)
UNET_CONFIGS: dict[str, dict] = {
    "sd15": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": (320, 640, 1280, 1280),
             "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
             "cross_attention_dim": 768, "attention_head_dim": 8},
    "sdxl-base": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                  "block_out_channels": (320, 640, 1280),
                  "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048,
                  "attention_head_dim": (5, 10, 20), "use_linear_projection": True,
                  "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                  "projection_class_embeddings_input_dim": 2816},
    "sdxl-refiner": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                     "block_out_channels": (384, 768, 1536, 1536),
                     "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "DownBlock2D"),
                     "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     "transformer_layers_per_block": 4, "cross_attention_dim": 1280,
                     "attention_head_dim": (6, 12, 24, 24), "use_linear_projection": True,
                     "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                     "projection_class_embeddings_input_dim": 2560},
}
NAMES = {"sd15": "SD 1.5", "sdxl-base": "SDXL base", "sdxl-refiner": "SDXL refiner"}

#: multi-aspect buckets as (height, width): the resolutions the official demo offers for SDXL base
#: (generative-models scripts/demo/sampling.py, SD_XL_BASE_RATIOS), every side a multiple of 64 and about
#: 1024^2 pixels
BUCKETS: tuple[tuple[int, int], ...] = (
    (1408, 704), (1344, 704), (1344, 768), (1280, 768), (1216, 832), (1152, 832), (1152, 896), (1088, 896),
    (1088, 960), (1024, 960), (1024, 1024), (960, 1024), (960, 1088), (896, 1088), (896, 1152), (832, 1152),
    (832, 1216), (768, 1280), (768, 1344), (704, 1344), (704, 1408), (704, 1472), (640, 1536), (640, 1600),
    (576, 1664), (576, 1728))


# --8<-- [start:text]
def text_conditioning(hidden_l: torch.Tensor, hidden_g: torch.Tensor,
                      pooled_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 2.1: the cross-attention context is the penultimate hidden states of CLIP ViT-L (B, 77, 768) and of
    OpenCLIP ViT-bigG (B, 77, 1280) concatenated along the feature axis, (B, 77, 2048); the vector condition
    starts from bigG's pooled (projected) embedding (B, 1280). Returns (context, pooled)."""
    if hidden_l.shape[:-1] != hidden_g.shape[:-1]:
        raise LineageError(f"the two encoders' token grids differ: {tuple(hidden_l.shape)} vs {tuple(hidden_g.shape)}")
    return torch.cat([hidden_l, hidden_g], dim=-1), pooled_g
# --8<-- [end:text]


# --8<-- [start:micro]
def micro_conditioning_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
                           target_size: tuple[int, int]) -> torch.Tensor:
    """Sec. 2.2-2.3: c_size = (h_original, w_original), c_crop = (c_top, c_left), c_ar = (h_tgt, w_tgt), in this
    order (height before width, top before left): a float tensor of the six numbers, shape (6,)."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def refiner_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
                aesthetic_score: float) -> torch.Tensor:
    """The refiner's five numbers: c_size, c_crop and an aesthetic score in place of the target size (the refiner
    config's third embedder; 6.0 for the prompt and 2.5 for the negative prompt in the official demo)."""
    return torch.tensor([*original_size, *crop_top_left, aesthetic_score], dtype=torch.float32)


class AddedConditioning(nn.Module):
    """SDXL's vector condition: [pooled text; Fourier(id_1); ...; Fourier(id_n)] (B, pooled + n 256) -> a two-layer
    MLP (Linear, SiLU, Linear) -> (B, emb_dim), which the U-Net adds to its timestep embedding. Base:
    1280 + 6 x 256 = 2816 -> 1280; refiner: 1280 + 5 x 256 = 2560 -> 1536 (4 x model_channels in both)."""

    def __init__(self, pooled_dim: int = POOLED_WIDTH, n_ids: int = N_IDS, emb_dim: int = 1280,
                 feature_dim: int = FOURIER_DIM):
        super().__init__()
        self.feature_dim = feature_dim
        self.linear_1 = nn.Linear(pooled_dim + n_ids * feature_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def vector(self, pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, pooled_dim), (B, n_ids) -> the concatenated input of the MLP, (B, pooled_dim + n_ids feature_dim)."""
        features = fourier_features(ids.reshape(-1), self.feature_dim).reshape(ids.shape[0], -1)
        return torch.cat([pooled, features.to(pooled.dtype)], dim=1)

    def forward(self, pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(self.vector(pooled, ids))))
# --8<-- [end:micro]


# --8<-- [start:data]
def random_crop(image: torch.Tensor, size: tuple[int, int],
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """A crop of ``size`` = (h, w) from ``image`` (..., H, W) at a uniformly drawn top-left corner; returns the
    crop and the corner (c_top, c_left) it used, which Sec. 2.2 feeds to the model as c_crop."""
    (height, width), (h, w) = image.shape[-2:], size
    if not (0 < h <= height and 0 < w <= width):
        raise LineageError(f"cannot crop {h}x{w} out of a {height}x{width} image")
    top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
    return image[..., top:top + h, left:left + w], (top, left)


def nearest_bucket(height: int, width: int,
                   buckets: tuple[tuple[int, int], ...] = BUCKETS) -> tuple[int, int]:
    """Sec. 2.3: the (h, w) bucket whose aspect ratio is closest to the image's, measured as |log(h/w) -
    log(h_b/w_b)| (a portrait and a landscape image of the same shape are equally far from the square bucket;
    the paper does not say how images are assigned)."""
    if height <= 0 or width <= 0:
        raise LineageError(f"image size must be positive, got {height}x{width}")
    return min(buckets, key=lambda b: abs(math.log(height / width) - math.log(b[0] / b[1])))


def cover_size(height: int, width: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """The size to resize an image to, keeping its aspect ratio, so that it just covers ``bucket``: scale
    s = max(h_b / h, w_b / w), (round(h s), round(w s)), never below the bucket."""
    scale = max(bucket[0] / height, bucket[1] / width)
    return max(bucket[0], round(height * scale)), max(bucket[1], round(width * scale))


def bucket_example(image: torch.Tensor, generator: torch.Generator | None = None,
                   buckets: tuple[tuple[int, int], ...] = BUCKETS) -> tuple[torch.Tensor, torch.Tensor]:
    """One training example of multi-aspect training (Sec. 2.3) with size and crop conditioning (Sec. 2.2):
    ``image`` (C, H, W) goes to its nearest bucket, is resized to cover it and randomly cropped to it. Returns the
    crop (C, h_b, w_b) and its six ids: the original (H, W) before any resizing, the crop corner in the resized
    image, and the bucket as the target size (diffusers' SDXL training script records them the same way)."""
    height, width = image.shape[-2:]
    bucket = nearest_bucket(height, width, buckets)
    resized = F.interpolate(image[None].float(), size=cover_size(height, width, bucket), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    crop, corner = random_crop(resized, bucket, generator)
    return crop, micro_conditioning_ids((height, width), corner, bucket)
# --8<-- [end:data]


# --8<-- [start:split]
def leading_timesteps(steps: int, num_train_timesteps: int = T_TRAIN, offset: int = 1) -> list[int]:
    """The sampling timesteps of the released SDXL scheduler config (diffusers ``timestep_spacing="leading"``,
    ``steps_offset=1``): (T // S) i + offset for i = S - 1, ..., 0, descending."""
    if not 0 < steps <= num_train_timesteps:
        raise LineageError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    return [(num_train_timesteps // steps) * i + offset for i in reversed(range(steps))]


def split_timesteps(timesteps: list[int], split: float,
                    num_train_timesteps: int = T_TRAIN) -> tuple[list[int], list[int]]:
    """The base/refiner hand-off: one descending schedule cut at the discrete timestep
    t_c = round(T (1 - split)); the base runs every t >= t_c (diffusers' ``denoising_end=split``), the refiner
    every t < t_c (``denoising_start=split``) from the base's latents, without adding noise again. ``split`` is
    the fraction of the noise range (of T), not of the steps, that the base covers."""
    if not 0 < split < 1:
        raise LineageError(f"the split must be strictly between 0 and 1, got {split}")
    cutoff = int(round(num_train_timesteps - split * num_train_timesteps))
    return [t for t in timesteps if t >= cutoff], [t for t in timesteps if t < cutoff]
# --8<-- [end:split]


def parameter_counts(config: dict) -> dict:
    """Count the parameters of a diffusers UNet2DConditionModel built from ``config`` on the meta device (shapes
    only, nothing allocated). Returns ``total``, ``parts`` (every parameter in exactly one: ``attention`` = the
    transformer blocks' norms, projections and self-/cross-attention except ``text_kv``, the cross-attention keys
    and values computed from the text context; ``feed_forward``; ``resnet``; ``other`` = input/output
    convolutions, time and added embeddings, down/upsamplers), ``transformer_blocks`` (BasicTransformerBlocks)
    and ``transformer_by_level``: transformer parameters by feature level i (feature maps 2^-i of the latent; the
    middle block counts at the lowest level)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    levels = len(unet.config.block_out_channels)
    parts = dict.fromkeys(("attention", "text_kv", "feed_forward", "resnet", "other"), 0)
    by_level = dict.fromkeys(range(levels), 0)
    for name, p in unet.named_parameters():
        if ".attentions." in name:
            part = ("text_kv" if ".attn2.to_k." in name or ".attn2.to_v." in name
                    else "feed_forward" if ".ff." in name else "attention")
            stage, index = name.split(".")[:2]
            level = levels - 1 if stage == "mid_block" else int(index) if stage == "down_blocks" \
                else levels - 1 - int(index)
            by_level[level] += p.numel()
        else:
            part = "resnet" if ".resnets." in name else "other"
        parts[part] += p.numel()
    blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules())
    return {"total": sum(parts.values()), "parts": parts, "transformer_blocks": blocks,
            "transformer_by_level": by_level}


#: a tiny UNet2DConditionModel laid out like SDXL base: no attention at the first level, two levels with
#: transformer blocks, a 2-encoder text context (8 + 16 = 24 wide) and the added conditioning (16 pooled + 6 x 8)
TINY = {"pooled": 16, "text_widths": (8, 16), "feature_dim": 8, "latent_size": 16, "text_tokens": 7}
TINY_CONFIG = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
               "block_out_channels": (32, 64, 64), "norm_num_groups": 8,
               "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               "transformer_layers_per_block": (1, 1, 2), "attention_head_dim": (2, 4, 4),
               "cross_attention_dim": 24, "use_linear_projection": True, "addition_embed_type": "text_time",
               "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 16 + N_IDS * 8}


def tiny_unet(seed: int = 0):
    """:data:`TINY_CONFIG` as a randomly initialised diffusers UNet2DConditionModel (seeded), in eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_CONFIG).eval()


@torch.no_grad()
def trace_sdxl_unet(seed: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """Run :func:`tiny_unet` once and record, with forward hooks, the shapes along the way: latents, the two text
    encoders' states and their concatenation, the pooled embedding and the six ids, the vector they make, the
    timestep embedding and the added embedding (same shape: they are summed), each level's feature maps down and
    up, the middle block, and the output (eps, shaped like the latents)."""
    unet = tiny_unet(seed)
    trace: list[tuple[str, tuple[int, ...]]] = []

    def record(name):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
            trace.append((name, tuple(out.shape)))
        return hook

    hooks = [unet.time_embedding.register_forward_hook(record("timestep embedding")),
             unet.add_embedding.register_forward_pre_hook(
                 lambda m, args: trace.append(("[pooled text; Fourier features of the 6 ids]", tuple(args[0].shape)))),
             unet.add_embedding.register_forward_hook(record("added embedding (summed with the timestep's)"))]
    levels = len(unet.down_blocks)

    def last_layer(block):  # the block's last layer before its down/upsampler: the features at the block's level
        return block.attentions[-1] if hasattr(block, "attentions") else block.resnets[-1]

    for i, block in enumerate(unet.down_blocks):
        kind = "transformer" if hasattr(block, "attentions") else "ResNet only"
        hooks.append(last_layer(block).register_forward_hook(record(f"down, level {i + 1} ({kind})")))
    hooks.append(unet.mid_block.register_forward_hook(record("middle block (transformer)")))
    for i, block in enumerate(unet.up_blocks):
        kind = "transformer" if hasattr(block, "attentions") else "ResNet only"
        hooks.append(last_layer(block).register_forward_hook(record(f"up, level {levels - i} ({kind})")))
    g = torch.Generator().manual_seed(seed)
    size, tokens = TINY["latent_size"], TINY["text_tokens"]
    latents = torch.randn(1, 4, size, size, generator=g)
    hidden_l, hidden_g = (torch.randn(1, tokens, w, generator=g) for w in TINY["text_widths"])
    context, pooled = text_conditioning(hidden_l, hidden_g, torch.randn(1, TINY["pooled"], generator=g))
    ids = micro_conditioning_ids((size * 8, size * 8), (0, 0), (size * 8, size * 8))[None]
    trace += [("latents", tuple(latents.shape)), ("text encoder 1 states", tuple(hidden_l.shape)),
              ("text encoder 2 states", tuple(hidden_g.shape)), ("text context (concatenated)", tuple(context.shape)),
              ("pooled text embedding", tuple(pooled.shape)), ("micro-conditioning ids", tuple(ids.shape))]
    try:
        out = unet(latents, torch.tensor([500]), encoder_hidden_states=context,
                   added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    finally:
        for hook in hooks:
            hook.remove()
    trace.append(("output: eps", tuple(out.shape)))
    return trace
