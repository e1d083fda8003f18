"""The LLM evolution tree (docs/llm/models.yml -> figures/pages/llm/llm_tree.py): the data obey their rules,
each rule is enforced with one clear line naming the entry and the field, and the figure script
writes an SVG with every model's name and a table with one row per model."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
import yaml

from figures import builder, registry
from figures.lib import llm_models
from figures.lib.llm_models import BRANCHES, WEIGHTS, ModelsError

llm_tree = builder.load_script("llm_tree")  # the figure script (figures/pages/llm/ is not a package)


@pytest.fixture(scope="module")
def reg():
    return registry.load()


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(llm_models.DEFAULT_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def models(reg):
    return llm_models.load(registry=reg)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm_tree")
    llm_tree.make(out, "quick")
    return out


def test_data_obey_the_rules(models, raw, reg):
    """Checked here directly on the data, independently of the loader's own checks."""
    assert len(models) == len(raw) >= 30
    assert len({m["id"] for m in raw}) == len(raw) and len({m["name"] for m in raw}) == len(raw)
    this_year = dt.date.today().year
    for m in models.values():
        assert 2017 <= m.year <= this_year and m.branch in BRANCHES and m.weights in WEIGHTS, m.id
        for pid in m.parents:
            p = models[pid]
            assert (p.year, p.month or 0) <= (m.year, m.month or 12), f"{pid} -> {m.id}"
        if m.registry:
            assert reg[m.registry].arxiv == m.arxiv, m.id
    registry_arxiv = {p.arxiv: p.id for p in reg.values() if p.arxiv}
    for m in models.values():
        if m.arxiv in registry_arxiv:
            assert m.registry == registry_arxiv[m.arxiv], m.id
    # every branch is represented, and the registry's LLM papers that are models are all here
    assert {m.branch for m in models.values()} == set(BRANCHES)
    assert {m.registry for m in models.values() if m.registry} == {"bert", "gpt1", "gpt2", "t5", "gpt3", "instructgpt",
                                                                   "llama", "mixtral", "chinchilla"}


def test_arxiv_month_rule(models):
    """Rule tested: an arXiv number's YYMM is 0 to 6 months after the model's year/month (the paper can follow a
    release of weights or a product, never precede the model's first appearance), and an entry dated before its
    paper names that release (``released``) while one dated by its paper does not."""
    gaps = {m.id: llm_models.arxiv_lag_months(m.arxiv, m.year, m.month)
            for m in models.values() if m.arxiv and m.month}
    assert gaps and all(0 <= g <= llm_models.MAX_PAPER_LAG_MONTHS for g in gaps.values()), gaps
    assert {k for k, g in gaps.items() if g > 0} == {m.id for m in models.values() if m.released and m.arxiv}
    # the releases that came first, as the sources in models.yml give them
    assert {k: (models[k].year, models[k].month) for k in ("gpt-neox-20b", "bloom", "glm-130b", "distilbert")} == {
        "gpt-neox-20b": (2022, 2), "bloom": (2022, 7), "glm-130b": (2022, 8), "distilbert": (2019, 8)}


def test_every_edge_says_what_it_is(models):
    """Edge rule: a parent edge is fine-tuning, distillation or a next version; a new architecture trained from
    scratch, or a sibling, is not an edge."""
    assert all((m.relation in llm_models.RELATIONS) == bool(m.parents) for m in models.values())
    for model_id in ("albert", "deberta", "chinchilla", "mixtral", "chatgpt"):
        assert models[model_id].parents == (), model_id


def _entry(raw, model_id):
    return next(i for i, m in enumerate(raw) if m["id"] == model_id)


