"""Tiny random transformers checkpoints (GPT-2, BERT, T5, CLIP), built and saved locally: the stand-ins for released
weights in tests/test_pretrained.py and for the page commands that name a released model (tests/test_docs_commands.py).

Each has a small tokenizer built in code (word-level; CLIP's a byte-level BPE; nothing comes from the hub) and config
values that differ from the defaults where refimpl has a matching option (LayerNorm epsilon, sizes, positions,
segments, buckets), so that a conversion that ignored one would not pass by accident. All weights, LayerNorm scales
and biases included, are drawn from N(0, 0.4^2): a LayerNorm weight mapped onto a bias (or a bias dropped) changes the
output.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: words of the tiny tokenizers: enough for the page commands' prompts; anything else is <unk>
WORDS = ("the a of is are in to and . , : ? model models diffusion language paris france capital city house "
         "wonderful translate english german dog cat walks park sat on mat noise image text").split()

#: the page commands' model names -> tiny checkpoint builder name (tests/test_docs_commands.py)
PAGE_MODELS = {"openai-community/gpt2": "gpt2", "google-bert/bert-base-uncased": "bert", "google-t5/t5-small": "t5",
               "openai/clip-vit-base-patch32": "clip"}


def _word_level(specials: list[str], added: list[str] = ()):
    """A lower-casing, whitespace/punctuation-splitting word-level tokenizer (tokenizers library): ``specials``,
    then ``added`` (tokens matched before splitting, e.g. T5's sentinels), then :data:`WORDS`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {w: i for i, w in enumerate([*specials, *added, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>" if "<unk>" in vocab else "[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([*added, *specials])
    return tok, len(vocab)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g))
    return model.eval()


def gpt2(path: Path, seed: int = 0):
    """GPT2LMHeadModel: 2 layers, width 24, 3 heads, 37 positions, tanh GELU, LayerNorm eps 1e-2. Returns it."""
    import transformers

    tok, vocab = _word_level(["<unk>", "<|endoftext|>"])
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=37, n_embd=24, n_layer=2, n_head=3,
                                     activation_function="gelu_new", layer_norm_epsilon=1e-2, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    model = _randomize(transformers.GPT2LMHeadModel(config), seed)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|endoftext|>",
                                         eos_token="<|endoftext|>").save_pretrained(path)
    return model


def bert(path: Path, seed: int = 0):
    """BertForMaskedLM: 2 layers, width 24, 3 heads, 33 positions, 3 segment types, LayerNorm eps 1e-2."""
    import transformers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file = path / "vocab-source.txt"
    path.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join([*specials, *WORDS]) + "\n", encoding="utf-8")
    config = transformers.BertConfig(vocab_size=len(specials) + len(WORDS), hidden_size=24, num_hidden_layers=2,
                                     num_attention_heads=3, intermediate_size=96, max_position_embeddings=33,
                                     type_vocab_size=3, layer_norm_eps=1e-2, hidden_act="gelu",
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = _randomize(transformers.BertForMaskedLM(config), seed)
    model.save_pretrained(path)
    transformers.BertTokenizer(str(vocab_file)).save_pretrained(path)
    vocab_file.unlink()
    return model


def t5(path: Path, seed: int = 0):
    """T5ForConditionalGeneration: 2 + 2 layers, width 24, 3 heads of 8, d_ff 72 (3x), 12 buckets up to offset 20,
    8 sentinels; the tokenizer appends </s> as T5's does."""
    import transformers
    from tokenizers import processors

    sentinels = [f"<extra_id_{i}>" for i in range(8)]
    tok, vocab = _word_level(["<pad>", "</s>", "<unk>"], sentinels)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    config = transformers.T5Config(vocab_size=vocab, d_model=24, d_kv=8, num_heads=3, d_ff=72, num_layers=2,
                                   relative_attention_num_buckets=12, relative_attention_max_distance=20,
                                   feed_forward_proj="relu", dropout_rate=0.0, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)
    model = _randomize(transformers.T5ForConditionalGeneration(config), seed)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                         additional_special_tokens=sentinels).save_pretrained(path)
    return model


def clip_bpe(words: tuple[str, ...] = (*WORDS, "photo", "flower", "pagoda", "temple")
             ) -> tuple[dict[str, int], list[str]]:
    """A tiny byte-level BPE vocabulary in CLIP's layout: the 256 byte symbols, the same with the end-of-word mark
    </w>, one merge chain per word (left to right: "p h", "ph o", ..., "phot o</w>", so each word becomes one token),
    then <|startoftext|> and <|endoftext|> as the two highest ids. Any text tokenizes (unknown words into
    pieces), and the end-of-text token is the highest id, as OpenAI's CLIP assumes."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens, merges = [*alphabet, *(c + "</w>" for c in alphabet)], []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def clip(path: Path, seed: int = 0):
    """CLIPModel: a ViT image tower (32x32 images, 8x8 patches, width 24, 3 heads, MLP 96, 2 layers), a text tower
    (width 16, 2 heads, MLP 40 = 2.5x, 2 layers, 20 positions), quick_gelu, LayerNorm eps 1e-3, projections to 12,
    logit scale 30 (not 1 / 0.07); the text eos_token_id is 2, as in OpenAI's released configs (read at the highest
    id). Its tokenizer is a CLIPTokenizer on a tiny BPE vocabulary (:func:`clip_bpe`, written as vocab.json and
    merges.txt); its image processor resizes the shortest side to 40 and crops 32, with its own mean and std."""
    import json
    import math

    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab, merges = clip_bpe()
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=20, hidden_act="quick_gelu", layer_norm_eps=1e-3, bos_token_id=len(vocab) - 2,
                eos_token_id=2, pad_token_id=1)
    vision = dict(hidden_size=24, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=32,
                  patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-3)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
    model = _randomize(transformers.CLIPModel(config), seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    transformers.CLIPTokenizer.from_pretrained(str(path)).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                          image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return model


BUILDERS = {"gpt2": gpt2, "bert": bert, "t5": t5, "clip": clip}


def hf_cache(home: Path, models: dict[str, str]) -> dict[str, str]:
    """A Hugging Face cache under ``home`` (HF_HOME) holding, for each ``name -> builder``, a tiny checkpoint as the
    snapshot of model ``name`` (the layout `hf download` writes: refs/main names the snapshot). Returns the
    environment variables that point a process at it, offline."""
    import transformers

    transformers.logging.set_verbosity_error()
    for name, builder in models.items():
        repo = home / "hub" / ("models--" + name.replace("/", "--"))
        if not (repo / "refs" / "main").exists():
            commit = "0" * 40
            BUILDERS[builder](repo / "snapshots" / commit)
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text(commit)
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
