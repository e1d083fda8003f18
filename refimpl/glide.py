"""GLIDE: Nichol et al., "GLIDE: Towards Photorealistic Image Generation and Editing with Text-Guided Diffusion
Models" (ICML 2022), arXiv 2112.10741, at toy scale: 8x8 digits with captions from a template grammar.

- Text conditioning (Sec. 4.1): the caption's tokens go through a Transformer (refimpl.transformer); the final
  token's output embedding, projected, replaces ADM's class embedding (added to the time embedding). GLIDE also
  feeds all token embeddings to every attention layer of the U-Net; this toy skips that second path.
- Classifier-free guidance with text (Sec. 2.3, fine-tuning in Sec. 4.2): during training 20% of the captions are
  replaced by the empty sequence; sampling uses eps(x_t | empty) + s (eps(x_t | c) - eps(x_t | empty)).
- Noised CLIP guidance (Secs. 2.4, 4.4): refimpl.clip.CLIP (the same model and symmetric contrastive loss) trained
  on noised images, its image encoder f(x_t, t) told the timestep; the reverse-process mean is shifted to
  mu + s Sigma grad_x (f(x_t) . g(c)).

Timesteps are 0-indexed in code like refimpl.ddpm (code t = paper t - 1); a model is ``model(x_t, t) -> eps``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.adm import guided_ddpm_sample
from refimpl.clip import CLIP, contrastive_loss
from refimpl.core import LineageError
from refimpl.ddpm import Model
from refimpl.guidance import cfg_eps, classifier_guided_eps
from refimpl.schedules import Schedule, make_schedule
from refimpl.transformer import TransformerStack

# --8<-- [start:captions]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: caption templates; {w} is a number word ("three") or a numeral ("3"): every caption names exactly one digit
TEMPLATES = ("{w}", "the digit {w}", "a handwritten {w}", "the number {w}")
PAD, START = "<pad>", "<start>"
VOCAB = (PAD, START, "the", "digit", "a", "handwritten", "number", *NUMBER_WORDS, *(str(k) for k in range(10)))
MAX_LEN = 5  # <start> + at most 3 words, padded to a fixed length (GLIDE: a fixed context of K tokens)
CAPTION_DROP = 0.2  # GLIDE Sec. 4.2: 20% of text token sequences are replaced with the empty sequence


def captions(label: int) -> list[str]:
    """Every caption of digit ``label``: each template with the number word and with the numeral."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise LineageError(f"digit label must be an integer 0..9, got {label!r}")
    return [t.format(w=w) for w in (NUMBER_WORDS[label], str(label)) for t in TEMPLATES]


