"""The one training loop of the project: AdamW, warmup, gradient clipping, checkpoints, exact resume.

``fit`` knows nothing about diffusion: a paper module hands it ``loss_fn(model, generator)``,
which draws its own batch and noise from ``generator`` (a CPU ``torch.Generator``) and
returns a scalar loss. Because every random draw goes through that one generator and its
state is checkpointed with the weights and the optimizer, a run stopped at any step and
resumed ends with bit-identical weights (on CPU) to a run that never stopped.
``loss_fn`` draws on CPU and moves its tensors to the model's device itself, e.g.
``x0 = batch(128).to(next(model.parameters()).device)``; it runs under bf16 autocast on CUDA.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from refimpl import checkpoint
from refimpl.core import LineageError, autocast, conv_layout, pick_device
from refimpl.core import progress as progress_bar
from refimpl.nets import model_config, model_from_config

LossFn = Callable[[nn.Module, torch.Generator], torch.Tensor]


def _json(value: Any) -> Any:
    """Normalise to what JSON gives back (tuples -> lists, ...), so configs compare equal after a round trip."""
    return json.loads(json.dumps(value))


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Dotted path of the first field where two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where
            found = _first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    return None if old == new else (path or "<config>")


def _without_steps(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config minus the total number of steps (top level and ``train``), which may grow on resume."""
    cfg = {k: v for k, v in cfg.items() if k != "steps"}
    if isinstance(cfg.get("train"), dict):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "steps"}
    return cfg


