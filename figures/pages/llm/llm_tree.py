"""The LLM evolution tree drawn from docs/llm/models.yml, and the page's table of its models."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.lines import Line2D

from figures.lib.llm_models import BRANCHES, Model, load
from figures.registry import load as load_registry
from refimpl.plots import save, subplots

PAGE = "llm/tree.md"
OUTPUTS = ("llm_tree.svg", "llm_models_table.md")
INPUTS = ("docs/llm/models.yml", "docs/papers.yml")

#: branch -> (x of its first lane, number of lanes, colour, title); the colours follow the survey's figure
COLUMNS = {
    "encoder-only": (0.0, 3, "#d6609a", "encoder-only"),
    "encoder-decoder": (4.5, 2, "#3a9a4a", "encoder-decoder"),
    "decoder-only": (7.5, 5, "#3a6fc4", "decoder-only"),
}
LANE_WIDTH = 1.5  # x units per lane: room for the longest label at the font size below
MIN_GAP = 0.17    # years between two models in one lane: one label height at the figure's scale
ZH = {"encoder-only": "仅编码器", "encoder-decoder": "编码器-解码器", "decoder-only": "仅解码器",
      "open": "开放", "closed": "闭源"}


def layout(models: dict[str, Model]) -> dict[str, tuple[float, float]]:
    """(x, y) of every model: y is its date; within its branch, the first lane (left to right) whose
    last model is at least MIN_GAP earlier, so that labels in a lane never collide."""
    where = {}
    for branch in BRANCHES:
        x0, lanes, _, _ = COLUMNS[branch]
        last = [float("-inf")] * lanes
        for m in sorted((m for m in models.values() if m.branch == branch), key=lambda m: (m.when, m.id)):
            lane = next((i for i in range(lanes) if m.when - last[i] >= MIN_GAP), None)
            if lane is None:
                raise ValueError(f"llm_tree: no free lane for {m.id} in {branch}; add a lane in COLUMNS")
            last[lane] = m.when
            where[m.id] = (x0 + lane * LANE_WIDTH, m.when)
    return where


def overlaps(labels, markers) -> list[tuple[str, str]]:
    """(label, other model) pairs where a label's drawn box meets another label or another model's
    marker (after the figure has been drawn); ``labels`` and ``markers`` are parallel, one per model."""
    names = [t.get_text() for t in labels]
    texts = [t.get_window_extent() for t in labels]
    marks = [m.get_window_extent() for m in markers]
    return [(names[i], names[j]) for i in range(len(names)) for j in range(len(names))
            if (j > i and texts[i].overlaps(texts[j])) or (j != i and texts[i].overlaps(marks[j]))]


def draw(models: dict[str, Model], root_year: float):
    """The tree as a matplotlib Figure (years upwards, one coloured region per branch)."""
    where = layout(models)
    fig, ax = subplots(figsize=(11, 10.5))
    top = max(m.when for m in models.values()) + 0.4
    root = (COLUMNS["encoder-decoder"][0] + LANE_WIDTH / 2, root_year)
    for branch in BRANCHES:
        x0, lanes, color, title = COLUMNS[branch]
        ax.axvspan(x0 - 0.3, x0 + lanes * LANE_WIDTH - 0.4, color=color, alpha=0.07, lw=0)
        ax.text(x0 + (lanes * LANE_WIDTH - 0.7) / 2, top, title, ha="center", va="bottom",
                color=color, fontsize=11, weight="bold")
        first = min((m for m in models.values() if m.branch == branch), key=lambda m: m.when)
        ax.plot([root[0], where[first.id][0]], [root[1], where[first.id][1]], color=color, lw=2.5, alpha=0.5)
    ax.plot(*root, "o", color="0.3", ms=9, zorder=3)
    ax.annotate("Transformer", root, xytext=(0, -11), textcoords="offset points", ha="center", va="top",
                fontsize=9, weight="bold")
    for m in models.values():
        for pid in m.parents:
            (x, y), (px, py) = where[m.id], where[pid]
            ax.annotate("", xy=(x, y), xytext=(px, py), zorder=1,
                        arrowprops={"arrowstyle": "-|>", "color": COLUMNS[m.branch][2], "alpha": 0.55,
                                    "lw": 1.0, "shrinkA": 4, "shrinkB": 4, "mutation_scale": 7,
                                    # bowed, so that an edge never runs straight through a model in between
                                    "connectionstyle": "arc3,rad=-0.3"})
    labels, markers = [], []
    for m in models.values():
        x, y = where[m.id]
        color = COLUMNS[m.branch][2]
        markers += ax.plot(x, y, "s", ms=7, mec=color, mew=1.5, mfc=color if m.weights == "open" else "white",
                           zorder=3)
        labels.append(ax.text(x + 0.12, y, m.name, va="center", fontsize=8, zorder=4,  # over the edges
                              bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 0.6}))
    ax.set_xlim(-0.5, COLUMNS["decoder-only"][0] + COLUMNS["decoder-only"][1] * LANE_WIDTH)
    ax.set_ylim(root_year - 0.45, top + 0.3)
    ax.set_xticks([])
    ax.set_yticks(range(int(root_year), int(top) + 1))
    ax.grid(axis="y", alpha=0.3)
    ax.spines["bottom"].set_visible(False)
    ax.legend(handles=[
        Line2D([], [], ls="", marker="s", ms=7, mec="0.3", mfc="0.3", label="open weights"),
        Line2D([], [], ls="", marker="s", ms=7, mec="0.3", mfc="white", label="closed weights"),
        Line2D([], [], color="0.5", marker=">", ms=4, label="built from (paper-verified)"),
    ], loc="lower right", fontsize=8, frameon=True)
    ax.set_title("LLM evolution tree: first paper or release of each model (data: docs/llm/models.yml)")
    fig.tight_layout()
    fig.canvas.draw()
    bad = overlaps(labels, markers)
    if bad:
        raise ValueError(f"llm_tree: overlapping labels {bad}; widen LANE_WIDTH or MIN_GAP")
    return fig


def table(models: dict[str, Model], page: str = PAGE) -> str:
    """The page's Markdown table: one row per model, oldest first, in branch order within a month.

    Papers in the registry link to the bibliography; other arXiv ids are shown, not linked (every
    arXiv link on the site is a registry entry)."""
    prefix = "../" * page.count("/")
    names = {m.id: m.name for m in models.values()}
    rows = ["| 模型 | 首次公开 | 分支 | 机构 | 权重 | 上游模型 | 论文 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in sorted(models.values(), key=lambda m: (m.when, BRANCHES.index(m.branch), m.name)):
        if m.registry:
            paper = f"[{m.arxiv or '论文列表'}]({prefix}bibliography.md#{m.registry})"
        else:
            paper = f"arXiv:{m.arxiv}" if m.arxiv else "无（官方发布）"
        when = f"{m.year}-{m.month:02d}" if m.month else str(m.year)
        parents = "、".join(names[p] for p in m.parents) or "—"
        rows.append(f"| {m.name} | {when} | {ZH[m.branch]} | {m.organization} | {ZH[m.weights]} | "
                    f"{parents} | {paper} |")
    return "\n".join(rows) + "\n"


def make(out: Path, preset: str) -> None:
    registry = load_registry()
    models = load(registry=registry)
    transformer = registry["transformer"].date
    fig = draw(models, transformer.year + (transformer.month - 0.5) / 12)
    with mpl.rc_context({"svg.fonttype": "none"}):  # names stay text: searchable, and tests can read them
        save(fig, out / "llm_tree.svg")
    (out / "llm_models_table.md").write_text(table(models), encoding="utf-8")
