"""refimpl.pretrained: transformers checkpoints of GPT-2, BERT, T5 and CLIP in the from-scratch models.

Tiny random checkpoints (tests/tiny_checkpoints.py: built and saved here, tokenizers built in code, nothing from the
hub) go through the same loading code as released weights: our model gives transformers' logits, the commands print
what transformers generates, and a wrong, truncated or absent checkpoint is refused with one line (exit 2).

Tolerance of the logit comparisons, float32 (unit roundoff u = 2^-24 = 6e-8): the two implementations compute the
same sums in different orders (fused vs split q/k/v, scaling before or after the product, their LayerNorm/GELU
calls). A sum of n terms reordered moves by at most n u times the sum of |terms|; the longest sums here have
n = 4 * 24 = 96 terms (the MLP's second layer), so gamma_n = 96 u = 5.7e-6 relative to the terms' scale, which is
about the logits' scale for these random weights. Two layers of attention + MLP and the output layer are ~5 such
stages; the norms rescale in between, so the errors add rather than multiply: 5 * 5.7e-6 < 3e-5 of the largest
|logit|. Measured: ~5e-7 of it. A conversion mistake is far larger: the exact GELU instead of GPT-2's tanh
approximation, the smallest one here, moves the logits by ~3e-4 of their scale (checked below to exceed 3x the
tolerance).

CLIP: the towers' outputs are L2-normalised, so the same REL_TOL bounds each embedding's error relative to its norm,
1 (the longest reordered sum is again 96 terms, the vision MLP's second layer; the patch convolution, LayerNorms and
embeddings are the same torch calls on the same numbers, exact). A logit is s cos(f, g) with s = 30, and
|cos(f', g') - cos(f, g)| <= |f' - f| + |g' - g| <= 2 sqrt(12) REL_TOL (12 components each within REL_TOL), so the
logits get s * 2 sqrt(12) REL_TOL = 6.2e-3; measured: ~1e-7 on the embeddings, ~4e-6 on the logits. The images are
prepared exactly: CLIPImageProcessor's PIL backend and ours make the same PIL resize and the same float32
operations, so the pixels are compared bit for bit.
"""

import json
import math
import os
import shutil

import pytest
import torch
import transformers  # a test dependency: if it is missing these tests must fail, not skip
from clitools import assert_refused, refimpl
from safetensors.torch import load_file, save_file
from tiny_checkpoints import bert as tiny_bert
from tiny_checkpoints import clip as tiny_clip
from tiny_checkpoints import gpt2 as tiny_gpt2
from tiny_checkpoints import hf_cache
from tiny_checkpoints import t5 as tiny_t5

from refimpl import pretrained
from refimpl.bert import BERT
from refimpl.clip import CLIP
from refimpl.core import LineageError
from refimpl.gpt import GPT

