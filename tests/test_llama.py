"""The modern decoder (refimpl.llama) and its switches on refimpl.transformer's block: RoPE's relative-position
property, grouped-query attention against multi-head and multi-query attention, SwiGLU, the KV cache's exactness,
parity with transformers' LlamaForCausalLM (weights copied across), training on the notes (the cached quick run of
figures/zoo/llama.py and its GPT-style baseline) and the command line."""

import math

import pytest
import torch
import transformers  # a test dependency: if it is missing these tests must fail, not skip

from clitools import assert_generate_refuses
from refimpl import gpt, llama
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.llama import Llama, generate, kv_cache_size, swiglu_hidden
from refimpl.transformer import MultiHeadAttention, SwiGLU, attention, rotary_tables, rotate

torch.set_num_threads(1)
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_rope_scores_depend_only_on_the_offset():
    # (R_m q) . (R_n k) = q . R_{n-m} k: shifting every position by the same c leaves all scores unchanged. Float64
    # tables and vectors: rounding of a d = 16 dot product of O(1) values, 1e-12.
    # Shifting by 1000 rotates by angles up to 1000 rad: float64 rounding of cos/sin there is ~1e-13, so 1e-10.
    q, k = (torch.randn(1, 1, 12, 16, generator=_gen(seed), dtype=F64) for seed in (0, 1))
    positions = torch.arange(12)

    def scores_at(c):
        tables = rotary_tables(positions + c, 16)
        return rotate(q, tables) @ rotate(k, tables).transpose(-1, -2)

    scores = [scores_at(c) for c in (0, 7, 1000)]
    assert (scores[1] - scores[0]).abs().max() < 1e-12 and (scores[2] - scores[0]).abs().max() < 1e-10
    unrotated = q @ k.transpose(-1, -2)
    assert (scores[0] - unrotated).abs().max() > 0.1  # the rotation does change the scores
    assert torch.allclose(rotate(q, rotary_tables(positions, 16)).norm(dim=-1), q.norm(dim=-1), atol=1e-12)


def test_rope_at_position_zero_is_the_identity_and_pairs_rotate_by_m_theta():
    x = torch.randn(1, 1, 3, 8, generator=_gen(2), dtype=F64)
    out = rotate(x, rotary_tables(torch.arange(3), 8, theta=100.0))
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    angle = 2 * 100.0 ** (-2 / 8)  # position 2, second pair (i = 2): theta_2 = 100^(-2/8)
    c, s = torch.cos(torch.tensor(angle, dtype=F64)), torch.sin(torch.tensor(angle, dtype=F64))
    x2, x3 = x[..., 2, 2], x[..., 2, 3]
    assert torch.allclose(out[..., 2, 2], c * x2 - s * x3, atol=1e-14)
    assert torch.allclose(out[..., 2, 3], s * x2 + c * x3, atol=1e-14)


def _mha(width=32, heads=4, kv_heads=None):
    torch.manual_seed(0)
    return MultiHeadAttention(width, heads, bias=False, kv_heads=kv_heads).double()


