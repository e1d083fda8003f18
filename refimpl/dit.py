"""DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023; arXiv 2212.09748).

The U-Net of DDPM, ADM and LDM replaced by a plain transformer over patches. An I x I x C input (in
the paper the 32 x 32 x 4 latent of Stable Diffusion's autoencoder; here an 8 x 8 digit) is cut into p x p
patches, each linearly embedded to width d (:func:`patchify` is the same map written out), giving
T = (I / p)^2 tokens, plus frozen 2-D sine-cosine position embeddings (:func:`position_embedding`). N DiT blocks
follow, then a final adaptive layer norm and a linear layer that decodes every token back into its p x p x C
patch (:func:`unpatchify`). Halving p quadruples T and the compute while adding almost no parameters.

Conditioning is adaLN-Zero: the timestep and class embeddings are summed into one vector c,
and from c every block regresses the shift and scale of its two layer norms and a gate on each of its two
residual branches; the gates' regression is zero-initialised, so every block starts as the identity and the
untrained network outputs exactly zero.

Training is class-conditional DDPM (linear betas, T = 1000) with labels dropped for classifier-free guidance
(refimpl.cfg.loss_cfg; DiT drops labels with probability 0.1). The paper's networks also learn the reverse
variance with improved DDPM's L_hybrid; ours predict eps only (fixed variance, DDIM sampling).

Compute is counted as the paper does (:func:`forward_gflops`): multiply-accumulates of one forward pass, so
DiT-XL/2 on 256 x 256 images (32 x 32 x 4 latents) is 118.6 Gflops.

Code timesteps are 0-indexed like diffusers (refimpl.ddpm): code ``t`` is the paper's ``t + 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.core import LineageError
from refimpl.embeddings import fourier_features
from refimpl.nets import _batch_t, _Labels
from refimpl.transformer import MultiHeadAttention

CLASSES = 10        # digits 0..9; the null label (refimpl.nets.null_label) is 10
P_UNCOND = 0.1      # DiT's label dropout (its class_dropout_prob), for classifier-free guidance
FREQ_DIM = 256      # width of the sinusoidal timestep features fed to the timestep MLP (DiT's code)

#: the paper's model family (its official code): name -> (depth N, width d, heads), with patch sizes p in {2, 4, 8}
PAPER_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

#: the miniature family trained on 8 x 8 digits: name -> (depth, width, heads); every size with patch 4 and 2
SIZES = {"S": (2, 32, 2), "B": (4, 64, 4)}
PATCHES = (4, 2)


# --8<-- [start:patchify]
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p) (W/p), p p C): the patches in row-major order, each flattened as (row, column,
    channel) within the patch (the layout DiT's decoder writes and :func:`unpatchify` reads)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise LineageError(f"patch size {p} does not divide the {h}x{w} input")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, T, p p C) -> (B, C, sqrt(T) p, sqrt(T) p): the inverse of :func:`patchify` on a square grid."""
    b, t, _ = tokens.shape
    side = math.isqrt(t)
    x = tokens.reshape(b, side, side, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, side * p, side * p)
# --8<-- [end:patchify]


