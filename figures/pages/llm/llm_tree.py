"""The LLM evolution tree drawn from docs/llm/models.yml, and the page's table of its models."""

from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.ticker import MultipleLocator

from figures.lib.llm_models import BRANCHES, Model, load
from figures.registry import load as load_registry
from refimpl.plots import save, subplots, text_width

PAGE = "llm/tree.md"
OUTPUTS = ("llm_tree.svg", "llm_models_table.md")
INPUTS = ("docs/llm/models.yml", "docs/papers.yml")

#: branch -> (colour, title); the colours follow the survey's figure
COLUMNS = {
    "encoder-only": ("#d6609a", "仅编码器 (encoder-only)"),
    "encoder-decoder": ("#3a9a4a", "编码器-解码器 (encoder-decoder)"),
    "decoder-only": ("#3a6fc4", "仅解码器 (decoder-only)"),
}
WIDTH = 7.0       # inches: at most the site's 688-px column, so that 8-pt labels show at 10.7 px
AXES = (0.01, 0.99)  # left and right edges of the axes, in figure fractions (fixed: layout() needs its scale)
ROW = 0.21        # inches per row: one 8-pt label is 0.15 in tall with its box
FONT = 8          # pt, the model labels
GAP = 5.0         # pt between a marker and its label, and after a label before the next marker in its row
ZH = {"encoder-only": "仅编码器", "encoder-decoder": "编码器-解码器", "decoder-only": "仅解码器",
      "open": "开放", "closed": "闭源"}


def label_width(name: str) -> float:
    """The drawn width of a model's label in points (the font's advance widths at FONT)."""
    return text_width(name, FONT)


def layout(models: dict[str, Model], start: float) -> tuple[dict[str, tuple[float, int]], float, int]:
    """(year, row) of every model, the right end of the x axis, and the number of rows.

    Years run left to right from ``start``; each branch has a header row and then as many rows as its labels
    need: a model goes to the first row of its branch whose last label ends (marker, gap, label, gap) before
    the model's date, so labels in a row never collide and no row is wasted."""
    latest = max(m.when for m in models.values())
    widest = max(label_width(m.name) for m in models.values()) + 2 * GAP
    span = WIDTH * (AXES[1] - AXES[0]) * 72  # points along the x axis
    end = latest + (latest - start) * widest / (span - widest)  # the latest label just fits
    per_year = span / (end - start)
    where, row = {}, 0
    for branch in BRANCHES:
        row += 1  # the branch's header
        ends: list[float] = []
        for m in sorted((m for m in models.values() if m.branch == branch), key=lambda m: (m.when, m.id)):
            free = next((i for i, e in enumerate(ends) if e <= m.when), None)
            if free is None:
                free = len(ends)
                ends.append(0.0)
            ends[free] = m.when + (label_width(m.name) + 2 * GAP) / per_year
            where[m.id] = (m.when, row + 1 + free)
        row += 1 + len(ends)
    return where, end, row + 1


def marker_overlaps(labels, markers) -> list[tuple[str, str]]:
    """(label, other model) pairs where a label's drawn box meets another model's marker (after the figure has
    been drawn; ``labels`` and ``markers`` are parallel, one per model). Label-on-label is refimpl.plots.save's
    check, for every figure."""
    names = [t.get_text() for t in labels]
    texts = [t.get_window_extent() for t in labels]
    marks = [m.get_window_extent() for m in markers]
    return [(names[i], names[j]) for i in range(len(names)) for j in range(len(names))
            if j != i and texts[i].overlaps(marks[j])]


def draw(models: dict[str, Model], root_year: float):
    """The tree as a matplotlib Figure (years to the right, one coloured band of rows per branch)."""
    start = root_year - 0.3
    where, end, rows = layout(models, start)
    fig, ax = subplots(figsize=(WIDTH, ROW * rows + 0.9))
    fig.subplots_adjust(left=AXES[0], right=AXES[1], top=1 - 0.45 / (ROW * rows + 0.9), bottom=0.5 / (ROW * rows + 0.9))
    root = (root_year, 0)
    ax.plot(*root, "o", color="0.3", ms=8, zorder=3)
    ax.annotate("Transformer", root, xytext=(GAP, 0), textcoords="offset points", va="center", fontsize=FONT + 1,
                weight="bold")
    for branch in BRANCHES:
        color, title = COLUMNS[branch]
        members = [where[m.id][1] for m in models.values() if m.branch == branch]
        header = min(members) - 1
        ax.axhspan(header - 0.5, max(members) + 0.5, color=color, alpha=0.07, lw=0)
        ax.text(start, header, title, va="center", color=color, fontsize=FONT + 1, weight="bold", zorder=4,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 0.3})
        first = min((m for m in models.values() if m.branch == branch), key=lambda m: m.when)
        ax.plot([root[0], where[first.id][0]], [root[1], where[first.id][1]], color=color, lw=2, alpha=0.4)
    for m in models.values():
        for pid in m.parents:
            ax.annotate("", xy=where[m.id], xytext=where[pid], zorder=1,
                        arrowprops={"arrowstyle": "-|>", "color": COLUMNS[m.branch][0], "alpha": 0.55,
                                    "lw": 1.0, "shrinkA": 4, "shrinkB": 4, "mutation_scale": 7,
                                    # bowed, so that an edge never runs straight through a model in between
                                    "connectionstyle": "arc3,rad=0.3"})
    labels, markers = [], []
    for m in models.values():
        x, y = where[m.id]
        color = COLUMNS[m.branch][0]
        markers += ax.plot(x, y, "s", ms=6, mec=color, mew=1.4, mfc=color if m.weights == "open" else "white",
                           zorder=3)
        labels.append(ax.annotate(m.name, (x, y), xytext=(GAP, 0), textcoords="offset points", va="center",
                                  fontsize=FONT, zorder=4,  # over the edges
                                  bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 0.3}))
    ax.set_xlim(start, end)
    ax.set_ylim(rows - 0.5, -0.7)
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MultipleLocator(1))
    ax.grid(axis="x", alpha=0.3)
    ax.spines["left"].set_visible(False)
    ax.legend(handles=[
        Line2D([], [], ls="", marker="s", ms=6, mec="0.3", mfc="0.3", label="开放权重"),
        Line2D([], [], ls="", marker="s", ms=6, mec="0.3", mfc="white", label="闭源"),
        Line2D([], [], color="0.5", marker=">", ms=4, label="在它基础上做出（论文为证）"),
    ], loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize=FONT + 1)
    ax.set_title("LLM 进化树：各模型的首篇论文或首次发布（数据：docs/llm/models.yml）")
    fig.canvas.draw()
    bad = marker_overlaps(labels, markers)
    if bad:
        raise ValueError(f"llm_tree: labels over markers {bad}; raise GAP")
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
    save(fig, out / "llm_tree.svg")
    (out / "llm_models_table.md").write_text(table(models), encoding="utf-8")
