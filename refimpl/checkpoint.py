"""Checkpoints: safetensors weights plus a JSON config, written atomically, resumable.

A checkpoint is a directory::

    runs/ddpm/
      config.json                 {"format", "model", "config", "step", "weights", "sha256", ...}
      weights-000500.safetensors  model.* tensors, optimizer.* tensors, rng.* states

Each save writes a new weights file (temp file + rename), then replaces config.json
(temp file + rename), then deletes the older weights. A process killed at any point
leaves a config.json that names a complete weights file, so nothing is lost and the
next run can resume. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from refimpl.core import LineageError, conv_layout

FORMAT = "lineage-checkpoint/1"


@dataclass
class Checkpoint:
    """What :func:`load` returns: tensors grouped by prefix plus the JSON fields."""

    model: str
    config: dict[str, Any]
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's weights, names and bytes: a run's config records the exact model it
    was trained on or from (a frozen CLIP, a base LDM), and loading refuses a run whose base has changed."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save(directory: str | os.PathLike, *, model: str, config: dict[str, Any], step: int,
         model_state: dict[str, torch.Tensor], optimizer_state: dict[str, torch.Tensor] | None = None,
         rng_state: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; ``config`` and ``extra`` must be JSON-serialisable."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update({f"optimizer.{k}": v for k, v in (optimizer_state or {}).items()})
    tensors.update({f"rng.{k}": v for k, v in (rng_state or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    weights = directory / f"weights-{step:08d}.safetensors"
    _atomic_write(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT, "model": model}))
    meta = {"format": FORMAT, "model": model, "config": config, "step": step,
            "weights": weights.name, "sha256": _sha256(weights), "extra": extra or {}}
    _atomic_write(directory / "config.json",
                  lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    for old in directory.glob("weights-*.safetensors"):
        if old.name != weights.name:
            old.unlink(missing_ok=True)
    return directory


def exists(directory: str | os.PathLike) -> bool:
    return (Path(directory) / "config.json").is_file()


def load(directory: str | os.PathLike, *, expect_model: str | None = None) -> Checkpoint:
    """Read a checkpoint, refusing a missing, corrupt, or other-model one with a LineageError."""
    directory = Path(directory)
    if not directory.exists():
        raise LineageError(f"checkpoint not found: {directory}")
    cfg_path = directory / "config.json" if directory.is_dir() else directory
    if not cfg_path.is_file() or cfg_path.name != "config.json":
        raise LineageError(f"not a checkpoint directory (no config.json): {directory}")
    try:
        meta = json.loads(cfg_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("unknown format")
        weights = cfg_path.parent / meta["weights"]
        step = int(meta["step"])
        model = str(meta["model"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise LineageError(f"corrupt checkpoint: {cfg_path} is not a Lineage checkpoint config") from None
    if expect_model is not None and model != expect_model:
        raise LineageError(f"checkpoint {directory} holds a {model!r} model, not {expect_model!r}")
    if not weights.is_file():
        raise LineageError(f"corrupt checkpoint: weights file {weights.name} is missing in {directory}")
    if _sha256(weights) != meta.get("sha256"):
        raise LineageError(f"corrupt checkpoint: {weights} does not match its recorded checksum")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise LineageError(f"corrupt checkpoint: cannot read {weights}: {err}") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optimizer": {}, "rng": {}}
    for key, value in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix in groups:
            groups[prefix][name] = value
    return Checkpoint(model=model, config=meta.get("config", {}), step=step,
                      model_state=groups["model"], optimizer_state=groups["optimizer"],
                      rng_state=groups["rng"], extra=meta.get("extra", {}))


def load_module(directory: str | os.PathLike, *, expect_model: str,
                build: Callable[[Checkpoint], torch.nn.Module]) -> tuple[torch.nn.Module, Checkpoint]:
    """Read a checkpoint, rebuild its network with ``build(checkpoint)`` from the recorded config and load the
    weights strictly (CPU, eval mode). A config that does not describe the weights (a missing key, a wrong
    shape) is a corrupt checkpoint: one LineageError naming the directory, never a traceback."""
    data = load(directory, expect_model=expect_model)
    try:
        module = build(data)
        module.load_state_dict(data.model_state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LineageError(f"corrupt checkpoint: {directory} does not describe a {expect_model} model "
                           f"({first})") from None
    return conv_layout(module.eval()), data


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into flat tensors (for safetensors) and JSON (param groups)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      groups: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})
