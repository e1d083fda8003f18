"""The figure pipeline (figures.builder, CLI, plotting.save, mkdocs hook) on a tiny fake project.

The fake project lives in tmp_path: a package ``pkg`` (a, b, c; c imports a) and figure
scripts in ``figures/`` or folders below it (no ``__init__.py``, so ``import refimpl.plots`` still
finds the real package). Scripts append their name to ``ran.log`` so tests see what ran.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # also when run as plain `pytest` from elsewhere
    sys.path.insert(0, str(REPO))

from figures import builder  # noqa: E402
from figures.builder import FigureError, build, cached, module_closure, script_key  # noqa: E402
HOOK = REPO / "figures" / "hook.py"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def figure(root: Path, name: str, outputs: tuple[str, ...], body: str, imports: str = "", folder: str = "") -> Path:
    """Write figures/<folder>/<name>.py; ``body`` is the body of make(out, preset)."""
    return write(root / "figures" / folder / f"{name}.py", f'''\
"""Test figure {name}."""
import pathlib
{imports}
PAGE = "index.md"
OUTPUTS = {outputs!r}

def make(out, preset):
    with open(pathlib.Path(__file__).parents[{1 + len(Path(folder).parts)}] / "ran.log", "a") as fh:
        fh.write("{name}\\n")
{textwrap.indent(textwrap.dedent(body), "    ")}
''')


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "a.py", "VALUE = 1\n")
    write(root / "pkg" / "b.py", "VALUE = 2\n")
    write(root / "pkg" / "c.py", "from .a import VALUE\n")
    figure(root, "fig_a", ("a.txt",), '(out / "a.txt").write_text(f"{c.VALUE} {preset}")', "import pkg.c as c")
    figure(root, "fig_b", ("b.txt",), '(out / "b.txt").write_text(str(b.VALUE))', "from pkg import b")
    return root


def run_build(root: Path, cache: Path, **kwargs):
    lines: list[str] = []
    result = build(root=root, packages=("pkg",), cache_dir=cache, jobs=2, log=lines.append, **kwargs)
    return result, lines


def ran(root: Path) -> list[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


def statuses(result) -> dict[str, str]:
    return {s.name: s.status for s in result.scripts}


def cli_env(root: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, LINEAGE_ROOT=str(root), LINEAGE_PACKAGES="pkg", LINEAGE_CACHE=str(cache))
    env["PYTHONPATH"] = str(REPO)
    return env


# ----------------------------------------------------------------------------- keys


def test_module_closure_follows_imports(tmp_path: Path):
    root = tmp_path
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "a.py", "import os\nimport numpy\n")
    write(root / "pkg" / "unused.py", "")
    write(root / "pkg" / "sub" / "__init__.py", "from . import e\n")
    write(root / "pkg" / "sub" / "d.py", "from ..a import f\n")
    write(root / "pkg" / "sub" / "e.py", "")
    write(root / "other" / "x.py", "")
    write(root / "s.py", "import pkg.sub.d\nimport other.x\n")
    rel = lambda paths: sorted(p.relative_to(root).as_posix() for p in paths)  # noqa: E731
    assert rel(module_closure(root / "s.py", root=root, packages=("pkg",))) == [
        "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/d.py", "pkg/sub/e.py", "s.py"]
    assert rel(module_closure("pkg.sub.e", root=root, packages=("pkg",))) == [
        "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/e.py"]
    write(root / "t.py", "from pkg import a, sub\n")  # names that are submodules count
    assert rel(module_closure(root / "t.py", root=root, packages=("pkg",))) == [
        "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/e.py", "t.py"]


def test_data_files_key_what_imports_their_module(fake: Path):
    """A module that reads a file at run time names it in DATA_FILES: the file joins the closure of every script
    that imports the module, so editing it changes their keys (and only theirs)."""
    write(fake / "pkg" / "text.py", 'DATA_FILES = ("notes.txt",)\n')
    write(fake / "pkg" / "notes.txt", "one\n")
    script = fake / "figures" / "fig_b.py"
    script.write_text(script.read_text() + "import pkg.text\n")
    assert fake / "pkg" / "notes.txt" in module_closure(script, root=fake, packages=("pkg",))
    keys = {name: script_key(name, root=fake, preset="quick", packages=("pkg",)) for name in ("fig_a", "fig_b")}
    write(fake / "pkg" / "notes.txt", "two\n")
    assert script_key("fig_b", root=fake, preset="quick", packages=("pkg",)) != keys["fig_b"]
    assert script_key("fig_a", root=fake, preset="quick", packages=("pkg",)) == keys["fig_a"]
    for bad, message in (('DATA_FILES = ("gone.txt",)\n', "data file gone.txt not found"),
                         ('DATA_FILES = "notes.txt"\n', "must be a tuple")):
        write(fake / "pkg" / "text.py", bad)
        with pytest.raises(FigureError, match=message):
            module_closure(script, root=fake, packages=("pkg",))


def test_script_key_inputs_and_preset(fake: Path):
    write(fake / "data" / "table.yml", "x: 1\n")
    script = fake / "figures" / "fig_b.py"
    script.write_text(script.read_text() + 'INPUTS = ("data/table.yml",)\n')
    key = script_key("fig_b", root=fake, preset="quick", packages=("pkg",))
    assert key == script_key(script, root=fake, preset="quick", packages=("pkg",))
    assert len(key) == 64
    assert key != script_key("fig_b", root=fake, preset="full", packages=("pkg",))
    write(fake / "data" / "table.yml", "x: 2\n")
    assert key != script_key("fig_b", root=fake, preset="quick", packages=("pkg",))
    with pytest.raises(FigureError, match="unknown preset 'huge'"):
        script_key("fig_b", root=fake, preset="huge", packages=("pkg",))


def test_discover_rules(fake: Path):
    write(fake / "figures" / "plotting.py", "def save(fig, path): ...\n")  # library: no OUTPUTS
    assert set(builder.discover(fake)) == {"fig_a", "fig_b"}
    figure(fake, "fig_dup", ("a.txt",), "pass")
    with pytest.raises(FigureError, match="'a.txt' is declared by both fig_a and fig_dup"):
        builder.discover(fake)


def test_discover_finds_nested_scripts_and_refuses_twins(fake: Path, tmp_path: Path):
    """Scripts may sit in folders below figures/ (figures/pages/<section>/); they are named by their stem, which
    must be unique across the tree; library folders (figures/zoo, figures/lib) must not hold scripts."""
    nested = figure(fake, "fig_c", ("c.txt",), '(out / "c.txt").write_text(str(c.VALUE))', "import pkg.c as c",
                    folder="pages/sec")
    write(fake / "figures" / "zoo" / "toy.py", "def checkpoint(preset): ...\n")  # a model module: no OUTPUTS
    scripts = builder.discover(fake)
    assert set(scripts) == {"fig_a", "fig_b", "fig_c"} and scripts["fig_c"].path == nested.resolve()
    assert script_key("fig_c", root=fake, preset="quick", packages=("pkg",)) == script_key(
        nested, root=fake, preset="quick", packages=("pkg",))
    result, _ = run_build(fake, tmp_path / "cache", only="fig_c")  # run by path from two folders down
    assert statuses(result) == {"fig_c": "built"} and result.outputs()["c.txt"].read_text() == "1"
    assert ran(fake) == ["fig_c"]

    figure(fake, "fig_c", ("c2.txt",), "pass", folder="pages/other")
    with pytest.raises(FigureError, match="two figure scripts are named fig_c: figures/pages/other/fig_c.py "
                                          "and figures/pages/sec/fig_c.py"):
        builder.discover(fake)
    (fake / "figures" / "pages" / "other" / "fig_c.py").unlink()

    figure(fake, "fig_lib", ("lib.txt",), "pass", folder="zoo")
    with pytest.raises(FigureError, match="figures/zoo/fig_lib.py: library modules must not define OUTPUTS"):
        builder.discover(fake)


def test_presets_mirror_refimpl():
    tree = ast.parse((REPO / "refimpl" / "core.py").read_text())
    values = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in n.targets)]
    assert values == [builder.PRESETS]


# ----------------------------------------------------------------------------- 1. incremental


def test_only_changed_figures_rerun(fake: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    result, lines = run_build(fake, cache)
    assert statuses(result) == {"fig_a": "built", "fig_b": "built"}
    assert sorted(ran(fake)) == ["fig_a", "fig_b"]
    assert result.outputs()["a.txt"].read_text() == "1 quick"
    # progress: "[k/N] built NAME in S · elapsed E[ · ~R left]", one line per script, k counting up
    built = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in built] == ["[1/2", "[2/2"]
    assert any(" built fig_a in " in line for line in built)
    assert all(" · elapsed " in line for line in built) and " left" in built[0]

    result, lines = run_build(fake, cache)  # nothing changed
    assert statuses(result) == {"fig_a": "cached", "fig_b": "cached"}
    assert sorted(ran(fake)) == ["fig_a", "fig_b"]
    assert lines[-1].startswith("figures: 2 script(s), 0 built, 2 cached")

    old_a = result["fig_a"]
    write(fake / "pkg" / "a.py", "VALUE = 10\n")  # reaches fig_a through pkg.c only
    result, _ = run_build(fake, cache)
    assert statuses(result) == {"fig_a": "built", "fig_b": "cached"}
    assert sorted(ran(fake)) == ["fig_a", "fig_a", "fig_b"]
    assert result.outputs()["a.txt"].read_text() == "10 quick"
    assert not old_a.outputs["a.txt"].parent.exists()  # older key of the same preset pruned

    write(fake / "pkg" / "b.py", "VALUE = 20\n")
    result, _ = run_build(fake, cache)
    assert statuses(result) == {"fig_a": "cached", "fig_b": "built"}
    assert sorted(ran(fake)) == ["fig_a", "fig_a", "fig_b", "fig_b"]
    assert result.outputs()["b.txt"].read_text() == "20"

    result, _ = run_build(fake, cache, preset="full", only="fig_a")
    assert statuses(result) == {"fig_a": "built"}
    assert result.outputs()["a.txt"].read_text() == "10 full"
    with pytest.raises(FigureError, match="no figure script named nope"):
        run_build(fake, cache, only="nope")


# ----------------------------------------------------------------------------- 2. failures


def test_failures_are_collected_and_named(fake: Path, tmp_path: Path):
    figure(fake, "fig_raise", ("r.txt",), 'raise ValueError("sigma must be positive")')
    figure(fake, "fig_missing", ("m1.txt", "m2.txt"), '(out / "m1.txt").write_text("x")')
    figure(fake, "fig_extra", ("e.txt",), '(out / "e.txt").write_text("x")\n(out / "junk.txt").write_text("x")')
    cache = tmp_path / "cache"
    with pytest.raises(FigureError) as info:
        run_build(fake, cache)
    message = str(info.value)
    assert "figure fig_raise failed: ValueError: sigma must be positive" in message
    assert "figure fig_missing failed" in message and "m2.txt" in message and "m1.txt" not in message
    assert "figure fig_extra failed" in message and "junk.txt" in message
    assert "fig_a" not in message and "fig_b" not in message
    assert sorted(ran(fake)) == sorted(["fig_a", "fig_b", "fig_raise", "fig_missing", "fig_extra"])
    for bad in ("fig_raise", "fig_missing", "fig_extra"):
        assert not (cache / "figures" / bad).exists()  # nothing stale can be served later
    result, _ = run_build(fake, cache, only=["fig_a", "fig_b"])  # the good ones were cached
    assert statuses(result) == {"fig_a": "cached", "fig_b": "cached"}


# ----------------------------------------------------------------------------- 3. killed build


def test_killed_build_leaves_a_trustworthy_cache(fake: Path, tmp_path: Path):
    figure(fake, "fig_slow", ("slow.txt",), '''\
        import time
        root = pathlib.Path(__file__).parent.parent
        (out / "slow.txt").write_text("partial")
        (root / "started").touch()
        if not (root / "fast").exists():
            time.sleep(60)
        (out / "slow.txt").write_text("complete")
        ''')
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "figures", "build", "--jobs", "3"], cwd=fake,
                            env=cli_env(fake, cache), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        done = lambda: all(list((cache / "figures" / n).glob("*/.manifest.json")) for n in ("fig_a", "fig_b"))  # noqa
        while not ((fake / "started").exists() and done()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cache / "figures" / "fig_slow").exists()
    assert list((cache / "tmp").iterdir())  # the killed run's work in progress

    # an entry that lost its manifest (or was made by hand) is never trusted
    entry_a = next((cache / "figures" / "fig_a").iterdir())
    (entry_a / ".manifest.json").unlink()
    (entry_a / "a.txt").write_text("garbage")

    (fake / "fast").touch()
    result, _ = run_build(fake, cache)
    assert statuses(result) == {"fig_a": "built", "fig_b": "cached", "fig_slow": "built"}
    assert result.outputs()["slow.txt"].read_text() == "complete"
    assert result.outputs()["a.txt"].read_text() == "1 quick"
    assert list((cache / "tmp").iterdir()) == []  # stray temp dirs removed


# ----------------------------------------------------------------------------- 4. determinism


def test_matplotlib_outputs_are_byte_identical(fake: Path, tmp_path: Path):
    figure(fake, "fig_plot", ("plot.svg", "grid.png"), '''\
        import numpy as np
        from refimpl.plots import save, subplots
        fig, ax = subplots(figsize=(3, 2))
        x = np.linspace(0, 3, 50)
        ax.plot(x, np.sin(x), label="sin")
        ax.fill_between(x, 0, np.cos(x), alpha=0.3)
        ax.set_title("determinism")
        ax.legend()
        save(fig, out / "plot.svg")
        fig, ax = subplots(figsize=(2, 2))
        ax.imshow(np.arange(64.0).reshape(8, 8))
        save(fig, out / "grid.png")
        ''')
    first, _ = run_build(fake, tmp_path / "cache1", only="fig_plot")
    time.sleep(1.1)  # a timestamp with one-second resolution would now differ
    second, _ = run_build(fake, tmp_path / "cache2", only="fig_plot")
    for name in ("plot.svg", "grid.png"):
        one, two = first.outputs()[name], second.outputs()[name]
        assert one != two and one.read_bytes() == two.read_bytes(), name
    svg = first.outputs()["plot.svg"].read_text()
    assert "<dc:date>" not in svg and "clipPath" in svg


def test_save_keeps_svg_text_as_text_and_refuses_clashing_texts(tmp_path: Path):
    """SVG labels stay text for the reader's fonts (Chinese included); two texts whose boxes share area, Chinese
    inside mathtext, or Chinese in a PNG, are refused with the file removed; texts apart, and ASCII in a PNG, are
    fine."""
    from refimpl.plots import save, subplots

    fig, ax = subplots(figsize=(3, 2))
    ax.set_title("去噪步数 (NFE)")
    svg = save(fig, tmp_path / "title.svg").read_text(encoding="utf-8")
    assert ">去噪步数 (NFE)<" in svg and "Noto Sans CJK SC" in svg

    def two_texts(second_x: float, path: Path):
        fig, ax = subplots(figsize=(3, 2))
        ax.text(0.1, 0.5, "first label")
        ax.text(second_x, 0.5, "second")
        return save(fig, path)

    with pytest.raises(ValueError, match=r"overlapping texts \[\('first label', 'second'\)\]"):
        two_texts(0.3, tmp_path / "clash.svg")  # "first label" at 10 pt is ~0.9 in wide: 0.3 of 3 in is inside
    assert not (tmp_path / "clash.svg").exists()
    assert two_texts(0.75, tmp_path / "apart.svg").exists()
    fig, ax = subplots(figsize=(3, 2))
    ax.set_title(r"权重 $\bar\alpha_t$")
    with pytest.raises(ValueError, match="mathtext draws Chinese as empty boxes"):
        save(fig, tmp_path / "math.svg")
    for title, ok in (("steps", True), ("步数", False)):
        fig, ax = subplots(figsize=(2, 2))
        ax.set_title(title)
        if ok:
            save(fig, tmp_path / "ascii.png")
        else:
            with pytest.raises(ValueError, match="non-ASCII text in a PNG"):
                save(fig, tmp_path / "chinese.png")


# ----------------------------------------------------------------------------- 5. shared artifacts

ARTIFACT_CLIENT = '''\
import sys, time
from pathlib import Path
from figures.builder import cached

root, cache, index = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(root / f"ready{index}").touch()
while not (root / "go").exists():
    time.sleep(0.01)

def producer(d):
    with open(root / "trained.log", "a") as fh:
        fh.write("trained\\n")
    time.sleep(0.5)
    (d / "model.txt").write_text("weights")

print(cached("toy", ["pkg.c"], producer, preset="quick", config={"n": 1}, root=root, cache_dir=cache))
'''


def test_cached_artifact_is_produced_once(fake: Path, tmp_path: Path):
    client = write(tmp_path / "client.py", ARTIFACT_CLIENT)
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), LINEAGE_PACKAGES="pkg")
    procs = [subprocess.Popen([sys.executable, str(client), str(fake), str(cache), str(i)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 20
    while not all((fake / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (fake / "go").touch()
    paths = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert paths[0] == paths[1]
    assert (fake / "trained.log").read_text() == "trained\n"
    assert (Path(paths[0]) / "model.txt").read_text() == "weights"

    def must_not_run(d):
        raise AssertionError("producer ran again")

    same = cached("toy", ["pkg.c"], must_not_run, preset="quick", config={"n": 1}, root=fake,
                  cache_dir=cache, packages=("pkg",))
    assert str(same) == paths[0]
    made = []
    other = cached("toy", ["pkg.c"], made.append, preset="quick", config={"n": 2}, root=fake,
                   cache_dir=cache, packages=("pkg",))
    write(fake / "pkg" / "a.py", "VALUE = 3\n")  # imported by pkg.c
    third = cached("toy", ["pkg.c"], made.append, preset="quick", config={"n": 1}, root=fake,
                   cache_dir=cache, packages=("pkg",))
    assert len(made) == 2 and len({str(other), str(third), paths[0]}) == 3


WARMED = """\
import pathlib
import time

