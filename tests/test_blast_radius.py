"""What one edit reruns: the rules of the figure cache, checked on the real import closures.

The builder keys every figure script (figures/pages/...) and every trained model (the model modules
figures/zoo/<paper>.py) on the source of the project modules they import (figures.builder.blast_radius;
``python -m figures radius`` prints the same table). The rules:

- command-line code (refimpl/cli.py, refimpl/__main__.py, refimpl/commands/, the builder and its CLI) keys
  no figure and no model;
- plotting (refimpl/plots.py) keys figures but no trained model;
- a paper module (one that docs/papers.yml names under a paper's ``refimpl``) keys only the figures and models
  of that paper and of the papers that build on it (its registry descendants), and a paper module imports
  only the paper modules of its registry ancestors;
- the pages' prose keys nothing: the language models read the snapshot refimpl/notes.txt (refimpl.text's
  DATA_FILES, which keys what imports refimpl.text), and no figure script names a page in its INPUTS;
- and two lineage facts the registry's ancestry cannot express alone: the 2015 model does not depend on
  improved DDPM, the LDM not on ADM or GLIDE.

The table (every module, how many scripts and model modules it keys) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from figures import builder, registry

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LINE = ("refimpl/cli.py", "refimpl/__main__.py", "refimpl/commands/", "figures/__main__.py",
                "figures/builder.py")
PLOTTING = ("refimpl/plots.py",)
NEVER = {"refimpl/nonequilibrium.py": ("refimpl/iddpm.py",),
         "refimpl/ldm.py": ("refimpl/adm.py", "refimpl/glide.py")}
#: where our implementation builds on more than the paper did: paper id -> papers it also builds on here.
#: The LoRA paper adapted GPT-3; the LoRA page also adapts the site's LDM (as the Stable Diffusion community
#: did), so the LDM and what it builds on are ancestors of our code, not of the paper. The scaling-laws page trains
#: its grid of small models with the LLaMA block (at that scale it learns far faster than GPT-2's, the LLaMA page's
#: ablation), so LLaMA is an ancestor of refimpl.scaling, though both papers came before it.
APPLIED = {"lora": {"ldm"}, "scaling-laws": {"llama"}, "chinchilla": {"llama"}}
#: figures that draw one paper's model on another paper's page, on purpose: (module, figure) -> why
CROSS_PAPER = {
    ("refimpl/controlnet.py", "lora_params"): "the LoRA page counts the trainable parameters of every "
                                              "fine-tuning method on the site, ControlNet's included",
    ("refimpl/controlnet.py", "lora_repro"): "its table repeats those counts (figures/lib/trainable.py)",
    ("refimpl/gpt.py", "transformer_attention"): "the Transformer page draws the attention of the site's GPT",
    ("refimpl/solvers.py", "flow_compare"): "the flow-matching page compares its flows with DPM-Solver++ on the "
                                            "DDPM model at equal NFE",
}


@pytest.fixture(scope="module")
def radius() -> dict[str, tuple[list[str], list[str]]]:
    table = builder.blast_radius(ROOT, builder.DEFAULT_PACKAGES)
    scripts, models = len(builder.discover(ROOT)), len(builder.model_modules(ROOT))
    print(f"\n{'module':40} {'scripts':>8} {'models':>7}   (of {scripts} scripts, {models} model modules)")
    for module, (keyed_scripts, keyed_models) in table.items():
        print(f"{module:40} {len(keyed_scripts):8d} {len(keyed_models):7d}")
    return table


@pytest.fixture(scope="module")
def papers() -> dict[str, registry.Paper]:
    return registry.load()


def builds_on(papers: dict[str, registry.Paper], paper_id: str) -> tuple[str, ...]:
    return (*papers[paper_id].predecessors, *sorted(APPLIED.get(paper_id, ())))


def descendants(papers: dict[str, registry.Paper], roots: set[str]) -> set[str]:
    """``roots`` and every paper that builds on one of them, transitively (registry predecessors)."""
    out, changed = set(roots), True
    while changed:
        changed = False
        for paper in papers.values():
            if paper.id not in out and out.intersection(builds_on(papers, paper.id)):
                out.add(paper.id)
                changed = True
    return out


def ancestors(papers: dict[str, registry.Paper], paper_id: str) -> set[str]:
    out: set[str] = set()
    todo = list(builds_on(papers, paper_id))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(builds_on(papers, pid))
    return out


def owners(papers: dict[str, registry.Paper]) -> dict[str, set[str]]:
    """``{"refimpl/ddpm.py": {"ddpm"}}``: each paper module and the papers whose registry entry names it."""
    out: dict[str, set[str]] = {}
    for paper in papers.values():
        for module in paper.refimpl:
            out.setdefault(module.replace(".", "/") + ".py", set()).add(paper.id)
    return out


def test_the_table_covers_every_module_script_and_model(radius):
    assert "refimpl/ddpm.py" in radius and "figures/zoo/ddpm.py" in radius
    keyed = {s for scripts, _ in radius.values() for s in scripts}
    assert keyed == set(builder.discover(ROOT))  # every script is keyed by its own source at least
    assert {m for _, models in radius.values() for m in models} == {p.stem for p in builder.model_modules(ROOT)}


def test_a_model_module_imports_what_its_models_are_keyed_on():
    """The table reads what a model module imports; cached() also keys a model on the modules it names. A module
    named there but not imported (e.g. imported by name at run time) would retrain that model on an edit while
    the table says it does not: every named module must be in the model module's import closure."""
    checked = set()
    for path in builder.model_modules(ROOT):
        closure = {p.resolve() for p in builder.module_closure(f"figures.zoo.{path.stem}", root=ROOT)}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cached":
                arg = node.args[1]
                if isinstance(arg, ast.Name):  # a module-level constant such as MODULES
                    named = getattr(importlib.import_module(f"figures.zoo.{path.stem}"), arg.id)
                else:
                    assert isinstance(arg, (ast.List, ast.Tuple)), f"{path.name}:{node.lineno}: cannot read the modules"
                    named = [ast.literal_eval(e) for e in arg.elts]
                for module in named:
                    assert (ROOT / (module.replace(".", "/") + ".py")).resolve() in closure, (path.name, module)
                checked.add(path.stem)
    assert checked == {p.stem for p in builder.model_modules(ROOT)}  # every model module's calls were read


