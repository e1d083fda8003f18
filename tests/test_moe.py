"""Sparse mixture of experts (refimpl.moe): the layer's exact limits (a one-hot router is one dense expert, identical
experts are the dense MLP, k = N is the dense softmax-weighted mixture), Mixtral's gate as the softmax of the top-k
logits, the Switch load-balancing loss's values, the capacity's dropped tokens, parity with transformers'
MixtralForCausalLM (logits and router auxiliary loss, weights copied across), training on the notes (the cached quick
runs of figures/zoo/moe.py) and the command line."""

import math

import pytest
import torch
import torch.nn.functional as F
import transformers  # a test dependency: if it is missing these tests must fail, not skip

from clitools import assert_generate_refuses
from refimpl import gpt, moe
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.moe import MoELlama, SparseMoE, capacity_mask, expert_capacity, load_balancing_loss, route

torch.set_num_threads(1)
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _layer(experts=4, top_k=2, **kwargs):
    torch.manual_seed(0)
    return SparseMoE(8, 12, experts, top_k, **kwargs).double()


class FixedLogits(torch.nn.Module):
    """A router that returns given logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, h):
        return self.logits


def test_a_one_hot_router_makes_the_layer_its_chosen_dense_expert():
    # Switch (k = 1, gate p_i(x)): logits -inf except at expert e(x) give p(x) = one-hot exactly, so y = E_e(x)(x):
    # each token is computed by one dense SwiGLU. Float64; the expert sees a subset of the batch, so the same sums
    # may round differently from the full batch's: 1e-12.
    layer = _layer(top_k=1, renormalize=False)
    x = torch.randn(10, 8, generator=_gen(0), dtype=F64)
    chosen = torch.tensor([0, 2, 2, 1, 3, 0, 0, 1, 2, 3])
    layer.router = FixedLogits(torch.full((10, 4), float("-inf"), dtype=F64).scatter(1, chosen[:, None], 0.0))
    expected = torch.stack([layer.experts[e](x[t]) for t, e in enumerate(chosen.tolist())])
    assert (layer(x) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("top_k,renormalize", [(1, False), (2, True), (4, True)])
def test_identical_experts_make_the_layer_the_dense_mlp(top_k, renormalize):
    # All experts equal to one SwiGLU E: renormalised gates sum to 1, so y = sum_i g_i E(x) = E(x), the dense MLP;
    # Switch's gate p_max(x) scales it: y = p_max(x) E(x). Float64 rounding, 1e-12.
    layer = _layer(top_k=top_k, renormalize=renormalize)
    with torch.no_grad():
        for expert in layer.experts[1:]:
            expert.load_state_dict(layer.experts[0].state_dict())
    x = torch.randn(12, 8, generator=_gen(1), dtype=F64)
    dense = layer.experts[0](x)
    scale = 1.0 if renormalize else torch.softmax(layer.router(x), -1).amax(-1, keepdim=True)
    assert (layer(x) - scale * dense).abs().max() < 1e-12


@pytest.mark.parametrize("renormalize", [False, True])
def test_k_equal_to_the_number_of_experts_is_the_dense_softmax_mixture(renormalize):
    # k = N and no capacity: every expert computes every token and y = sum_i p_i(x) E_i(x), the dense mixture of
    # experts with softmax gating (renormalising changes nothing: the N probabilities already sum to 1). Float64.
    layer = _layer(top_k=4, renormalize=renormalize)
    x = torch.randn(3, 5, 8, generator=_gen(2), dtype=F64)
    p = torch.softmax(layer.router(x), -1)
    mixture = sum(p[..., i, None] * expert(x) for i, expert in enumerate(layer.experts))
    assert (layer(x) - mixture).abs().max() < 1e-12


def test_mixtral_gate_is_the_softmax_of_the_top_k_logits():
    # Mixtral Sec. 2.1: G(x) = Softmax(TopK(x W_g)) (the other logits at -inf); transformers' MixtralTopKRouter takes
    # the top-k of softmax(logits) and divides by their sum. The same numbers: exp(l_i - l_j) ratios in both.
    logits = torch.randn(50, 8, generator=_gen(3), dtype=F64)
    _, index, gates = route(logits, 2, renormalize=True)
    masked = torch.full_like(logits, float("-inf")).scatter(1, index, logits.gather(1, index))
    assert (gates - torch.softmax(masked, -1).gather(1, index)).abs().max() < 1e-12
    _, _, switch_gates = route(logits, 1, renormalize=False)  # Switch keeps p_i(x): below 1, with a gradient
    assert (switch_gates < 1).all() and torch.allclose(switch_gates[:, 0], torch.softmax(logits, -1).amax(-1))
    with pytest.raises(LineageError, match="no gradient"):
        SparseMoE(8, 12, 4, 1, renormalize=True)


def test_load_balancing_loss_values():
    # Switch Eqs. (4)-(6) without alpha: N * sum_i f_i P_i. Exact in float64 on these small fractions (1e-15).
    n, t = 4, 64
    probs = torch.full((t, n), 1 / n, dtype=F64)
    index = torch.arange(t)[:, None] % n  # first choices spread evenly, uniform probabilities
    assert abs(float(load_balancing_loss(probs, index, n)) - 1) < 1e-15
    # f uniform gives 1 whatever P is: N * sum_i (1/N) P_i = sum_i P_i = 1
    skewed = torch.softmax(torch.randn(t, n, generator=_gen(4), dtype=F64), -1)
    assert abs(float(load_balancing_loss(skewed, index, n)) - 1) < 1e-15
    # every token to expert 0 with probability 1: f = P = e_0, the maximum N
    collapsed = F.one_hot(torch.zeros(t, dtype=torch.long), n).to(F64)
    assert float(load_balancing_loss(collapsed, torch.zeros(t, 1, dtype=torch.long), n)) == n
    # 1 is not the minimum: N = 2, 3/4 of the tokens choose expert 0 with p = (1/2 + d, 1/2 - d), the rest expert 1
    # with p = (0, 1): f = (3/4, 1/4), P_0 = 3/4 (1/2 + d), and the loss is 2 (1/4 + P_0 / 2) = 7/8 + 3d/4 < 1
    d = 0.01
    p = torch.tensor([[0.5 + d, 0.5 - d]] * 3 + [[0.0, 1.0]], dtype=F64)
    assert abs(float(load_balancing_loss(p, p.argmax(-1, keepdim=True), 2)) - (7 / 8 + 3 * d / 4)) < 1e-15
    # transformers' variant counts all k choices in f: even top-2 routing gives k = 2, not 1
    two = torch.stack([torch.arange(t) % n, (torch.arange(t) + 1) % n], dim=1)
    assert abs(float(load_balancing_loss(probs, two, n, all_choices=True)) - 2) < 1e-15
    assert abs(float(load_balancing_loss(probs, two, n)) - 1) < 1e-15


def test_capacity_drops_exactly_the_tokens_beyond_it_in_order():
    # Switch Eq. (3): capacity = tokens / experts * factor (rounded down); an expert keeps its first `capacity`
    # tokens in batch order and drops the rest. 10 tokens, 2 experts: expert 0 is chosen by tokens 0 1 3 4 5 8.
    index = torch.tensor([0, 0, 1, 0, 0, 0, 1, 1, 0, 1])[:, None]
    assert expert_capacity(10, 2, 1.0) == 5 and expert_capacity(10, 2, 0.6) == 3
    assert expert_capacity(1024, 4, 1.25, top_k=2) == 640
    kept = capacity_mask(index, 2, 5)[:, 0]
    assert kept.tolist() == [True] * 8 + [False, True]  # token 8 is expert 0's sixth
    kept = capacity_mask(index, 2, 3)[:, 0]
    assert torch.where(~kept)[0].tolist() == [4, 5, 8, 9]
    # k = 2: every token's first choice comes before any second choice
    two = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])
    assert capacity_mask(two, 2, 3).tolist() == [[True, True], [True, True], [True, False], [True, False]]
    # in the layer: a dropped token gets no expert output (the block's residual carries it), a kept one the output
    # it has without a limit (float64 rounding)
    free, capped = _layer(experts=2, top_k=1, renormalize=False), _layer(experts=2, top_k=1, renormalize=False,
                                                                        capacity_factor=0.6)
    logits = F.one_hot(index[:, 0], 2).to(F64) * 3.0
    free.router = capped.router = FixedLogits(logits)
    x = torch.randn(10, 8, generator=_gen(5), dtype=F64)
    a, b = free(x), capped(x)
    dropped = torch.tensor([4, 5, 8, 9])
    assert torch.equal(b[dropped], torch.zeros_like(b[dropped]))
    kept = torch.tensor([t for t in range(10) if t not in dropped.tolist()])
    assert (a[kept] - b[kept]).abs().max() < 1e-12 and capped.routing["kept"].sum() == 6


# --- parity with transformers ------------------------------------------------------------------------------

def _model(**kwargs):
    torch.manual_seed(0)
    config = dict(vocab_size=50, width=32, depth=2, heads=4, kv_heads=2, expert_hidden=24, eps=1e-4,
                  theta=500000.0, experts=6, top_k=3) | kwargs
    model = MoELlama(**config).eval()
    with torch.no_grad():  # the norms start at 1: randomise them so that a swapped norm cannot pass
        for block in model.blocks:
            block.ln1.weight.uniform_(0.5, 1.5, generator=_gen(8))
            block.ln2.weight.uniform_(0.5, 1.5, generator=_gen(9))
    return model


def _hf(model: MoELlama, aux_coef: float) -> transformers.MixtralForCausalLM:
    """MixtralForCausalLM with the same config and our weights. As on the LLaMA page, each head's query and key rows
    are reordered (even dimensions first) for transformers' rotate_half pairing; the experts' gate and up
    projections are stacked into gate_up_proj (gate first), the router is the gate's weight."""
    c = model.config
    config = transformers.MixtralConfig(
        vocab_size=c["vocab_size"], hidden_size=c["width"], intermediate_size=c["expert_hidden"],
        num_hidden_layers=c["depth"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        num_local_experts=c["experts"], num_experts_per_tok=c["top_k"], rms_norm_eps=c["eps"], rope_theta=c["theta"],
        router_aux_loss_coef=aux_coef, max_position_embeddings=128, sliding_window=None, tie_word_embeddings=False,
        attn_implementation="eager")
    hf = transformers.MixtralForCausalLM(config).eval()
    d = c["width"] // c["heads"]
    order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])

    def rows(weight, heads):
        return weight.reshape(heads, d, -1)[:, order].reshape(heads * d, -1)

    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.token.weight)
        for ours, theirs in zip(model.blocks, hf.model.layers):
            theirs.self_attn.q_proj.weight.copy_(rows(ours.attn.q.weight, c["heads"]))
            theirs.self_attn.k_proj.weight.copy_(rows(ours.attn.k.weight, c["kv_heads"]))
            theirs.self_attn.v_proj.weight.copy_(ours.attn.v.weight)
            theirs.self_attn.o_proj.weight.copy_(ours.attn.out.weight)
            theirs.input_layernorm.weight.copy_(ours.ln1.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.ln2.weight)
            theirs.mlp.gate.weight.copy_(ours.mlp.router.weight)
            for e, expert in enumerate(ours.mlp.experts):
                theirs.mlp.experts.gate_up_proj[e].copy_(torch.cat([expert.gate.weight, expert.up.weight]))
                theirs.mlp.experts.down_proj[e].copy_(expert.down.weight)
        hf.model.norm.weight.copy_(model.norm.weight)
        hf.lm_head.weight.copy_(model.head.weight)
    return hf


