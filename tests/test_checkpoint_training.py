"""refimpl.checkpoint (round trip, corruption, atomicity) and refimpl.training (fit, resume, interrupt, load_model)."""

import json

import pytest
import torch
from torch import nn

import refimpl.checkpoint as checkpoint
from refimpl.core import LineageError
from refimpl.data import sampler
from refimpl.nets import MLPDenoiser
from refimpl.training import fit, learning_rate, load_model

STEPS = 40


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LINEAGE_NO_PROGRESS", "1")


def save_example(directory, step=3, model="toy", value=1.0):
    return checkpoint.save(directory, model=model, config={"a": [1, 2], "b": {"c": "d"}}, step=step,
                           model_state={"w": torch.full((2, 3), value), "b": torch.arange(4)},
                           optimizer_state={"0.exp_avg": torch.ones(3)},
                           rng_state={"generator": torch.Generator().manual_seed(1).get_state()},
                           extra={"history": [[1, 0.5]]})


# ---------------------------------------------------------------- checkpoint


def test_checkpoint_round_trip(tmp_path):
    save_example(tmp_path)
    ckpt = checkpoint.load(tmp_path, expect_model="toy")
    assert (ckpt.model, ckpt.step, ckpt.config, ckpt.extra) == ("toy", 3, {"a": [1, 2], "b": {"c": "d"}},
                                                                {"history": [[1, 0.5]]})
    assert torch.equal(ckpt.model_state["w"], torch.ones(2, 3)) and torch.equal(ckpt.model_state["b"], torch.arange(4))
    assert torch.equal(ckpt.optimizer_state["0.exp_avg"], torch.ones(3))
    assert torch.equal(ckpt.rng_state["generator"], torch.Generator().manual_seed(1).get_state())
    assert checkpoint.load(tmp_path / "config.json").step == 3  # the config file itself also works
    save_example(tmp_path, step=7)
    assert [p.name for p in tmp_path.glob("weights-*")] == ["weights-00000007.safetensors"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(LineageError, match="checkpoint not found: .*nowhere"):
        checkpoint.load(tmp_path / "nowhere")
    with pytest.raises(LineageError, match="not a checkpoint directory \\(no config.json\\)"):
        checkpoint.load(tmp_path)

    save_example(tmp_path / "other", model="ddpm")
    with pytest.raises(LineageError, match="holds a 'ddpm' model, not 'ddim'"):
        checkpoint.load(tmp_path / "other", expect_model="ddim")

    corrupt = tmp_path / "corrupt"
    save_example(corrupt)
    weights = next(corrupt.glob("weights-*"))
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LineageError, match="corrupt checkpoint: .* does not match its recorded checksum"):
        checkpoint.load(corrupt)
    weights.unlink()
    with pytest.raises(LineageError, match="corrupt checkpoint: weights file weights-00000003.safetensors is missing"):
        checkpoint.load(corrupt)

    truncated = tmp_path / "truncated"
    save_example(truncated)
    text = (truncated / "config.json").read_text()
    (truncated / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(LineageError, match="corrupt checkpoint: .*config.json is not a Lineage checkpoint config"):
        checkpoint.load(truncated)
    meta = json.loads(text)
    del meta["model"]
    (truncated / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LineageError, match="not a Lineage checkpoint config"):
        checkpoint.load(truncated, expect_model="toy")


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    save_example(tmp_path, step=3, value=1.0)

    def dying_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(checkpoint, "save_file", dying_writer)
    with pytest.raises(KeyboardInterrupt):
        save_example(tmp_path, step=4, value=2.0)
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.step == 3 and torch.equal(ckpt.model_state["w"], torch.ones(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "weights-00000003.safetensors"]


# ---------------------------------------------------------------- training


def toy_loss(calls=None, interrupt_at=None):
    """A DDPM-like eps loss on moons; counts its calls and can raise KeyboardInterrupt on one of them."""
    batches = {}

    def loss_fn(model, generator):
        if calls is not None:
            calls.append(1)
            if interrupt_at is not None and len(calls) == interrupt_at:
                torch.randn(5, generator=generator)  # half-way through a step: the generator moved
                raise KeyboardInterrupt
        batch = batches.setdefault("b", sampler("moons", generator))
        x0 = batch(32)
        t = torch.randint(0, 50, (32,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        abar = (1 - t.float() / 50)[:, None]
        return (model(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t) - eps).pow(2).mean()

    return loss_fn


def new_model():
    torch.manual_seed(0)
    return MLPDenoiser(hidden=32, depth=2, time_dim=16)


def train(out, steps=STEPS, loss_fn=None, **overrides):
    kwargs = dict(steps=steps, lr=3e-3, out=out, model_name="toy", config={"data": "moons", "steps": steps},
                  device="cpu", seed=5, batch_size=32, warmup=5, checkpoint_every=15, log_every=7, progress=False)
    kwargs.update(overrides)
    model = new_model()
    history = fit(model, loss_fn or toy_loss(), **kwargs)
    return model, history


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    model, history = train(out)
    return out, model, history


def test_fit_writes_loadable_checkpoint(uninterrupted):
    out, model, history = uninterrupted
    assert [s for s, _ in history] == [7, 14, 21, 28, 35]
    loaded, ckpt = load_model(out, "toy")
    assert ckpt.step == STEPS and not loaded.training
    assert ckpt.config["model"] == {"kind": "mlp", "data_dim": 2, "hidden": 32, "depth": 2, "time_dim": 16}
    assert ckpt.config["data"] == "moons" and ckpt.config["train"]["lr"] == 3e-3
    assert_same_weights(loaded, model)
    with pytest.raises(LineageError, match="holds a 'toy' model, not 'ddpm'"):
        load_model(out, "ddpm")


def test_resume_is_bit_identical(tmp_path, uninterrupted):
    _, straight, straight_history = uninterrupted
    train(tmp_path, steps=STEPS // 2)
    assert checkpoint.load(tmp_path).step == STEPS // 2
    model, history = train(tmp_path, steps=STEPS)
    assert_same_weights(model, straight)
    assert history == straight_history

    calls = []  # already there: nothing is trained, the weights are loaded
    model, history = train(tmp_path, steps=STEPS, loss_fn=toy_loss(calls))
    assert calls == [] and history == straight_history
    assert_same_weights(model, straight)


def test_interrupt_leaves_checkpoint_and_resumes_exactly(tmp_path, uninterrupted):
    _, straight, straight_history = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, loss_fn=toy_loss([], interrupt_at=23))
    ckpt = checkpoint.load(tmp_path, expect_model="toy")
    assert ckpt.step == 22  # steps 1..22 completed; the 23rd was interrupted
    model, history = train(tmp_path)
    assert_same_weights(model, straight)
    assert history == straight_history


def test_cosine_learning_rate_schedule():
    """(1 + cos(pi s / S)) / 2 by hand: the full rate at the first update, half of it half-way, a
    quarter at three quarters, and above zero at the last one; warmup multiplies it."""
    assert learning_rate(1.0, 0, 100, lr_decay="cosine") == 1.0
    assert learning_rate(1.0, 50, 100, lr_decay="cosine") == pytest.approx(0.5, abs=1e-15)
    assert learning_rate(1.0, 75, 100, lr_decay="cosine") == pytest.approx((1 - 2 ** -0.5) / 2, abs=1e-15)
    assert 0 < learning_rate(1.0, 99, 100, lr_decay="cosine") < 1e-3  # (1 - cos(pi / 100)) / 2 = 2.5e-4
    assert learning_rate(2.0, 0, 100, warmup=4, lr_decay="cosine") == 0.5
    assert learning_rate(2.0, 60, 100) == 2.0  # constant


def test_a_decaying_run_resumes_exactly_and_only_to_its_own_length(tmp_path):
    straight, straight_history = train(tmp_path / "straight", lr_decay="cosine")
    assert checkpoint.load(tmp_path / "straight").config["train"]["lr_decay"] == "cosine"
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", lr_decay="cosine", loss_fn=toy_loss([], interrupt_at=23))
    model, history = train(tmp_path / "cut", lr_decay="cosine")
    assert_same_weights(model, straight)
    assert history == straight_history
    with pytest.raises(LineageError, match=f"decays its learning rate to zero at step {STEPS}; it cannot be "
                                           f"trained to step {2 * STEPS} \\(use another --out\\)"):
        train(tmp_path / "cut", steps=2 * STEPS, lr_decay="cosine")
    with pytest.raises(LineageError, match="field train.lr_decay"):
        train(tmp_path / "cut", steps=STEPS)  # constant: another configuration
    with pytest.raises(LineageError, match="lr_decay must be one of constant, cosine"):
        train(tmp_path / "other", lr_decay="linear")


@pytest.mark.parametrize("paper, make_config", [
    ("ddpm", lambda m: m.train_config("swissroll", steps=2)),
    ("iddpm", lambda m: m.train_config("swissroll", steps=2)),
    ("cfg", lambda m: m.train_config(steps=2)),
    ("adm", lambda m: m.train_config(steps=2)),
    ("ncsn", lambda m: m.train_config("swissroll", steps=2)),
    ("sde", lambda m: m.train_config("vp", "swissroll", steps=2)),
    ("nonequilibrium", lambda m: m.train_config(steps=2)),
])
def test_a_trained_model_depends_on_its_config_alone(paper, make_config):
    """The figure cache keys a model on its config: the same config must give the same weights whatever the
    global RNG did before (which script of a build asks for a model first is up to the scheduler)."""
    import importlib

    module = importlib.import_module(f"refimpl.{paper}")
    config = make_config(module)
    torch.manual_seed(1)
    first, _ = module.train(config, progress=False)
    torch.manual_seed(2)
    second, _ = module.train(config, progress=False)
    assert_same_weights(first, second)


def test_changed_config_refuses_to_resume(tmp_path):
    train(tmp_path, steps=10)
    with pytest.raises(LineageError, match="different configuration \\(field train.lr\\); use another --out"):
        train(tmp_path, steps=20, lr=1e-3)
    with pytest.raises(LineageError, match="field data"):
        train(tmp_path, steps=20, config={"data": "swissroll", "steps": 20})
    torch.manual_seed(0)
    with pytest.raises(LineageError, match="field model.hidden"):
        fit(MLPDenoiser(hidden=16, depth=2, time_dim=16), toy_loss(), steps=20, lr=3e-3, out=tmp_path,
            model_name="toy", config={"data": "moons"}, device="cpu", seed=5, batch_size=32, warmup=5,
            log_every=7, progress=False)
    with pytest.raises(LineageError, match="holds a 'toy' model, not 'other'"):
        train(tmp_path, steps=20, model_name="other")
    model, _ = train(tmp_path, steps=20, lr=1e-3, resume=False)  # starts over, replacing the checkpoint
    assert checkpoint.load(tmp_path).config["train"]["lr"] == 1e-3


def test_load_model_refuses_mismatched_weights(tmp_path, uninterrupted):
    out, _, _ = uninterrupted
    for path in out.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["model"]["hidden"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LineageError, match="do not fit its model config"):
        load_model(tmp_path, "toy")


def test_bad_arguments_and_nan(tmp_path):
    with pytest.raises(LineageError, match="steps must be a positive integer"):
        train(tmp_path, steps=0)
    model = new_model()
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        fit(model, lambda m, g: m(torch.zeros(1, 2), torch.zeros(1)).sum() * float("nan"), steps=5, lr=1e-3,
            model_name="toy", config={}, device="cpu", progress=False)


def test_loss_falls_on_linear_regression():
    """A model outside refimpl.nets trains too; y = A x + b is learnt to near zero loss."""
    true = nn.Linear(4, 3)
    model = nn.Linear(4, 3)

    def loss_fn(m, generator):
        x = torch.randn(64, 4, generator=generator)
        with torch.no_grad():
            y = true(x)
        return (m(x) - y).pow(2).mean()

    history = fit(model, loss_fn, steps=300, lr=0.05, model_name="linear", config={}, device="cpu",
                  grad_clip=None, progress=False, log_every=20)
    assert history[-1][1] < 1e-3 * history[0][1]


def test_ctrl_c_finishes_the_step_then_saves(tmp_path, uninterrupted):
    """A real SIGINT during step 9 lets that step finish, saves at step 9, then raises KeyboardInterrupt."""
    import os
    import signal

    _, straight, straight_history = uninterrupted
    inner = toy_loss()
    calls = []

    def loss_fn(model, generator):
        calls.append(1)
        if len(calls) == 9:
            os.kill(os.getpid(), signal.SIGINT)
        return inner(model, generator)

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, loss_fn=loss_fn)
    assert checkpoint.load(tmp_path).step == 9
    model, history = train(tmp_path)
    assert_same_weights(model, straight)
    assert history == straight_history


def test_checkpoint_without_training_state_cannot_resume(tmp_path):
    model, _ = train(tmp_path, steps=5)
    config = checkpoint.load(tmp_path).config  # same config, but weights only (e.g. an exported model)
    checkpoint.save(tmp_path, model="toy", config=config, step=5, model_state=model.state_dict())
    with pytest.raises(LineageError, match="holds no training state to resume from"):
        train(tmp_path, steps=10)