def test_gqa_equals_multi_head_attention_with_key_value_heads_tied_in_groups():
    # 4 query heads, 2 key/value heads: the same as multi-head attention whose key/value projection rows are
    # repeated so that heads 0, 1 share kv head 0 and heads 2, 3 share kv head 1. Float64 rounding.
    gqa, mha = _mha(kv_heads=2), _mha()
    with torch.no_grad():
        mha.q.weight.copy_(gqa.q.weight)
        mha.out.weight.copy_(gqa.out.weight)
        for name in ("k", "v"):
            rows = getattr(gqa, name).weight.reshape(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            getattr(mha, name).weight.copy_(rows)
    x = torch.randn(3, 10, 32, generator=_gen(3), dtype=F64)
    assert (gqa(x, causal=True) - mha(x, causal=True)).abs().max() < 1e-12
    assert gqa.k.weight.shape == (16, 32)  # half the key/value parameters


@pytest.mark.parametrize("kv_heads", (1, 4))
def test_gqa_with_one_group_is_multi_query_and_with_as_many_as_heads_is_multi_head(kv_heads):
    # Written out by hand from Eq. (1): per query head h, softmax(q_h k_g^T / sqrt(d)) v_g with g = h (multi-head)
    # or g = 0 for every h (multi-query, Shazeer 2019).
    mod = _mha(kv_heads=kv_heads)
    x = torch.randn(2, 6, 32, generator=_gen(4), dtype=F64)
    q = mod.q(x).reshape(2, 6, 4, 8).transpose(1, 2)
    k = mod.k(x).reshape(2, 6, kv_heads, 8).transpose(1, 2)
    v = mod.v(x).reshape(2, 6, kv_heads, 8).transpose(1, 2)
    heads = [attention(q[:, h:h + 1], k[:, g:g + 1], v[:, g:g + 1])[0]
             for h, g in zip(range(4), range(4) if kv_heads == 4 else [0] * 4)]
    expected = mod.out(torch.cat(heads, dim=1).transpose(1, 2).reshape(2, 6, 32))
    assert (mod(x) - expected).abs().max() < 1e-12


def test_swiglu_is_the_gated_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(16, 24).double()
    x = torch.randn(5, 16, generator=_gen(5), dtype=F64)
    expected = (torch.nn.functional.silu(x @ mlp.gate.weight.T) * (x @ mlp.up.weight.T)) @ mlp.down.weight.T
    assert (mlp(x) - expected).abs().max() < 1e-12
    assert swiglu_hidden(4096, 256) == 11008  # the LLaMA-7B MLP width from 2/3 * 4d rounded to 256


def _model(**kwargs):
    torch.manual_seed(0)
    config = dict(vocab_size=50, width=32, depth=2, heads=4, kv_heads=2) | kwargs
    return Llama(**config).eval()


def test_kv_cache_gives_the_logits_of_full_recomputation():
    # Greedy decoding of 20 tokens: with the cache each step runs only the newest token against the cached keys
    # and values; without, the whole sequence again. Same computation in another order: float32 rounding, 1e-5.
    model = _model()
    prompt = torch.randint(0, 50, (3, 7), generator=_gen(6))
    cached_tokens, cached = generate(model, prompt, 20, cache=True)
    full_tokens, full = generate(model, prompt, 20, cache=False)
    assert torch.equal(cached_tokens, full_tokens)
    assert (cached - full).abs().max() < 1e-5


def test_decoder_is_causal():
    model = _model()
    tokens = torch.randint(0, 50, (1, 12), generator=_gen(7))
    changed = tokens.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 50
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :8], b[:, :8]) and not torch.equal(a[:, 8:], b[:, 8:])


def _hf(model: Llama, permute: bool = True):
    """LlamaForCausalLM with the same config and our weights. transformers' RoPE rotates dimension i with i + d/2
    (``rotate_half``), the paper's and ours rotate pairs (2i, 2i+1): with ``permute``, each head's query and key
    rows are reordered (even dimensions first, then odd), which is what transformers' conversion script does."""
    c = model.config
    config = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["width"], intermediate_size=c["mlp_hidden"],
        num_hidden_layers=c["depth"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        rms_norm_eps=c["eps"], rope_theta=c["theta"], max_position_embeddings=128, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(config).eval()
    d = c["width"] // c["heads"]
    order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])

    def rows(weight, heads):
        w = weight.reshape(heads, d, -1)
        return (w[:, order] if permute else w).reshape(heads * d, -1)

    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.token.weight)
        for ours, theirs in zip(model.blocks, hf.model.layers):
            theirs.self_attn.q_proj.weight.copy_(rows(ours.attn.q.weight, c["heads"]))
            theirs.self_attn.k_proj.weight.copy_(rows(ours.attn.k.weight, c["kv_heads"]))
            theirs.self_attn.v_proj.weight.copy_(ours.attn.v.weight)
            theirs.self_attn.o_proj.weight.copy_(ours.attn.out.weight)
            theirs.input_layernorm.weight.copy_(ours.ln1.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.ln2.weight)
            theirs.mlp.gate_proj.weight.copy_(ours.mlp.gate.weight)
            theirs.mlp.up_proj.weight.copy_(ours.mlp.up.weight)
            theirs.mlp.down_proj.weight.copy_(ours.mlp.down.weight)
        hf.model.norm.weight.copy_(model.norm.weight)
        hf.lm_head.weight.copy_(model.head.weight)
    return hf


