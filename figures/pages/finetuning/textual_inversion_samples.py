"""Textual Inversion before and after, from the same z_T: the subject, the frozen model's "the digit three", the
learned word "the digit s*", and the word of a harder-pushed inversion."""

from pathlib import Path

from figures.lib.grids import subject_grid
from figures.zoo.textual_inversion import PUSHED, evaluation

PAGE = "finetuning/textual-inversion.md"
OUTPUTS = ("textual_inversion_samples.svg",)
# "three" and "s*" are the prompt's own words ("the digit three", "the digit s*")
ROWS = (("plain", "冻结模型：three"), ("word", "s*"), ("pushed", f"s*，学习率 {PUSHED['lr']:g}"))


def make(out: Path, preset: str) -> None:
    subject_grid(evaluation(preset), ROWS, out / "textual_inversion_samples.svg", subject_title="概念图")