BAD = [
    # (description, mutation, expected fragment of the one-line message)
    ("duplicate id", lambda d: d.append(dict(d[_entry(d, "bert")], name="BERT 2")), "bert.id: duplicate id"),
    ("duplicate name", lambda d: d.append(dict(d[_entry(d, "bert")], id="bert2", arxiv=None, registry=None)),
     "bert2.name: duplicate name"),
    ("unknown parent", lambda d: d[_entry(d, "roberta")].update(parents=["elmo"]), "roberta.parents: no model"),
    ("parent later", lambda d: d[_entry(d, "bert")].update(parents=["roberta"], relation="fine-tuned"),
     "bert.parents: roberta"),
    ("year too early", lambda d: d[_entry(d, "gpt1")].update(year=2016), "gpt1.year"),
    ("year in the future", lambda d: d[_entry(d, "llama2")].update(year=dt.date.today().year + 1), "llama2.year"),
    ("bad branch", lambda d: d[_entry(d, "t5")].update(branch="seq2seq"), "t5.branch"),
    ("bad weights", lambda d: d[_entry(d, "opt")].update(weights="yes"), "opt.weights"),
    ("unquoted arXiv id", lambda d: d[_entry(d, "opt")].update(arxiv=2205.01068), "opt.arxiv: not a new-style"),
    ("old-style arXiv id", lambda d: d[_entry(d, "opt")].update(arxiv="cs/0101001"), "opt.arxiv: not a new-style"),
    ("paper before the model", lambda d: d[_entry(d, "opt")].update(month=6), "opt.arxiv: 2205.01068 is not 0..6"),
    ("paper far after", lambda d: d[_entry(d, "opt")].update(year=2021, month=10), "opt.arxiv"),
    ("registry arXiv mismatch", lambda d: d[_entry(d, "t5")].update(arxiv="1910.10684"), "t5.arxiv: '1910.10684' differs"),
    ("registry date mismatch", lambda d: d[_entry(d, "gpt2")].update(month=3), "gpt2.month"),
    ("unknown registry id", lambda d: d[_entry(d, "opt")].update(registry="opt"), "opt.registry: no entry"),
    ("registry paper not claimed", lambda d: d[_entry(d, "gpt3")].update(registry=None), "gpt3.registry: arXiv 2005.14165"),
    ("missing key", lambda d: d[_entry(d, "opt")].pop("weights"), "opt: missing key(s) ['weights']"),
    ("edge without relation", lambda d: d[_entry(d, "roberta")].pop("relation"), "roberta.relation"),
    ("unknown relation", lambda d: d[_entry(d, "roberta")].update(relation="inspired-by"), "roberta.relation"),
    ("relation without edge", lambda d: d[_entry(d, "bert")].update(relation="fine-tuned"), "bert.relation"),
    ("release before paper unnamed", lambda d: d[_entry(d, "bloom")].pop("released"), "bloom.released: dated"),
    ("release named but dated by paper", lambda d: d[_entry(d, "opt")].update(released="https://x.org"),
     "opt.released: dated by its paper"),
]


@pytest.mark.parametrize("what, mutate, message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_gives_one_line_naming_entry_and_field(raw, reg, what, mutate, message):
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(ModelsError) as info:
        llm_models.parse(data, registry=reg, source="models.yml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("models.yml: ") and message in text, text


def test_figure_and_table(built, models):
    svg = (built / "llm_tree.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    missing = [m.name for m in models.values() if f">{m.name}<" not in svg]
    assert not missing, f"names not in the SVG: {missing}"
    rows = [line for line in (built / "llm_models_table.md").read_text(encoding="utf-8").splitlines()[2:]
            if line.startswith("| ")]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == sorted(m.name for m in models.values())
    assert "arxiv.org" not in "\n".join(rows)  # arXiv links on the site are registry entries only


def test_layout_keeps_labels_in_a_row_apart(models):
    """Within a row, each model's date comes after the previous model's label has ended (its marker gap, its
    measured width and a gap, in years at the figure's scale): so two models of one month never share a row."""
    start = 2017.3
    where, end, rows = llm_tree.layout(models, start)
    per_year = llm_tree.WIDTH * (llm_tree.AXES[1] - llm_tree.AXES[0]) * 72 / (end - start)  # points per year
    by_row: dict[int, list] = {}
    for m in models.values():
        by_row.setdefault(where[m.id][1], []).append(m)
    assert max(by_row) < rows and len({m.branch for row in by_row.values() for m in row[:1]}) == 3
    for row in by_row.values():
        assert len({m.branch for m in row}) == 1
        row.sort(key=lambda m: m.when)
        for a, b in zip(row, row[1:]):
            assert a.when + (llm_tree.label_width(a.name) + 2 * llm_tree.GAP) / per_year <= b.when, (a.id, b.id)
    # the latest label ends inside the axes
    latest = max(models.values(), key=lambda m: m.when)
    assert latest.when + (llm_tree.label_width(latest.name) + 2 * llm_tree.GAP) / per_year <= end + 1e-9


def test_overlap_check_sees_a_label_on_a_marker():
    """draw() refuses a label over another model's marker through marker_overlaps() (the case that
    BloombergGPT and GPT-4 once hit), and sees nothing when they are apart."""
    from refimpl.plots import subplots

    fig, ax = subplots(figsize=(3, 2))
    ax.set(xlim=(0, 10), ylim=(0, 10))
    labels = [ax.text(1, 5, "BloombergGPT", va="center"), ax.text(8.5, 1, "GPT-4", va="center")]
    markers = ax.plot(0.8, 5, "s") + ax.plot(2.0, 5, "s")  # the second marker sits under the first label
    fig.canvas.draw()
    assert llm_tree.marker_overlaps(labels, markers) == [("BloombergGPT", "GPT-4")]
    markers[1].set_data([8.3], [1])
    fig.canvas.draw()
    assert llm_tree.marker_overlaps(labels, markers) == []