transformers.logging.set_verbosity_error()
REL_TOL = 3e-5  # of the largest |logit|: see the module docstring


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (checkpoint directory, transformers model) of the three tiny checkpoints."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: (root / name, build(root / name)) for name, build in
            (("gpt2", tiny_gpt2), ("bert", tiny_bert), ("t5", tiny_t5), ("clip", tiny_clip))}


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The tolerance used, after checking that ours is within it of theirs."""
    tol = REL_TOL * float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) < tol
    return tol


# --- the same logits as transformers ------------------------------------------------------------------------

def test_gpt2_logits_match_transformers_and_need_the_tanh_gelu(tiny):
    path, hf = tiny["gpt2"]
    ours, config, _ = pretrained.load_model("gpt", str(path))
    assert isinstance(ours, GPT) and ours.config["activation"] == "gelu_tanh" and ours.config["eps"] == 1e-2
    ids = torch.randint(0, config["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(0))  # all 37 positions
    with torch.no_grad():
        theirs = hf(ids).logits
        tol = _close(ours(ids), theirs)
        exact = GPT(config["vocab_size"], 37, 24, 2, 3, eps=1e-2)  # same weights, the exact GELU
        exact.load_state_dict(ours.state_dict())
        assert float((exact.eval()(ids) - theirs).abs().max()) > 3 * tol  # the tolerance would catch the mistake
    assert float(theirs.abs().max()) > 1  # logits of order 1, not near-zero


def test_bert_logits_match_transformers_with_segments_padding_and_eps(tiny):
    path, hf = tiny["bert"]
    ours, config, _ = pretrained.load_model("bert", str(path))
    assert isinstance(ours, BERT) and ours.config["segments"] == 3 and ours.config["eps"] == 1e-2
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab_size"], (3, 33), generator=g)
    segments = torch.randint(0, 3, (3, 33), generator=g)  # every segment embedding is used
    pad = torch.zeros(3, 33, dtype=torch.bool)
    pad[1, 20:] = True
    with torch.no_grad():
        theirs = hf(input_ids=ids, token_type_ids=segments, attention_mask=(~pad).long()).logits
        tol = _close(ours(ids, pad, segments)[~pad], theirs[~pad])
        default_eps = BERT(config["vocab_size"], 33, 24, 2, 3, segments=3)  # same weights, eps 1e-5
        default_eps.load_state_dict(ours.state_dict())
        assert float((default_eps.eval()(ids, pad, segments) - theirs)[~pad].abs().max()) > 3 * tol
    assert float(theirs.abs().max()) > 1


def test_t5_logits_match_transformers_beyond_the_last_bucket(tiny):
    """Inputs of 60 tokens reach offsets past max_distance = 20 (the catch-all bucket); row 1 is padded."""
    path, hf = tiny["t5"]
    ours, config, _ = pretrained.load_model("t5", str(path))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(3, config["vocab_size"], (2, 60), generator=g), torch.randint(3, config["vocab_size"], (2, 45), generator=g)
    pad = torch.zeros(2, 60, dtype=torch.bool)
    pad[1, 40:] = True
    with torch.no_grad():
        _close(ours(x, y, pad), hf(input_ids=x, attention_mask=(~pad).long(), decoder_input_ids=y).logits)


def _pil_processor(path=None):
    """transformers' CLIP image processor with the PIL backend (the checkpoint's settings, or CLIP's defaults)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(path) if path else CLIPImageProcessorPil()


def _clip_inputs(path, labels):
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(labels, padding=True, return_tensors="pt")  # padded with <|endoftext|>, CLIP's pad token
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return enc, pixels


def test_clip_embeddings_and_logits_match_transformers_and_need_quick_gelu(tiny):
    path, hf = tiny["clip"]
    ours, _, _ = pretrained.load_model("clip", str(path))
    assert isinstance(ours, CLIP) and ours.pool == "argmax" and ours.config["text"]["eps"] == 1e-3
    enc, pixels = _clip_inputs(path, ["a photo of a cat", "the dog sat on the mat .", "pagoda", "a photo of a flower"])
    tol = 2 * 12 ** 0.5 * REL_TOL * math.exp(hf.logit_scale.item())  # see the module docstring
    with torch.no_grad():
        theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
        f, g = ours.image_features(pixels), ours.text_features(enc["input_ids"])
        assert float((f - theirs.image_embeds).abs().max()) < REL_TOL
        assert float((g - theirs.text_embeds).abs().max()) < REL_TOL
        assert float((ours(pixels, enc["input_ids"]) - theirs.logits_per_image).abs().max()) < tol
        exact = CLIP({**ours.config["image"], "activation": "gelu"}, {**ours.config["text"], "activation": "gelu"}, 12,
                     pool="argmax", proj_bias=False)  # same weights, the exact GELU in both towers
        exact.load_state_dict(ours.state_dict())
        assert float((exact.eval()(pixels, enc["input_ids"]) - theirs.logits_per_image).abs().max()) > 3 * tol
    assert float(theirs.logits_per_image.abs().max()) > 1  # logits of order 1, not near-zero


def test_clip_reads_the_text_where_transformers_does(tiny, tmp_path):
    """eos_token_id 2 (the released configs): at the highest id; another eos_token_id: at its first occurrence.
    Token rows chosen so that the two rules disagree (the highest id is not the end-of-text token)."""
    path = _copy(tiny["clip"][0], tmp_path)
    ids = torch.tensor([[7, 40, 5, 9, 5, 3], [600, 5, 2, 5, 1, 0]])  # 5 plays the end-of-text token
    embeds = {}
    for eos in (2, 5):
        _edit_config(path, text_config={**json.loads((path / "config.json").read_text())["text_config"],
                                        "eos_token_id": eos})
        ours, _, _ = pretrained.load_model("clip", str(path))
        hf = transformers.CLIPModel.from_pretrained(path).eval()
        with torch.no_grad():
            embeds[eos] = hf.get_text_features(input_ids=ids).pooler_output
            assert float((ours.text_features(ids) - embeds[eos] / embeds[eos].norm(dim=-1, keepdim=True))
                         .abs().max()) < REL_TOL
    assert float((embeds[2] - embeds[5]).abs().max()) > 1e-2


