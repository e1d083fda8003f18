"""The LLaMA page's cached artifact (library module, no OUTPUTS): the quick LLaMA and two baselines of the same
width, depth, heads, context, steps, batch, learning rate, seed and training windows, all trained on the notes with
their held-out loss measured every EVAL_EVERY steps. Shared by the LLaMA figures, tests/test_llama.py and the
docs-command test (the quick `llama train` starts from the LLaMA checkpoint here).

The three models (RUNS):

- ``llama``: refimpl.llama.Llama: RMSNorm, a SwiGLU MLP of width 2/3 * 4d, no biases, rotary positions,
  grouped-query attention, an untied output layer;
- ``gpt_blocks``: refimpl.llama.GPTBlocks: GPT-2's blocks (LayerNorm, a GELU MLP of width 4d, biases, learned
  absolute positions, multi-head attention) in LLaMA's frame (the same embedding scale, an untied output layer):
  against ``llama``, only the block and the positions differ;
- ``gpt``: refimpl.gpt.GPT as on the GPT page: the same blocks, with GPT-2's output layer tied to the token
  embedding and both embeddings drawn from N(0, 0.02): against ``gpt_blocks``, only that differs.

All runs draw the same batches (the same seed, and refimpl.gpt.fit_notes draws every window from the training
loop's generator in the same way), so the curves differ only by the model.

Each run trains in stages of EVAL_EVERY steps, resuming its own checkpoint (refimpl.training.fit resumes exactly),
so every point of a curve belongs to the very model that is stored. The standard errors are over blocks of BLOCK
consecutive evaluation windows of the held-out text (neighbouring characters are correlated, blocks much less so);
they measure how much the held-out text decides the numbers, not how much the training seed does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from figures.builder import cached
from refimpl import gpt, llama
from refimpl.core import pick_device
from refimpl.text import unigram_nll
from refimpl.training import build_seeded

MODULES = ["refimpl.llama"]
EVAL_EVERY = 40
BLOCK = 4  # evaluation windows per block of the standard errors


def gpt_baseline(config: dict) -> dict:
    """The baselines' config: the LLaMA ``config``'s vocabulary, width, depth, heads and context as the arguments of
    refimpl.gpt.GPT (and refimpl.llama.GPTBlocks), and the same data, seed, steps, batch size, learning rate and
    warmup."""
    m = config["model"]
    model = {"vocab_size": m["vocab_size"], "max_len": config["context"], "width": m["width"], "depth": m["depth"],
             "heads": m["heads"]}
    return {**{k: v for k, v in config.items() if k != "context"}, "model": model}


def _params(model: torch.nn.Module, embeddings: list[torch.Tensor]) -> dict:
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "non_embedding": total - sum(e.numel() for e in embeddings)}


def _block_means(losses: torch.Tensor, size: int) -> torch.Tensor:
    blocks = losses.numel() // size
    return losses[: blocks * size].reshape(blocks, size).mean(1)


def _se(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel()))


def ablation_run(preset: str) -> Path:
    """Directory holding one trained checkpoint per run (``llama/``, ``gpt_blocks/``, ``gpt/``) and ``curve.json``:
    per run ``{"held_out": [...], "train": [[step, loss], ...], "params": {"total", "non_embedding"}}`` at
    ``"steps"`` (step 0 is the untrained model), ``"unigram"`` (nats/char on the same targets), and ``"se"``: the
    standard errors of the final held-out losses (by run) and of paired differences (``"<run>-<run>"``, ``"<run>-
    unigram"``)."""
    data = gpt.text_data()  # read once: the key and the training use the same text, even if the notes change meanwhile
    config = llama.train_config(preset, data=data)

    def produce(out: Path) -> None:
        _, train_ids, held_ids, _ = data
        context, vocab = config["context"], config["model"]["vocab_size"]
        stops = [*range(EVAL_EVERY, config["steps"], EVAL_EVERY), config["steps"]]
        runs = {"llama": (llama.Llama, config), "gpt_blocks": (llama.GPTBlocks, gpt_baseline(config)),
                "gpt": (gpt.GPT, gpt_baseline(config))}
        curve, final = {"steps": [0, *stops]}, {}
        for name, (cls, cfg) in runs.items():
            held = [gpt.held_out_loss(build_seeded(cls, cfg), held_ids, context=context)]  # the initial weights
            for stop in stops:
                model = build_seeded(cls, cfg)  # what llama.train and gpt.train build; fit resumes the checkpoint
                history = gpt.fit_notes(model, {**cfg, "steps": stop}, context, out / name, model_name=name,
                                        device=pick_device(), progress=False, data=data)
                final[name] = gpt.held_out_losses(model, held_ids, context=context)
                held.append(float(final[name].mean()))
            if name == "llama":
                embeddings = [model.token.weight, model.head.weight]
            elif name == "gpt_blocks":
                embeddings = [model.body.token.weight, model.body.position, model.head.weight]
            else:  # GPT's output layer is its token embedding
                embeddings = [model.body.token.weight, model.body.position]
            curve[name] = {"held_out": held, "train": history, "params": _params(model, embeddings)}
        size = BLOCK * context
        targets = held_ids[1:]
        blocks = {name: _block_means(losses, size) for name, losses in final.items()}
        blocks["unigram"] = torch.tensor([unigram_nll(train_ids, targets[i * size: (i + 1) * size], vocab)
                                          for i in range(targets.numel() // size)], dtype=torch.float64)
        curve["unigram"] = unigram_nll(train_ids, targets, vocab)
        curve["targets"], curve["blocks"], curve["block_chars"] = targets.numel(), len(blocks["unigram"]), size
        pairs = [("llama", "gpt_blocks"), ("gpt_blocks", "gpt"), ("llama", "gpt"),
                 *((name, "unigram") for name in runs)]
        curve["se"] = {**{name: _se(blocks[name]) for name in runs},
                       **{f"{a}-{b}": _se(blocks[a] - blocks[b]) for a, b in pairs}}
        (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")

    return cached("llama", MODULES, produce, preset=preset, config=config)


def llama_checkpoint(preset: str) -> Path:
    """The quick (or full) LLaMA's checkpoint directory, as `python -m refimpl llama train` writes it."""
    return ablation_run(preset) / "llama"


def curve(run: Path) -> dict:
    """The ``curve.json`` of an :func:`ablation_run` directory."""
    return json.loads((run / "curve.json").read_text())