WORKER_WARM_UP = "probe"
_RESULT = []


def probe():
    if not _RESULT:  # cached, and pure apart from this log line (the test's witness of where it ran)
        with open(pathlib.Path(__file__).parents[1] / "ran.log", "a") as fh:
            fh.write("probe\\n")
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
        _RESULT.append(42)
    return _RESULT[0]
"""


def test_a_worker_warm_up_runs_once_before_the_scripts_that_import_it(fake: Path, tmp_path: Path):
    """A module naming WORKER_WARM_UP has that function called once by the worker, before it forks the first
    script whose closure holds the module: later scripts inherit the result, a script without the module never
    triggers it, and its CPU time is recorded against the first script that needed it (not lost)."""
    write(fake / "pkg" / "w.py", WARMED)
    for name in ("fig_w1", "fig_w2"):
        figure(fake, name, (f"{name}.txt",), f'(out / "{name}.txt").write_text(str(w.probe()))', "from pkg import w")
    cache = tmp_path / "cache"
    result = build(root=fake, packages=("pkg",), cache_dir=cache, jobs=1, log=lambda line: None)
    assert {(result[n].outputs[f"{n}.txt"]).read_text() for n in ("fig_w1", "fig_w2")} == {"42"}
    log = ran(fake)
    assert sorted(n for n in log if n != "probe") == ["fig_a", "fig_b", "fig_w1", "fig_w2"]
    if builder._Worker.FORK:  # one worker (jobs=1): one warm-up, before the first script that imports pkg.w
        assert log.count("probe") == 1
        assert log.index("probe") == min(log.index("fig_w1"), log.index("fig_w2")) - 1
    else:  # a new interpreter per script: each pays for itself
        assert log.count("probe") == 2
    timings = builder.Timings.load(fake, cache).scripts
    assert timings["fig_w1"]["cpu"] + timings["fig_w2"]["cpu"] >= 0.3


# ----------------------------------------------------------------------------- CLI


def test_cli_list_and_clean(fake: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    env = cli_env(fake, cache)
    out = subprocess.run([sys.executable, "-m", "figures", "list"], env=env, cwd=fake,
                         capture_output=True, text=True, check=True).stdout
    assert "fig_a" in out and "b.txt" in out
    proc = subprocess.run([sys.executable, "-m", "figures", "build", "--only", "fig_b"], env=env,
                          cwd=fake, capture_output=True, text=True)
    assert proc.returncode == 0 and "built fig_b" in proc.stderr and "fig_a" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "figures", "build", "--only", "fig_b"], env=env,
                          cwd=fake, capture_output=True, text=True)
    assert proc.returncode == 0 and "1 script(s), 0 built, 1 cached" in proc.stderr
    subprocess.run([sys.executable, "-m", "figures", "clean"], env=env, cwd=fake, check=True,
                   capture_output=True)
    assert not (cache / "figures").exists()
    proc = subprocess.run([sys.executable, "-m", "figures", "build"], env=dict(env, LINEAGE_PRESET="huge"),
                          cwd=fake, capture_output=True, text=True)
    assert proc.returncode == 1 and "unknown preset 'huge'" in proc.stderr


# ----------------------------------------------------------------------------- 6. mkdocs


def test_mkdocs_hook_publishes_and_fails(fake: Path, tmp_path: Path):
    figure(fake, "fig_x", ("x.svg", "x_table.md"), '''\
        (out / "x.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
        (out / "x_table.md").write_text("| a |")
        ''')
    write(fake / "docs" / "index.md", "# Home\n\n![x](figures/x.svg)\n")
    write(fake / "mkdocs.yml", f"""\
        site_name: Fake
        theme: mkdocs
        hooks:
          - {HOOK}
        """)
    env = cli_env(fake, tmp_path / "cache")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    proc = subprocess.run(command, cwd=fake, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    svg = fake / "site" / "figures" / "x.svg"
    assert svg.read_text().startswith("<svg")
    assert 'src="figures/x.svg"' in (fake / "site" / "index.html").read_text()
    assert not (fake / "site" / "figures" / "x_table.md").exists()
    assert sorted(p.name for p in (fake / "docs").iterdir()) == ["index.md"]  # nothing written to docs/

    figure(fake, "fig_bad", ("bad.svg",), 'raise RuntimeError("diverged at step 7")')
    proc = subprocess.run(command, cwd=fake, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "figure fig_bad failed: RuntimeError: diverged at step 7" in proc.stdout + proc.stderr


def test_mkdocs_serve_shows_placeholders_then_the_figures(fake: Path, tmp_path: Path):
    """`mkdocs serve` on an empty cache serves at once (placeholders), builds in the background, and serves
    the real figure after the live rebuild that its arrival in the cache triggers."""
    import socket
    import time
    import urllib.request

    figure(fake, "fig_slow", ("slow.svg", "slow_table.md"), '''\
        import time
        time.sleep(4)
        (out / "slow.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" id="real"/>')
        (out / "slow_table.md").write_text("| real |")
        ''')
    write(fake / "docs" / "index.md", "# Home\n\n![s](figures/slow.svg)\n\n<!-- lineage:include slow_table.md -->\n")
    write(fake / "mkdocs.yml", f"""\
        site_name: Fake
        theme: mkdocs
        hooks:
          - {HOOK}
        """)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = cli_env(fake, tmp_path / "cache")
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "--dev-addr", f"127.0.0.1:{port}"],
                              cwd=fake, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return None

    try:
        deadline = time.monotonic() + 60
        first = None
        while first is None and time.monotonic() < deadline:
            first = get("figures/slow.svg")
            time.sleep(0.2)
        assert first is not None, "mkdocs serve did not start"
        assert 'id="real"' not in first and "图正在生成" in first  # served before the script finished
        assert "图正在生成" in (get("") or "")
        while time.monotonic() < deadline and 'id="real"' not in (get("figures/slow.svg") or ""):
            time.sleep(0.5)
        assert 'id="real"' in (get("figures/slow.svg") or ""), "the finished figure was never served"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "real" not in (get("") or ""):
            time.sleep(0.5)
        assert "real" in (get("") or "") and "图正在生成" not in (get("") or "")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_schedule_starts_the_longest_chains_first_and_never_two_on_one_model(tmp_path: Path):
    """figures.builder.Timings.order: the script that trains the slow model first; a second script needing the
    same model would only wait for it, so the independent scripts go before it; a model already in the cache
    costs nothing."""
    timings = builder.Timings({
        "scripts": {"a": {"own_cpu": 5, "artifacts": ["slow"]}, "b": {"own_cpu": 6, "artifacts": ["slow"]},
                    "c": {"own_cpu": 50, "artifacts": []}, "d": {"own_cpu": 1, "artifacts": ["made"]}},
        "artifacts": {"slow": {"cpu": 100, "needs": ["base"]}, "base": {"cpu": 20, "needs": []},
                      "made": {"cpu": 500, "needs": []}}}, tmp_path / "timings.json")
    assert timings.order(["a", "b", "c", "d"], made=lambda artifact: artifact == "made") == ["b", "c", "a", "d"]
    assert timings.critical_path() == (501, ["made", "d"])


def test_a_model_counts_as_made_only_under_the_key_of_todays_sources(fake: Path, tmp_path: Path):
    """Scheduling and the "models to come" of the progress lines ask Timings.key for an artifact's key under
    the current sources (from the modules and config an earlier build recorded): an edit of a module the model
    is made from means the model is to come, though an entry of its old key is still in the cache."""
    cache, packages = tmp_path / "cache", ("pkg",)
    builder.ARTIFACT_TIMES.clear()
    cached("toy", ["pkg.c"], lambda d: (d / "w.txt").write_text("w"), preset="quick", config={"n": 1}, root=fake,
           cache_dir=cache, packages=packages)
    timings = builder.Timings({}, tmp_path / "timings.json")
    assert builder._made(cache, "toy", timings.key("toy", "quick", fake, packages))  # no record: any entry counts
    timings.record("fig", 1.0, {"cpu": 1.0, "artifacts": list(builder.ARTIFACT_TIMES)})
    builder.ARTIFACT_TIMES.clear()
    assert builder._made(cache, "toy", timings.key("toy", "quick", fake, packages))
    write(fake / "pkg" / "a.py", "VALUE = 3\n")  # imported by pkg.c
    assert not builder._made(cache, "toy", timings.key("toy", "quick", fake, packages))
    assert builder._made(cache, "toy", None)  # the old entry is still there


def test_without_a_chinese_font_the_overlap_check_leaves_chinese_labels_out(tmp_path: Path, monkeypatch):
    """Without Noto Sans CJK, matplotlib measures a Chinese label on a placeholder glyph (~15% wider than the
    real one), so save() checks only the other texts there: a clash of two Chinese labels passes, an ASCII one
    is still refused."""
    from refimpl import plots

    monkeypatch.setattr(plots, "_measures_chinese", lambda: False)
    for first, second, refused in (("第一个标签", "第二个", False), ("first label", "second", True)):
        fig, ax = plots.subplots(figsize=(3, 2))
        ax.text(0.1, 0.5, first)
        ax.text(0.3, 0.5, second)
        if refused:
            with pytest.raises(ValueError, match="overlapping texts"):
                plots.save(fig, tmp_path / "ascii.svg")
        else:
            plots.save(fig, tmp_path / "chinese.svg")