def _test_images():
    """A random RGB photo-sized image, a portrait with an alpha channel, a small grayscale one (upscaled)."""
    from PIL import Image

    g = torch.Generator().manual_seed(6)
    rgb = (torch.rand(257, 300, 3, generator=g) * 255).byte().numpy()
    rgba = (torch.rand(80, 50, 4, generator=g) * 255).byte().numpy()
    gray = (torch.rand(21, 33, generator=g) * 255).byte().numpy()
    return [Image.fromarray(rgb), Image.fromarray(rgba, "RGBA"), Image.fromarray(gray, "L")]


def test_clip_pixels_equal_clip_image_processor_bit_for_bit(tiny, tmp_path):
    """The checkpoint's settings (shortest side 40, crop 32, its own mean and std), the same written in the old
    format (bare ints), and CLIP's defaults (224) when there is no preprocessor_config.json."""
    path = tiny["clip"][0]
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((path / "preprocessor_config.json").read_text())
    (old / "preprocessor_config.json").write_text(json.dumps({**config, "size": 40, "crop_size": 32}))
    bare = tmp_path / "bare"
    bare.mkdir()
    for where, processor, size in ((path, _pil_processor(path), 32), (old, _pil_processor(old), 32),
                                   (bare, _pil_processor(), 224)):
        settings = pretrained.image_settings(where, size)
        for image in _test_images():
            theirs = processor(image, return_tensors="pt")["pixel_values"][0]
            assert torch.equal(pretrained.clip_pixels(image, settings), theirs)
    with pytest.raises(LineageError, match="do not make the model's 48x48 input"):
        pretrained.image_settings(path, 48)


# --- the commands, end to end ----------------------------------------------------------------------------------

