"""CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021),
arXiv 2103.00020, at toy scale: 8x8 digits paired with English and Chinese captions from a small template grammar
(refimpl.captions.templates, shared with unCLIP and Imagen).

- Two encoders (Sec. 2.4): an image encoder (refimpl.nets.EncoderNet, evaluated at t = 0: clean images) and a
  text encoder (refimpl.transformer.TransformerStack with masked, i.e. causal, self-attention; the last
  token's output, layer-normed, is linearly projected). Both embeddings are L2-normalised (Fig. 3).
- Contrastive pre-training (Sec. 2.3, Fig. 3): in a batch of N pairs the logits are the N x N scaled cosine
  similarities; the loss is the mean of the cross-entropies over rows (image -> text) and columns
  (text -> image). The temperature is learned as a log-scale, initialised to 1 / 0.07 and clipped so that the
  logits are never scaled by more than 100 (Sec. 2.5).
- Zero-shot classification (Sec. 3.1.2) with prompt ensembling (Sec. 3.1.4): every class name is written into
  every template, the normalised text embeddings are averaged per class (an ensemble in embedding space), and
  an image is assigned the class whose embedding has the highest cosine similarity.

The same model trained on noised images x_t with EncoderNet's time input is GLIDE's noised CLIP (refimpl.glide).

OpenAI's released CLIP (ViT-B/32 and its siblings) is the same class with three options (refimpl.pretrained loads
its weights): a :class:`ViT` image tower (``image={"kind": "vit", ...}``), a text tower with ``quick_gelu`` blocks
pooled at the end-of-text token (``pool``), and projections without bias (``proj_bias=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refimpl.captions import caption, templates
from refimpl.checkpoint import load_module
from refimpl.core import LineageError
from refimpl.data import held_out_digits, training_digits
from refimpl.text import CharTokenizer
from refimpl.transformer import Block, TransformerStack


# --8<-- [start:captions]
def tokenizer() -> CharTokenizer:
    """One token per character (a Chinese character is one token), built from every caption."""
    return CharTokenizer.from_text("".join(caption(t, k) for t in templates() for k in range(10)))


MAX_LEN = 1 + max(len(caption(t, k)) for t in templates() for k in range(10))  # <bos> + the longest caption


def tokenize(tok: CharTokenizer, texts: list[str], max_len: int = MAX_LEN) -> torch.Tensor:
    """(len(texts), max_len) ids: <bos>, one id per character, then <pad> on the right."""
    rows = torch.full((len(texts), max_len), tok.pad, dtype=torch.long)
    for i, text in enumerate(texts):
        if len(text) + 1 > max_len:
            raise LineageError(f"caption {text!r} has {len(text)} characters; at most {max_len - 1} fit")
        rows[i, 0], rows[i, 1:len(text) + 1] = tok.bos, tok.encode(text, strict=True)
    return rows
# --8<-- [end:captions]


# --8<-- [start:model]
class CLIP(nn.Module):
    """Image encoder f (refimpl.nets.EncoderNet, config ``image``) and text encoder g (a TransformerStack, config
    ``text``, pooled at the last non-padding token, then projected to ``dim``); logits (CLIP Fig. 3)
    ``exp(logit_scale) * f(x_i) . g(c_j)`` with both embeddings L2-normalised, ``exp(logit_scale)`` initialised to
    1 / 0.07 and clipped at 100 (Sec. 2.5). ``t`` is the image encoder's time input: 0 for CLIP's clean images,
    the diffusion timestep of x_t for GLIDE's noised CLIP.

    Released CLIP: ``image={"kind": "vit", ...}`` is a :class:`ViT`; ``pool`` reads the text at the end-of-text
    token instead: ``"argmax"`` at the highest token id (OpenAI's code: <|endoftext|> is the last id of the
    vocabulary) or, an int, at the first occurrence of that id; the text is then not masked (causal attention
    already hides what follows the end-of-text token). ``proj_bias=False``: the text projection has no bias."""

    def __init__(self, image: dict, text: dict, dim: int, *, pool: str | int = "last", proj_bias: bool = True):
        super().__init__()
        from refimpl.nets import model_from_config

        if not (pool in ("last", "argmax") or (isinstance(pool, int) and not isinstance(pool, bool))):
            raise LineageError(f"unknown text pooling {pool!r} (choose from last, argmax, or a token id)")
        self.config = {"image": image, "text": text, "dim": dim}
        if (pool, proj_bias) != ("last", True):  # recorded only when set: the trained runs' configs stay as they were
            self.config |= {"pool": pool, "proj_bias": proj_bias}
        self.pool = pool
        if image.get("kind") == "vit":
            self.image = ViT(**{k: v for k, v in image.items() if k != "kind"}, out_dim=dim)
        else:
            self.image = model_from_config({**image, "out_dim": dim})
        self.text = TransformerStack(**text)
        self.text_proj = nn.Linear(text["width"], dim, bias=proj_bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clipped at 100: the clamped log-scale gets no gradient past log 100."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def image_features(self, images: torch.Tensor, t=0) -> torch.Tensor:
        return F.normalize(self.image(images, t), dim=-1)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.logit_scale.device)
        if self.pool != "last":  # released CLIP: read at the end-of-text token
            h = self.text(tokens)
            last = tokens.argmax(1) if self.pool == "argmax" else (tokens == self.pool).int().argmax(1)
            return F.normalize(self.text_proj(h[torch.arange(tokens.shape[0]), last]), dim=-1)
        padding = tokens == 0
        h = self.text(tokens, key_padding_mask=padding)  # (B, L, width), final LayerNorm applied
        last = (~padding).sum(1) - 1  # right padding: the last real token has seen the whole caption
        return F.normalize(self.text_proj(h[torch.arange(tokens.shape[0]), last]), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, t=0) -> torch.Tensor:
        """Logits (B_images, B_texts): exp(logit_scale) f(x_i) . g(c_j)."""
        return self.scale() * self.image_features(images, t) @ self.text_features(tokens).T


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss (Fig. 3): (CE(rows) + CE(columns)) / 2 with the matching pairs on the diagonal.
    Rows ask "which caption is this image's?", columns "which image is this caption's?"."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
# --8<-- [end:model]


# --8<-- [start:vit]
class ViT(nn.Module):
    """CLIP's Vision Transformer image tower (Sec. 2.4; Dosovitskiy et al. 2020, arXiv 2010.11929): the image cut
    into (image_size / patch)^2 patches, each linearly embedded (a strided convolution without bias), a learned
    class token in front, learned position embeddings added; CLIP's one change to ViT's layers, a LayerNorm of these
    embeddings before the Transformer (``ln_pre``); pre-LN :class:`refimpl.transformer.Block` s with
    ``quick_gelu``; the class token's output, layer-normed (``ln_post``) and projected without bias to
    ``out_dim``: (B, channels, image_size, image_size) -> (B, out_dim). It has no time input (clean images)."""

    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int, out_dim: int, *,
                 channels: int = 3, mlp_hidden: int | None = None, activation: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        if image_size % patch:
            raise LineageError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        self.image_size = image_size
        self.patches = nn.Conv2d(channels, width, patch, stride=patch, bias=False)
        self.cls = nn.Parameter(width ** -0.5 * torch.randn(width))
        self.position = nn.Parameter(width ** -0.5 * torch.randn((image_size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.blocks = nn.ModuleList(Block(width, heads, activation=activation, eps=eps, mlp_hidden=mlp_hidden)
                                    for _ in range(depth))
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Linear(width, out_dim, bias=False)

    def forward(self, images: torch.Tensor, t=0) -> torch.Tensor:
        if not (isinstance(t, int) and t == 0):
            raise LineageError("the ViT image tower has no time input: it reads clean images only")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise LineageError(f"images are {tuple(images.shape[-2:])}, the ViT reads "
                               f"{self.image_size}x{self.image_size}")
        h = self.patches(images).flatten(2).transpose(1, 2)  # (B, patches, width), row by row
        h = torch.cat([self.cls.expand(h.shape[0], 1, -1), h], dim=1) + self.position
        h = self.ln_pre(h)
        for block in self.blocks:
            h = block(h)
        return self.proj(self.ln_post(h[:, 0]))
# --8<-- [end:vit]


# --8<-- [start:zero-shot]
@torch.no_grad()
def class_embeddings(model: CLIP, tok: CharTokenizer, which: str = "both") -> torch.Tensor:
    """(10, dim) zero-shot classifier weights (Sec. 3.1.4): per digit, the mean of the normalised text
    embeddings of every template in ``which``, renormalised."""
    names = templates(which)
    texts = [caption(t, k) for k in range(10) for t in names]
    g = model.text_features(tokenize(tok, texts, model.text.max_len)).reshape(10, len(names), -1)
    return F.normalize(g.mean(1), dim=-1)


@torch.no_grad()
def zero_shot(model: CLIP, tok: CharTokenizer, images: torch.Tensor, which: str = "both") -> torch.Tensor:
    """Predicted digit of each image (Sec. 3.1.2): argmax_k cos(f(x), w_k), w = :func:`class_embeddings`."""
    f = model.image_features(images.to(model.logit_scale.device))
    return (f @ class_embeddings(model, tok, which).T).argmax(1).cpu()
# --8<-- [end:zero-shot]


# --- data and training -----------------------------------------------------------------

def split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train, held-out) digits: the last refimpl.data.HOLDOUT digits are never trained on."""
    return training_digits(), held_out_digits()


