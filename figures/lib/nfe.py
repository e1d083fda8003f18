"""Sample quality against model calls on the swiss roll, drawn alike by the flow-matching and consistency-models
pages: sliced Wasserstein distance to fresh data, with the two baselines of tests/learning.py."""

from __future__ import annotations

from typing import Sequence

import torch
from matplotlib.ticker import NullLocator

from refimpl.data import toy_2d
from refimpl.metrics import sliced_wasserstein
from refimpl.plots import subplots


def distances(samples: dict, n: int) -> tuple[dict, float, float]:
    """(distance of each entry of ``samples`` to ``n`` fresh swiss-roll points, the floor: two independent data
    draws, the distance of a moment-matched Gaussian); every sample set has ``n`` points."""
    reference = toy_2d("swissroll", n, torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(12)
    again = toy_2d("swissroll", n, generator)
    gaussian = reference.mean(0) + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(reference.T.cov()).T
    distance = {key: sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(0))
                for key, x in {**samples, "floor": again, "gaussian": gaussian}.items()}
    return distance, distance.pop("floor"), distance.pop("gaussian")


def nfe_figure(nfe: Sequence[int], curves: dict[str, list[float]], levels: Sequence[tuple[float, str, str, str]],
               floor: float, gaussian: float, title: str):
    """Log-log distance against NFE: one line of markers per ``curves`` entry (label -> distances), a horizontal
    line per ``levels`` entry (distance, colour, line style, label), then the floor and the Gaussian."""
    fig, ax = subplots(figsize=(6.2, 3.8))
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(nfe, values, "o-", color=f"C{i}", ms=4, label=label)
    for value, color, style, label in [*levels, (floor, "0.5", "--", "两份独立数据之间（噪声底）"),
                                       (gaussian, "0.5", ":", "与数据同均值同协方差的高斯")]:
        ax.axhline(value, color=color, ls=style, lw=1, label=label)
    ax.set(xscale="log", yscale="log", xlabel="网络调用次数 (NFE)", ylabel="到数据的切片 Wasserstein 距离", title=title)
    ax.set_xticks(nfe, [str(n) for n in nfe])
    ax.xaxis.set_minor_locator(NullLocator())  # no "3 x 10^0" between the NFE ticks
    ax.tick_params(which="both", labelsize=11)  # 11 pt: the log axis's powers of ten draw exponents at 70%
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
