"""T5's cached artifacts (library module, no OUTPUTS): the quick span-corruption model trained on the notes, with
its held-out scores at ten points of training, shared by the T5 figures and tests/test_t5.py.

Only the T5 figures import this module, so it imports refimpl.t5 statically. The training config records a hash
of the notes' training text, so editing any page retrains the model (the corpus is the notes).
"""

from __future__ import annotations

import json
from pathlib import Path

from figures.builder import cached
from refimpl import t5
from refimpl.core import pick_device

MODULES = ["refimpl.t5"]
POINTS = 10  # held-out evaluations during training


def t5_checkpoint(preset: str) -> Path:
    """The checkpoint directory of the span-corruption model of ``preset``; ``held_out.json`` in it lists
    refimpl.t5.evaluate at POINTS evenly spaced steps. Training stops at each point and resumes from its
    checkpoint, which refimpl.training.fit makes bit-identical (on CPU) to one uninterrupted run."""
    data = t5.text_data()  # read once: the key, the training and the evaluation all see this text
    config = t5.train_config(preset, data=data)

    def produce(out: Path) -> None:
        curve = []
        for i in range(1, POINTS + 1):
            steps = round(config["steps"] * i / POINTS)
            model, _ = t5.train({**config, "steps": steps}, out, data=data, device=pick_device(), progress=False)
            curve.append({"step": steps, **t5.evaluate(model, config, data=data)})
        (out / "held_out.json").write_text(json.dumps(curve, indent=2) + "\n")

    return cached("t5", MODULES, produce, preset=preset, config=config)


def held_out_curve(checkpoint: Path) -> list[dict]:
    """The held-out scores recorded with a :func:`t5_checkpoint` directory (the last entry is the finished model).
    Takes the directory, not the preset: the key follows the notes, so a caller that needs the model and its
    scores asks for the checkpoint once and gets both from the same training."""
    return json.loads((Path(checkpoint) / "held_out.json").read_text())