def test_gpt_command_generates_what_transformers_generates_from_the_cache(tiny, tmp_path):
    """A model name is looked up in the Hugging Face cache ($HF_HOME; offline): greedy decoding (--top-k 1) of 6
    tokens gives transformers' greedy continuation."""
    env = hf_cache(tmp_path / "hf", {"someone/tiny-gpt2": "gpt2"})
    snapshot = next((tmp_path / "hf" / "hub" / "models--someone--tiny-gpt2" / "snapshots").iterdir())
    hf = transformers.GPT2LMHeadModel.from_pretrained(snapshot).eval()
    tok = transformers.AutoTokenizer.from_pretrained(snapshot)
    prompt = "the diffusion model is"
    with torch.no_grad():
        expected = hf.generate(tok(prompt, return_tensors="pt")["input_ids"], max_new_tokens=6, do_sample=False,
                               pad_token_id=0)
    result = refimpl("gpt", "from-pretrained", "someone/tiny-gpt2", "--prompt", prompt, "--tokens", "6", "--top-k",
                     "1", cwd=tmp_path, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == tok.decode(expected[0].tolist())


def test_bert_command_fills_the_mask_with_transformers_top_token(tiny, tmp_path):
    path, hf = tiny["bert"]
    tok = transformers.AutoTokenizer.from_pretrained(path)
    text = "paris is the [MASK] of france ."
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**enc).logits[0, enc["input_ids"][0] == tok.mask_token_id][0]
    logits[tok.all_special_ids] = float("-inf")
    best = tok.convert_ids_to_tokens(int(logits.argmax()))
    filled = enc["input_ids"][0].masked_fill(enc["input_ids"][0] == tok.mask_token_id, int(logits.argmax()))
    result = refimpl("bert", "from-pretrained", str(path), "--text", text, "--top-k", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, greedy = result.stdout.strip().splitlines()
    assert first.startswith(f"[MASK] #1: {best!r} ") and first.count("'") == 6  # three candidates
    assert greedy == f"greedy: {tok.decode(filled.tolist(), skip_special_tokens=True)}"


def test_t5_command_decodes_what_transformers_decodes_and_fills_spans(tiny, tmp_path):
    path, hf = tiny["t5"]
    tok = transformers.AutoTokenizer.from_pretrained(path)
    text = "translate english to german : the house is wonderful ."
    with torch.no_grad():
        expected = hf.generate(tok(text, return_tensors="pt")["input_ids"], max_new_tokens=8, do_sample=False)[0, 1:]
    expected = expected[expected != 1]  # we stop before </s>, transformers keeps it
    result = refimpl("t5", "from-pretrained", str(path), "--text", text, "--max-new-tokens", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"output: {tok.decode(expected.tolist(), skip_special_tokens=False).strip()}"


def test_clip_command_prints_transformers_zero_shot_probabilities(tiny, tmp_path):
    """A PNG written here, three labels: the command prints their probabilities, most probable first, equal to the
    softmax of transformers' logits_per_image (printed to 4 decimals: 5e-5, plus the logits' tolerance, which moves
    a probability by at most tol / 2)."""
    path, hf = tiny["clip"]
    image = _test_images()[0]
    image.save(tmp_path / "photo.png")
    labels = ["a photo of a cat", "a photo of a dog", "a photo of a flower"]
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = hf(**enc, pixel_values=_pil_processor(path)(image, return_tensors="pt")["pixel_values"]
                   ).logits_per_image[0].softmax(-1)
    result = refimpl("clip", "from-pretrained", str(path), "--image", "photo.png", "--labels", ",".join(labels),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = [line.split("  ", 1) for line in result.stdout.strip().splitlines()]
    assert [label for _, label in printed] == [labels[i] for i in probs.argsort(descending=True)]
    tol = 5e-5 + 12 ** 0.5 * REL_TOL * math.exp(hf.logit_scale.item())
    for p, label in printed:
        assert abs(float(p) - float(probs[labels.index(label)])) < tol
    assert float(probs.max() - probs.min()) > 0.05  # the labels are told apart


def test_clip_command_reads_scikit_learns_photos_and_refuses_bad_input(tiny, tmp_path):
    path = str(tiny["clip"][0])
    flower = pretrained.open_image("sklearn:flower.jpg")
    assert flower.size == (640, 427) and flower.mode == "RGB"
    result = refimpl("clip", "from-pretrained", path, "--labels", "a flower,a pagoda", cwd=tmp_path)  # the default
    assert result.returncode == 0 and len(result.stdout.strip().splitlines()) == 2, result.stderr
    (tmp_path / "notes.txt").write_text("not an image")
    for args, fragment in ((["--image", "missing.png"], "image missing.png not found"),
                           (["--image", "notes.txt"], "is not an image PIL can read"),
                           (["--image", "sklearn:cat.jpg"], "scikit-learn bundles"),
                           (["--labels", "a cat,,a dog"], "non-empty labels"),
                           (["--labels", " ".join(["cat"] * 30)], "the text tower reads at most 20")):
        argv = ["--labels", "a cat,a dog", *args] if args[0] == "--image" else args
        assert_refused(refimpl("clip", "from-pretrained", path, *argv, cwd=tmp_path), fragment)


class _Scripted(torch.nn.Module):
    """A stand-in T5 whose decoder emits a fixed token sequence (to check the span bookkeeping exactly)."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.embed = script, vocab, torch.nn.Embedding(1, 1)
        self.seen = None

    def encode(self, inputs):
        self.seen = inputs
        return inputs

    def decode(self, decoder_inputs, memory):
        logits = torch.zeros(1, decoder_inputs.shape[1], self.vocab)
        logits[0, -1, self.script[decoder_inputs.shape[1] - 1]] = 1.0
        return logits


def test_t5_spans_become_sentinels_and_the_output_fills_them(tiny):
    """`<>` i becomes <extra_id_i> in the input; the output "<extra_id_0> dog <extra_id_1> the <extra_id_2>" fills
    span 0 with "dog" and span 1 with "the"; decoding stops at </s>, which is not shown."""
    pre = pretrained.load("t5", str(tiny["t5"][0]))
    tok = pre.tokenizer
    s0, s1, s2 = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"])
    dog, the = tok.convert_tokens_to_ids(["dog", "the"])
    pre.model = _Scripted([s0, dog, s1, the, s2, 1, dog, dog], pre.config["vocab_size"])
    output, filled = pretrained.text_to_text(pre, "the <> walks in <> park .")
    assert pre.model.seen[0].tolist() == tok("the <extra_id_0> walks in <extra_id_1> park .")["input_ids"]
    assert tok.convert_ids_to_tokens(pre.model.seen[0].tolist())[1] == "<extra_id_0>"
    assert output == "<extra_id_0> dog <extra_id_1> the <extra_id_2>"
    assert filled == "the dog walks in the park ."


# --- refused with one line -------------------------------------------------------------------------------------

def _copy(path, tmp_path, name: str = "bad"):
    out = tmp_path / name
    shutil.copytree(path, out)
    return out


def _edit_tensors(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def _edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_vision(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    _edit_config(path, vision_config={**config["vision_config"], **changes})


@pytest.mark.parametrize("paper,base,change,message", [
    ("gpt", "gpt2", lambda p: _edit_tensors(p, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")),
     "tensor h.1.mlp.c_fc.bias is missing"),
    ("gpt", "gpt2", lambda p: _edit_tensors(p, lambda t: t.update({"transformer.wpe.weight": t["transformer.wpe.weight"][:-1]})),
     "tensor wpe.weight has shape (36, 24), config.json implies (37, 24)"),
    ("gpt", "gpt2", lambda p: _edit_config(p, n_embd=48), "has shape"),
    ("gpt", "bert", lambda p: None, "holds a 'bert' checkpoint, not 'gpt2'"),
    ("gpt", "gpt2", lambda p: _edit_tensors(p, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1})),
     "lm_head.weight differs from the tensor it is tied to"),
    ("gpt", "gpt2", lambda p: _edit_config(p, activation_function="relu"), "activation 'relu' is not supported"),
    ("bert", "bert", lambda p: _edit_tensors(p, lambda t: [t.pop(k) for k in list(t) if k.startswith("cls.")]),
     "has no masked-LM head"),
    ("t5", "t5", lambda p: _edit_tensors(p, lambda t: t.update({
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": t["encoder.block.0.layer.1.DenseReluDense.wi.weight"].clone()})),
     "unexpected tensor encoder.block.0.layer.1.DenseReluDense.wi_0.weight"),
    ("t5", "t5", lambda p: _edit_config(p, feed_forward_proj="gated-gelu"), "not T5 v1.1 or Flan-T5"),
    ("t5", "t5", lambda p: (p / "config.json").unlink(), "has no config.json"),
    ("t5", "t5", lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"), "only pickled weights"),
    ("clip", "clip", lambda p: _edit_tensors(p, lambda t: t.pop("vision_model.post_layernorm.bias")),
     "tensor vision_model.post_layernorm.bias is missing"),
    ("clip", "clip", lambda p: _edit_tensors(p, lambda t: t.update({"visual_projection.bias": torch.zeros(12)})),
     "unexpected tensor visual_projection.bias"),
    ("clip", "clip", lambda p: _edit_vision(p, patch_size=16),
     "tensor vision_model.embeddings.patch_embedding.weight has shape (24, 3, 8, 8), config.json implies "
     "(24, 3, 16, 16)"),
    ("clip", "clip", lambda p: _edit_vision(p, hidden_act="relu"), "vision activation 'relu' is not supported"),
    ("clip", "clip", lambda p: _edit_tensors(p, lambda t: t.update({"logit_scale": torch.tensor(5.0)})),
     "exceeds CLIP's cap of 100"),
    ("clip", "t5", lambda p: None, "holds a 't5' checkpoint, not 'clip'"),
])
def test_wrong_checkpoints_are_refused(tiny, tmp_path, paper, base, change, message):
    path = _copy(tiny[base][0], tmp_path)
    change(path)
    with pytest.raises(LineageError) as err:
        pretrained.load_model(paper, str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_checkpoint_is_refused_by_the_command(tiny, tmp_path):
    path = _copy(tiny["gpt2"][0], tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_refused(refimpl("gpt", "from-pretrained", str(path), "--prompt", "the", cwd=tmp_path),
                   "model.safetensors is truncated or corrupt")


def test_a_truncated_clip_checkpoint_is_refused_by_the_command(tiny, tmp_path):
    path = _copy(tiny["clip"][0], tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_refused(refimpl("clip", "from-pretrained", str(path), "--labels", "a cat,a dog", cwd=tmp_path),
                   "model.safetensors is truncated or corrupt")


def test_a_model_that_is_not_cached_is_refused_offline_with_how_to_get_it(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    assert_refused(refimpl("t5", "from-pretrained", "google-t5/t5-small", "--text", "x", cwd=tmp_path, env=env),
                   "not in the Hugging Face cache", "hf download google-t5/t5-small", "or pass a local directory")
