"""The scaling-laws page's cached artifact (library module, no OUTPUTS): the grid of character-level LLaMA models of
refimpl.scaling (every width trained for every step budget, each with a cosine schedule as long as its budget),
their held-out losses, and the Chinchilla law fitted to them with N counted both ways (Chinchilla's total parameters
and Kaplan's non-embedding parameters). Shared by the page's figures, tests/test_scaling.py and the docs-command test
(the quick `scaling train` starts from the checkpoints here).

Every run of a width starts from the same initial weights and draws the same windows in the same order (one seed),
so a longer budget sees the shorter budgets' batches and more; runs differ by their size, their budget and the
schedule that budget implies.
"""

from __future__ import annotations

import json
from pathlib import Path

from figures.builder import cached
from refimpl import gpt, scaling
from refimpl.core import pick_device

MODULES = ["refimpl.scaling"]
COUNTS = ("total", "non_embedding")


def scaling_grid(preset: str) -> Path:
    """Directory holding one checkpoint per run (``w<width>-s<steps>/``), ``results.json`` (refimpl.scaling.run_grid)
    and ``fit.json``: refimpl.scaling.fit_grid of the held-out losses for each way of counting N (``total``,
    ``non_embedding``)."""
    data = gpt.text_data()  # read once: the key and the training use the same text, even if the notes change meanwhile
    grid = scaling.grid_config(preset, data=data)

    def produce(out: Path) -> None:
        results = scaling.run_grid(grid, out, device=pick_device(), progress=False, data=data)
        fits = {count: scaling.fit_grid(results, count=count) for count in COUNTS}
        (out / "fit.json").write_text(json.dumps(fits, indent=1) + "\n")

    return cached("scaling", MODULES, produce, preset=preset, config=grid)


def results(run: Path) -> dict:
    """The ``results.json`` of a :func:`scaling_grid` directory."""
    return scaling.read_results(run)


def fits(run: Path) -> dict:
    """The ``fit.json`` of a :func:`scaling_grid` directory: count -> refimpl.scaling.fit_grid's summary."""
    return json.loads((run / "fit.json").read_text())
