"""LoRA: Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen, "LoRA: Low-Rank Adaptation of Large Language Models"
(ICLR 2022), arXiv 2106.09685.

A pretrained weight matrix W0 (d_out x d_in) stays frozen; the update is constrained to a low-rank product
Delta W = B A with B (d_out x r), A (r x d_in), r << min(d_in, d_out), and the forward pass becomes (Sec. 4.1,
Eq. 3) h = W0 x + Delta W x = W0 x + B A x, the update scaled by alpha / r. A starts random Gaussian and B at
zero, so Delta W = 0 and the adapted model equals the pretrained one at the start of training. After training,
W = W0 + (alpha / r) B A can be merged into the weight: no extra inference latency; subtracting it again
recovers W0 (switching tasks). One adapted d_out x d_in matrix trains r (d_in + d_out) numbers instead of
d_in d_out.

Here LoRA adapts the attention projections (``q``, ``k``, ``v``, ``out`` of refimpl.transformer.MultiHeadAttention)
of two trained models of this project:

- the quick latent diffusion model (refimpl.ldm), taught a "slanted writer" (refimpl.styles.shear of the training
  digits, with their captions), the way LoRA is used on Stable Diffusion; adapted: the self- and
  cross-attention of the denoiser's two CrossAttentionBlocks (the caption encoder stays frozen);
- the quick character-level GPT (refimpl.gpt, trained on the Chinese notes), adapted to a text with very different
  statistics: Python source code (the standard library's ``argparse`` module), W_q and W_v only, as in the
  paper's GPT-3 experiments (Sec. 7.1).

Both are compared with full fine-tuning of the same model on the same data, steps and seed.
"""

from __future__ import annotations

import hashlib
import inspect
import math

import torch
from torch import nn

from refimpl.captions import NUMBER_WORDS, drop_captions, random_captions
from refimpl.checkpoint import weights_digest  # a config names the exact base it adapts
from refimpl.core import LineageError
from refimpl.data import training_digits
from refimpl.training import fit_config
from refimpl.transformer import MultiHeadAttention


