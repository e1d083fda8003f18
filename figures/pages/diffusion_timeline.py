"""The diffusion line of the seed as a timeline, drawn from the paper registry (docs/papers.yml)."""

from pathlib import Path

import matplotlib.dates as mdates

from figures.registry import BRANCHES, timeline_rows
from refimpl.plots import save, subplots

PAGE = "index.md"
OUTPUTS = ("diffusion_timeline.svg",)
INPUTS = ("docs/papers.yml",)
LANES = ("diffusion-foundations", "efficient-sampling", "guided-diffusion", "clip-diffusion",
         "latent-diffusion", "after-2022", "side-clip", "fine-tuning")
LANE_NAMES = {"diffusion-foundations": "foundations", "efficient-sampling": "efficient sampling",
              "guided-diffusion": "guidance", "clip-diffusion": "CLIP + diffusion",
              "latent-diffusion": "latent diffusion", "after-2022": "after 2022: flows", "side-clip": "side line: CLIP",
              "fine-tuning": "fine-tuning"}


def make(out: Path, preset: str) -> None:
    assert set(LANES) <= set(BRANCHES)
    rows = timeline_rows(LANES)
    where = {row["id"]: (mdates.date2num(row["date"]), LANES.index(row["branch"])) for row in rows}
    fig, ax = subplots(figsize=(10, 5))
    for row in rows:
        x, y = where[row["id"]]
        for parent in row["predecessors"]:
            if parent in where:
                px, py = where[parent]
                ax.annotate("", xy=(x, y), xytext=(px, py),
                            arrowprops={"arrowstyle": "->", "color": "0.75", "lw": 0.8,
                                        "shrinkA": 4, "shrinkB": 4})
    # Labels of papers that lie close in time within a lane take turns over four slots (above, below, further
    # above, to the right: further below would reach the next lane's labels), so four neighbours stay apart.
    slots = ((0, 9, "center", "bottom"), (0, -9, "center", "top"), (0, 20, "center", "bottom"),
             (7, 0, "left", "center"))
    last_in_lane: dict[int, tuple[float, int]] = {}  # lane -> (x, slot index) of its previous paper
    for row in rows:
        x, y = where[row["id"]]
        ax.plot(x, y, "o", color=f"C{LANES.index(row['branch'])}", ms=7, zorder=3)
        previous = last_in_lane.get(y)
        slot = (previous[1] + 1) % len(slots) if previous and x - previous[0] < 300 else 0
        last_in_lane[y] = (x, slot)
        dx, dy, ha, va = slots[slot]
        ax.annotate(row["short"], (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                    zorder=4)
    ax.set_yticks(range(len(LANES)), [LANE_NAMES[lane] for lane in LANES])
    ax.set_ylim(len(LANES) - 0.3, -0.75)
    ax.xaxis.set_major_locator(mdates.YearLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Diffusion models, by date of first arXiv version")
    fig.tight_layout()
    save(fig, out / "diffusion_timeline.svg")