# --8<-- [start:batch]
def pair_batch(images: torch.Tensor, labels: torch.Tensor, tok: CharTokenizer, generator: torch.Generator,
               max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of 10 (image, caption) pairs, one per digit, each caption from a random template of
    either language. Distinct digits matter: an image of a 3 matches every caption of a 3, so a second 3 in
    the batch would be a false negative in the contrastive loss; with 10 classes, 10 pairs is the largest
    batch without any."""
    picks, texts = [], []
    names = templates()
    for k in range(10):
        members = (labels == k).nonzero()[:, 0]
        picks.append(members[torch.randint(0, len(members), (1,), generator=generator)])
        texts.append(caption(names[int(torch.randint(0, len(names), (1,), generator=generator))], k))
    return images[torch.cat(picks)], tokenize(tok, texts, max_len)
# --8<-- [end:batch]


#: a preset changes sizes, never the algorithm; the batch is always 10 pairs (see :func:`pair_batch`)
PRESETS = {
    "quick": {"steps": 600, "lr": 2e-3, "base": 16, "width": 48, "depth": 2, "dim": 32},
    "full": {"steps": 20000, "lr": 3e-4, "base": 64, "width": 256, "depth": 4, "dim": 128},
}


def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a CLIP run on captioned digits; ``chars`` is the tokenizer's vocabulary."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    tok = tokenizer()
    model = {"image": {"kind": "encoder", "in_channels": 1, "base": sizes["base"], "channel_mults": [1, 2],
                       "time_dim": 4 * sizes["base"]},
             "text": {"vocab_size": len(tok), "max_len": MAX_LEN, "width": sizes["width"], "depth": sizes["depth"],
                      "heads": 4, "causal": True},
             "dim": sizes["dim"]}
    return {"data": "digits", "chars": tok.chars, "model": model, "seed": seed,
            "steps": steps or sizes["steps"], "batch_size": 10, "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Contrastive pre-training (CLIP Fig. 3) on batches of :func:`pair_batch`. Returns (model, loss history)."""
    from refimpl.training import fit

    with torch.random.fork_rng(devices=[]):  # initial weights from config["seed"], global RNG untouched
        torch.manual_seed(config["seed"])
        model = CLIP(**config["model"])
    tok = CharTokenizer(config["chars"])
    (images, labels), _ = split()

    def loss_fn(model, generator):
        x, tokens = pair_batch(images, labels, tok, generator, config["model"]["text"]["max_len"])
        device = model.logit_scale.device
        return contrastive_loss(model(x.to(device), tokens.to(device)))

    history = fit(model, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="clip",
                  config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
                  resume=resume, progress=progress)
    return model, history
# --8<-- [end:train]


def load(ckpt) -> tuple[CLIP, CharTokenizer, dict]:
    """Rebuild a checkpoint's CLIP (on CPU, eval mode), its tokenizer (from the recorded ``chars``) and config."""
    def build(data):
        CharTokenizer(data.config["chars"])  # a config without its vocabulary is corrupt too
        return CLIP(**data.config["model"])

    model, data = load_module(ckpt, expect_model="clip", build=build)
    return model, CharTokenizer(data.config["chars"]), data.config


def held_out_accuracy(model: CLIP, tok: CharTokenizer, which: str = "both") -> float:
    """Zero-shot accuracy on the held-out digits (:func:`split`)."""
    _, (images, labels) = split()
    return zero_shot(model, tok, images, which).eq(labels).float().mean().item()


@torch.no_grad()
def similarity(model: CLIP, tok: CharTokenizer, which: str = "both") -> torch.Tensor:
    """(10, 10) cosine similarities: row k is the first held-out image of digit k, column j digit j's
    ensembled prompt embedding."""
    _, (images, labels) = split()
    first = torch.stack([(labels == k).nonzero()[0, 0] for k in range(10)])
    return (model.image_features(images[first]) @ class_embeddings(model, tok, which).T).cpu()
