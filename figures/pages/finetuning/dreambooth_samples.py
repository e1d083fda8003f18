"""DreamBooth before and after, from the same z_T: the subject, the base model's threes, and the fine-tuned models
(with and without prior preservation) for the prompt with the identifier and for the plain class prompt."""

from pathlib import Path

from figures.lib.grids import subject_grid
from figures.zoo.dreambooth import evaluation

PAGE = "finetuning/dreambooth.md"
OUTPUTS = ("dreambooth_samples.svg",)
# the words after the colon are the prompt's own words ("the digit sks three", "the digit three")
ROWS = (("base_class", "基座：three"), ("prior_instance", "λ=1：sks three"), ("prior_class", "λ=1：three"),
        ("no_prior_instance", "λ=0：sks three"), ("no_prior_class", "λ=0：three"))


def make(out: Path, preset: str) -> None:
    subject_grid(evaluation(preset), ROWS, out / "dreambooth_samples.svg")
