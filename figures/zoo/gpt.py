"""The GPT page's cached artifact (library module, no OUTPUTS): the quick character-level GPT trained on the notes,
with its held-out loss measured every EVAL_EVERY steps, shared by the GPT and Transformer figures and by
tests/test_gpt.py.

The run trains in stages of EVAL_EVERY steps, resuming its own checkpoint (refimpl.training.fit resumes exactly),
so the curve belongs to the very model that is stored. The config holds a hash of the training text: editing
the notes retrains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from figures.builder import cached
from refimpl import gpt
from refimpl.core import pick_device
from refimpl.text import unigram_nll

MODULES = ["refimpl.gpt"]
EVAL_EVERY = 25


def gpt_run(preset: str) -> Path:
    """Directory holding the trained checkpoint and ``curve.json``: ``{"steps": [...], "held_out": [...],
    "train": [[step, loss], ...], "unigram": ...}`` (nats/char; step 0 is the untrained model)."""
    data = gpt.text_data()  # read once: the key and the training use the same text, even if the notes change meanwhile
    config = gpt.train_config(preset, data=data)

    def produce(out: Path) -> None:
        _, train_ids, held_ids, _ = data
        with torch.random.fork_rng(devices=[]):  # the same initial weights as gpt.train
            torch.manual_seed(config["seed"])
            steps, held = [0], [gpt.held_out_loss(gpt.GPT(**config["model"]), held_ids)]
        for stop in [*range(EVAL_EVERY, config["steps"], EVAL_EVERY), config["steps"]]:
            model, history = gpt.train({**config, "steps": stop}, out, device=pick_device(), progress=False,
                                       data=data)
            steps.append(stop)
            held.append(gpt.held_out_loss(model, held_ids))
        curve = {"steps": steps, "held_out": held, "train": history,
                 "unigram": unigram_nll(train_ids, held_ids[1:], config["model"]["vocab_size"])}
        (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")

    return cached("gpt", MODULES, produce, preset=preset, config=config)


def curve(run: Path) -> dict:
    """The ``curve.json`` of a :func:`gpt_run` directory."""
    return json.loads((run / "curve.json").read_text())