def test_matches_transformers_mixtral_logits_and_router_aux_loss():
    # Non-default settings so that a mix-up cannot pass: 6 experts (default 8), 3 per token (default 2), RMSNorm eps
    # 1e-4, RoPE base 500000, 2 key/value heads for 4 query heads, randomised norms, router_aux_loss_coef 0.02.
    model = _model()
    hf = _hf(model, aux_coef=0.02)
    tokens = torch.randint(0, 50, (2, 40), generator=_gen(10))
    with torch.no_grad():
        ours = model(tokens)
        out = hf(tokens, labels=tokens, output_router_logits=True)
    assert (ours - out.logits).abs().max() < 1e-5  # float32 rounding of the same sums in another order
    # The same routing: their router logits are ours
    for routing, logits in zip(model.routings(), out.router_logits):
        assert torch.equal(routing["index"], torch.softmax(logits.float(), -1).topk(3, -1).indices)
    # Their aux_loss is Switch Eq. (4) with two deviations: f counts all k choices (sum_i f_i = k), and f and P are
    # pooled over the layers' tokens before the product. Our load_balancing_loss on the pooled routing with
    # all_choices=True gives their number (float32 rounding, 1e-6) ...
    routings = model.routings()
    pooled = load_balancing_loss(torch.cat([r["probs"] for r in routings]), torch.cat([r["index"] for r in routings]),
                                 6, all_choices=True)
    assert abs(float(out.aux_loss) - float(pooled)) < 1e-6
    # ... while the paper's loss (first choices, per layer, averaged) is a different number, near 1 rather than k
    assert abs(float(out.aux_loss) - float(model.aux_loss())) > 0.5
    # and the training loss adds router_aux_loss_coef times it to the next-token cross-entropy
    ce = F.cross_entropy(ours[:, :-1].reshape(-1, 50), tokens[:, 1:].reshape(-1))
    assert abs(float(out.loss) - float(ce + 0.02 * out.aux_loss)) < 1e-5


