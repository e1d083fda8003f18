"""Textual Inversion before and after, from the same z_T: the subject, the frozen model's "the digit three", the
learned word "the digit s*", and the word of a harder-pushed inversion."""

from pathlib import Path

from figures.lib.grids import subject_grid
from figures.zoo.textual_inversion import PUSHED, evaluation

PAGE = "finetuning/textual-inversion.md"
OUTPUTS = ("textual_inversion_samples.png",)
ROWS = (("plain", "base: three"), ("word", "s*"), ("pushed", f"s*, lr {PUSHED['lr']:g}"))


def make(out: Path, preset: str) -> None:
    subject_grid(evaluation(preset), ROWS, out / "textual_inversion_samples.png")
