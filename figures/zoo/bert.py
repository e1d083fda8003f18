"""BERT's cached artifact (library module, no OUTPUTS): the masked-LM run on the notes with its held-out loss
measured along the way, shared by the BERT figures and tests/test_bert.py.

Only the BERT figures import this module, so it imports refimpl.bert statically: the key follows
refimpl/bert.py (and refimpl/transformer.py, refimpl/text.py, which it imports) and the config, which records a
hash of the training text, so editing the notes retrains the model.
"""

from __future__ import annotations

import json
from pathlib import Path

from figures.builder import cached
from refimpl import bert
from refimpl.core import pick_device

EVALUATIONS = 8  # held-out evaluations along the run (the run is resumed between them: same weights as one go)


def bert_run(preset: str) -> Path:
    """A directory with ``ckpt/`` (the trained checkpoint) and ``held_out.json``: ``train`` (the training-loss
    history) and ``held_out`` (per evaluation: step and refimpl.bert.held_out_scores)."""
    config = bert.train_config(preset)

    def produce(out: Path) -> None:
        tokenizer, train_ids, held_ids = bert.text_data(config["chars"])
        steps, curve = config["steps"], []
        for i in range(1, EVALUATIONS + 1):
            at = steps * i // EVALUATIONS
            model, history = bert.train({**config, "steps": at}, out / "ckpt", device=pick_device(), progress=False)
            curve.append({"step": at, **bert.held_out_scores(model, tokenizer, train_ids, held_ids)})
        (out / "held_out.json").write_text(json.dumps({"train": history, "held_out": curve}, indent=2) + "\n")

    return cached("bert", ["refimpl.bert"], produce, preset=preset, config=config)


def bert_checkpoint(preset: str) -> Path:
    """The checkpoint directory of that run (what ``python -m refimpl bert train --preset PRESET`` writes)."""
    return bert_run(preset) / "ckpt"
