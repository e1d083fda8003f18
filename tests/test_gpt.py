"""refimpl.gpt: causality, parity with transformers' GPT2LMHeadModel, sampling, learning on the notes, CLI.

The learning check uses the cached quick model of figures/zoo/gpt.py (trained once, shared with the figures).
"""

import math

import pytest
import torch

from refimpl import gpt
from refimpl.cli import main as cli_main
from refimpl.core import LineageError


def _model(seed: int = 0, **sizes) -> gpt.GPT:
    torch.manual_seed(seed)
    return gpt.GPT(**{"vocab_size": 23, "max_len": 12, "width": 16, "depth": 2, "heads": 4, **sizes}).eval()


def test_shapes_tied_head_and_causality():
    """Logits (B, L, V); the output layer is the token embedding; changing the token at position i never
    changes the logits at positions < i, exactly (masked keys get weight exp(-inf) = 0), and does change
    them at positions >= i."""
    model = _model()
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(1))
    logits = model(tokens)
    assert logits.shape == (3, 12, 23)
    assert len(list(model.parameters())) == len(list(model.body.parameters()))  # no separate output matrix
    for i in range(12):
        changed = tokens.clone()
        changed[:, i] = (changed[:, i] + 1) % 23
        other = model(changed)
        assert torch.equal(other[:, :i], logits[:, :i]), i
        assert (other[:, i] - logits[:, i]).abs().max() > 1e-4, i


# --- parity with transformers' GPT-2 -----------------------------------------------------------------------