def test_page_prose_keys_nothing_and_the_snapshot_keys_the_language_models(radius):
    for script in builder.discover(ROOT).values():
        for name in script.inputs:
            assert name.rstrip("/") != "docs" and not name.endswith(".md"), f"{script.name}: INPUTS {name!r}"
    assert {"bert", "gpt", "t5", "imagen"} <= set(radius["refimpl/notes.txt"][1])
    assert "bert_fill" in radius["refimpl/notes.txt"][0]  # it reads the held-out lines itself


def test_command_line_code_keys_nothing(radius):
    offenders = {module: keyed for module, keyed in radius.items()
                 if module.startswith(COMMAND_LINE) and (keyed[0] or keyed[1])}
    assert offenders == {}, "command-line code must not key a figure or a model"


def test_plotting_keys_no_trained_model(radius):
    for module in PLOTTING:
        scripts, models = radius[module]
        assert scripts, f"{module} keys no figure at all: is it still the plotting module?"
        assert models == [], f"plot styling in {module} would retrain {models}"


def test_paper_modules_key_only_their_paper_and_its_descendants(radius, papers):
    pages = registry.paper_pages(ROOT / "docs")
    scripts = builder.discover(ROOT)
    by_module = owners(papers)
    model_papers = {}
    for path in builder.model_modules(ROOT):
        module = f"refimpl/{path.stem}.py"  # figures/zoo/<paper>.py holds the models of refimpl/<paper>.py
        assert module in by_module, f"figures/zoo/{path.name}: no paper in docs/papers.yml names {module}"
        model_papers[path.stem] = by_module[module]
    problems = []
    for module, paper_ids in sorted(by_module.items()):
        allowed = descendants(papers, paper_ids)
        keyed_scripts, keyed_models = radius[module]
        for name in keyed_scripts:
            page_papers = set(pages.get(scripts[name].page, ()))
            if not page_papers & allowed and (module, name) not in CROSS_PAPER:
                problems.append(f"{module} keys figure {name} of page {scripts[name].page} "
                                f"({', '.join(sorted(page_papers)) or 'no paper'})")
        for name in keyed_models:
            if not model_papers[name] & allowed:
                problems.append(f"{module} keys the models of {name}")
    assert problems == []


def test_paper_modules_import_only_their_ancestors(papers):
    by_module = owners(papers)
    problems = []
    for module, paper_ids in sorted(by_module.items()):
        allowed_papers = set(paper_ids).union(*(ancestors(papers, p) for p in paper_ids))
        allowed = {m for m, ids in by_module.items() if ids & allowed_papers}
        closure = {p.relative_to(ROOT).as_posix() for p in builder.module_closure(ROOT / module, root=ROOT)}
        for other in sorted(closure & set(by_module) - allowed):
            problems.append(f"{module} ({', '.join(sorted(paper_ids))}) imports {other} "
                            f"({', '.join(sorted(by_module[other]))}), not an ancestor")
    assert problems == []


@pytest.mark.parametrize("module", sorted(NEVER))
def test_lineage_facts(module):
    closure = {p.relative_to(ROOT).as_posix() for p in builder.module_closure(ROOT / module, root=ROOT)}
    assert closure.isdisjoint(NEVER[module]), f"{module} depends on {sorted(closure & set(NEVER[module]))}"
