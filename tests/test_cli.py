"""The command line: runs, round-trips checkpoints, resumes, and refuses bad input with one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clitools import assert_refused, refimpl
from refimpl import checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A short swiss-roll run (50 steps): enough for the interface tests, not for quality."""
    work = tmp_path_factory.mktemp("cli")
    result = refimpl("ddpm", "train", "--data", "swissroll", "--steps", "50", "--out", "runs/ddpm", cwd=work)
    assert result.returncode == 0, result.stderr
    return work


def test_train_writes_a_checkpoint_that_round_trips(trained):
    ckpt = checkpoint.load(trained / "runs/ddpm", expect_model="ddpm")
    assert ckpt.step == 50
    assert ckpt.config["data"] == "swissroll" and ckpt.config["T"] == 1000
    config = json.loads((trained / "runs/ddpm/config.json").read_text())
    assert config["weights"].endswith(".safetensors")
    # save -> load -> save gives the same tensors
    again = trained / "again"
    checkpoint.save(again, model="ddpm", config=ckpt.config, step=ckpt.step, model_state=ckpt.model_state)
    reloaded = checkpoint.load(again, expect_model="ddpm")
    assert reloaded.model_state.keys() == ckpt.model_state.keys()
    assert all(torch.equal(reloaded.model_state[k], v) for k, v in ckpt.model_state.items())


def test_sample_writes_a_png(trained):
    result = refimpl("ddpm", "sample", "--ckpt", "runs/ddpm", "--n", "100", "--out", "s.png", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert (trained / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_from_the_last_checkpoint(trained, tmp_path):
    import shutil

    work = tmp_path / "resume"
    shutil.copytree(trained / "runs", work / "runs")
    result = refimpl("ddpm", "train", "--data", "swissroll", "--steps", "80", "--out", "runs/ddpm", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "at step 50" in result.stderr
    assert checkpoint.load(work / "runs/ddpm").step == 80


def test_interrupted_training_resumes(tmp_path):
    """Kill a run with SIGINT mid-way: a checkpoint survives and a rerun finishes from it."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT), LINEAGE_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "refimpl", "ddpm", "train", "--data", "moons", "--steps", "100000", "--out", "run"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.2)  # the first periodic checkpoint exists: training is under way
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    reached = checkpoint.load(tmp_path / "run", expect_model="ddpm").step
    assert 0 < reached < 100000
    result = refimpl("ddpm", "train", "--data", "moons", "--steps", str(reached + 20), "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"at step {reached}" in result.stderr
    assert checkpoint.load(tmp_path / "run").step == reached + 20


@pytest.mark.parametrize("args, fragments", [
    (["nosuchpaper"], ["invalid choice", "nosuchpaper"]),
    (["ddpm", "fly"], ["invalid choice", "fly"]),
    (["ddpm", "train", "--out", "x", "--bogus", "1"], ["unrecognized arguments", "--bogus"]),
    (["ddpm", "train", "--out", "x", "--steps", "0"], ["--steps", "positive"]),
    (["ddpm", "train", "--out", "x", "--steps", "-5"], ["--steps", "positive"]),
    (["ddpm", "train", "--out", "x", "--data", "imagenet"], ["--data", "imagenet"]),
    (["ddpm", "train", "--out", "x", "--preset", "huge"], ["--preset", "huge"]),
    (["ddpm", "sample", "--ckpt", "nowhere", "--out", "s.png"], ["checkpoint not found", "nowhere"]),
    (["ddpm", "sample", "--ckpt", "nowhere", "--n", "0", "--out", "s.png"], ["--n", "positive"]),
    (["ddpm", "sample", "--ckpt", "nowhere", "--n", "-3", "--out", "s.png"], ["--n", "positive"]),
    (["ddpm", "sample", "--ckpt", "nowhere", "--n", "ten", "--out", "s.png"], ["--n", "ten"]),
])
def test_bad_input_is_refused_in_one_line(tmp_path, args, fragments):
    assert_refused(refimpl(*args, cwd=tmp_path), *fragments)


def test_missing_device_is_refused(trained):
    # on a machine without CUDA, "cuda" is missing; with CUDA, the device one past the last is
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert_refused(refimpl("ddpm", "train", "--data", "moons", "--steps", "1", "--out", "x", "--device", missing,
                           cwd=trained), missing)
    assert_refused(refimpl("ddpm", "sample", "--ckpt", "runs/ddpm", "--out", "s.png", "--device", "tpu",
                           cwd=trained), "tpu")


def test_corrupt_checkpoint_is_refused(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained / "runs/ddpm", broken)
    weights = next(broken.glob("weights-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert_refused(refimpl("ddpm", "sample", "--ckpt", str(broken), "--out", "s.png", cwd=tmp_path), "corrupt")
    (broken / "config.json").write_text("{not json")
    assert_refused(refimpl("ddpm", "sample", "--ckpt", str(broken), "--out", "s.png", cwd=tmp_path), "corrupt")


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
    ckpt = checkpoint.load(trained / "runs/ddpm")
    checkpoint.save(tmp_path / "other", model="ncsn", config=ckpt.config, step=1, model_state=ckpt.model_state)
    assert_refused(refimpl("ddpm", "sample", "--ckpt", "other", "--out", "s.png", cwd=tmp_path), "'ncsn'", "'ddpm'")
    assert_refused(refimpl("ddpm", "train", "--data", "swissroll", "--out", "other", cwd=tmp_path), "'ncsn'")


def test_resume_with_a_different_configuration_is_refused(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "runs", tmp_path / "runs")
    assert_refused(refimpl("ddpm", "train", "--data", "moons", "--steps", "60", "--out", "runs/ddpm", cwd=tmp_path),
                   "different configuration")


def test_sample_output_must_be_png(trained):
    assert_refused(refimpl("ddpm", "sample", "--ckpt", "runs/ddpm", "--out", "s.jpg", cwd=trained), ".png")
    assert_refused(refimpl("ddpm", "sample", "--ckpt", "runs/ddpm", "--out", "no/such/dir/s.png", cwd=trained),
                   "does not exist")


def test_help_exits_zero(tmp_path):
    result = refimpl("ddpm", "train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--preset" in result.stdout
