"""The diffusion line of the seed as a timeline, drawn from the paper registry (docs/papers.yml).

One row per paper, grouped by branch (the branch's name heads its rows) and by date within a branch: labels
never share a row, so they cannot collide however close two papers are in time.
"""

from pathlib import Path

import matplotlib.dates as mdates

from figures.registry import BRANCHES, timeline_rows
from refimpl.plots import save, subplots

PAGE = "index.md"
OUTPUTS = ("diffusion_timeline.svg",)
INPUTS = ("docs/papers.yml",)
LANES = ("diffusion-foundations", "efficient-sampling", "guided-diffusion", "clip-diffusion",
         "latent-diffusion", "after-2022", "side-clip", "fine-tuning")
ROW = 0.2  # inches per row: a 9-pt label is 0.125 in tall


def make(out: Path, preset: str) -> None:
    assert set(LANES) <= set(BRANCHES)
    rows = sorted(timeline_rows(LANES), key=lambda row: (LANES.index(row["branch"]), row["date"]))
    where, headers, y = {}, [], 0
    for lane in LANES:
        members = [row for row in rows if row["branch"] == lane]
        if members:
            headers.append((lane, y))
            for row in members:
                y += 1
                where[row["id"]] = (mdates.date2num(row["date"]), y)
            y += 1.5
    first = min(x for x, _ in where.values())
    last = max(x for x, _ in where.values())
    fig, ax = subplots(figsize=(7, ROW * y + 0.8))
    for row in rows:
        x, y_row = where[row["id"]]
        for parent in row["predecessors"]:
            if parent in where:
                ax.annotate("", xy=(x, y_row), xytext=where[parent],
                            arrowprops={"arrowstyle": "->", "color": "0.8", "lw": 0.6, "shrinkA": 3, "shrinkB": 3,
                                        "connectionstyle": "arc3,rad=0.15"})
    for lane, y_head in headers:
        ax.text(first, y_head, BRANCHES[lane], color=f"C{LANES.index(lane)}", weight="bold", va="center")
    for row in rows:
        x, y_row = where[row["id"]]
        color = f"C{LANES.index(row['branch'])}"
        ax.plot(x, y_row, "o", color=color, ms=6, zorder=3)
        right = x < last - 500  # labels of the last papers go to the left of their dot, inside the axes
        ax.annotate(row["short"], (x, y_row), xytext=(5 if right else -5, 0), textcoords="offset points",
                    ha="left" if right else "right", va="center", fontsize=9, zorder=4,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 0.5})
    ax.set_ylim(y - 0.5, -1)
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_xlim(first - 120, last + 120)
    ax.xaxis.set_major_locator(mdates.YearLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("扩散模型论文时间线（按 arXiv 首个版本的日期）")
    fig.tight_layout()
    save(fig, out / "diffusion_timeline.svg")
