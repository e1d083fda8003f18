"""GLIDE: Nichol et al., "GLIDE: Towards Photorealistic Image Generation and Editing with Text-Guided Diffusion
Models" (ICML 2022), arXiv 2112.10741, at toy scale: 8x8 digits with captions from a template grammar.

- Text conditioning (Sec. 4.1): the caption's tokens go through a Transformer (refimpl.transformer); the final
  token's output embedding, projected, replaces ADM's class embedding (added to the time embedding). GLIDE also
  feeds all token embeddings to every attention layer of the U-Net; this toy skips that second path.
- Classifier-free guidance with text (Sec. 2.3, fine-tuning in Sec. 4.2): during training 20% of the captions are
  replaced by the empty sequence; sampling uses eps(x_t | empty) + s (eps(x_t | c) - eps(x_t | empty))
  (refimpl.guidance.cfg_model).
- Noised CLIP guidance (Secs. 2.4, 4.4): refimpl.clip.CLIP (the same model and symmetric contrastive loss) trained
  on noised images, its image encoder f(x_t, t) told the timestep; the reverse-process mean is shifted to
  mu + s Sigma grad_x (f(x_t) . g(c)).

The captions and their word tokenizer are refimpl.captions' (shared with the latent diffusion pages).
Timesteps are 0-indexed in code like refimpl.ddpm (code t = paper t - 1); a model is ``model(x_t, t) -> eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.adm import guided_ddpm_sample
from refimpl.captions import MAX_LEN, NUMBER_WORDS, VOCAB, drop_captions, random_captions, tokenize
from refimpl.checkpoint import load_module
from refimpl.clip import CLIP, contrastive_loss
from refimpl.core import LineageError
from refimpl.ddpm import Model
from refimpl.guidance import cfg_model, classifier_guided_eps
from refimpl.schedules import Schedule, make_schedule
from refimpl.training import build_seeded, fit_config
from refimpl.transformer import TransformerStack

CAPTION_DROP = 0.2  # GLIDE Sec. 4.2: 20% of text token sequences are replaced with the empty sequence


def _text_features(text: TransformerStack, tokens: torch.Tensor) -> torch.Tensor:
    """The final token's output embedding (GLIDE Sec. 4.1; the last position of the fixed-length context)."""
    return text(tokens, key_padding_mask=tokens == 0)[:, -1]


# --8<-- [start:model]
class TextConditionalUNet(nn.Module):
    """eps_theta(x_t, t, c): a refimpl.nets.UNet whose class embedding is replaced by a projection of the text
    encoder's final token embedding (GLIDE Sec. 4.1); ``forward(x_t, t, tokens)``."""

    def __init__(self, unet: dict, text: dict):
        super().__init__()
        from refimpl.nets import model_from_config

        self.config = {"unet": unet, "text": text}
        self.unet = model_from_config(unet)
        self.text = TransformerStack(**text)
        self.text_proj = nn.Linear(text["width"], self.unet.emb_dim)

    def forward(self, x: torch.Tensor, t, tokens: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, cond_emb=self.text_proj(_text_features(self.text, tokens.to(x.device))))
# --8<-- [end:model]


