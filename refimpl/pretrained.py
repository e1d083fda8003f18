"""Released weights in the from-scratch models: GPT-2, BERT, T5 and CLIP checkpoints in transformers' layout,
converted into :class:`refimpl.gpt.GPT`, :class:`refimpl.bert.BERT`, :class:`refimpl.t5.T5` and
:class:`refimpl.clip.CLIP`.

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), as ``save_pretrained`` writes it and the Hugging Face hub serves it: a local
directory, or a model name already in the local Hugging Face cache. Nothing is downloaded, and pickled weights
(``pytorch_model.bin``) are never read. The checkpoint's own tokenizer is loaded from the same directory by
transformers (``AutoTokenizer``, local files only).

What the released models do differently from the models trained on this site's notes is a constructor option of
our model, never a copy of it:

- GPT-2: ``GPT(activation="gelu_tanh")`` (transformers' "gelu_new"); its Conv1D layers store (in, out) weights,
  the transpose of nn.Linear's, and ``c_attn`` holds q, k, v side by side along the output axis.
- BERT: ``BERT(segments=2, eps=1e-12)`` (token-type embeddings E_A, E_B; LayerNorm epsilon); the block is post-LN
  as on our page.
- T5: nothing: t5-small is the model of our page (RMSNorm eps 1e-6, relative position buckets, unscaled
  attention, ReLU MLP, logits tied to the embedding and scaled by width^-1/2); the bias tables are stored in
  block 0 of each stack.
- CLIP (OpenAI's ViT-B/32 and its siblings): ``CLIP(image={"kind": "vit", ...}, pool=..., proj_bias=False)``: a
  :class:`refimpl.clip.ViT` image tower, a text tower of ``quick_gelu`` blocks read at the end-of-text token, and
  projections without bias. Images are prepared as ``CLIPImageProcessor`` prepares them (:func:`clip_pixels`, with
  the checkpoint's ``preprocessor_config.json``).

Every tensor is checked: one missing, one of the wrong shape, or one left over (another architecture: T5 v1.1's
gated MLP, an untied output layer) is refused with one line naming it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from refimpl.core import LineageError

#: refimpl paper command -> transformers ``model_type`` of the checkpoints it converts
MODEL_TYPES = {"gpt": "gpt2", "bert": "bert", "t5": "t5", "clip": "clip"}

#: the values transformers assumes for keys that a config.json leaves out (its config classes' defaults)
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
             "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
             "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False, "tie_word_embeddings": True},
    "bert": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2,
             "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "is_decoder": False,
             "add_cross_attention": False},
    "t5": {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": None,
           "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
           "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": True,
           "scale_decoder_outputs": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": None},
    "clip": {"projection_dim": 512, "logit_scale_init_value": 2.6592, "text_config": None, "vision_config": None,
             "text_config_dict": None, "vision_config_dict": None},
}
#: the same for the two towers of a CLIP checkpoint (CLIPTextConfig, CLIPVisionConfig)
CLIP_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                      "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                      "layer_norm_eps": 1e-5, "eos_token_id": 49407}
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                        "layer_norm_eps": 1e-5}


@dataclass
class Pretrained:
    """A converted checkpoint: our ``model`` (CPU, eval mode, float32), the checkpoint's transformers ``tokenizer``,
    its ``config`` (config.json with transformers' defaults filled in) and the directory it came from."""

    model: nn.Module
    tokenizer: Any
    config: dict[str, Any]
    path: Path


# --- finding and reading a checkpoint ------------------------------------------------------------------------

def locate(name: str) -> Path:
    """The checkpoint directory of ``name``: a local directory, else the snapshot of the model ``name`` in the local
    Hugging Face cache ($HF_HOME/hub; looked up, never downloaded)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LineageError(f"{name} is a file: pass a checkpoint directory (config.json + model.safetensors) "
                           "or a Hugging Face model name")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        raise LineageError("loading released weights needs transformers: pip install 'lineage[pretrained]'") from None
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid model name (e.g. a path that does not exist)
        found = None
    if isinstance(found, str):
        return Path(found).parent
    raise LineageError(f"{name!r} is not a local directory and not in the Hugging Face cache ({constants.HF_HUB_CACHE});"
                       f" nothing is downloaded here: run `hf download {name}` on a machine that is online (and copy "
                       "its cache over), or pass a local directory")


def read_config(path: Path, model_type: str) -> dict[str, Any]:
    """``config.json`` of the checkpoint at ``path``, with transformers' defaults for absent keys; refused unless it
    is a ``model_type`` checkpoint."""
    file = path / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LineageError(f"{path} has no config.json: not a transformers checkpoint") from None
    except (OSError, ValueError) as err:
        raise LineageError(f"{file} is not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise LineageError(f"{file} is not a JSON object")
    if raw.get("model_type") != model_type:
        raise LineageError(f"{path} holds a {raw.get('model_type')!r} checkpoint, not {model_type!r}")
    return {**DEFAULTS[model_type], **raw}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path`` (model.safetensors, or the shards its index names), as float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        try:
            files = [path / f for f in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise LineageError(f"{index} is not a readable shard index ({err})") from None
    elif any(path.glob("*.bin")):
        raise LineageError(f"{path} has only pickled weights (*.bin), which are never loaded here: use a "
                           "checkpoint with model.safetensors")
    else:
        raise LineageError(f"{path} has no model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors |= {k: v.float() for k, v in load_file(file).items()}
        except (SafetensorError, OSError, ValueError) as err:
            raise LineageError(f"{file} is truncated or corrupt ({str(err).splitlines()[0]})") from None
    return tensors


class _Source:
    """The checkpoint's tensors, handed out once each with a shape check; what is left over must be ``ignored``."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: Path):
        self.tensors, self.where, self.used = tensors, where, set()

    def __call__(self, key: str, *shape: int) -> torch.Tensor:
        if key not in self.tensors:
            raise LineageError(f"{self.where}: tensor {key} is missing (a truncated checkpoint, or another "
                               "architecture)")
        t = self.tensors[key]
        if tuple(t.shape) != shape:
            raise LineageError(f"{self.where}: tensor {key} has shape {tuple(t.shape)}, config.json implies {shape}")
        self.used.add(key)
        return t

    def tied(self, key: str, to: torch.Tensor) -> None:
        """A copy of a tied tensor may be stored; it must then equal the one we use (else the model is untied)."""
        if key in self.tensors:
            if not torch.equal(self(key, *to.shape), to):
                raise LineageError(f"{self.where}: {key} differs from the tensor it is tied to (an untied model, "
                                   "which this conversion does not support)")

    def finish(self, ignored: Callable[[str], bool]) -> None:
        left = sorted(k for k in self.tensors if k not in self.used and not ignored(k))
        if left:
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            raise LineageError(f"{self.where}: unexpected tensor {left[0]}{more} (another architecture?)")


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys without ``prefix`` (a head model saves its body under it, a body model without it)."""
    return {k.removeprefix(prefix): v for k, v in tensors.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    missing = set(model.state_dict()) ^ set(state)
    if missing:  # a conversion that forgets a parameter is a bug here, not a bad checkpoint
        raise AssertionError(f"conversion does not cover {sorted(missing)}")
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


def _require(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise LineageError(f"{path}: {what}")


# --- GPT-2 ------------------------------------------------------------------------------------------------------

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def gpt2(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path):
    """GPT-2 (``GPT2LMHeadModel`` or ``GPT2Model`` weights) -> :class:`refimpl.gpt.GPT`. Conv1D weights are
    (in, out): transposed into nn.Linear's (out, in); ``c_attn`` (width, 3 width) splits into q, k, v."""
    from refimpl.gpt import GPT

    c = config
    w, n_layer = c["n_embd"], c["n_layer"]
    _require(c["activation_function"] in GPT2_ACTIVATIONS, path, f"activation {c['activation_function']!r} is not "
             f"supported (choose from {', '.join(GPT2_ACTIVATIONS)})")
    _require(c["n_inner"] in (None, 4 * w), path, f"n_inner {c['n_inner']} is not 4 * n_embd")
    _require(c["scale_attn_weights"] and not c["scale_attn_by_inverse_layer_idx"], path,
             "attention scaling other than 1/sqrt(d_k) is not supported")
    _require(not c["add_cross_attention"] and c["tie_word_embeddings"], path,
             "cross-attention or an untied output layer is not supported")
    _require(w % c["n_head"] == 0, path, f"n_embd {w} is not divisible by n_head {c['n_head']}")
    model = GPT(c["vocab_size"], c["n_positions"], w, n_layer, c["n_head"],
                activation=GPT2_ACTIVATIONS[c["activation_function"]], eps=c["layer_norm_epsilon"])
    src = _Source(_strip(tensors, "transformer."), path)
    state = {"body.token.weight": src("wte.weight", c["vocab_size"], w),
             "body.position": src("wpe.weight", c["n_positions"], w),
             "body.ln_final.weight": src("ln_f.weight", w), "body.ln_final.bias": src("ln_f.bias", w)}
    for i in range(n_layer):
        h, b = f"h.{i}.", f"body.blocks.{i}."
        q, k, v = src(h + "attn.c_attn.weight", w, 3 * w).T.chunk(3)
        qb, kb, vb = src(h + "attn.c_attn.bias", 3 * w).chunk(3)
        state |= {b + "attn.q.weight": q, b + "attn.k.weight": k, b + "attn.v.weight": v,
                  b + "attn.q.bias": qb, b + "attn.k.bias": kb, b + "attn.v.bias": vb,
                  b + "attn.out.weight": src(h + "attn.c_proj.weight", w, w).T,
                  b + "attn.out.bias": src(h + "attn.c_proj.bias", w),
                  b + "mlp.0.weight": src(h + "mlp.c_fc.weight", w, 4 * w).T,
                  b + "mlp.0.bias": src(h + "mlp.c_fc.bias", 4 * w),
                  b + "mlp.2.weight": src(h + "mlp.c_proj.weight", 4 * w, w).T,
                  b + "mlp.2.bias": src(h + "mlp.c_proj.bias", w)}
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            state |= {b + f"{ours}.{p}": src(h + f"{theirs}.{p}", w) for p in ("weight", "bias")}
    src.tied("lm_head.weight", state["body.token.weight"])
    src.finish(lambda k: re.fullmatch(r"h\.\d+\.attn\.(masked_)?bias", k) is not None)  # causal-mask buffers
    return _load_state(model, state)


# --- BERT -------------------------------------------------------------------------------------------------------

def bert(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path):
    """BERT (``BertForMaskedLM`` / ``BertForPreTraining`` weights) -> :class:`refimpl.bert.BERT` with the segment
    embeddings and the checkpoint's LayerNorm epsilon. The pooler and the next-sentence head are not used."""
    from refimpl.bert import BERT

    c = config
    w, d, types, n_pos = c["hidden_size"], c["num_hidden_layers"], c["type_vocab_size"], c["max_position_embeddings"]
    _require(c["hidden_act"] == "gelu", path, f"activation {c['hidden_act']!r} is not supported (gelu only)")
    _require(c["intermediate_size"] == 4 * w, path, f"intermediate_size {c['intermediate_size']} is not 4 * hidden_size")
    _require(c["position_embedding_type"] == "absolute" and not c["is_decoder"] and not c["add_cross_attention"],
             path, "only the encoder with absolute positions is supported")
    _require(w % c["num_attention_heads"] == 0, path, "hidden_size is not divisible by num_attention_heads")
    model = BERT(c["vocab_size"], n_pos, w, d, c["num_attention_heads"], segments=types, eps=c["layer_norm_eps"])
    # old checkpoints name LayerNorm parameters gamma / beta (TensorFlow's names)
    renamed = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
               for k, v in _strip(tensors, "bert.").items()}
    if not any(k.startswith("cls.predictions.") for k in renamed):
        raise LineageError(f"{path} has no masked-LM head (cls.predictions.*): a BertModel without it cannot fill masks")
    src = _Source(renamed, path)

    def linear(theirs: str, ours: str, n_out: int, n_in: int) -> dict[str, torch.Tensor]:
        return {f"{ours}.weight": src(f"{theirs}.weight", n_out, n_in), f"{ours}.bias": src(f"{theirs}.bias", n_out)}

    def norm(theirs: str, ours: str) -> dict[str, torch.Tensor]:
        return {f"{ours}.{p}": src(f"{theirs}.{p}", w) for p in ("weight", "bias")}

    e = "embeddings."
    state = {"token.weight": src(e + "word_embeddings.weight", c["vocab_size"], w),
             "position.weight": src(e + "position_embeddings.weight", n_pos, w),
             "segment.weight": src(e + "token_type_embeddings.weight", types, w),
             **norm(e + "LayerNorm", "ln_embed"),
             **linear("cls.predictions.transform.dense", "head.0", w, w),
             **norm("cls.predictions.transform.LayerNorm", "head.2"),
             "out_bias": src("cls.predictions.bias", c["vocab_size"])}
    for i in range(d):
        t, o = f"encoder.layer.{i}.", f"blocks.{i}."
        state |= {**linear(t + "attention.self.query", o + "attn.q", w, w),
                  **linear(t + "attention.self.key", o + "attn.k", w, w),
                  **linear(t + "attention.self.value", o + "attn.v", w, w),
                  **linear(t + "attention.output.dense", o + "attn.out", w, w),
                  **norm(t + "attention.output.LayerNorm", o + "ln1"),  # post-LN: after the attention residual
                  **linear(t + "intermediate.dense", o + "mlp.0", 4 * w, w),
                  **linear(t + "output.dense", o + "mlp.2", w, 4 * w),
                  **norm(t + "output.LayerNorm", o + "ln2")}
    src.tied("cls.predictions.decoder.weight", state["token.weight"])
    src.tied("cls.predictions.decoder.bias", state["out_bias"])
    src.finish(lambda k: k.startswith(("pooler.", "cls.seq_relationship.")) or k == e + "position_ids")
    return _load_state(model, state)