def test_matches_transformers_llama_with_non_default_eps_theta_and_gqa():
    # Non-default settings so that a mix-up cannot pass: RMSNorm eps 1e-4 (transformers' default 1e-6), RoPE base
    # 500000 (default 10000), 2 key/value heads for 4 query heads; the norms' weights randomised (they start at 1).
    model = _model(eps=1e-4, theta=500000.0)
    with torch.no_grad():
        for block in model.blocks:
            block.ln1.weight.uniform_(0.5, 1.5, generator=_gen(8))
            block.ln2.weight.uniform_(0.5, 1.5, generator=_gen(9))
    tokens = torch.randint(0, 50, (2, 40), generator=_gen(10))
    with torch.no_grad():
        ours, theirs = model(tokens), _hf(model)(tokens).logits
        unpermuted = _hf(model, permute=False)(tokens).logits
    assert (ours - theirs).abs().max() < 1e-5  # float32 rounding of the same sums in another order
    assert (ours - unpermuted).abs().max() > 1e-2  # the pairing convention matters: without the reorder they differ


def test_kv_cache_size_is_what_the_cache_holds():
    # After a prompt of L tokens each block's cache holds a key and a value per key/value head and position:
    # B * 2 * depth * kv_heads * head_dim * L values in all, the formula of the page's memory table; grouped-query
    # attention (2 key/value heads for 4 query heads) halves what multi-head attention would hold.
    for kv_heads in (1, 2, 4):
        model = _model(kv_heads=kv_heads)
        caches = [{} for _ in model.blocks]
        with torch.no_grad():
            model(torch.randint(0, 50, (3, 7), generator=_gen(11)), caches)
        held = sum(c["k"].numel() + c["v"].numel() for c in caches)
        assert held == 3 * kv_cache_size(depth=2, kv_heads=kv_heads, head_dim=8, tokens=7)
    assert kv_cache_size(32, 32, 128) * 2 == 2 ** 19  # LLaMA-7B in 16 bits: 0.5 MiB per token


# --- training on the notes, the cached quick model, the command line -----------------------------------------

def test_train_config_records_the_whole_model_and_leaves_the_global_rng_alone():
    data = gpt.text_data()
    state = torch.get_rng_state()
    config = llama.train_config("quick", data=data)
    assert torch.equal(state, torch.get_rng_state())  # built on the meta device: nothing drawn
    m = config["model"]
    assert m == Llama(**m).config and m["mlp_hidden"] == swiglu_hidden(m["width"]) and m["kv_heads"] < m["heads"]
    assert config["chars"] == data[0].chars and config["context"] == llama.PRESETS["quick"]["context"]
    with pytest.raises(LineageError, match="unknown preset"):
        llama.train_config("huge", data=data)