# --8<-- [start:clip]
def clip_grad(clip: CLIP, x_t: torch.Tensor, t, text_features: torch.Tensor) -> torch.Tensor:
    """GLIDE Sec. 2.4: grad_x (f(x_t, t) . g(c)) for each row of x_t, g(c) = ``text_features`` (B, dim) or (dim,)."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        score = (clip.image_features(x, t) * text_features).sum()
        return torch.autograd.grad(score, x)[0]


@torch.no_grad()
def zero_shot_accuracy(clip: CLIP, schedule: Schedule, images: torch.Tensor, labels: torch.Tensor, t: int,
                       generator: torch.Generator | None = None) -> float:
    """CLIP's zero-shot classification (Radford et al. 2021) of x_t ~ q(x_t | x_0) at code timestep ``t``: the
    predicted digit is the k whose caption "the digit k" has the highest f(x_t, t) . g(c). Returns the accuracy."""
    from refimpl.schedules import q_sample

    step = torch.full((images.shape[0],), t, dtype=torch.long)
    x_t = q_sample(images, step, torch.randn(images.shape, generator=generator), schedule.to("cpu"))
    device = clip.logit_scale.device
    g = clip.text_features(tokenize([f"the digit {w}" for w in NUMBER_WORDS]))
    scores = clip.image_features(x_t.to(device), step.to(device)) @ g.T
    return scores.argmax(1).cpu().eq(labels).float().mean().item()
# --8<-- [end:clip]


# --8<-- [start:guidance]
def clip_guided_model(model: TextConditionalUNet, clip: CLIP, tokens: torch.Tensor, scale: float,
                      schedule: Schedule) -> Model:
    """CLIP guidance for DDIM: ADM Algorithm 2 with grad log p(y | x_t) replaced by grad_x (f(x_t, t) . g(c)):
    eps_hat = eps(x_t | c) - sqrt(1 - alpha_bar_t) s grad_x (f(x_t, t) . g(c))."""
    with torch.no_grad():
        text = clip.text_features(tokens)

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = schedule.alpha_bar.to(x_t.device)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        return classifier_guided_eps(model(x_t, t, tokens), clip_grad(clip, x_t, t, text), alpha_bar, scale)

    return guided


@torch.no_grad()
def clip_guided_ancestral(model: TextConditionalUNet, clip: CLIP, tokens: torch.Tensor, x_T: torch.Tensor,
                          schedule: Schedule, scale: float, *, generator: torch.Generator | None = None,
                          disable: bool = False) -> torch.Tensor:
    """GLIDE Sec. 2.4 with DDPM ancestral steps: x_{t-1} ~ N(mu + s Sigma grad_x (f(x_t, t) . g(c)), Sigma),
    mu from eps(x_t | c) (DDPM Eq. 11), Sigma = beta_tilde_t. This is ADM's Algorithm 1 with the classifier's
    gradient replaced by the noised CLIP's, so it runs refimpl.adm.guided_ddpm_sample."""
    text = clip.text_features(tokens)
    return guided_ddpm_sample(lambda x, t: model(x, t, tokens), lambda x, t: clip_grad(clip, x, t, text), x_T,
                              schedule, scale=scale, generator=generator, disable=disable)
# --8<-- [end:guidance]


GUIDANCE = ("cfg", "clip")
SAMPLERS = ("ddim", "ddpm")


@torch.no_grad()
def sample(model: TextConditionalUNet, texts: list[str], schedule: Schedule, *, guidance: str = "cfg",
           scale: float = 3.0, clip: CLIP | None = None, sampler: str = "ddim", steps: int = 50,
           seed: int = 0, device=None, disable: bool = True) -> torch.Tensor:
    """One sample per caption in ``texts``, guided by ``guidance`` ("cfg": scale s >= 0, s = 1 is the plain
    conditional model; "clip": scale s >= 0, s = 0 is the conditional model) with DDIM (eta = 0, ``steps``
    steps) or DDPM ancestral sampling. x_T is drawn from ``seed`` on the CPU, so both guidances start from
    the same noise."""
    from refimpl.ddim import ddim_sample
    from refimpl.ddpm import ddpm_sample

    if guidance not in GUIDANCE or sampler not in SAMPLERS:
        raise LineageError(f"guidance must be one of {GUIDANCE} and sampler one of {SAMPLERS}")
    if not scale >= 0:
        raise LineageError(f"guidance scale must be >= 0, got {scale}")
    if guidance == "clip" and clip is None:
        raise LineageError("CLIP guidance needs a noised CLIP model (train one with train-clip; pass --clip)")
    device = torch.device(device or "cpu")
    model, schedule = model.to(device).eval(), schedule.to(device)
    tokens = tokenize(texts).to(device)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(texts), 1, 8, 8), generator=generator).to(device)
    if guidance == "clip" and sampler == "ddpm":
        return clip_guided_ancestral(model, clip.to(device).eval(), tokens, x_T, schedule, scale,
                                     generator=generator, disable=disable)
    eps = cfg_model(model, tokens, scale, null=tokenize([""])) if guidance == "cfg" else \
        clip_guided_model(model, clip.to(device).eval(), tokens, scale, schedule)
    if sampler == "ddim":
        return ddim_sample(eps, x_T, schedule, steps=steps, disable=disable)
    return ddpm_sample(eps, x_T, schedule, generator=generator, disable=disable)


