"""unCLIP text to image: for each digit, one sample per caption template (four English, four Chinese), caption ->
CLIP text embedding -> diffusion prior -> image embedding -> decoder (DDIM, decoder guidance scale 3)."""

from pathlib import Path

from figures.zoo.unclip import PER_DIGIT, comparison
from refimpl.captions import templates
from refimpl.plots import image_grid, save

PAGE = "clip-diffusion/unclip.md"
OUTPUTS = ("unclip_samples.svg",)


def make(out: Path, preset: str) -> None:
    _, samples = comparison(preset)
    n = len(templates())
    grid = samples["t2i"].reshape(10, PER_DIGIT, 1, 8, 8)[:, :n]  # sample j of a digit used template j % n
    titles = [f"英{j + 1}" if j < n // 2 else f"中{j - n // 2 + 1}" for j in range(n)]
    fig = image_grid(grid, column_titles=titles, row_titles=[str(k) for k in range(10)], size=0.55)
    save(fig, out / "unclip_samples.svg")