class _DeferSigint:
    """Turn the first Ctrl-C into a flag checked between steps (the step in flight completes); a second one raises."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --8<-- [start:fit]
LR_DECAYS = ("constant", "cosine")


def learning_rate(lr: float, step: int, steps: int, warmup: int = 0, lr_decay: str = "constant") -> float:
    """The learning rate of the update from ``step`` to ``step + 1`` (0-based) in a run of ``steps`` updates:
    linear warmup over ``warmup`` updates, times the cosine factor ``(1 + cos(pi * step / steps)) / 2``
    with ``lr_decay="cosine"``."""
    scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if lr_decay == "cosine":
        scale *= 0.5 * (1 + math.cos(math.pi * step / steps))
    return lr * scale


def fit(model: nn.Module, loss_fn: LossFn, *, steps: int, lr: float, model_name: str, config: dict[str, Any],
        out: str | Path | None = None, device: str | torch.device | None = None, seed: int = 0,
        batch_size: int | None = None, warmup: int = 0, lr_decay: str = "constant", weight_decay: float = 0.0,
        grad_clip: float | None = 1.0, checkpoint_every: int = 500, resume: bool = True, progress: bool = True,
        log_every: int = 10) -> list[tuple[int, float]]:
    """Train ``model`` for ``steps`` optimizer steps of ``loss_fn``; return the loss history.

    Optimizer: AdamW (decoupled weight decay); with the default ``weight_decay=0`` it is
    exactly Adam, which DDPM used (lr 2e-4, warmup, gradient clipping at norm 1). The
    learning rate rises linearly over the first ``warmup`` steps and then, with
    ``lr_decay="constant"`` (the papers' choice), stays constant: it never depends on the total
    ``steps``, and a run can be extended by resuming with more. ``lr_decay="cosine"`` multiplies
    it by ``(1 + cos(pi * step / steps)) / 2``, so it reaches zero at the last step: a short run
    ends on a settled model instead of wherever the last noisy steps left it (the quick presets'
    choice, in place of the papers' weight EMA over hundreds of thousands of steps). Such a run
    resumes only to the same ``steps``.

    The recorded config is ``config`` plus ``model`` (:func:`refimpl.nets.model_config`
    for the networks of :mod:`refimpl.nets`; for other modules ``config["model"]`` is
    kept as given) and ``train`` (lr, seed, batch_size, warmup, weight_decay, grad_clip,
    log_every, steps, and lr_decay unless it is "constant"). With ``out``, a checkpoint is
    written every ``checkpoint_every`` steps, at the end, and when interrupted (Ctrl-C or a
    KeyboardInterrupt) before re-raising; a first Ctrl-C lets the current step finish. If
    ``out`` already holds a checkpoint of ``model_name`` (and ``resume``), training continues
    from it; its recorded config must match apart from ``steps`` (and with them too when the
    learning rate decays). The history holds ``(step, mean loss of the last log_every steps)``
    every ``log_every`` steps.
    ``batch_size`` is only recorded: ``loss_fn`` draws its own batch.
    """
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if not isinstance(value, int) or value <= 0:
            raise LineageError(f"{name} must be a positive integer, got {value!r}")
    if lr_decay not in LR_DECAYS:
        raise LineageError(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {lr_decay!r}")
    # None is the CPU, as in every trainer that calls fit (their data go to ``device or "cpu"``); "auto" picks
    device = device if isinstance(device, torch.device) else pick_device(device or "cpu")
    conv_layout(model.to(device), device)
    try:
        described = {"model": model_config(model)}
    except TypeError:  # not a refimpl.nets model (e.g. a classifier): config["model"] is the caller's business
        described = {}
    if described and "model" in config and _json(config["model"]) != _json(described["model"]):
        raise ValueError("config['model'] does not describe the model being trained")
    train = dict(lr=lr, seed=seed, batch_size=batch_size, warmup=warmup, weight_decay=weight_decay,
                 grad_clip=grad_clip, log_every=log_every, steps=steps)
    if lr_decay != "constant":  # recorded only when it is not, so the configs of constant runs stay as they were
        train["lr_decay"] = lr_decay
    full_config = _json({**config, **described, "train": train})
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, history, window = 0, [], []

    if out is not None and resume and checkpoint.exists(out):
        ckpt = checkpoint.load(out, expect_model=model_name)
        field = _first_difference(_without_steps(ckpt.config), _without_steps(full_config))
        if field:
            raise LineageError(f"checkpoint in {out} was trained with a different configuration "
                               f"(field {field}); use another --out or remove it")
        trained_for = ckpt.config.get("train", {}).get("steps")
        if lr_decay != "constant" and trained_for != steps:
            raise LineageError(f"checkpoint in {out} decays its learning rate to zero at step {trained_for}; "
                               f"it cannot be trained to step {steps} (use another --out)")
        model.load_state_dict(ckpt.model_state)
        step, history = ckpt.step, [(int(s), float(v)) for s, v in ckpt.extra.get("history", [])]
        if step >= steps:
            return history
        if "optimizer" not in ckpt.extra or "generator" not in ckpt.rng_state:
            raise LineageError(f"checkpoint in {out} holds no training state to resume from; use another --out")
        checkpoint.restore_optimizer(optimizer, ckpt.optimizer_state, ckpt.extra["optimizer"])
        generator.set_state(ckpt.rng_state["generator"])
        window = [float(v) for v in ckpt.extra.get("window", [])]
        print(f"resuming from the checkpoint in {out} at step {step}", file=sys.stderr)

    saved_step = step

    def save() -> None:
        nonlocal saved_step
        if out is None or step == saved_step:
            return
        opt_tensors, opt_groups = checkpoint.optimizer_tensors(optimizer)
        checkpoint.save(out, model=model_name, config=full_config, step=step, model_state=model.state_dict(),
                        optimizer_state=opt_tensors, rng_state={"generator": generator.get_state()},
                        extra={"history": history, "window": window, "optimizer": opt_groups})
        saved_step = step

    model.train()
    bar = progress_bar(range(step, steps), total=steps - step, desc=model_name, disable=not progress)
    with _DeferSigint() as sigint:
        try:
            for _ in bar:
                rng_before = generator.get_state()  # restored if the step is interrupted half-way
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(lr, step, steps, warmup, lr_decay)
                try:
                    with autocast(device):
                        loss = loss_fn(model, generator)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"{model_name}: loss is {value} at step {step + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.float().backward()
                except BaseException:
                    generator.set_state(rng_before)
                    raise
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                step += 1
                window.append(value)
                if step % log_every == 0:
                    history.append((step, sum(window) / len(window)))
                    window = []
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{history[-1][1]:.4f}")
                if step % checkpoint_every == 0:
                    save()
                if sigint.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            save()
            raise
        finally:
            if hasattr(bar, "close"):
                bar.close()
    save()
    return history
# --8<-- [end:fit]


def build_seeded(cls, config: dict[str, Any]) -> nn.Module:
    """The untrained model ``cls(**config["model"])``, its initial weights drawn from config["seed"] (the global
    RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return cls(**config["model"])


def fit_config(model: nn.Module, loss_fn: LossFn, config: dict[str, Any], out, model_name: str, device, resume: bool,
               progress: bool) -> list[tuple[int, float]]:
    """:func:`fit` with the steps, lr (and its decay, if recorded), seed and batch size that ``config`` records: the
    trainers whose config holds their whole optimisation (DDPM, iDDPM, CFG, the text-to-image papers, fine-tunes)."""
    return fit(model, loss_fn, steps=config["steps"], lr=config["lr"], lr_decay=config.get("lr_decay", "constant"),
               out=out, model_name=model_name, config=config, device=device, seed=config["seed"],
               batch_size=config["batch_size"], resume=resume, progress=progress)


def load_model(ckpt_dir: str | Path, expect_model: str) -> tuple[nn.Module, checkpoint.Checkpoint]:
    """Rebuild the network a checkpoint was trained with and load its weights (on CPU, eval mode)."""
    ckpt = checkpoint.load(ckpt_dir, expect_model=expect_model)
    cfg = ckpt.config.get("model") if isinstance(ckpt.config, dict) else None
    if not isinstance(cfg, dict):
        raise LineageError(f"corrupt checkpoint: {ckpt_dir} records no model config")
    model = model_from_config(cfg)
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LineageError(f"corrupt checkpoint: weights in {ckpt_dir} do not fit its model config ({first})") from None
    return conv_layout(model.eval()), ckpt