# --- training ----------------------------------------------------------------------

TEXT = {"vocab_size": len(VOCAB), "max_len": MAX_LEN, "width": 64, "depth": 2, "heads": 4}
#: sizes per preset; a preset changes sizes, never the algorithm (T = 1000, linear betas, L_simple)
PRESETS = {
    "quick": {"steps": 700, "batch_size": 64, "lr": 2e-3, "base": 32, "mults": [1, 1], "text": TEXT,
              "clip_steps": 500, "clip_batch_size": 64, "clip_dim": 32},
    "full": {"steps": 60000, "batch_size": 256, "lr": 2e-4, "base": 64, "mults": [1, 2],
             "text": {**TEXT, "width": 256, "depth": 4},
             "clip_steps": 20000, "clip_batch_size": 256, "clip_dim": 64},
}


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[preset]


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a text-conditional diffusion run on captioned digits."""
    sizes = _preset(preset)
    model = {"unet": {"kind": "unet", "in_channels": 1, "base": sizes["base"], "channel_mults": sizes["mults"],
                      "time_dim": 128, "attention": True}, "text": sizes["text"]}
    return {"data": "digits", "schedule": "linear", "T": 1000, "model": model, "caption_drop": CAPTION_DROP,
            "seed": seed, "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


def clip_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a noised CLIP run (same noise schedule as the diffusion model, GLIDE Sec. 4.4)."""
    sizes = _preset(preset)
    model = {"image": {"kind": "encoder", "in_channels": 1, "base": sizes["base"], "channel_mults": [1, 2],
                       "time_dim": 128}, "text": sizes["text"], "dim": sizes["clip_dim"]}
    return {"data": "digits", "schedule": "linear", "T": 1000, "model": model, "seed": seed,
            "steps": steps or sizes["clip_steps"], "batch_size": sizes["clip_batch_size"], "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """L_simple (GLIDE Sec. 2.1; GLIDE also learns Sigma as in improved DDPM, we keep it fixed) on (digit, random caption) pairs, captions dropped to the empty sequence
    with probability config["caption_drop"] (Sec. 4.2). Returns (model, loss history)."""
    from refimpl.data import sampler
    from refimpl.schedules import q_sample

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    model = build_seeded(TextConditionalUNet, config)
    batch = sampler("digits", labels=True)

    def loss_fn(model, generator):
        x0, labels = batch(config["batch_size"], generator)
        tokens = drop_captions(random_captions(labels, generator), config["caption_drop"], generator)
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x0, t, eps = x0.to(schedule.device), t.to(schedule.device), eps.to(schedule.device)
        return F.mse_loss(model(q_sample(x0, t, eps, schedule), t, tokens), eps)

    return model, fit_config(model, loss_fn, config, out, "glide", device, resume, progress)


def train_clip(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Noised CLIP (GLIDE Sec. 4.4): CLIP's contrastive loss on (x_t, caption) pairs, x_t ~ q(x_t | x_0) at a
    uniform t. Returns (clip, loss history)."""
    from refimpl.data import sampler
    from refimpl.schedules import q_sample

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    clip = build_seeded(CLIP, config)
    batch = sampler("digits", labels=True)

    def loss_fn(clip, generator):
        x0, labels = batch(config["batch_size"], generator)
        tokens = random_captions(labels, generator)
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x0, t, eps = x0.to(schedule.device), t.to(schedule.device), eps.to(schedule.device)
        return contrastive_loss(clip(q_sample(x0, t, eps, schedule), tokens, t))

    return clip, fit_config(clip, loss_fn, config, out, "glide-clip", device, resume, progress)
# --8<-- [end:train]


def load(ckpt, kind: str = "glide") -> tuple[nn.Module, Schedule]:
    """Rebuild a checkpoint's model ("glide": TextConditionalUNet, "glide-clip": CLIP) from its recorded
    config (refimpl.training.fit records config["model"] as given for these), on CPU in eval mode."""
    cls = TextConditionalUNet if kind == "glide" else CLIP
    model, data = load_module(ckpt, expect_model=kind, build=lambda data: cls(**data.config["model"]))
    return model, make_schedule(data.config["schedule"], data.config["T"])