# --- training on the notes, the cached quick runs, the command line -----------------------------------------

def test_train_config_records_the_whole_model_and_the_switch_alpha():
    data = gpt.text_data()
    state = torch.get_rng_state()
    config = moe.train_config("quick", data=data)
    assert torch.equal(state, torch.get_rng_state())  # built on the meta device: nothing drawn
    m = config["model"]
    assert m == MoELlama(**m).config and config["aux_coef"] == 0.01 and m["top_k"] < m["experts"]
    # the same active MLP width per token as the LLaMA page's quick model, and the same optimisation
    from refimpl import llama

    dense = llama.train_config("quick", data=data)
    assert m["top_k"] * m["expert_hidden"] == dense["model"]["mlp_hidden"]
    assert {k: v for k, v in config.items() if k not in ("model", "aux_coef")} == {
        k: v for k, v in dense.items() if k != "model"}
    for bad, fragment in (({"aux_coef": -1}, "aux_coef"), ({"preset": "huge"}, "unknown preset")):
        with pytest.raises(LineageError, match=fragment):
            moe.train_config(**({"preset": "quick"} | bad), data=data)


def test_train_resumes_exactly_and_loads(tmp_path):
    # Two steps, then two more from the checkpoint: the same weights as four at once (refimpl.training.fit resumes
    # exactly on CPU: the same batches from the checkpointed generator), the balancing loss included.
    data = gpt.text_data()
    config = moe.train_config("quick", steps=4, data=data)
    whole, _ = moe.train(config, tmp_path / "a", progress=False, data=data)
    moe.train({**config, "steps": 2}, tmp_path / "b", progress=False, data=data)
    resumed, _ = moe.train(config, tmp_path / "b", progress=False, data=data)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    loaded, tok, recorded = moe.load(tmp_path / "a")
    tokens = tok.encode("扩散模型")[None]
    with torch.no_grad():
        assert torch.equal(loaded(tokens), whole.eval()(tokens))
    assert recorded["aux_coef"] == config["aux_coef"]
    with pytest.raises(LineageError, match="notes changed"):
        moe.train({**config, "text_sha256": "0" * 64}, tmp_path / "c", progress=False, data=data)