def test_train_resumes_loads_and_refuses_other_notes(tmp_path):
    # Two steps, then two more from the checkpoint: the same weights as four steps at once (refimpl.training.fit
    # resumes exactly on CPU: the same batches from the checkpointed generator). load() gives the trained model.
    data = gpt.text_data()
    config = llama.train_config("quick", steps=4, data=data)
    whole, _ = llama.train(config, tmp_path / "a", progress=False, data=data)
    llama.train({**config, "steps": 2}, tmp_path / "b", progress=False, data=data)
    resumed, _ = llama.train(config, tmp_path / "b", progress=False, data=data)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    loaded, tok, recorded = llama.load(tmp_path / "a")
    tokens = tok.encode("扩散模型")[None]
    with torch.no_grad():
        assert torch.equal(loaded(tokens), whole.eval()(tokens))
    assert recorded["context"] == config["context"] and tok.chars == config["chars"]
    with pytest.raises(LineageError, match="notes changed"):
        llama.train({**config, "text_sha256": "0" * 64}, tmp_path / "c", progress=False, data=data)


@pytest.mark.slow
def test_quick_llama_learns_and_the_ablation_is_fair():
    """The cached quick runs (figures/zoo/llama.py). Held-out loss in nats/char against the add-one unigram model of
    the training text on the same targets. Noise: the standard error of the paired difference (model - unigram) over
    blocks of 4 evaluation windows (256 characters; neighbouring characters are correlated, blocks of several lines
    much less), measured 0.01-0.04 nats. A margin of 10 standard errors leaves a chance below 1e-20 that a model no
    better than the unigram passes by luck of the held-out text. Every curve must also fall by more than that from
    its untrained model (about ln V, near uniform). Fair: the three models share the width, depth, heads, context and
    the whole optimisation; the baselines differ from each other only in the output layer and embedding init."""
    from figures.zoo.llama import ablation_run, curve, gpt_baseline

    run = ablation_run("quick")
    c = curve(run)
    for name in ("llama", "gpt_blocks", "gpt"):
        held, se = c[name]["held_out"], c["se"][f"{name}-unigram"]
        assert held[-1] < c["unigram"] - 10 * se, (name, held[-1], c["unigram"], se)
        assert held[-1] < held[0] - 10 * se, name
    _, tok, config = llama.load(run / "llama")
    assert abs(c["llama"]["held_out"][0] - math.log(len(tok))) < 0.5  # the untrained model is close to uniform
    assert config == {**llama.train_config("quick"), "train": config["train"]}  # what `llama train` records
    model = gpt.load(run / "gpt")[0].config
    assert model == gpt_baseline(config)["model"] and {k: model[k] for k in ("width", "depth", "heads")} == {
        k: config["model"][k] for k in ("width", "depth", "heads")} and model["max_len"] == config["context"]
    assert c["gpt_blocks"]["params"]["non_embedding"] == c["gpt"]["params"]["non_embedding"]  # the same blocks


def _cli(*args: str) -> int:
    return cli_main({"llama": "refimpl.commands.llama"}, ["llama", *args])


def test_cli_trains_generates_with_and_without_the_cache_and_refuses_bad_input(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _cli("train", "--steps", "2", "--out", run, "--quiet", "--device", "cpu") == 0
    assert "held-out loss" in capsys.readouterr().out
    texts = []
    for extra in ([], ["--no-cache"]):
        assert _cli("generate", "--ckpt", run, "--prompt", "扩散", "--tokens", "12", "--device", "cpu", *extra) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("扩散")
    assert_generate_refuses(_cli, run, tmp_path, capsys)


def test_the_page_states_the_presets(repo_root):
    # The sizes typed in the page's 动手跑 tabs are the presets' (everything measured comes from generated includes).
    page = (repo_root / "docs" / "llm" / "llama.md").read_text(encoding="utf-8")
    for name in ("quick", "full"):
        p = llama.PRESETS[name]
        m = p["model"]
        sizes = (f"{m['depth']} 层、宽 {m['width']}、{m['heads']} 个查询头、{m['kv_heads']} 个键值头、"
                 f"上下文 {p['context']} 个字符")
        assert sizes in page, name
    p = llama.PRESETS["full"]
    assert (f"{p['steps']} 步，batch {p['batch_size']}，学习率 {p['lr']:g}（预热 {p['warmup']} 步）") in page