# --- T5 ---------------------------------------------------------------------------------------------------------

def t5(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path):
    """T5 (``T5ForConditionalGeneration`` weights of the original T5: t5-small, t5-base, ...) ->
    :class:`refimpl.t5.T5`. Refused: T5 v1.1 / Flan-T5 (gated-GELU MLP, untied unscaled output layer)."""
    from refimpl.t5 import T5

    c = config
    w, heads, depth = c["d_model"], c["num_heads"], c["num_layers"]
    untied = c["tie_word_embeddings"] is False or c["scale_decoder_outputs"] is False
    _require(c["feed_forward_proj"] == "relu" and not untied, path,
             f"feed_forward_proj {c['feed_forward_proj']!r} / untied output layer: only the original T5 (ReLU MLP, "
             "tied output layer: t5-small, t5-base, ...) is supported, not T5 v1.1 or Flan-T5")
    _require(c["d_kv"] * heads == w, path, f"d_kv * num_heads = {c['d_kv'] * heads} is not d_model {w}")
    _require(c["d_ff"] % w == 0, path, f"d_ff {c['d_ff']} is not a multiple of d_model {w}")
    _require(c["num_decoder_layers"] in (None, depth), path, "encoder and decoder depths differ")
    _require(c["layer_norm_epsilon"] == 1e-6, path, f"layer_norm_epsilon {c['layer_norm_epsilon']} is not T5's 1e-6")
    buckets, v, ff = c["relative_attention_num_buckets"], c["vocab_size"], c["d_ff"]
    model = T5(v, w, depth, heads, ff // w, buckets, c["relative_attention_max_distance"])
    src = _Source(tensors, path)
    state = {"embed.weight": src("shared.weight", v, w),
             "encoder_norm.weight": src("encoder.final_layer_norm.weight", w),
             "decoder_norm.weight": src("decoder.final_layer_norm.weight", w)}
    for stack in ("encoder", "decoder"):
        bias = src(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", buckets, heads)
        state[f"{stack}_bias.embedding.weight"] = bias  # one table per stack, stored in its first block
        for i in range(depth):
            t, o = f"{stack}.block.{i}.layer.", f"{stack}.{i}."
            sublayers = [("SelfAttention", "attn", "ln1")] + ([("EncDecAttention", "cross", "ln_cross")]
                                                              if stack == "decoder" else [])
            for j, (theirs, ours, ln) in enumerate(sublayers):
                state |= {f"{o}{ours}.{p}.weight": src(f"{t}{j}.{theirs}.{q}.weight", w, w)
                          for p, q in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))}
                state[f"{o}{ln}.weight"] = src(f"{t}{j}.layer_norm.weight", w)
            j = len(sublayers)
            state |= {f"{o}mlp.0.weight": src(f"{t}{j}.DenseReluDense.wi.weight", ff, w),
                      f"{o}mlp.2.weight": src(f"{t}{j}.DenseReluDense.wo.weight", w, ff),
                      f"{o}ln2.weight": src(f"{t}{j}.layer_norm.weight", w)}
    for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        src.tied(copy, state["embed.weight"])
    # old checkpoints (t5-small's among them) carry a bias table for the decoder's cross-attention, which T5 never
    # uses: the encoder-decoder attention has no position bias
    src.finish(lambda k: k == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
    return _load_state(model, state)


# --- CLIP -------------------------------------------------------------------------------------------------------

#: transformers' ``hidden_act`` -> our Block's activation (OpenAI's CLIP: quick_gelu; some later CLIPs: exact GELU)
CLIP_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def clip_towers(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The text and vision configs of a CLIP config.json, with CLIPTextConfig's / CLIPVisionConfig's defaults; a
    ``*_config_dict`` (old checkpoints) overrides ``*_config``, as in transformers."""
    towers = []
    for name, defaults in (("text", CLIP_TEXT_DEFAULTS), ("vision", CLIP_VISION_DEFAULTS)):
        parts = [config[f"{name}_config"] or {}, config[f"{name}_config_dict"] or {}]
        if not all(isinstance(p, dict) for p in parts):
            raise TypeError(f"{name}_config is not a JSON object")
        towers.append({**defaults, **parts[0], **parts[1]})
    return towers[0], towers[1]


def clip(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path):
    """CLIP (``CLIPModel`` weights: openai/clip-vit-base-patch32, ...) -> :class:`refimpl.clip.CLIP` with a
    :class:`refimpl.clip.ViT` image tower. The text is read where transformers reads it: at the highest token id
    when the config's text ``eos_token_id`` is 2 (the value of the original configs, which predate the field:
    OpenAI's rule, <|endoftext|> is the last id), else at the first ``eos_token_id``."""
    from refimpl.clip import CLIP

    t, v = clip_towers(config)
    tw, vw, dim = t["hidden_size"], v["hidden_size"], config["projection_dim"]
    for name, tower in (("text", t), ("vision", v)):
        _require(tower["hidden_act"] in CLIP_ACTIVATIONS, path, f"{name} activation {tower['hidden_act']!r} is not "
                 f"supported (choose from {', '.join(CLIP_ACTIVATIONS)})")
        _require(tower["hidden_size"] % tower["num_attention_heads"] == 0, path,
                 f"{name} hidden_size is not divisible by num_attention_heads")
    size, patch = v["image_size"], v["patch_size"]
    _require(isinstance(size, int) and isinstance(patch, int) and size % patch == 0, path,
             f"image_size {size} is not a multiple of patch_size {patch} (square images and patches only)")
    image = {"kind": "vit", "image_size": size, "patch": patch, "width": vw, "depth": v["num_hidden_layers"],
             "heads": v["num_attention_heads"], "channels": v["num_channels"], "mlp_hidden": v["intermediate_size"],
             "activation": CLIP_ACTIVATIONS[v["hidden_act"]], "eps": v["layer_norm_eps"]}
    text = {"vocab_size": t["vocab_size"], "max_len": t["max_position_embeddings"], "width": tw,
            "depth": t["num_hidden_layers"], "heads": t["num_attention_heads"], "causal": True,
            "activation": CLIP_ACTIVATIONS[t["hidden_act"]], "eps": t["layer_norm_eps"],
            "mlp_hidden": t["intermediate_size"]}
    eos = t["eos_token_id"]
    _require(isinstance(eos, int), path, f"text eos_token_id {eos!r} is not one token id")
    model = CLIP(image, text, dim, pool="argmax" if eos == 2 else eos, proj_bias=False)
    src = _Source(tensors, path)

    def blocks(theirs: str, ours: str, depth: int, w: int, hidden: int) -> dict[str, torch.Tensor]:
        state = {}
        for i in range(depth):
            a, b = f"{theirs}.encoder.layers.{i}.", f"{ours}.blocks.{i}."
            for o, p in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj")):
                state |= {f"{b}attn.{o}.weight": src(f"{a}self_attn.{p}.weight", w, w),
                          f"{b}attn.{o}.bias": src(f"{a}self_attn.{p}.bias", w)}
            for o, p in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):  # pre-LN: before attention, before MLP
                state |= {f"{b}{o}.{q}": src(f"{a}{p}.{q}", w) for q in ("weight", "bias")}
            state |= {f"{b}mlp.0.weight": src(f"{a}mlp.fc1.weight", hidden, w),
                      f"{b}mlp.0.bias": src(f"{a}mlp.fc1.bias", hidden),
                      f"{b}mlp.2.weight": src(f"{a}mlp.fc2.weight", w, hidden),
                      f"{b}mlp.2.bias": src(f"{a}mlp.fc2.bias", w)}
        return state

    def norm(theirs: str, ours: str, w: int) -> dict[str, torch.Tensor]:
        return {f"{ours}.{q}": src(f"{theirs}.{q}", w) for q in ("weight", "bias")}

    te, ve = "text_model.embeddings.", "vision_model.embeddings."
    state = {"text.token.weight": src(te + "token_embedding.weight", t["vocab_size"], tw),
             "text.position": src(te + "position_embedding.weight", t["max_position_embeddings"], tw),
             **blocks("text_model", "text", t["num_hidden_layers"], tw, t["intermediate_size"]),
             **norm("text_model.final_layer_norm", "text.ln_final", tw),
             "text_proj.weight": src("text_projection.weight", dim, tw),
             "image.patches.weight": src(ve + "patch_embedding.weight", vw, v["num_channels"], patch, patch),
             "image.cls": src(ve + "class_embedding", vw),
             "image.position": src(ve + "position_embedding.weight", (size // patch) ** 2 + 1, vw),
             **norm("vision_model.pre_layrnorm", "image.ln_pre", vw),  # (sic: transformers' name)
             **blocks("vision_model", "image", v["num_hidden_layers"], vw, v["intermediate_size"]),
             **norm("vision_model.post_layernorm", "image.ln_post", vw),
             "image.proj.weight": src("visual_projection.weight", dim, vw),
             "logit_scale": src("logit_scale")}
    # our CLIP clips the scale at 100 (Sec. 2.5), transformers does not: a larger one would give other logits
    scale = float(state["logit_scale"])
    _require(scale <= math.log(100.0) + 1e-6, path,
             f"logit_scale exp({scale:.4f}) exceeds CLIP's cap of 100, which this model applies")
    src.finish(lambda k: k in (te + "position_ids", ve + "position_ids"))  # index buffers of old checkpoints
    return _load_state(model, state)


CONVERTERS = {"gpt2": gpt2, "bert": bert, "t5": t5, "clip": clip}


# --- loading ----------------------------------------------------------------------------------------------------

def load_model(paper: str, name: str) -> tuple[nn.Module, dict[str, Any], Path]:
    """Our model of ``paper`` ("gpt", "bert", "t5", "clip") with the weights of checkpoint ``name`` (a directory or a
    cached model name): ``(model, config, directory)``; no tokenizer, no transformers import."""
    model_type = MODEL_TYPES[paper]
    path = locate(name)
    config = read_config(path, model_type)
    try:
        model = CONVERTERS[model_type](config, read_tensors(path), path)
    except (TypeError, KeyError) as err:  # a config value of the wrong type (e.g. a string where a size belongs)
        raise LineageError(f"{path}/config.json has an unusable value ({err})") from None
    return model, config, path


def load_tokenizer(path: Path):
    """The checkpoint's own tokenizer (transformers' AutoTokenizer, local files only)."""
    try:
        import transformers
    except ImportError:
        raise LineageError("the checkpoint's tokenizer needs transformers: pip install 'lineage[pretrained]'") from None
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many kinds; the first line says which file is wrong
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LineageError(f"cannot load the tokenizer in {path}: {first[:300]}") from None


def load(paper: str, name: str) -> Pretrained:
    """:func:`load_model` and the checkpoint's tokenizer."""
    model, config, path = load_model(paper, name)
    return Pretrained(model, load_tokenizer(path), config, path)


# --- what each model does with its tokenizer ----------------------------------------------------------------------

def generate_text(pre: Pretrained, prompt: str, new_tokens: int, *, temperature: float = 1.0,
                  top_k: int | None = None, generator: torch.Generator | None = None) -> str:
    """GPT-2: the prompt and ``new_tokens`` tokens sampled after it by :func:`refimpl.gpt.generate`."""
    from refimpl.gpt import generate

    ids = pre.tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    if ids.numel() == 0:
        raise LineageError("the prompt is empty")
    out = generate(pre.model, ids, new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return pre.tokenizer.decode(out.tolist())


@torch.no_grad()
def fill_masks(pre: Pretrained, text: str, k: int = 5) -> tuple[list[list[tuple[str, float]]], str]:
    """BERT: every mask token in ``text`` (the tokenizer's, "[MASK]" for BERT) predicted from both sides in one
    forward pass. Returns, per mask, the ``k`` most probable tokens with their probabilities (special tokens never
    proposed), and the text with each mask replaced by its most probable token."""
    tok = pre.tokenizer
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    where = ids == tok.mask_token_id
    if not where.any():
        raise LineageError(f"the text has no {tok.mask_token} to fill")
    if ids.numel() > pre.model.max_len:
        raise LineageError(f"the text has {ids.numel()} tokens; the model reads at most {pre.model.max_len}")
    device = pre.model.out_bias.device
    logits = pre.model(ids[None].to(device))[0, where.to(device)].float().cpu()
    logits[:, tok.all_special_ids] = float("-inf")
    probs = logits.softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    candidates = [[(tok.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(ps, idx)]
                  for ps, idx in zip(top.values, top.indices)]
    filled = ids.clone()
    filled[where] = top.indices[:, 0]
    return candidates, tok.decode(filled.tolist(), skip_special_tokens=True)


SPAN = "<>"  # how a missing span is written on the command line (as `python -m refimpl t5 fill`)


@torch.no_grad()
def text_to_text(pre: Pretrained, text: str, max_new_tokens: int = 64) -> tuple[str, str | None]:
    """T5: greedy decoding of the output for the input ``text`` ("translate English to German: ...", ...), from the
    decoder start token to the end-of-sequence token. Each ``<>`` in ``text`` becomes sentinel i (<extra_id_i>),
    the span-corruption format T5 was pre-trained on. Returns the output (sentinels shown) and, if there were
    spans, the text with each span filled in (else None)."""
    tok, model, c = pre.tokenizer, pre.model, pre.config
    pieces = text.split(SPAN)
    sentinels = [f"<extra_id_{i}>" for i in range(len(pieces))]
    sentinel_ids = tok.convert_tokens_to_ids(sentinels)
    if len(pieces) > 1 and any(i is None or i == tok.unk_token_id for i in sentinel_ids):
        raise LineageError(f"the tokenizer has no sentinel tokens <extra_id_i> for {len(pieces) - 1} spans")
    source = "".join(p + (sentinels[i] if i < len(pieces) - 1 else "") for i, p in enumerate(pieces))
    device = model.embed.weight.device
    inputs = tok(source, return_tensors="pt")["input_ids"].to(device)
    memory = model.encode(inputs)
    start = c["decoder_start_token_id"] if c["decoder_start_token_id"] is not None else c["pad_token_id"]
    out = [start]
    for _ in range(max_new_tokens):
        token = int(model.decode(torch.tensor([out], device=device), memory)[0, -1].argmax())
        if token == c["eos_token_id"]:
            break
        out.append(token)
    generated = out[1:]
    output = tok.decode(generated, skip_special_tokens=False).strip()
    if len(pieces) == 1:
        return output, None
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in generated:  # sentinel i opens span i; other tokens go to the open span
        if token in sentinel_ids:
            current = spans.setdefault(sentinel_ids.index(token), [])
        elif current is not None:
            current.append(token)
    filled = pieces[0] + "".join(tok.decode(spans.get(i, []), skip_special_tokens=True).strip() + piece
                                 for i, piece in enumerate(pieces[1:]))
    return output, filled


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's per-channel mean and std of its training images
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EXAMPLES = ("flower.jpg", "china.jpg")  # the photos bundled with scikit-learn (sklearn.datasets.load_sample_image)


def image_settings(path: Path, image_size: int) -> dict[str, Any]:
    """How the checkpoint at ``path`` prepares an image (its ``preprocessor_config.json``, read as
    CLIPImageProcessor reads it; absent: CLIP's own settings for ``image_size``): the shortest side resized to
    ``size`` with PIL filter ``resample`` (3: bicubic), a centred ``crop`` x ``crop`` square, values times
    ``rescale`` (1/255), then (x - mean) / std per channel. Refused: a crop other than the model's input size,
    or switched-off steps."""
    file = path / "preprocessor_config.json"
    raw: dict[str, Any] = {}
    if file.is_file():
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LineageError(f"{file} is not readable JSON ({err})") from None
    size, crop = raw.get("size", {"shortest_edge": image_size}), raw.get("crop_size", image_size)
    size = size.get("shortest_edge") if isinstance(size, dict) else size  # old files: a bare int
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    settings = {"size": size, "crop": crop[0], "resample": raw.get("resample", 3),
                "rescale": raw.get("rescale_factor", 1 / 255), "mean": raw.get("image_mean", CLIP_MEAN),
                "std": raw.get("image_std", CLIP_STD)}
    _require(crop == (image_size, image_size) and isinstance(size, int) and size >= image_size, file,
             f"size {size} / crop_size {crop} do not make the model's {image_size}x{image_size} input")
    _require(all(raw.get(f"do_{step}", True) for step in ("resize", "center_crop", "rescale", "normalize")), file,
             "a preprocessing step is switched off; only CLIP's resize, crop, rescale and normalise are supported")
    _require(settings["resample"] in range(6), file, f"unknown resample filter {settings['resample']!r}")
    return settings


def open_image(name: str):
    """An image file as PIL opens it, turned upright by its EXIF orientation (as transformers' load_image does), or
    ``sklearn:flower.jpg`` / ``sklearn:china.jpg``, the two photos bundled with scikit-learn."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if name.startswith("sklearn:"):
        if name[8:] not in EXAMPLES:
            raise LineageError(f"scikit-learn bundles {' and '.join('sklearn:' + e for e in EXAMPLES)}, not {name}")
        import sklearn.datasets

        name = str(Path(sklearn.datasets.__file__).parent / "images" / name[8:])
    try:
        with Image.open(name) as image:
            return ImageOps.exif_transpose(image)  # a copy: the file is closed after this
    except FileNotFoundError:
        raise LineageError(f"image {name} not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise LineageError(f"{name} is not an image PIL can read ({str(err).splitlines()[0]})") from None


def clip_pixels(image, settings: dict[str, Any]) -> torch.Tensor:
    """(3, crop, crop) float32 input of CLIP's image tower, made as CLIPImageProcessor (PIL backend) makes it:
    RGB (transparent pixels composited on white), shortest side resized to ``size`` (the longer side to
    int(size * long / short)) by PIL, centred crop (offsets rounded down), times ``rescale`` in float64 and
    rounded to float32, then (x - mean) / std in float32 (:func:`image_settings`)."""
    import numpy as np
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    w, h, size, crop = image.width, image.height, settings["size"], settings["crop"]
    short, long = min(w, h), max(w, h)
    w, h = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
    image = image.resize((w, h), resample=settings["resample"])
    top, left = (h - crop) // 2, (w - crop) // 2
    x = torch.from_numpy(np.asarray(image)[top:top + crop, left:left + crop].copy()).permute(2, 0, 1)
    x = (x.double() * settings["rescale"]).float()
    mean, std = (torch.tensor(settings[k], dtype=torch.float32)[:, None, None] for k in ("mean", "std"))
    return (x - mean) / std


@torch.no_grad()
def zero_shot_labels(pre: Pretrained, image, labels: list[str]) -> list[tuple[str, float]]:
    """CLIP zero-shot classification (Sec. 3.1.2) of a PIL ``image`` among ``labels`` (sentences such as "a photo of
    a cat"): softmax over the labels of exp(logit_scale) cos(f(image), g(label)). Each label is tokenized by the
    checkpoint's tokenizer (start and end-of-text tokens added) and padded with the end-of-text token. Returns
    (label, probability) in the order given."""
    model, tok = pre.model, pre.tokenizer
    if not labels or any(not label.strip() for label in labels):
        raise LineageError("--labels needs one or more non-empty labels, separated by commas")
    rows = [tok(label)["input_ids"] for label in labels]
    longest = max(map(len, rows))
    if longest > model.text.max_len:
        raise LineageError(f"a label has {longest} tokens; the text tower reads at most {model.text.max_len}")
    ids = torch.tensor([row + [tok.eos_token_id] * (longest - len(row)) for row in rows])
    device = model.logit_scale.device
    pixels = clip_pixels(image, image_settings(pre.path, model.image.image_size))[None].to(device)
    probs = model(pixels, ids.to(device))[0].float().softmax(-1).cpu()
    return list(zip(labels, probs.tolist()))