@pytest.mark.slow
def test_quick_moe_learns_and_the_balancing_loss_evens_the_experts():
    """The cached quick runs (figures/zoo/moe.py). Noise: standard errors over blocks of 4 held-out windows (256
    characters), as on the LLaMA page. Learning: both MoE runs beat the unigram baseline by more than 10 paired
    standard errors (by chance below 1e-20 for a model no better than the unigram), and the one with the balancing
    loss is as good as the dense model of equal active parameters to within 10 standard errors of the paired
    difference (the page compares them; it claims no winner). Balance: the load-balancing loss N sum_i f_i P_i on the
    held-out text (mean over layers and blocks; 1 for even first choices) is lower with alpha = 10^-2 than without
    by more than 5 paired standard errors (normal tail below 3e-7). These standard errors cover the held-out text,
    not the training seed: the margins hold for this seeded run, which the page says."""
    from figures.zoo.moe import moe_runs, stats

    run = moe_runs("quick")
    s = stats(run)
    r, se = s["runs"], s["se"]
    for name in ("moe", "moe_noaux"):
        assert r[name]["held_out"] < s["unigram"] - 10 * se[f"{name}-unigram"], name
    assert abs(r["moe"]["held_out"] - r["dense"]["held_out"]) < 10 * se["moe-dense"]
    assert r["moe_noaux"]["balance"] - r["moe"]["balance"] > 5 * se["balance"]
    m = moe.train_config("quick")["model"]
    router = m["depth"] * m["experts"] * m["width"]  # the routers: all that a token uses beyond the dense MLP's share
    assert r["moe"]["params"]["active_mlp"] == r["dense"]["params"]["active_mlp"] + router
    assert r["moe"]["params"]["mlp"] > 1.9 * r["dense"]["params"]["mlp"]  # about twice the MLP parameters in all
    assert all(abs(sum(load) - 1) < 1e-9 for load in r["moe"]["load"])
    _, _, config = moe.load(run / "moe")
    assert config == {**moe.train_config("quick"), "train": config["train"]}  # what `moe train` records