def _to_hf(model: gpt.GPT, activation: str = "gelu"):
    """Our weights in a GPT2LMHeadModel built from a tiny GPT2Config. GPT-2's Conv1D stores weights as
    (in, out), the transpose of nn.Linear's, and c_attn fuses q, k, v along the output axis."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(vocab_size=c["vocab_size"], n_positions=c["max_len"], n_embd=c["width"], n_layer=c["depth"],
                        n_head=c["heads"], activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(config).eval()
    body = model.body
    state = {"transformer.wte.weight": body.token.weight, "transformer.wpe.weight": body.position,
             "transformer.ln_f.weight": body.ln_final.weight, "transformer.ln_f.bias": body.ln_final.bias}
    for i, block in enumerate(body.blocks):
        p, a = f"transformer.h.{i}.", block.attn
        state |= {p + "ln_1.weight": block.ln1.weight, p + "ln_1.bias": block.ln1.bias,
                  p + "attn.c_attn.weight": torch.cat([a.q.weight, a.k.weight, a.v.weight]).T,
                  p + "attn.c_attn.bias": torch.cat([a.q.bias, a.k.bias, a.v.bias]),
                  p + "attn.c_proj.weight": a.out.weight.T, p + "attn.c_proj.bias": a.out.bias,
                  p + "ln_2.weight": block.ln2.weight, p + "ln_2.bias": block.ln2.bias,
                  p + "mlp.c_fc.weight": block.mlp[0].weight.T, p + "mlp.c_fc.bias": block.mlp[0].bias,
                  p + "mlp.c_proj.weight": block.mlp[2].weight.T, p + "mlp.c_proj.bias": block.mlp[2].bias}
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head is tied to wte
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return hf


def test_logits_match_transformers_gpt2():
    """Same weights, same tokens -> the same logits as GPT2LMHeadModel (activation "gelu" = exact GELU), and
    the same loss: HF shifts labels inside the model, we shift the window, the same next-token objective.

    Tolerance: float32 (unit roundoff u = 2^-24 = 6e-8); the longest sums have n = 4 * width = 128 terms, whose
    rounding error is bounded by n * u = 8e-6 relative to the sum of |terms|; two blocks and the head compound
    a few such errors and LayerNorm renormalises in between, so 1e-4 times the logit scale bounds the
    difference of the same computation done in a different order."""
    model = _model(2, vocab_size=50, width=32)
    with torch.no_grad():
        model.body.token.weight.normal_(0, 1.0)  # logits of order 1-10, not 0.02 * ...
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    ours = model(tokens).detach()
    tol = 1e-4 * ours.abs().max()
    hf = _to_hf(model)
    with torch.no_grad():
        theirs = hf(tokens, labels=tokens)
    assert (theirs.logits - ours).abs().max() < tol
    assert abs(float(theirs.loss) - float(gpt.lm_loss(model, tokens).detach())) < 1e-4 * float(theirs.loss)


def test_gpt2_default_activation_is_the_tanh_approximation():
    """GPT2Config's default activation_function "gelu_new" is the tanh approximation of GELU (Hendrycks & Gimpel
    2016), not the exact x * Phi(x) that activation "gelu" (and our nn.GELU) computes: in float64 it equals torch's
    approximate="tanh" up to rounding (1e-12) and differs from the exact GELU by more than 1e-4 on [-6, 6]."""
    from transformers import GPT2Config
    from transformers.activations import ACT2FN

    assert GPT2Config().activation_function == "gelu_new"
    x = torch.linspace(-6, 6, 10001, dtype=torch.float64)
    tanh_gelu = ACT2FN["gelu_new"](x)
    assert (tanh_gelu - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() < 1e-12
    assert (tanh_gelu - torch.nn.functional.gelu(x)).abs().max() > 1e-4
    assert (ACT2FN["gelu"](x) - torch.nn.functional.gelu(x)).abs().max() < 1e-12


# --- sampling ----------------------------------------------------------------------------------------------

def test_top_k_one_and_zero_temperature_are_greedy():
    model = _model(4)
    prompt = torch.tensor([1, 5, 7])
    ids = prompt.clone()
    for _ in range(8):  # argmax decoding written out
        ids = torch.cat([ids, model(ids[None, -12:])[0, -1].argmax()[None]])
    assert torch.equal(gpt.generate(model, prompt, 8, top_k=1, generator=torch.Generator().manual_seed(0)), ids)
    assert torch.equal(gpt.generate(model, prompt, 8, temperature=0.0), ids)
    long = gpt.generate(model, prompt, 20, top_k=1)  # 23 > max_len = 12 tokens: the model sees the last 12
    assert long.shape == (23,) and torch.equal(long[:11], ids)


def test_temperature_and_top_k_stay_in_the_top_k():
    """Every draw lies among the k largest logits of its row; the empirical frequencies over 4000 draws match
    softmax(logits / T) renormalised over the top k within 5 binomial standard errors, sqrt(p (1 - p) / n)."""
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(5)).repeat(4000, 1)
    generator = torch.Generator().manual_seed(6)
    for temperature, k in ((0.5, 3), (1.0, 5), (2.0, 10)):
        draws = gpt.next_token(logits, temperature=temperature, top_k=k, generator=generator)
        top = logits[0].topk(k).indices
        assert torch.isin(draws, top).all()
        p = torch.softmax(logits[0, top] / temperature, dim=0)
        freq = (draws[:, None] == top[None]).double().mean(0)
        assert ((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / 4000) + 1e-12).all(), (temperature, k)
    with pytest.raises(LineageError):
        gpt.next_token(logits, temperature=-1.0)


# --- learning (the quick model, cached and shared with the figures) ----------------------------------------

@pytest.mark.slow
def test_quick_model_beats_the_unigram_baseline():
    """Held-out loss (nats/char) of the quick model against the add-one unigram model of the training text,
    on the same held-out targets. A model that ignores context cannot do much better than that baseline: even
    the held-out text's own character frequencies (an oracle) are only ~0.06 nats below it (measured). We
    require a margin of 1 nat: on average the model gives the next character e = 2.7 times the unigram's
    probability, which it can only do by using the context. The noise of the held-out estimate is small against
    that margin: per-character losses have standard deviation below 3 nats (2.2 measured); over > 12k
    characters, correlated within lines of ~100, the standard error is below 3 / sqrt(120) = 0.3 nats (0.05
    measured by blocks of 100). The curve must also fall: the last held-out loss below the first (the untrained
    model's, about ln V) by more than the same margin."""
    from figures.zoo.gpt import curve, gpt_run

    run = gpt_run("quick")
    c, vocab_size = curve(run), len(gpt.load(run)[1])
    assert c["held_out"][-1] < c["unigram"] - 1.0, (c["held_out"][-1], c["unigram"])
    assert c["held_out"][-1] < c["held_out"][0] - 1.0
    assert abs(c["held_out"][0] - math.log(vocab_size)) < 0.5  # the untrained model is close to uniform


# --- command line ------------------------------------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main({"gpt": "refimpl.commands.gpt"}, ["gpt", *args])


def test_cli_trains_samples_and_refuses_bad_input(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _cli("train", "--steps", "2", "--out", run, "--quiet", "--device", "cpu") == 0
    assert "held-out loss" in capsys.readouterr().out
    assert _cli("sample", "--ckpt", run, "--prompt", "扩散模型", "--tokens", "5", "--temperature", "0.8",
                "--top-k", "20", "--device", "cpu") == 0
    assert capsys.readouterr().out.startswith("扩散模型")
    for extra, fragment in ((["--prompt", "扩散\U0001F600"], "not in the vocabulary"),
                            (["--tokens", "0"], "positive integer"),
                            (["--temperature", "-1"], "positive number"),
                            (["--top-k", "0"], "positive integer"),
                            (["--ckpt", str(tmp_path / "missing")], str(tmp_path / "missing"))):
        base = {"--ckpt": run, "--prompt": "扩散"} | dict(zip(extra[::2], extra[1::2]))
        assert _cli("sample", *[item for pair in base.items() for item in pair]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (fragment, err)
