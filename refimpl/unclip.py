"""unCLIP (DALL·E 2): Ramesh, Dhariwal, Nichol, Chu & Chen, "Hierarchical Text-Conditional Image Generation with
CLIP Latents", arXiv 2204.06125, at toy scale on 8x8 digits, on top of a frozen, trained refimpl.clip model.

- The two-stage model (Sec. 2): P(x | y) = P(x | z_i) P(z_i | y), where z_i is the CLIP image embedding of x and
  z_t the CLIP text embedding of caption y (the paper's notation: here z_t is a *text* embedding, not a
  diffusion step). A prior P(z_i | y) produces image embeddings, a decoder P(x | z_i) inverts them to pixels.
- Diffusion prior (Sec. 2.2): a DDPM over z_i conditioned on z_t and the timestep that predicts the unnoised
  z_i directly (not eps) with a mean-squared error. The paper's network is a decoder-only Transformer over
  [encoded text, z_t, time embedding, noised z_i, query]; ours is refimpl.nets.MLPDenoiser with z_t projected
  into its time embedding (32 numbers need no attention). Embeddings are standardised per coordinate for the
  diffusion (diffusers' PriorTransformer keeps the same statistics as ``clip_mean`` / ``clip_std``).
- Decoder (Sec. 2.1): a pixel-space diffusion model (refimpl.nets.UNet) with z_i projected and added to the
  timestep embedding; z_i is zeroed for a share of the training examples, so classifier-free guidance works.
  The paper also projects z_i into four extra context tokens for GLIDE's text encoder and keeps GLIDE's caption
  pathway; our U-Net has neither (no cross-attention), and no super-resolution stages follow 8x8.
- Image variations (Sec. 3.1): x -> (z_i, x_T), z_i = CLIP image embedding, x_T = DDIM inversion of x by the
  decoder; decoding with DDIM eta > 0 keeps what CLIP encodes (the digit) and changes what it drops. The
  image-to-image baseline (SDEdit-style) noises the same x to step t with q(x_t | x_0) and denoises it with the
  same decoder, unconditioned (z_i = 0).

Timesteps are 0-indexed in code (code t = paper t - 1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.captions import caption, templates
from refimpl.checkpoint import load_module, weights_digest
from refimpl.core import LineageError
from refimpl.data import HOLDOUT, held_out_digits
from refimpl.nets import MLPDenoiser, UNet
from refimpl.schedules import Schedule, make_schedule
from refimpl.training import build_seeded, fit_config

PRIOR_TEXT_DROP = 0.1  # share of training examples whose z_t is zeroed (null condition of the prior's CFG)
DECODER_EMBEDDING_DROP = 0.1  # Sec. 2.1: the CLIP embedding is zeroed 10% of the time in decoder training


# --8<-- [start:models]
class Prior(nn.Module):
    """f_theta(z_i^(t), t, z_t) -> predicted unnoised z_i (unCLIP Sec. 2.2), on standardised embeddings of
    ``dim`` numbers: an MLPDenoiser whose time embedding gets a projection of the text embedding z_t added."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim}
        self.net = MLPDenoiser(data_dim=dim, hidden=hidden, depth=depth, time_dim=time_dim)
        self.text_proj = nn.Linear(dim, hidden)

    def forward(self, z_noisy: torch.Tensor, t, z_t: torch.Tensor) -> torch.Tensor:
        return self.net(z_noisy, t, cond_emb=self.text_proj(z_t))


class Decoder(nn.Module):
    """eps_theta(x_t, t, z_i) on (B, 1, 8, 8) digits (unCLIP Sec. 2.1): a refimpl.nets.UNet whose timestep
    embedding gets a linear projection of the CLIP image embedding z_i added; z_i = 0 is the null condition."""

    def __init__(self, dim: int, base: int = 32, time_dim: int = 128):
        super().__init__()
        self.config = {"dim": dim, "base": base, "time_dim": time_dim}
        self.unet = UNet(in_channels=1, base=base, channel_mults=(1, 2), time_dim=time_dim, attention=False)
        self.embedding_proj = nn.Linear(dim, time_dim)

    def forward(self, x_t: torch.Tensor, t, z_i: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, cond_emb=self.embedding_proj(z_i))
