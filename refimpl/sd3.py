"""Stable Diffusion 3: Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
(ICML 2024; arXiv 2403.03206).

Two changes on top of latent diffusion with a DiT (refimpl.dit), each small enough to write out here:

1. The training objective is rectified flow (refimpl.flow: x_t = (1 - t) x + t eps, target eps - x) with t drawn
   from a logit-normal distribution instead of uniformly: logit(t) ~ N(m, s^2) (:func:`sample_logit_normal`,
   density :func:`logit_normal_density`). On the straight path the log signal-to-noise ratio is
   lambda = log((1 - t)^2 / t^2) = -2 logit(t), so the logit-normal is exactly a Gaussian N(-2m, 4 s^2) over
   log-SNR (:func:`log_snr`): training concentrates on the middle noise levels and spends little on the two
   ends, where the target is nearly the data or nearly the noise. The timestep shift of high-resolution sampling,
   t -> a t / (1 + (a - 1) t) (refimpl.flow.time_grid), is the translation logit(t) -> logit(t) + log a.
2. The network is the MM-DiT: text tokens and image tokens are two streams with their own weights (their own
   adaLN-Zero modulation, projections and MLPs, :class:`JointBlock`), joined only inside attention, which runs
   over the concatenation of both sequences; the conditioning vector (timestep plus the pooled text embedding)
   modulates both. In the last block the text stream only provides keys and values (``context_pre_only``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.dit import mlp, modulate
from refimpl.flow import interpolate, target
from refimpl.transformer import attention


# --8<-- [start:logit_normal]
def sample_logit_normal(n: int, mean: float = 0.0, std: float = 1.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """n timesteps t = sigmoid(u), u ~ N(mean, std^2): SD3's logit-normal sampling (diffusers'
    compute_density_for_timestep_sampling with weighting_scheme="logit_normal" draws the same way)."""
    return torch.sigmoid(torch.normal(mean, std, size=(n,), generator=generator))


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """pi(t; m, s) = exp(-(logit(t) - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t)) for t in (0, 1)."""
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def log_snr(t: torch.Tensor) -> torch.Tensor:
    """lambda = log((1 - t)^2 / t^2) of the straight path x_t = (1 - t) x + t eps: -2 logit(t)."""
    return 2 * (torch.log1p(-t) - torch.log(t))


def loss_logit_normal(model, x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None,
                      mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """SD3's objective: rectified flow's least squares E || v_theta(x_t, t) - (eps - x) ||^2 (refimpl.flow), with
    t ~ logit-normal(mean, std) in place of U(0, 1)."""
    t = sample_logit_normal(x.shape[0], mean, std, generator).to(device=x.device, dtype=x.dtype)
    return F.mse_loss(model(interpolate(x, eps, t), t), target(x, eps))
# --8<-- [end:logit_normal]


# --8<-- [start:joint_block]
class JointBlock(nn.Module):
    """One MM-DiT block: an image stream and a text stream, each a DiT block (refimpl.dit.DiTBlock) with its own
    weights, whose attentions are one attention over the concatenated tokens [image; text]. ``y`` (B, width), the
    timestep embedding plus the pooled text embedding, modulates both streams (adaLN-Zero). With
    ``context_pre_only`` (the last block) the text stream is only normalised and modulated (shift and scale, no
    gate) and projected to keys and values: nothing of it comes out."""

    def __init__(self, width: int, heads: int, context_pre_only: bool = False):
        super().__init__()
        self.heads, self.context_pre_only = heads, context_pre_only
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)  # every norm of the block: no affine
        self.ada_x = nn.Linear(width, 6 * width)
        self.ada_c = nn.Linear(width, (2 if context_pre_only else 6) * width)
        self.qkv_x, self.qkv_c = nn.Linear(width, 3 * width), nn.Linear(width, 3 * width)
        self.out_x, self.mlp_x = nn.Linear(width, width), mlp(width, 4 * width)
        if not context_pre_only:
            self.out_c, self.mlp_c = nn.Linear(width, width), mlp(width, 4 * width)

    def _heads(self, t: torch.Tensor) -> list[torch.Tensor]:  # (B, L, 3 width) -> q, k, v of (B, heads, L, d_k)
        b, n, _ = t.shape
        return list(t.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4))

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada_x(F.silu(y)).chunk(6, dim=1)
        mod_c = self.ada_c(F.silu(y)).chunk(2 if self.context_pre_only else 6, dim=1)
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(
            self._heads(self.qkv_x(modulate(self.norm(x), shift1, scale1))),
            self._heads(self.qkv_c(modulate(self.norm(c), mod_c[0], mod_c[1])))))
        joint = attention(q, k, v)[0].transpose(1, 2).flatten(2)  # (B, L_x + L_c, width): every token sees all
        attn_x, attn_c = joint[:, :x.shape[1]], joint[:, x.shape[1]:]
        x = x + gate1[:, None] * self.out_x(attn_x)
        x = x + gate2[:, None] * self.mlp_x(modulate(self.norm(x), shift2, scale2))
        if self.context_pre_only:
            return x, None
        _, _, gate1_c, shift2_c, scale2_c, gate2_c = mod_c
        c = c + gate1_c[:, None] * self.out_c(attn_c)
        return x, c + gate2_c[:, None] * self.mlp_c(modulate(self.norm(c), shift2_c, scale2_c))
# --8<-- [end:joint_block]


def diffusers_state_dict(block: JointBlock) -> dict[str, torch.Tensor]:
    """``block``'s weights under the names of diffusers' JointTransformerBlock. Two renamings are not just names:
    our fused Q/K/V projection is split into to_q/to_k/to_v (add_q_proj/add_k_proj/add_v_proj for the text), and in
    a ``context_pre_only`` block diffusers' AdaLayerNormContinuous splits its projection as (scale, shift) where
    SD3's own code (and ours) splits it as (shift, scale): the two halves swap (diffusers' SD3 converter does the
    same, its swap_scale_shift)."""
    width = block.out_x.in_features
    sd = {"norm1.linear.weight": block.ada_x.weight, "norm1.linear.bias": block.ada_x.bias,
          "attn.to_out.0.weight": block.out_x.weight, "attn.to_out.0.bias": block.out_x.bias,
          "ff.net.0.proj.weight": block.mlp_x[0].weight, "ff.net.0.proj.bias": block.mlp_x[0].bias,
          "ff.net.2.weight": block.mlp_x[2].weight, "ff.net.2.bias": block.mlp_x[2].bias}
    for names, fused in ((("to_q", "to_k", "to_v"), block.qkv_x), (("add_q_proj", "add_k_proj", "add_v_proj"),
                                                                    block.qkv_c)):
        for name, w, b in zip(names, fused.weight.split(width), fused.bias.split(width)):
            sd[f"attn.{name}.weight"], sd[f"attn.{name}.bias"] = w, b
    if block.context_pre_only:
        shift_w, scale_w = block.ada_c.weight.chunk(2)
        shift_b, scale_b = block.ada_c.bias.chunk(2)
        sd["norm1_context.linear.weight"] = torch.cat([scale_w, shift_w])
        sd["norm1_context.linear.bias"] = torch.cat([scale_b, shift_b])
    else:
        sd.update({"norm1_context.linear.weight": block.ada_c.weight, "norm1_context.linear.bias": block.ada_c.bias,
                   "attn.to_add_out.weight": block.out_c.weight, "attn.to_add_out.bias": block.out_c.bias,
                   "ff_context.net.0.proj.weight": block.mlp_c[0].weight,
                   "ff_context.net.0.proj.bias": block.mlp_c[0].bias,
                   "ff_context.net.2.weight": block.mlp_c[2].weight, "ff_context.net.2.bias": block.mlp_c[2].bias})
    return {name: value.detach().clone() for name, value in sd.items()}


@torch.no_grad()
def trace_sd3_transformer(width_per_head: int = 8, heads: int = 2, layers: int = 2, size: int = 16,
                          text_tokens: int = 12, seed: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """Run a tiny, randomly initialised diffusers SD3Transformer2DModel once and record, with forward hooks, the
    shapes along the way: latents -> image tokens, text embeddings -> text tokens, timestep + pooled text ->
    conditioning vector, the joint sequence of each block's attention, the output (a velocity shaped like the
    latents). SD3 latents have 16 channels; the text embeddings are CLIP's and T5's, concatenated."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=size, patch_size=2, in_channels=16, num_layers=layers,
                                  attention_head_dim=width_per_head, num_attention_heads=heads,
                                  joint_attention_dim=32, caption_projection_dim=heads * width_per_head,
                                  pooled_projection_dim=24, out_channels=16, pos_embed_max_size=size).eval()
    trace: list[tuple[str, tuple[int, ...]]] = []
    hooks = [model.pos_embed.register_forward_hook(lambda m, a, out: trace.append(("image tokens", tuple(out.shape)))),
             model.context_embedder.register_forward_hook(
                 lambda m, a, out: trace.append(("text tokens", tuple(out.shape)))),
             model.time_text_embed.register_forward_hook(
                 lambda m, a, out: trace.append(("conditioning vector (timestep + pooled text)", tuple(out.shape))))]
    for i, block in enumerate(model.transformer_blocks):
        def joint(m, args, kwargs, out, i=i):
            x, c = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            trace.append((f"joint attention sequence, block {i + 1}", (x.shape[0], x.shape[1] + c.shape[1], x.shape[2])))
        hooks.append(block.register_forward_hook(joint, with_kwargs=True))
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, size, size, generator=g)
    text = torch.randn(1, text_tokens, 32, generator=g)
    pooled = torch.randn(1, 24, generator=g)
    trace.append(("latents", tuple(latents.shape)))
    trace.append(("text embeddings (CLIP and T5, concatenated)", tuple(text.shape)))
    trace.append(("pooled text embedding", tuple(pooled.shape)))
    try:
        out = model(latents, encoder_hidden_states=text, pooled_projections=pooled,
                    timestep=torch.tensor([500.0])).sample
    finally:
        for hook in hooks:
            hook.remove()
    trace.append(("output: velocity v", tuple(out.shape)))
    return trace