def _cli(*args: str) -> int:
    return cli_main({"moe": "refimpl.commands.moe"}, ["moe", *args])


def test_cli_trains_generates_and_refuses_bad_input(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _cli("train", "--steps", "2", "--out", run, "--quiet", "--device", "cpu") == 0
    assert "held-out loss" in capsys.readouterr().out
    assert _cli("generate", "--ckpt", run, "--prompt", "扩散", "--tokens", "12", "--device", "cpu") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("扩散") and "layer 2:" in captured.err
    assert_generate_refuses(_cli, run, tmp_path, capsys)


def test_the_page_states_the_presets(repo_root):
    # The sizes typed in the page's 动手跑 tabs are the presets' (everything measured comes from generated includes).
    page = (repo_root / "docs" / "llm" / "moe.md").read_text(encoding="utf-8")
    for name in ("quick", "full"):
        p = moe.PRESETS[name]
        m = p["model"]
        sizes = (f"{m['depth']} 层、宽 {m['width']}、{m['heads']} 个查询头、{m['kv_heads']} 个键值头、{m['experts']} 个"
                 f"专家（各宽 {m['expert_hidden']}）每个 token 选 {m['top_k']} 个、上下文 {p['context']} 个字符")
        assert sizes in page, name
    p = moe.PRESETS["full"]
    assert f"{p['steps']} 步，batch {p['batch_size']}，学习率 {p['lr']:g}（预热 {p['warmup']} 步）" in page
    assert math.isclose(moe.AUX_COEF, 0.01) and "α = 0.01" in page