# --8<-- [start:lora]
class LoRALinear(nn.Module):
    """LoRA Eq. (3) around a frozen ``nn.Linear`` W0: h = W0 x + b + (alpha / r) B A x, with A (r, d_in) drawn
    from N(0, 1 / d_in) (the paper: "random Gaussian initialization for A"; its variance is our choice) and
    B (d_out, r) = 0, so the output equals the base layer's exactly at initialisation."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        if r < 1:
            raise LineageError(f"LoRA rank r must be >= 1, got {r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        like = {"dtype": base.weight.dtype, "device": base.weight.device}  # drawn on the CPU, so any device agrees
        self.lora_A = nn.Parameter((torch.randn(r, base.in_features, dtype=like["dtype"])
                                    / math.sqrt(base.in_features)).to(like["device"]))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        self.merged = False

    def delta(self) -> torch.Tensor:
        """Delta W = (alpha / r) B A, (d_out, d_in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self.merged:  # W0 already holds Delta W
            return h
        return h + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + (alpha / r) B A (Sec. 4.1, "No Additional Inference Latency")."""
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - (alpha / r) B A: back to the pretrained weight (up to float rounding)."""
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def apply_lora(model: nn.Module, *, r: int, alpha: float, targets=("q", "k", "v", "out"),
               within: nn.Module | None = None) -> list[LoRALinear]:
    """Freeze every parameter of ``model``, then replace the ``targets`` projections of every
    refimpl.transformer.MultiHeadAttention inside ``within`` (default: the whole model) by :class:`LoRALinear`
    (rank ``r``, scale ``alpha / r``), whose A and B are the only trainable parameters. Returns the adapters."""
    model.requires_grad_(False)
    adapters = []
    for module in list((within or model).modules()):
        if isinstance(module, MultiHeadAttention):
            for name in targets:
                adapter = LoRALinear(getattr(module, name), r, alpha)
                setattr(module, name, adapter)
                adapters.append(adapter)
    if not adapters:
        raise LineageError(f"no attention projection named {', '.join(targets)} to adapt")
    return adapters
# --8<-- [end:lora]


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(shapes, r: int) -> int:
    """Sec. 4.1: r (d_in + d_out) per adapted d_out x d_in matrix (``shapes``: (d_out, d_in) pairs)."""
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


def set_merged(model: nn.Module, merged: bool) -> None:
    """Merge (or unmerge) every LoRALinear of ``model``."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge() if merged else module.unmerge()



# --- the LDM: a slanted writer -------------------------------------------------------------

#: sizes per preset (the preset changes sizes, never the algorithm)
PRESETS = {
    "quick": {"steps": 300, "batch_size": 64, "lr": 3e-3, "r": 4, "gpt_steps": 100, "gpt_batch_size": 32},
    "full": {"steps": 5000, "batch_size": 256, "lr": 2e-4, "r": 8, "gpt_steps": 2000, "gpt_batch_size": 64},
}


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[preset]


def style_config(base, preset: str = "quick", *, method: str = "lora", r: int | None = None,
                 alpha: float | None = None, steps: int | None = None, seed: int = 0) -> dict:
    """Config of a slanted-writer fine-tune of the LDM run ``base`` (a refimpl.ldm run directory): ``method``
    "lora" (adapters on the denoiser's attention) or "full" (every denoiser weight, caption encoder included)."""
    from refimpl import ldm
    from refimpl.styles import SHEAR

    p = _preset(preset)
    if method not in ("lora", "full"):
        raise LineageError(f"unknown method {method!r} (choose from lora, full)")
    _, model, _, _ = ldm.load(base)
    r = r or p["r"]
    return {"base": "ldm", "base_weights": weights_digest(model), "model": model.config, "method": method,
            "r": r if method == "lora" else None, "alpha": (alpha or r) if method == "lora" else None,
            "targets": ["q", "k", "v", "out"] if method == "lora" else None, "shear": SHEAR,
            "caption_drop": ldm.CAPTION_DROP, "steps": steps or p["steps"], "batch_size": p["batch_size"],
            "lr": p["lr"], "seed": seed}


def _adapt_denoiser(model, config: dict):
    """Make ``model`` (a refimpl.ldm.LatentDenoiser) trainable the way ``config`` says; adapters seeded."""
    if config["method"] == "full":
        return model.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        apply_lora(model, r=config["r"], alpha=config["alpha"], targets=config["targets"], within=model.cross)
    return model


# --8<-- [start:style]
def train_style(config: dict, base, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Fine-tune the LDM of ``base`` on the slanted writer: DDPM's L_simple (refimpl.ddpm.loss_simple) on the
    latents of shear(training digits) with their captions (config["caption_drop"] of them emptied), only the
    parameters that :func:`_adapt_denoiser` leaves trainable. Returns (autoencoder, denoiser, schedule, scale,
    loss history)."""
    from refimpl import ldm
    from refimpl.ddpm import loss_simple
    from refimpl.styles import shear

    device = torch.device(device or "cpu")
    autoencoder, model, schedule, scale = ldm.load(base)
    if weights_digest(model) != config["base_weights"]:
        raise LineageError(f"{base} is not the LDM this fine-tune was configured for (weights differ)")
    model = _adapt_denoiser(model, config)
    images, labels = training_digits()
    slanted = shear(images, config["shear"])
    autoencoder, schedule = autoencoder.to(device), schedule.to(device)

    def loss_fn(model, generator):
        index = torch.randint(0, slanted.shape[0], (config["batch_size"],), generator=generator)
        tokens = drop_captions(random_captions(labels[index], generator), config["caption_drop"], generator)
        with torch.no_grad():
            z = scale * ldm.sample_latent(*autoencoder.encode(slanted[index].to(device)), generator)
        return loss_simple(lambda z_t, t: model(z_t, t, tokens), z, schedule, generator)

    history = fit_config(model, loss_fn, config, out, f"{config['method']}-ldm", device, resume, progress)
    return autoencoder, model.eval(), schedule, scale, history
# --8<-- [end:style]


def load_style(ckpt, base):
    """(autoencoder, fine-tuned denoiser, schedule, scale) of a :func:`train_style` run on top of ``base``."""
    from refimpl import ldm

    data = _load_checkpoint(ckpt, ("lora-ldm", "full-ldm"))
    autoencoder, model, schedule, scale = ldm.load(base)
    if weights_digest(model) != data.config.get("base_weights"):
        raise LineageError(f"{ckpt} was fine-tuned from another LDM than {base}")
    model = _adapt_denoiser(model, data.config)
    _load_state(model, data, ckpt)
    return autoencoder, model.eval(), schedule, scale


def _load_checkpoint(ckpt, names):
    from refimpl import checkpoint

    data = checkpoint.load(ckpt)
    if data.model not in names:
        raise LineageError(f"checkpoint {ckpt} holds a {data.model!r} model, not one of {', '.join(names)}")
    return data


def _load_state(model: nn.Module, data, ckpt) -> None:
    try:
        model.load_state_dict(data.model_state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LineageError(f"corrupt checkpoint: weights in {ckpt} do not fit their config ({first})") from None


def style_samples(autoencoder, model, schedule, scale, *, per_digit: int = 10, seed: int = 0, device=None):
    """``per_digit`` samples of every caption "the digit k" (CFG s = 3, DDIM 50 steps, z_T from ``seed``):
    (images (10 per_digit, 1, 8, 8), labels)."""
    from refimpl import ldm

    texts = [f"the digit {w}" for w in NUMBER_WORDS for _ in range(per_digit)]
    images = ldm.sample(autoencoder, model, texts, schedule, scale, seed=seed, device=device)
    return images, torch.arange(10).repeat_interleave(per_digit)


# --- the GPT: Python source after Chinese notes ------------------------------------------------

def code_text() -> tuple[str, str]:
    """The adaptation text: the source of Python's standard ``argparse`` module, every 10th line held out
    (refimpl.text.HELD_OUT_EVERY, as for the notes)."""
    import argparse  # the text to adapt to, not a command line

    from refimpl.text import HELD_OUT_EVERY

    lines = inspect.getsource(argparse).splitlines()
    held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(lines))]
    return ("\n".join(line for line, h in zip(lines, held) if not h),
            "\n".join(line for line, h in zip(lines, held) if h))


def gpt_config(base, preset: str = "quick", *, method: str = "lora", r: int | None = None,
               alpha: float | None = None, steps: int | None = None, seed: int = 0) -> dict:
    """Config of adapting the GPT checkpoint ``base`` to :func:`code_text`: LoRA on W_q, W_v (paper Sec. 7.1)
    or full fine-tuning."""
    from refimpl import gpt

    p = _preset(preset)
    if method not in ("lora", "full"):
        raise LineageError(f"unknown method {method!r} (choose from lora, full)")
    model, tok = gpt.load(base)
    train_text, _ = code_text()
    r = r or p["r"]
    return {"base": "gpt", "base_weights": weights_digest(model), "model": model.config, "chars": tok.chars,
            "text_sha256": hashlib.sha256(train_text.encode()).hexdigest(), "method": method,
            "r": r if method == "lora" else None, "alpha": (alpha or r) if method == "lora" else None,
            "targets": ["q", "v"] if method == "lora" else None, "steps": steps or p["gpt_steps"],
            "batch_size": p["gpt_batch_size"], "lr": p["lr"], "seed": seed}


def _adapt_gpt(model, config: dict):
    if config["method"] == "full":
        return model.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        apply_lora(model, r=config["r"], alpha=config["alpha"], targets=config["targets"])
    return model


def train_gpt(config: dict, base, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Adapt the GPT of ``base`` to the training part of :func:`code_text` (GPT-1 Eq. 1, refimpl.gpt.lm_loss).
    Returns (model, tokenizer, {"before": held-out loss, "after": held-out loss}, loss history), losses in nats
    per character on the held-out lines."""
    from refimpl import gpt
    from refimpl.text import windows

    model, tok = gpt.load(base)
    if weights_digest(model) != config["base_weights"]:
        raise LineageError(f"{base} is not the GPT this fine-tune was configured for (weights differ)")
    train_text, held_text = code_text()
    if hashlib.sha256(train_text.encode()).hexdigest() != config["text_sha256"]:
        raise LineageError("the adaptation text changed since this config was made: make a new config")
    train_ids, held_ids = tok.encode(train_text), tok.encode(held_text)
    before = gpt.held_out_loss(model, held_ids)
    model = _adapt_gpt(model, config)
    context = model.max_len

    def loss_fn(model, generator):
        window = windows(train_ids, context + 1, config["batch_size"], generator)
        return gpt.lm_loss(model, window.to(next(model.parameters()).device))

    history = fit_config(model, loss_fn, config, out, f"{config['method']}-gpt", device, resume, progress)
    return model.eval(), tok, {"before": before, "after": gpt.held_out_loss(model, held_ids)}, history