def tokenize(texts: list[str]) -> torch.Tensor:
    """Word-level tokens ``(len(texts), MAX_LEN)``: <start>, the lower-cased words, then <pad>. The empty
    caption "" is <start> and padding only (the null condition of classifier-free guidance)."""
    rows = []
    for text in texts:
        words = text.lower().split()
        unknown = [w for w in words if w not in VOCAB[2:]]
        if unknown:
            raise LineageError(f"unknown word {unknown[0]!r} in caption {text!r} (the vocabulary has "
                               f"{len(VOCAB)} tokens: {' '.join(VOCAB[2:])})")
        if len(words) > MAX_LEN - 1:
            raise LineageError(f"caption {text!r} has {len(words)} words; at most {MAX_LEN - 1} fit")
        ids = [1] + [VOCAB.index(w) for w in words]
        rows.append(ids + [0] * (MAX_LEN - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(texts), MAX_LEN)


def detokenize(tokens: torch.Tensor) -> list[str]:
    """Inverse of :func:`tokenize` (on lower-case captions with single spaces)."""
    return [" ".join(VOCAB[i] for i in row.tolist() if i > 1) for row in tokens]


@lru_cache(maxsize=1)
def _caption_table() -> torch.Tensor:
    return torch.stack([tokenize(captions(k)) for k in range(10)])


def random_captions(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens of one caption per label, the caption drawn uniformly from :func:`captions` (label)."""
    table = _caption_table()  # (10, captions per digit, MAX_LEN)
    pick = torch.randint(0, table.shape[1], (labels.shape[0],), generator=generator)
    return table[labels.cpu(), pick]


def drop_captions(tokens: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """GLIDE Sec. 4.2: replace each caption by the empty sequence with probability ``p``."""
    drop = torch.rand(tokens.shape[0], generator=generator) < p
    return torch.where(drop[:, None].to(tokens.device), tokenize([""]).to(tokens.device), tokens)
# --8<-- [end:captions]


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
    from refimpl.ddpm import q_sample

    step = torch.full((images.shape[0],), t, dtype=torch.long)
    x_t = q_sample(images, step, torch.randn(images.shape, generator=generator), schedule.to("cpu"))
    device = clip.logit_scale.device
    g = clip.text_features(tokenize([f"the digit {w}" for w in NUMBER_WORDS]))
    scores = clip.image_features(x_t.to(device), step.to(device)) @ g.T
    return scores.argmax(1).cpu().eq(labels).float().mean().item()
# --8<-- [end:clip]


# --8<-- [start:guidance]
def cfg_model(model: TextConditionalUNet, tokens: torch.Tensor, guidance_scale: float) -> Model:
    """Classifier-free guidance with text (GLIDE Sec. 2.3): eps(x_t | empty) + s (eps(x_t | c) - eps(x_t | empty)),
    one batched forward pass of 2B rows (captions, then empty captions)."""
    both = torch.cat([tokens, tokenize([""]).to(tokens.device).expand_as(tokens)])

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        return cfg_eps(eps_c, eps_u, guidance_scale=guidance_scale)

    return guided


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
    eps = cfg_model(model, tokens, scale) if guidance == "cfg" else \
        clip_guided_model(model, clip.to(device).eval(), tokens, scale, schedule)
    if sampler == "ddim":
        return ddim_sample(eps, x_T, schedule, steps=steps, disable=disable)
    return ddpm_sample(eps, x_T, schedule, generator=generator, disable=disable)


# --- training and command line ------------------------------------------------------

TEXT = {"vocab_size": len(VOCAB), "max_len": MAX_LEN, "width": 64, "depth": 2, "heads": 4}
#: sizes per preset; a preset changes sizes, never the algorithm (T = 1000, linear betas, L_simple)
PRESETS = {
    "quick": {"steps": 1000, "batch_size": 64, "lr": 2e-3, "base": 32, "text": TEXT,
              "clip_steps": 500, "clip_batch_size": 64, "clip_dim": 32},
    "full": {"steps": 60000, "batch_size": 256, "lr": 2e-4, "base": 64, "text": {**TEXT, "width": 256, "depth": 4},
             "clip_steps": 20000, "clip_batch_size": 256, "clip_dim": 64},
}


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[preset]


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a text-conditional diffusion run on captioned digits."""
    sizes = _preset(preset)
    model = {"unet": {"kind": "unet", "in_channels": 1, "base": sizes["base"], "channel_mults": [1, 2],
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


def build_seeded(cls, config: dict) -> nn.Module:
    """The untrained model of ``config``, its initial weights drawn from config["seed"] (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return cls(**config["model"])


def fit_config(model, loss_fn, config, out, model_name, device, resume, progress):
    """refimpl.training.fit with the steps, lr, seed and batch size that ``config`` records (GLIDE, LDM)."""
    from refimpl.training import fit

    return fit(model, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name=model_name,
               config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
               resume=resume, progress=progress)


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """L_simple (GLIDE Sec. 2.1; GLIDE also learns Sigma as in improved DDPM, we keep it fixed) on (digit, random caption) pairs, captions dropped to the empty sequence
    with probability config["caption_drop"] (Sec. 4.2). Returns (model, loss history)."""
    from refimpl.data import sampler
    from refimpl.ddpm import q_sample

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
    from refimpl.ddpm import q_sample

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
    from refimpl import checkpoint

    ckpt_data = checkpoint.load(ckpt, expect_model=kind)
    cls = TextConditionalUNet if kind == "glide" else CLIP
    try:
        model = cls(**ckpt_data.config["model"])
        model.load_state_dict(ckpt_data.model_state, strict=True)
    except (KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise LineageError(f"corrupt checkpoint: {ckpt} does not describe a {kind} model ({first})") from None
    return model.eval(), make_schedule(ckpt_data.config["schedule"], ckpt_data.config["T"])


def add_commands(commands) -> None:
    """``python -m refimpl glide train|train-clip|sample``."""
    from refimpl.cli import add_common, add_preset, nonnegative_float, png_path, positive_int

    for name, run, what in (("train", _run_train, "the text-conditional diffusion model (20% empty captions)"),
                            ("train-clip", _run_train, "a noised CLIP model for CLIP guidance")):
        cmd = commands.add_parser(name, help=f"train {what}; reruns resume")
        add_preset(cmd)
        cmd.add_argument("--steps", type=positive_int, help="training steps (default: the preset's)")
        cmd.add_argument("--out", required=True, help="checkpoint directory")
        add_common(cmd)
        cmd.set_defaults(run=run, kind="glide" if name == "train" else "glide-clip")

    cmd = commands.add_parser("sample", help="sample digits for a caption with CFG or CLIP guidance into a PNG")
    cmd.add_argument("--caption", required=True, help='e.g. "the digit three"')
    cmd.add_argument("--guidance", choices=GUIDANCE, default="cfg")
    cmd.add_argument("--guidance-scale", type=nonnegative_float, default=3.0, help="s (default 3; cfg: 1 = no guidance)")
    cmd.add_argument("--ckpt", required=True, help="checkpoint directory written by train")
    cmd.add_argument("--clip", help="noised CLIP checkpoint written by train-clip (for --guidance clip)")
    cmd.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddim (eta 0) or ddpm (ancestral)")
    cmd.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    cmd.add_argument("--n", type=positive_int, default=16, help="number of samples")
    cmd.add_argument("--out", required=True, type=png_path, help="output picture (.png)")
    add_common(cmd)
    cmd.set_defaults(run=_run_sample)


def _run_train(args) -> int:
    from refimpl.core import pick_device

    device = pick_device(args.device)
    make, fit = (train_config, train) if args.kind == "glide" else (clip_config, train_clip)
    config = make(args.preset, steps=args.steps, seed=args.seed)
    _, history = fit(config, args.out, device=device, progress=not args.quiet)
    last = f", final loss {history[-1][1]:.4f}" if history else ""
    print(f"trained {args.kind} for {config['steps']} steps on {device}{last}; checkpoint: {args.out}")
    return 0


def _run_sample(args) -> int:
    from refimpl.core import pick_device
    from refimpl.plots import save_samples

    tokenize([args.caption])  # refuse unknown words before loading anything
    if args.guidance == "clip" and not args.clip:
        raise LineageError("--guidance clip needs --clip CKPT (a model written by train-clip)")
    model, schedule = load(args.ckpt, "glide")
    clip = load(args.clip, "glide-clip")[0] if args.guidance == "clip" else None
    x0 = sample(model, [args.caption] * args.n, schedule, guidance=args.guidance, scale=args.guidance_scale,
                clip=clip, sampler=args.sampler, steps=args.steps, seed=args.seed, device=pick_device(args.device),
                disable=args.quiet)
    save_samples(x0.cpu(), args.out)
    print(f"wrote {args.n} samples for {args.caption!r} ({args.guidance} guidance, s = {args.guidance_scale}) "
          f"to {args.out}")
    return 0