# --8<-- [end:models]


# --8<-- [start:losses]
def drop_embeddings(z: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each row of ``z`` independently with probability ``p`` (the null condition of classifier-free
    guidance: unCLIP Sec. 2.1 sets the CLIP embedding to zero, or to a learned embedding, 10% of the time)."""
    keep = torch.rand(z.shape[0], generator=generator) >= p
    return z * keep.to(z.device, z.dtype)[:, None]


def prior_loss(prior: Prior, z_i: torch.Tensor, z_t: torch.Tensor, schedule: Schedule,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """unCLIP Sec. 2.2: L_prior = E_{t, z_i^(t)} || f_theta(z_i^(t), t, z_t) - z_i ||^2, with t uniform over the T
    steps and z_i^(t) = sqrt(alpha_bar_t) z_i + sqrt(1 - alpha_bar_t) eps (DDPM Eq. 4): the network predicts the
    unnoised embedding, not the noise. Mean over all elements; t and eps are drawn from ``generator``."""
    from refimpl.schedules import q_sample

    t = torch.randint(0, schedule.T, (z_i.shape[0],), generator=generator).to(z_i.device)
    eps = torch.randn(z_i.shape, generator=generator).to(z_i.device)
    return F.mse_loss(prior(q_sample(z_i, t, eps, schedule), t, z_t), z_i)


def decoder_loss(decoder: Decoder, x0: torch.Tensor, z_i: torch.Tensor, schedule: Schedule,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's L_simple (refimpl.ddpm.loss_simple) conditioned on the CLIP image embedding z_i of x0."""
    from refimpl.ddpm import loss_simple

    return loss_simple(lambda x_t, t: decoder(x_t, t, z_i), x0, schedule, generator)
# --8<-- [end:losses]


# --8<-- [start:sampling]
def eps_from_x0(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The noise implied by a prediction of x0 (DDPM Eq. 4 solved for eps):
    eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t), so an x0-predicting prior runs on any eps sampler."""
    alpha_bar = schedule.alpha_bar.to(x_t.device)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def guided(model: nn.Module, condition: torch.Tensor, guidance_scale: float):
    """Classifier-free guidance with a zero null condition, out_u + s (out_c - out_u) (refimpl.guidance.cfg_eps;
    s = 1 is the conditional model), as a two-argument ``model(x, t)`` for the project's samplers. It is applied to
    whatever the model predicts: eps for the decoder, z_i for the prior (linear in each other at fixed x_t)."""
    from refimpl.guidance import cfg_eps

    if not guidance_scale >= 0:
        raise LineageError(f"guidance scale must be >= 0, got {guidance_scale}")
    both = torch.cat([condition, torch.zeros_like(condition)])

    def model_cfg(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return cfg_eps(out_c, out_u, guidance_scale=guidance_scale)

    return model_cfg


@torch.no_grad()
def sample_prior(prior: Prior, z_t: torch.Tensor, schedule: Schedule, stats: tuple[torch.Tensor, torch.Tensor], *,
                 guidance_scale: float = 1.0, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """z_i ~ P(z_i | y): DDIM (eta 0) over standardised embeddings with the guided z_i prediction turned into eps
    (:func:`eps_from_x0`), then un-standardised with ``stats`` = (mean, std) and L2-normalised like CLIP's."""
    from refimpl.ddim import ddim_sample

    device = z_t.device
    model = guided(prior, z_t, guidance_scale)
    eps_model = lambda u, t: eps_from_x0(u, t, model(u, t), schedule)  # noqa: E731
    u_T = torch.randn(z_t.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    u_0 = ddim_sample(eps_model, u_T, schedule.to(device), steps=steps, disable=True)
    mean, std = (s.to(device) for s in stats)
    return F.normalize(u_0 * std + mean, dim=-1)


@torch.no_grad()
def decode(decoder: Decoder, z_i: torch.Tensor, schedule: Schedule, *, guidance_scale: float = 3.0,
           steps: int = 50, seed: int = 0) -> torch.Tensor:
    """x ~ P(x | z_i): one 8x8 digit per embedding, DDIM (eta 0) from x_T drawn with ``seed``, guided by z_i."""
    from refimpl.ddim import ddim_sample

    x_T = torch.randn((z_i.shape[0], 1, 8, 8), generator=torch.Generator().manual_seed(seed)).to(z_i.device)
    return ddim_sample(guided(decoder, z_i, guidance_scale), x_T, schedule.to(z_i.device), steps=steps,
                       disable=True)


@torch.no_grad()
def image_to_image(decoder: Decoder, x0: torch.Tensor, t: int, schedule: Schedule, *, steps: int = 50,
                   seed: int = 0) -> torch.Tensor:
    """The baseline the variations are compared with (SDEdit-style image-to-image): x0 noised with q(x_s | x_0)
    (DDPM Eq. 4) to the largest timestep s <= t that DDIM visits, then DDIM (eta 0) from s back to x_0 with the
    decoder unconditioned (z_i = 0). The sampler runs on the schedule's first t + 1 steps (same alpha_bar)."""
    from refimpl.ddim import ddim_sample
    from refimpl.schedules import timesteps
    from refimpl.schedules import q_sample

    if not 0 <= t < schedule.T:
        raise LineageError(f"t must lie in 0..{schedule.T - 1}, got {t}")
    steps = min(steps, t + 1)
    start = timesteps(t + 1, steps)[-1]
    head = Schedule(schedule.betas[:t + 1]).to(x0.device)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    x_s = q_sample(x0, torch.full((x0.shape[0],), start, device=x0.device), eps, head)
    null = torch.zeros(x0.shape[0], decoder.config["dim"], device=x0.device)
    return ddim_sample(lambda x, s: decoder(x, s, null), x_s, head, steps=steps, disable=True)
# --8<-- [end:sampling]


# --- the trained run: CLIP + prior + decoder ------------------------------------------

class UnCLIP:
    """A loaded run: the frozen CLIP (``clip``, ``tok``), the prior with its standardisation ``stats``, the decoder
    and each stage's schedule. ``text_to_image`` and ``variations`` are the paper's two uses (Sec. 2, Sec. 3.1)."""

    def __init__(self, clip, tok, prior, stats, prior_schedule, decoder, decoder_schedule):
        self.clip, self.tok, self.prior, self.stats = clip, tok, prior, stats
        self.prior_schedule, self.decoder, self.decoder_schedule = prior_schedule, decoder, decoder_schedule

    def to(self, device) -> "UnCLIP":
        for model in (self.clip, self.prior, self.decoder):
            model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        from refimpl.clip import tokenize

        return self.clip.text_features(tokenize(self.tok, texts, self.clip.text.max_len).to(self.device))

    # --8<-- [start:pipeline]
    @torch.no_grad()
    def text_to_image(self, texts: list[str], *, prior_scale: float = 1.0, decoder_scale: float = 3.0,
                      steps: int = 50, seed: int = 0) -> torch.Tensor:
        """caption y -> CLIP text embedding z_t -> prior -> z_i -> decoder -> x (unCLIP Fig. 2, below the line)."""
        z_i = sample_prior(self.prior, self.text_embeddings(texts), self.prior_schedule, self.stats,
                           guidance_scale=prior_scale, steps=steps, seed=seed)
        return decode(self.decoder, z_i, self.decoder_schedule, guidance_scale=decoder_scale, steps=steps,
                      seed=seed + 1)

    @torch.no_grad()
    def variations(self, images: torch.Tensor, *, eta: float = 1.0, decoder_scale: float = 3.0, steps: int = 50,
                   seed: int = 0) -> torch.Tensor:
        """Image variations (unCLIP Sec. 3.1): the bipartite latent (z_i, x_T) of each image, z_i its CLIP image
        embedding and x_T its DDIM inversion (refimpl.ddim.ddim_invert) by the decoder conditioned on z_i, decoded
        by DDIM with ``eta`` > 0 (noise from ``seed``); eta = 0 reconstructs the image instead."""
        from refimpl.ddim import ddim_invert, ddim_sample

        images = images.to(self.device)
        model = guided(self.decoder, self.clip.image_features(images), decoder_scale)
        schedule = self.decoder_schedule.to(self.device)
        x_T = ddim_invert(model, images, schedule, steps=steps, disable=True)
        return ddim_sample(model, x_T, schedule, steps=steps, eta=eta, generator=torch.Generator().manual_seed(seed),
                           disable=True)
    # --8<-- [end:pipeline]


#: sizes per preset; a preset changes sizes, never the algorithm (both stages: T = 1000, linear betas)
PRESETS = {
    "quick": {"prior_steps": 2000, "prior_hidden": 128, "steps": 1500, "base": 16, "batch_size": 64, "lr": 2e-3},
    "full": {"prior_steps": 20000, "prior_hidden": 512, "steps": 40000, "base": 64, "batch_size": 256, "lr": 2e-4},
}


def train_config(preset: str = "quick", *, steps: int | None = None, prior_steps: int | None = None,
                 seed: int = 0) -> dict:
    """Both stages' JSON configs, ``{"prior": ..., "decoder": ...}`` (the CLIP checkpoint is an input of train)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    common = {"data": "digits", "held_out": HOLDOUT, "seed": seed, "batch_size": p["batch_size"], "lr": p["lr"],
              "schedule": "linear", "T": 1000}
    prior = {**common, "model": {"hidden": p["prior_hidden"], "depth": 3, "time_dim": 32},
             "text_drop": PRIOR_TEXT_DROP, "steps": prior_steps or p["prior_steps"]}
    decoder = {**common, "model": {"base": p["base"], "time_dim": 4 * p["base"]},
               "embedding_drop": DECODER_EMBEDDING_DROP, "steps": steps or p["steps"]}
    return {"prior": prior, "decoder": decoder}


@torch.no_grad()
def clip_training_embeddings(clip, tok) -> dict[str, torch.Tensor]:
    """The frozen CLIP's embeddings of the training data: ``images`` and ``labels`` (refimpl.clip.split's training
    digits), their image embeddings ``z_i``, and ``captions`` (10, n_templates, dim): the text embedding of every
    EN and ZH template (refimpl.captions.templates) for every digit."""
    from refimpl import clip as clip_module

    (images, labels), _ = clip_module.split()
    names = templates()
    texts = [caption(t, k) for k in range(10) for t in names]
    device = clip.logit_scale.device
    z_t = clip.text_features(clip_module.tokenize(tok, texts, clip.text.max_len).to(device))
    return {"images": images, "labels": labels, "z_i": clip.image_features(images.to(device)).cpu(),
            "captions": z_t.cpu().reshape(10, len(names), -1)}


# --8<-- [start:train]
def train(config: dict, clip_ckpt, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Both stages on the frozen CLIP of ``clip_ckpt``. Prior: :func:`prior_loss` on standardised image embeddings
    of the training digits, conditioned on the text embedding of a random EN/ZH caption of the same digit,
    zeroed with probability ``config["prior"]["text_drop"]``. Decoder: :func:`decoder_loss` on the training digits and
    their image embeddings, zeroed with probability ``config["decoder"]["embedding_drop"]``. With ``out``: out/clip (a
    copy of the CLIP checkpoint), out/prior and out/decoder (each resumable). Returns (prior, decoder, histories)."""
    from refimpl import clip as clip_module

    device = torch.device(device or "cpu")
    clip, tok, _ = clip_module.load(clip_ckpt)
    data = clip_training_embeddings(clip.to(device), tok)
    z_i, captions, images, labels = data["z_i"], data["captions"], data["images"], data["labels"]
    mean, std = z_i.mean(0), z_i.std(0)
    clip_digest = weights_digest(clip)
    prior_config = {**config["prior"], "clip": clip_digest, "mean": mean.tolist(), "std": std.tolist()}
    prior_config["model"] = {**prior_config["model"], "dim": z_i.shape[1]}
    decoder_config = {**config["decoder"], "clip": clip_digest}
    decoder_config["model"] = {**decoder_config["model"], "dim": z_i.shape[1]}
    if out is not None:
        stored = Path(out) / "clip"
        if not stored.exists():
            Path(out).mkdir(parents=True, exist_ok=True)
            shutil.copytree(clip_ckpt, stored)
        elif weights_digest(clip_module.load(stored)[0]) != clip_digest:
            raise LineageError(f"{stored} holds another CLIP than {clip_ckpt}: use a new --out directory")

    prior_schedule = make_schedule(prior_config["schedule"], prior_config["T"]).to(device)
    prior = build_seeded(Prior, prior_config)

    def prior_step(model, generator):
        index = torch.randint(0, z_i.shape[0], (prior_config["batch_size"],), generator=generator)
        template = torch.randint(0, captions.shape[1], (index.shape[0],), generator=generator)
        z_t = drop_embeddings(captions[labels[index], template], prior_config["text_drop"], generator)
        target = (z_i[index] - mean) / std
        return prior_loss(model, target.to(device), z_t.to(device), prior_schedule, generator)

    out_dir = None if out is None else Path(out) / "prior"
    prior_history = fit_config(prior, prior_step, prior_config, out_dir, "unclip-prior", device, resume, progress)

    decoder_schedule = make_schedule(decoder_config["schedule"], decoder_config["T"]).to(device)
    decoder = build_seeded(Decoder, decoder_config)

    def decoder_step(model, generator):
        index = torch.randint(0, images.shape[0], (decoder_config["batch_size"],), generator=generator)
        z = drop_embeddings(z_i[index], decoder_config["embedding_drop"], generator)
        return decoder_loss(model, images[index].to(device), z.to(device), decoder_schedule, generator)

    out_dir = None if out is None else Path(out) / "decoder"
    decoder_history = fit_config(decoder, decoder_step, decoder_config, out_dir, "unclip-decoder", device, resume,
                                 progress)
    return prior.eval(), decoder.eval(), {"prior": prior_history, "decoder": decoder_history}
# --8<-- [end:train]


def load(run) -> UnCLIP:
    """Rebuild a run written by :func:`train` (run/clip, run/prior, run/decoder) on CPU, eval mode. Refuses stages
    trained on another CLIP than the one stored."""
    from refimpl import clip as clip_module

    run = Path(run)
    if not run.is_dir():
        raise LineageError(f"no unCLIP run at {run} (expected the --out directory of `unclip train`)")
    clip, tok, _ = clip_module.load(run / "clip")
    stages = []
    for sub, cls in (("prior", Prior), ("decoder", Decoder)):
        model, data = load_module(run / sub, expect_model=f"unclip-{sub}",
                                  build=lambda data, cls=cls: cls(**data.config["model"]))
        if data.config.get("clip") != weights_digest(clip):
            raise LineageError(f"{run / sub}: trained on another CLIP than the one stored in {run / 'clip'}")
        stages.append((model, data.config, make_schedule(data.config["schedule"], data.config["T"])))
    (prior, prior_config, prior_schedule), (decoder, _, decoder_schedule) = stages
    stats = (torch.tensor(prior_config["mean"]), torch.tensor(prior_config["std"]))
    return UnCLIP(clip.eval(), tok, prior, stats, prior_schedule, decoder, decoder_schedule)


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out digits (the last refimpl.data.HOLDOUT), never seen by CLIP, prior or decoder."""
    return held_out_digits()