def position_embedding(width: int, side: int) -> torch.Tensor:
    """Frozen 2-D sine-cosine position embeddings of a side x side grid of tokens in row-major order,
    (side^2, width): the first half of the channels encodes a token's column and the second half its row, each as
    [sin(pos w_i), cos(pos w_i)] with w_i = 10000^(-i / (width / 4)) (MAE's layout, which DiT uses)."""
    if width % 4:
        raise LineageError(f"the width must be a multiple of 4 for 2-D sine-cosine positions, got {width}")
    quarter = width // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        args = pos.reshape(-1, 1).double() * freqs
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, width) shift and scale applied to every token of (B, T, width)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def mlp(width: int, hidden: int) -> nn.Sequential:
    """The transformer MLP of DiT (and MM-DiT): Linear, tanh-approximated GELU, Linear."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


# --8<-- [start:block]
class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero: from c, six vectors (shift, scale, gate) x (attention,
    MLP); layer norms without their own affine parameters; each residual branch multiplied by its gate, whose
    regression starts at zero, so the block starts as the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.attn = MultiHeadAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.mlp = mlp(width, hidden)
        self.ada = nn.Linear(width, 6 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
# --8<-- [end:block]


class DiT(nn.Module):
    """The class-conditional diffusion transformer: ``model(x_t, t, y=labels) -> eps`` for (B, C, I, I) inputs.

    ``freq_shift`` and ``norm_eps`` are the two places where diffusers' DiTTransformer2DModel differs from DiT's
    code (tests/test_dit.py): the timestep frequencies (:func:`refimpl.embeddings.fourier_features`) and the
    epsilon of the second layer norm of every block (diffusers' ``norm_eps``, 1e-5 by default; DiT's is 1e-6).
    Labels ``y`` are 0..9 or the null label 10; ``y=None`` means the null label."""

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 1, width: int = 64,
                 depth: int = 3, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = CLASSES,
                 out_channels: int | None = None, freq_shift: int = 0, norm_eps: float = 1e-6):
        super().__init__()
        if input_size % patch_size:
            raise LineageError(f"patch size {patch_size} does not divide the input size {input_size}")
        out_channels = in_channels if out_channels is None else out_channels
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels, width=width,
                           depth=depth, heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
                           out_channels=out_channels, freq_shift=freq_shift, norm_eps=norm_eps)
        self.patch_size, self.out_channels, self.freq_shift = patch_size, out_channels, freq_shift
        self.embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)  # = a Linear on patchify(x)
        self.register_buffer("pos", position_embedding(width, input_size // patch_size), persistent=False)
        self.time = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.labels = _Labels(num_classes, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, norm_eps) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, patch_size * patch_size * out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears (the patch embedding as the linear it is) with zero biases,
        N(0, 0.02) label table and timestep MLP, and zeros for every adaLN regression and the output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.embed.weight.view(self.embed.weight.shape[0], -1))
        nn.init.zeros_(self.embed.bias)
        nn.init.normal_(self.labels.table.weight, std=0.02)
        for layer in (self.time[0], self.time[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [block.ada for block in self.blocks] + [self.ada_out, self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """c = timestep embedding + label embedding, (B, width)."""
        emb = self.time(fourier_features(t, FREQ_DIM, self.freq_shift))
        y = torch.full_like(t, self.labels.num_classes, dtype=torch.long) if y is None else y
        return self.labels(emb, y)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(_batch_t(t, x), y)
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return unpatchify(h, self.patch_size, self.out_channels)


def diffusers_state_dict(model: DiT) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names of diffusers' DiTTransformer2DModel (``load_state_dict`` of a model built
    with the same sizes, ``num_embeds_ada_norm=num_classes``, ``norm_eps=model``'s, and so a DiT trained here
    runs in a DiTPipeline). diffusers keeps a timestep-and-label embedder in every block (its output layer uses
    block 0's); DiT has one, copied into each."""
    sd = {"pos_embed.proj.weight": model.embed.weight, "pos_embed.proj.bias": model.embed.bias,
          "proj_out_1.weight": model.ada_out.weight, "proj_out_1.bias": model.ada_out.bias,
          "proj_out_2.weight": model.out.weight, "proj_out_2.bias": model.out.bias}
    shared = {"timestep_embedder.linear_1": model.time[0], "timestep_embedder.linear_2": model.time[2]}
    for i, block in enumerate(model.blocks):
        layers = {**{f"norm1.emb.{name}": layer for name, layer in shared.items()}, "norm1.linear": block.ada,
                  "attn1.to_q": block.attn.q, "attn1.to_k": block.attn.k, "attn1.to_v": block.attn.v,
                  "attn1.to_out.0": block.attn.out, "ff.net.0.proj": block.mlp[0], "ff.net.2": block.mlp[2]}
        for name, layer in layers.items():
            sd[f"transformer_blocks.{i}.{name}.weight"] = layer.weight
            sd[f"transformer_blocks.{i}.{name}.bias"] = layer.bias
        sd[f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight"] = model.labels.table.weight
    return {name: value.detach().clone() for name, value in sd.items()}


# --8<-- [start:gflops]
def forward_gflops(config: dict) -> float:
    """Gflops of one forward pass of one image, counted as the paper counts them: multiply-accumulates of the
    matrix products (softmax, norms and activations left out). Per block: Q, K, V and output projections
    4 T d^2, attention scores and their weighted sum 2 T^2 d, MLP 2 r T d^2, adaLN regression 6 d^2; plus the
    patch embedding, the timestep MLP and the output layer."""
    d, n, p, c = config["width"], config["depth"], config["patch_size"], config["in_channels"]
    c_out = config.get("out_channels") or c
    tokens = (config["input_size"] // p) ** 2
    hidden = int(d * config.get("mlp_ratio", 4.0))
    block = 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * hidden + 6 * d * d
    rest = tokens * p * p * c * d + FREQ_DIM * d + d * d + 2 * d * d + tokens * d * p * p * c_out
    return (n * block + rest) / 1e9
# --8<-- [end:gflops]


def family_config(size: str, patch_size: int) -> dict:
    """The model config of one member of the miniature family (:data:`SIZES` x :data:`PATCHES`) on 8 x 8 digits."""
    if size not in SIZES:
        raise LineageError(f"unknown DiT size {size!r} (choose from {', '.join(SIZES)})")
    if patch_size not in PATCHES + (1, 8):
        raise LineageError(f"patch size must divide 8: 1, 2, 4 or 8, got {patch_size}")
    depth, width, heads = SIZES[size]
    return DiT(patch_size=patch_size, width=width, depth=depth, heads=heads).config


# --- training and sampling ------------------------------------------------------------

#: optimisation per preset; a preset changes sizes, never the algorithm (T = 1000, linear betas)
PRESETS = {
    "quick": {"steps": 1000, "batch_size": 64, "lr": 3e-3, "lr_decay": "cosine"},
    # DiT's own optimiser: AdamW, lr 1e-4 constant, no weight decay, batch 256
    "full": {"steps": 100000, "batch_size": 256, "lr": 1e-4},
}


def train_config(size: str = "B", patch_size: int = 2, preset: str = "quick", *, steps: int | None = None,
                 seed: int = 0) -> dict:
    """The JSON config of a DiT run on the training digits (the last refimpl.data.HOLDOUT are held out)."""
    from refimpl.data import HOLDOUT
    from refimpl.ddpm import optimisation

    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return {"data": "digits", "held_out": HOLDOUT, "schedule": "linear", "T": 1000, "p_uncond": P_UNCOND,
            "size": size, "model": family_config(size, patch_size), "seed": seed,
            **optimisation(PRESETS[preset], steps)}


def build(config: dict) -> DiT:
    """The untrained network of ``config``, its initial weights drawn from config["seed"]."""
    from refimpl.training import build_seeded

    return build_seeded(DiT, config)


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """DDPM's Algorithm 1 with CFG's label dropout on the training digits: repeat { (x, y) ~ data, y <- null
    w.p. p_uncond, t ~ U{1..T}, step on ||eps - eps_theta(x_t, t, y)||^2 }. Returns (model, loss history)."""
    from refimpl.cfg import loss_cfg
    from refimpl.data import training_digits
    from refimpl.schedules import make_schedule
    from refimpl.training import fit_config

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    model = build(config)
    images, labels = training_digits()

    def loss_fn(model, generator):
        index = torch.randint(0, images.shape[0], (config["batch_size"],), generator=generator)
        x0, y = images[index].to(schedule.device), labels[index].to(schedule.device)
        return loss_cfg(model, x0, y, schedule, config["p_uncond"], generator)

    history = fit_config(model, loss_fn, config, out, "dit", device, resume, progress)
    return model, history
# --8<-- [end:train]


def load(ckpt, device=None):
    """A DiT checkpoint: (network on ``device``, its schedule on ``device``, its config); bad ones ->
    LineageError."""
    from refimpl.checkpoint import load_module
    from refimpl.schedules import make_schedule

    model, data = load_module(ckpt, expect_model="dit", build=lambda data: DiT(**data.config["model"]))
    device = torch.device(device or "cpu")
    return model.to(device), make_schedule(data.config["schedule"], data.config["T"]).to(device), data.config


@torch.no_grad()
def held_out_loss(model: nn.Module, schedule, n_t: int = 10, seed: int = 0) -> torch.Tensor:
    """The conditional denoising loss on the held-out digits, per digit, (HOLDOUT,): the mean over ``n_t`` evenly
    spaced timesteps of ||eps - eps_theta(x_t, t, y)||^2 / D, with the noise drawn from ``seed``, so that two
    models are compared on exactly the same (x_0, t, eps)."""
    from refimpl.data import held_out_digits
    from refimpl.schedules import q_sample

    x0, y = held_out_digits()
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for t in torch.linspace(0, schedule.T - 1, n_t).round().long().tolist():
        eps = torch.randn(x0.shape, generator=generator)
        t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)
        x_t = q_sample(x0.to(device), t_batch.to(device), eps.to(device), schedule)
        err = (model(x_t, t_batch.to(device), y=y.to(device)).cpu() - eps).pow(2).flatten(1).mean(1)
        total += err.double()
    return total / n_t
