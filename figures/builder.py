"""The figure builder: find figure scripts, key them, run the stale ones, cache the outputs.

A figure script is any ``.py`` file under ``figures/`` (in this project ``figures/pages/<section>/<name>.py``)
with a top-level ``OUTPUTS`` (see CONTRIBUTING.md); its name is its file stem, unique across the tree.
Scripts are found by reading their AST, never by importing them.

Cache layout (``<cache>`` is ``$LINEAGE_CACHE`` or ``<root>/.cache/lineage``)::

    <cache>/figures/<script>/<key>/      outputs + .manifest.json (complete entries only)
    <cache>/artifacts/<name>/<key>/      shared artifacts made by cached()
    <cache>/tmp/<tag>.<pid>.<random>/    work in progress (removed once <pid> is gone)
    <cache>/locks/<name>.lock            cross-process locks for cached()

An entry appears only through ``os.rename`` of a finished temp dir that already holds its
manifest, so a build killed at any moment leaves at worst stray temp dirs.

Each stale script runs in a process of its own, the longest chains of work first, on one worker per core
and a half (see :class:`_Worker`: on Linux a warm process that imported torch and matplotlib once forks a
child per script).

The key of a script is a sha256 over its source, the sources of the project modules it
imports (transitively, found by static import analysis), its ``INPUTS``, the preset and
the installed versions of torch, diffusers, matplotlib and numpy.

This module imports only the standard library, so the CLI and the hook start fast.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("refimpl", "figures")
PRESETS = ("quick", "full")  # mirrors refimpl.core.PRESETS (not imported: it pulls in torch)
VERSIONED = ("torch", "diffusers", "matplotlib", "numpy")
#: The build system (top-level modules of figures/): must not define OUTPUTS, nor may a package __init__.
LIBRARY_MODULES = frozenset({"builder", "hook", "registry", "summary", "__init__", "__main__"})
#: Folders of figures/ that hold library modules only (the trained-model zoo, shared helpers): no OUTPUTS.
LIBRARY_DIRS = ("zoo", "lib")
MANIFEST = ".manifest.json"
KEY_FORMAT = "lineage-figure-key/1"
#: Build-system modules that scripts import (for cached()) but that never change what a script draws or a
#: producer trains: they are left out of every key, so that editing the builder (progress lines, scheduling)
#: reruns nothing. A change to what the cache means bumps KEY_FORMAT instead.
UNKEYED = frozenset({"figures.builder"})


class FigureError(Exception):
    """A figure could not be built (bad script declaration, script error, wrong outputs)."""


@dataclasses.dataclass(frozen=True)
class Script:
    """A figure script as declared by its top-level assignments."""

    name: str
    path: Path
    page: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()


@dataclasses.dataclass
class ScriptResult:
    name: str
    key: str
    status: str  # "cached" or "built"
    outputs: dict[str, Path]
    page: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class BuildResult:
    scripts: list[ScriptResult]

    def outputs(self) -> dict[str, Path]:
        """Every output name -> its file in the cache."""
        return {n: p for s in self.scripts for n, p in s.outputs.items()}

    def __getitem__(self, name: str) -> ScriptResult:
        for s in self.scripts:
            if s.name == name:
                return s
        raise KeyError(name)


# ----------------------------------------------------------------------------- settings


def default_root() -> Path:
    return Path(os.environ.get("LINEAGE_ROOT") or REPO_ROOT).resolve()


def default_packages() -> tuple[str, ...]:
    env = os.environ.get("LINEAGE_PACKAGES")
    return tuple(p.strip() for p in env.split(",") if p.strip()) if env else DEFAULT_PACKAGES


def default_cache(root: Path) -> Path:
    return Path(os.environ.get("LINEAGE_CACHE") or Path(root) / ".cache" / "lineage").resolve()


def check_preset(preset: str | None) -> str:
    preset = preset or os.environ.get("LINEAGE_PRESET") or "quick"
    if preset not in PRESETS:
        raise FigureError(f"unknown preset {preset!r} (expected one of: {', '.join(PRESETS)})")
    return preset


def _versions() -> dict[str, str]:
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


# ----------------------------------------------------------------------------- discovery


def _literal(tree: ast.Module, name: str):
    """Value of a top-level ``name = <literal>`` (``...`` when absent)."""
    value = ...
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise FigureError(f"{name} must be a literal") from None
    return value


def _where(path: Path, root: Path) -> str:
    """``path`` as the messages name it: relative to ``root`` (``figures/pages/diffusion/ddpm_loss.py``)."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _is_library(path: Path, root: Path) -> bool:
    """Whether ``path`` is a library module: a build-system module at the top of figures/, a package
    ``__init__``, or any module under figures/zoo or figures/lib."""
    try:
        rel = path.resolve().relative_to(root / "figures").parts
    except ValueError:
        rel = (path.name,)
    return (path.stem == "__init__" or (len(rel) == 1 and path.stem in LIBRARY_MODULES)
            or (len(rel) > 1 and rel[0] in LIBRARY_DIRS))


def _parse_script(path: Path, root: Path | None = None) -> Script | None:
    """The Script declared in ``path``, or None when it is a library module (no OUTPUTS)."""
    root = Path(root).resolve() if root else default_root()
    where = _where(path, root)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as err:
        raise FigureError(f"{where}: syntax error: {err}") from None
    try:
        outputs = _literal(tree, "OUTPUTS")
        if outputs is ...:
            return None
        page, inputs = _literal(tree, "PAGE"), _literal(tree, "INPUTS")
    except FigureError as err:
        raise FigureError(f"{where}: {err}") from None
    if _is_library(path, root):
        raise FigureError(f"{where}: library modules must not define OUTPUTS")
    inputs = () if inputs is ... else inputs
    if not isinstance(page, str):
        raise FigureError(f"{where}: PAGE must be a string such as 'diffusion/ddpm.md'")
    for label, names in (("OUTPUTS", outputs), ("INPUTS", inputs)):
        if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) and n for n in names):
            raise FigureError(f"{where}: {label} must be a tuple of strings")
    if not outputs:
        raise FigureError(f"{where}: OUTPUTS is empty")
    for name in outputs:
        if "/" in name or "\\" in name or name.startswith("."):
            raise FigureError(f"{where}: output {name!r} must be a plain file name")
    if len(set(outputs)) != len(outputs):
        raise FigureError(f"{where}: OUTPUTS lists a name twice")
    if not any(isinstance(n, ast.FunctionDef) and n.name == "make" for n in tree.body):
        raise FigureError(f"{where}: defines OUTPUTS but no make(out, preset)")
    return Script(path.stem, path.resolve(), page, tuple(outputs), tuple(inputs))


def discover(root: Path | str | None = None) -> dict[str, Script]:
    """All figure scripts under ``<root>/figures`` (any depth), by name; names and output names must be unique."""
    root = Path(root).resolve() if root else default_root()
    scripts: dict[str, Script] = {}
    owner: dict[str, str] = {}
    base = root / "figures"
    for path in sorted(base.rglob("*.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(base).parts[:-1]):
            continue
        script = _parse_script(path, root)
        if script is None:
            continue
        if script.name in scripts:
            raise FigureError(f"two figure scripts are named {script.name}: {_where(scripts[script.name].path, root)} "
                              f"and {_where(path, root)} (script names must be unique: rename one)")
        for out in script.outputs:
            if out in owner:
                raise FigureError(f"output {out!r} is declared by both {owner[out]} and {script.name}")
            owner[out] = script.name
        scripts[script.name] = script
    return dict(sorted(scripts.items()))  # by name, whatever folder a script sits in


# ----------------------------------------------------------------------------- import closure


def _module_file(root: Path, parts: Sequence[str], packages: Sequence[str]) -> Path | None:
    if not parts or parts[0] not in packages:
        return None
    base = root.joinpath(*parts)
    for candidate in (base / "__init__.py", base.parent / f"{parts[-1]}.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, path: Path) -> tuple[list[str], bool]:
    """Dotted name parts of the module at ``path`` and whether it is a package."""
    rel = path.resolve().relative_to(root).with_suffix("").parts
    is_package = rel[-1] == "__init__"
    return list(rel[:-1] if is_package else rel), is_package


def _imported_names(root: Path, path: Path) -> frozenset[str]:
    """Every dotted name that ``path`` may import (anywhere in the file, lazily or not)."""
    stat = path.stat()
    return _parse_imports(root, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _parse_imports(root: Path, path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """:func:`_imported_names`, parsed once per version of the file (keyed by its mtime and size): finding the
    keys of every script walks the same shared modules dozens of times."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    try:
        own, is_package = _module_name(root, path)
    except ValueError:  # outside root: relative imports cannot be resolved
        own, is_package = [], False
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = own if is_package else own[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
            names.update(f"{base}.{a.name}".lstrip(".") for a in node.names if a.name != "*")
    return frozenset(names)


@functools.lru_cache(maxsize=4096)
def _data_names(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The file names a module lists in a top-level ``DATA_FILES = ("name", ...)``: files next to it that it reads
    at run time, which key whatever imports it as its source does (parsed once per version of the module)."""
    names = _literal(ast.parse(path.read_bytes(), filename=str(path)), "DATA_FILES")
    if names is ...:
        return ()
    if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise FigureError(f"{path.name}: DATA_FILES must be a tuple of file names")
    return names


@functools.lru_cache(maxsize=4096)
def _warm_up_name(path: Path, mtime_ns: int, size: int) -> str | None:
    """The function a module names in a top-level ``WORKER_WARM_UP = "name"`` (see :data:`PRELOAD`)."""
    name = _literal(ast.parse(path.read_bytes(), filename=str(path)), "WORKER_WARM_UP")
    if name is ...:
        return None
    if not isinstance(name, str) or not name.isidentifier():
        raise FigureError(f"{path.name}: WORKER_WARM_UP must name a function of the module")
    return name


def warm_ups(script: Script, root: Path, packages: Sequence[str]) -> list[str]:
    """``module:function`` for every module in the script's import closure that names a ``WORKER_WARM_UP``."""
    found = []
    for path in module_closure(script.path, root=root, packages=packages):
        if path.suffix == ".py" and path != script.path.resolve():
            stat = path.stat()
            function = _warm_up_name(path, stat.st_mtime_ns, stat.st_size)
            if function:
                found.append(".".join(_module_name(root, path)[0]) + ":" + function)
    return found


def _data_files(path: Path) -> list[Path]:
    stat = path.stat()
    files = [path.parent / name for name in _data_names(path, stat.st_mtime_ns, stat.st_size)]
    for file in files:
        if not file.is_file():
            raise FigureError(f"{path.name}: data file {file.name} not found")
    return files


def module_closure(target: str | Path, *, root: Path | str | None = None,
                   packages: Sequence[str] | None = None) -> list[Path]:
    """The project files executed when ``target`` is run or imported, sorted.

    ``target`` is a file (Path, or a str ending in ``.py``) or a dotted module name. The
    result holds the file itself, every module under ``packages`` in ``root`` that it
    imports (transitively), the ``__init__.py`` of each such module's packages, and the
    data files each of these modules names in ``DATA_FILES``.
    Standard-library and third-party imports are ignored; so are dynamic imports.
    """
    root = Path(root).resolve() if root else default_root()
    packages = tuple(packages) if packages is not None else default_packages()
    seen: set[Path] = set()
    todo: list[Path] = []

    def add_file(path: Path) -> None:
        path = path.resolve()
        if path not in seen:
            seen.add(path)
            todo.append(path)

    def add_module(dotted: str) -> None:
        if any(dotted == u or dotted.startswith(u + ".") for u in UNKEYED):
            return
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):  # parent packages run first
            found = _module_file(root, parts[:i], packages)
            if found is not None:
                add_file(found)

    if isinstance(target, Path) or str(target).endswith(".py"):
        if not Path(target).is_file():
            raise FigureError(f"no such file: {target}")
        add_file(Path(target))
    else:
        if _module_file(root, str(target).split("."), packages) is None:
            raise FigureError(f"module {target!r} not found under {root} (packages: {', '.join(packages)})")
        add_module(str(target))
    data: set[Path] = set()
    while todo:
        path = todo.pop()
        data.update(_data_files(path))
        for name in sorted(_imported_names(root, path)):
            add_module(name)
    return sorted(seen | data)


class _Hash:
    """sha256 over length-prefixed fields, so that field boundaries cannot shift."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256()
        self.add(kind)

    def add(self, data: str | bytes) -> None:
        data = data.encode() if isinstance(data, str) else data
        self._h.update(len(data).to_bytes(8, "little") + data)

    def add_files(self, root: Path, paths: Iterable[Path]) -> None:
        for path in paths:
            self.add(path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path))
            self.add(path.read_bytes())

    def add_common(self, preset: str) -> None:
        self.add(preset)
        self.add(json.dumps(_versions(), sort_keys=True))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _input_files(root: Path, script: Script) -> list[Path]:
    files: list[Path] = []
    for name in script.inputs:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            raise FigureError(f"figure {script.name}: input {name!r} not found")
    return files


def script_key(script: str | Path | Script, *, root: Path | str | None = None, preset: str | None = None,
               packages: Sequence[str] | None = None) -> str:
    """The cache key (sha256 hex) of a figure script, given by name, path or Script."""
    root = Path(root).resolve() if root else default_root()
    preset = check_preset(preset)
    if not isinstance(script, Script):
        script = find_script(script, root)
    h = _Hash(KEY_FORMAT)
    h.add_files(root, module_closure(script.path, root=root, packages=packages))
    h.add("inputs")
    h.add_files(root, _input_files(root, script))
    h.add_common(preset)
    return h.hexdigest()


def find_script(script: str | Path, root: Path | str | None = None) -> Script:
    """The figure script given by name (``ddpm_loss``) or by file (a Path, or a str ending in ``.py``)."""
    root = Path(root).resolve() if root else default_root()
    if isinstance(script, Path) or str(script).endswith(".py"):
        path = Path(script)
        if not path.is_file():
            raise FigureError(f"no figure script {path}")
        parsed = _parse_script(path, root)
        if parsed is None:
            raise FigureError(f"{_where(path, root)} is not a figure script (no OUTPUTS)")
        return parsed
    scripts = discover(root)
    if script not in scripts:
        raise FigureError(f"no figure script named {script}")
    return scripts[script]


def load_script(script: str | Path, root: Path | str | None = None):
    """Import a figure script (by name or file) as module ``figures.<name>`` and return it: what tests and
    benchmarks use to call a script's helpers, since the folders of figures/pages are not packages."""
    return _import_script(find_script(script, root).path)


def _import_script(path: Path):
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(f"figures.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def model_modules(root: Path | str | None = None) -> list[Path]:
    """The trained-model modules: ``figures/zoo/<paper>.py``, each the cached() artifacts of one paper. An
    artifact's key covers its producer's module, so such a module's closure is what keys its models."""
    root = Path(root).resolve() if root else default_root()
    return sorted(p.resolve() for p in (root / "figures" / "zoo").glob("*.py") if p.name != "__init__.py")


def blast_radius(root: Path | str | None = None, packages: Sequence[str] | None = None
                 ) -> dict[str, tuple[list[str], list[str]]]:
    """For every project module (and data file a module names in DATA_FILES): the figure scripts and the
    trained-model modules whose cache keys its source is part of, i.e. what an edit of that file reruns.
    ``{"refimpl/ddim.py": (scripts, models)}``: scripts by name, model modules by their zoo stem (``"ddpm"`` for
    figures/zoo/ddpm.py)."""
    root = Path(root).resolve() if root else default_root()
    keyed: dict[Path, list[Path]] = {}
    for script in discover(root).values():
        keyed[script.path] = module_closure(script.path, root=root, packages=packages)
    models_set = set(model_modules(root))
    for module in models_set:  # by dotted name, as cached() keys a producer: its packages' __init__ count too
        dotted = ".".join(module.relative_to(root).with_suffix("").parts)
        keyed[module] = module_closure(dotted, root=root, packages=packages)
    out: dict[str, tuple[list[str], list[str]]] = {}
    data = {p for closure in keyed.values() for p in closure if p.suffix != ".py"}  # DATA_FILES
    for package in (packages or default_packages()):
        for path in sorted({*(root / package).rglob("*.py"), *(p for p in data if p.is_relative_to(root / package))}):
            scripts = sorted(t.stem for t, closure in keyed.items() if path in closure and t not in models_set)
            models = sorted(t.stem for t, closure in keyed.items() if path in closure and t in models_set)
            out[path.relative_to(root).as_posix()] = (scripts, models)
    return out


# ----------------------------------------------------------------------------- cache entries


def _read_manifest(entry: Path) -> dict | None:
    """The manifest of a complete cache entry, or None if the entry cannot be trusted."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest["key"] != entry.name:
            return None
        for name, size in manifest["files"].items():
            if (entry / name).stat().st_size != size:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_manifest(tmp: Path, **fields) -> None:
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({**fields, "files": files}, indent=1, sort_keys=True))


def _publish(tmp: Path, entry: Path) -> None:
    """Rename the finished temp dir to ``entry``; a complete entry already there wins."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.exists() and _read_manifest(entry) is None:
        shutil.rmtree(entry, ignore_errors=True)
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        os.rename(tmp, entry)
    except OSError:
        if _read_manifest(entry) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build published it first


def _prune(entry: Path, preset: str, extra: dict | None = None) -> None:
    """Remove the other entries of the same script/artifact made with the same preset."""
    for other in entry.parent.iterdir():
        if other == entry or not other.is_dir():
            continue
        manifest = _read_manifest(other)
        same = manifest is None or (manifest.get("preset") == preset
                                    and all(manifest.get(k) == v for k, v in (extra or {}).items()))
        if same:
            shutil.rmtree(other, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_tmp(cache: Path, tag: str) -> Path:
    parent = cache / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{tag}.{os.getpid()}.", dir=parent))


def _clean_stray_tmp(cache: Path) -> None:
    """Remove temp dirs and logs left by builds whose process no longer exists."""
    parent = cache / "tmp"
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        parts = path.name.split(".")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        if pid is None or (pid != os.getpid() and not _pid_alive(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- building


def _child_env(root: Path, cache: Path, preset: str, packages: Sequence[str], threads: int) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(root)] + ([str(REPO_ROOT)] if root != REPO_ROOT else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        LINEAGE_NO_PROGRESS="1",
        PYTHONDONTWRITEBYTECODE="1",  # nothing written under the watched source dirs
        MPLBACKEND="Agg",
        PYTHONHASHSEED="0",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        LINEAGE_PRESET=preset,
        LINEAGE_CACHE=str(cache),
        LINEAGE_ROOT=str(root),
        LINEAGE_PACKAGES=",".join(packages),
    )
    return env


def _tail(log: Path, lines: int = 12) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    keep = [line for line in text.splitlines() if line.strip() and not line.startswith("Traceback (")]
    return keep[-lines:]


#: third-party modules a worker imports once, before it forks a child per script. torch._dynamo: the first
#: optimizer a process builds imports it, ~1.7 CPU-s that every training script would otherwise pay again.
#: Project modules are imported fresh in each child, except one that names a pure, argument-free function in a
#: top-level ``WORKER_WARM_UP = "name"``: the worker imports it and calls that function once, before it forks
#: the first script whose import closure holds the module, so that every later such script inherits the result
#: (refimpl.digits_eval's probe classifier, ~2 CPU-s, which some 20 scripts of a cold build would each train
#: again). The function must leave no trace but its own cached result (no global RNG draws), so that a script
#: computes the same whether it ran forked or in a new interpreter; its CPU time counts to that first script.
PRELOAD = ("numpy", "torch", "torch._dynamo", "matplotlib.pyplot", "sklearn.datasets", "safetensors.torch",
           "PIL.Image")


class _Worker:
    """Runs figure scripts one at a time, each in a fresh process (``run_one``), writing its output to a log.

    On Linux the worker is a warm process that has imported :data:`PRELOAD` once and forks a child per script,
    so the seconds of importing torch and matplotlib are paid once per worker instead of once per script; the
    child starts from that state with the project's modules not yet imported, as a new process would. Elsewhere
    (fork after importing these libraries is not safe on macOS) every script gets a new interpreter."""

    FORK = sys.platform == "linux"

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.proc = root, env, None

    def run(self, script: Path, out: Path, preset: str, log: Path, warm: Sequence[str] = ()) -> tuple[int, float]:
        """The exit status of ``run_one(script, out, preset)`` (negative: killed by that signal) and the CPU seconds
        the worker spent first on the ``warm`` functions (``module:function``) it had not called yet."""
        if not self.FORK:
            with open(log, "wb") as fh:
                return subprocess.run([sys.executable, "-m", "figures", "_run-one", str(script), str(out), preset],
                                      cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=fh,
                                      stderr=subprocess.STDOUT).returncode, 0.0
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "figures", "_worker"], cwd=self.root, env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.proc.stdin.write(json.dumps([str(script), str(out), preset, str(log), list(warm)]) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:
            self.proc = None
            raise OSError("the figure worker process died")
        code, warm_cpu = reply.split()
        return int(code), float(warm_cpu)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
            self.proc = None


def worker_loop() -> int:
    """The worker side of :class:`_Worker`: import :data:`PRELOAD`, then for each request line (script, out,
    preset, log, warm-ups) call the warm-ups not called yet, fork a child that runs :func:`run_one` with its output
    in the log, and answer its exit status and the warm-ups' CPU seconds."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    warmed: set[str] = set()
    for line in sys.stdin:
        script, out, preset, log, warm = json.loads(line)
        start = time.process_time()
        for name in warm:
            if name not in warmed:
                warmed.add(name)
                module, _, function = name.partition(":")
                try:
                    getattr(importlib.import_module(module), function)()
                except Exception:  # noqa: BLE001 - the script's own call fails again, with the error in its log
                    pass
        warm_cpu = time.process_time() - start
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = run_one(script, out, preset)
            except SystemExit as stop:  # as a new process would exit on sys.exit()
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), f"{warm_cpu:.3f}", flush=True)
    return 0


def _run_script(script: Script, key: str, cache: Path, preset: str, worker: _Worker,
                warm: Sequence[str] = ()) -> tuple[Path | None, str | None, dict]:
    """Run one script on ``worker``; (entry, None, timing) on success, (None, error, {}) on failure.

    ``timing`` is the child's record: its CPU seconds and what each cached() call cost (see ARTIFACT_TIMES)."""
    tmp = _make_tmp(cache, script.name)
    log = tmp.with_name(tmp.name + "-log")
    timing_file = tmp.with_name(tmp.name + "-timing")
    try:
        returncode, warm_cpu = worker.run(script.path, tmp, preset, log, warm)
        if returncode != 0:
            tail = _tail(log)
            if returncode < 0:
                tail.append(f"killed by signal {-returncode}")
            why = tail[-1] if tail else f"exit status {returncode}"
            context = "".join(f"\n    {line}" for line in tail[:-1])
            return None, f"figure {script.name} failed: {why}{context}", {}
        present = {p.name for p in tmp.iterdir()}
        missing = sorted(set(script.outputs) - present)
        extra = sorted(present - set(script.outputs))
        if missing:
            return None, f"figure {script.name} failed: it did not write {', '.join(missing)} (declared in OUTPUTS)", {}
        if extra:
            return None, f"figure {script.name} failed: it wrote {', '.join(extra)}, which is not in OUTPUTS", {}
        if any(not (tmp / n).is_file() for n in script.outputs):
            return None, f"figure {script.name} failed: an output is not a regular file", {}
        _write_manifest(tmp, script=script.name, key=key, preset=preset)
        entry = cache / "figures" / script.name / key
        _publish(tmp, entry)
        _prune(entry, preset)
        try:
            timing = json.loads(timing_file.read_text())
        except (OSError, ValueError):
            timing = {}
        if warm_cpu:  # the warm-ups the worker ran for this script count to it, as if it had run them itself
            timing["cpu"] = timing.get("cpu", 0.0) + warm_cpu
        return entry, None, timing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        log.unlink(missing_ok=True)
        timing_file.unlink(missing_ok=True)


class Timings:
    """What each script and trained artifact cost in earlier builds: scheduling, progress and benchmarks.

    Measured records live in ``<cache>/timings.json`` (updated by every build); where the cache has none
    (a fresh clone), ``figures/costs.json`` (committed, written by ``benchmarks/build_time.py --write-costs``)
    stands in. Costs are CPU seconds of one thread: a script's own work (``own_cpu``, excluding the artifacts
    it produced and the time it slept on a lock) and each artifact's producer (``cpu``, excluding nested
    artifacts). ``artifacts`` of a script and ``needs`` of an artifact say which artifacts they asked for.
    Never part of a cache key.
    """

    DEFAULT_CPU = 20.0  # seconds assumed for a script nobody has timed yet

    def __init__(self, data: dict, path: Path) -> None:
        self.scripts: dict[str, dict] = dict(data.get("scripts", {}))
        self.artifacts: dict[str, dict] = dict(data.get("artifacts", {}))
        self.path = path

    @classmethod
    def load(cls, root: Path, cache: Path) -> "Timings":
        merged: dict[str, dict] = {"scripts": {}, "artifacts": {}}
        for source in (Path(root) / "figures" / "costs.json", Path(cache) / "timings.json"):
            try:
                data = json.loads(source.read_text())
            except (OSError, ValueError):
                continue
            for part in merged:
                merged[part].update(data.get(part, {}) if isinstance(data, dict) else {})
        return cls(merged, Path(cache) / "timings.json")

    def record(self, script: str, wall: float, timing: dict) -> None:
        """Store one finished script's child record (see run_one)."""
        calls = timing.get("artifacts", [])
        produced = [c for c in calls if c.get("built")]
        for call in produced:
            needs = sorted({c["artifact"] for c in calls if c.get("parent") == call["artifact"]})
            self.artifacts[call["artifact"]] = {"cpu": round(call["cpu"], 2), "wall": round(call["wall"], 2),
                                                "needs": needs, "made_by": script}
        for call in calls:  # what its key is made of, so that a later build can tell whether it is made
            if "modules" in call:
                self.artifacts.setdefault(call["artifact"], {}).update(modules=call["modules"], config=call["config"])
        self.scripts[script] = {
            "wall": round(wall, 2), "cpu": round(timing.get("cpu", 0.0), 2),
            "own_cpu": round(max(0.0, timing.get("cpu", 0.0) - sum(c["cpu"] for c in produced)), 2),
            "wait": round(sum(c.get("wait", 0.0) for c in calls), 2),
            "artifacts": sorted({c["artifact"] for c in calls if c.get("parent") is None})}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".timings.{os.getpid()}.json")
        tmp.write_text(json.dumps({"scripts": self.scripts, "artifacts": self.artifacts}, indent=1,
                                  sort_keys=True))
        os.replace(tmp, self.path)

    def key(self, name: str, preset: str, root: Path, packages: Sequence[str]) -> str | None:
        """Artifact ``name``'s cache key under today's sources, from the modules and config an earlier build
        recorded (None without that record, or when a module it was made from is gone)."""
        info = self.artifacts.get(name, {})
        if "modules" not in info:
            return None
        try:
            return artifact_key(name, info["modules"], info["config"], preset, root, packages)
        except (FigureError, OSError):
            return None

    def own(self, script: str) -> float:
        known = [v["own_cpu"] for v in self.scripts.values()]
        fallback = sorted(known)[len(known) // 2] if known else self.DEFAULT_CPU
        return self.scripts.get(script, {}).get("own_cpu", fallback)

    def closure(self, names) -> set[str]:
        """The artifacts in ``names`` and every artifact their producers asked for, transitively."""
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.artifacts.get(name, {}).get("needs", []))
        return seen

    def chain(self, name: str) -> float:
        """CPU seconds from nothing to artifact ``name``: its producer after the longest chain it needs."""
        info = self.artifacts.get(name, {})
        return info.get("cpu", 0.0) + max((self.chain(n) for n in info.get("needs", [])), default=0.0)

    def order(self, names: list[str], made: Callable[[str], bool]) -> list[str]:
        """Longest first: repeatedly the script with the longest chain of work ahead of it (its own work after
        the missing artifacts it needs). An artifact counts only for the first script that will make it; the
        scripts that need it too would only wait for it, so they come later, with their own work alone."""
        claimed = {a for a in self.artifacts if made(a)}
        left, order = list(names), []
        while left:
            def cost(name: str) -> float:
                needed = [a for a in self.scripts.get(name, {}).get("artifacts", []) if a not in claimed]
                return self.own(name) + max((self.chain(a) for a in needed), default=0.0)
            best = max(left, key=cost)
            order.append(best)
            left.remove(best)
            claimed |= self.closure(self.scripts.get(best, {}).get("artifacts", []))
        return order

    def critical_path(self) -> tuple[float, list[str]]:
        """The longest chain of CPU work (artifacts, then the script that needs them): seconds and names."""
        best: tuple[float, list[str]] = (0.0, [])
        for script, info in self.scripts.items():
            def path(name: str) -> list[str]:
                needs = self.artifacts.get(name, {}).get("needs", [])
                return (path(max(needs, key=self.chain)) if needs else []) + [name]
            longest = max(info.get("artifacts", []), key=self.chain, default=None)
            chain = path(longest) if longest else []
            total = info.get("own_cpu", 0.0) + (self.chain(longest) if longest else 0.0)
            if total > best[0]:
                best = (total, chain + [script])
        return best


def _made(cache: Path, name: str, key: str | None) -> bool:
    """Whether artifact ``name`` is in the cache under ``key`` (None: under any key, for want of a better guess)."""
    folder = Path(cache) / "artifacts" / name
    if key is not None:
        return _read_manifest(folder / key) is not None
    return folder.is_dir() and any(_read_manifest(e) is not None for e in folder.iterdir() if e.is_dir())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Progress:
    """``[k/N]`` lines with the elapsed time, an estimate of what is left and the models still to come."""

    def __init__(self, history: Timings, names: list[str], made: Callable[[str], bool], cpus: int,
                 log: Callable[[str], None]) -> None:
        self.history, self.left, self.made, self.cpus, self.log = history, list(names), made, cpus, log
        self.total, self.start = len(names), time.perf_counter()
        log(f"figures: building {self.total} script(s) on {cpus} core(s), "
            f"~{_duration(self.remaining()[0])} of work by earlier builds' timings")

    def remaining(self) -> tuple[float, list[str]]:
        """Estimated wall seconds for the scripts left, and the artifacts they need that are not made yet."""
        wanted = self.history.closure(a for n in self.left for a in self.history.scripts.get(n, {}).get("artifacts", []))
        models = sorted(a for a in wanted if not self.made(a))
        cpu = sum(self.history.own(n) for n in self.left) + sum(self.history.artifacts.get(a, {}).get("cpu", 0.0)
                                                               for a in models)
        return cpu / self.cpus, models

    def done(self, name: str, message: str) -> None:
        self.left.remove(name)
        k = self.total - len(self.left)
        line = f"[{k}/{self.total}] {message} · elapsed {_duration(time.perf_counter() - self.start)}"
        if self.left:
            seconds, models = self.remaining()
            line += f" · ~{_duration(seconds)} left"
            if models:
                shown = ", ".join(models[:4]) + (f" and {len(models) - 4} more" if len(models) > 4 else "")
                line += f" · models to come: {shown}"
        self.log(line)


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _lookup(scripts: dict[str, Script], root: Path, cache: Path, preset: str, packages: Sequence[str]
            ) -> tuple[dict[str, ScriptResult], list[tuple[Script, str]]]:
    """The scripts whose entry for the current key is in the cache (as results) and the (script, key) pairs
    that are missing."""
    results: dict[str, ScriptResult] = {}
    pending: list[tuple[Script, str]] = []
    for script in scripts.values():
        key = script_key(script, root=root, preset=preset, packages=packages)
        entry = cache / "figures" / script.name / key
        if _read_manifest(entry) is not None:
            results[script.name] = ScriptResult(script.name, key, "cached",
                                                {n: entry / n for n in script.outputs}, script.page)
        else:
            pending.append((script, key))
    return results, pending


def ready(root: Path | str = REPO_ROOT, preset: str | None = None, packages: Sequence[str] = DEFAULT_PACKAGES,
          cache_dir: Path | str | None = None) -> tuple[dict[str, Path], list[Script]]:
    """Without building anything: every output whose script is cached for the current sources (name -> file),
    and the scripts still to build. What ``mkdocs serve`` shows while a build runs in the background."""
    root = Path(root).resolve()
    cache = Path(cache_dir).resolve() if cache_dir else default_cache(root)
    results, pending = _lookup(discover(root), root, cache, check_preset(preset), tuple(packages))
    return {n: p for r in results.values() for n, p in r.outputs.items()}, [script for script, _ in pending]


def build(root: Path | str = REPO_ROOT, preset: str | None = None, jobs: int | None = None,
          only: str | Iterable[str] | None = None, packages: Sequence[str] = DEFAULT_PACKAGES,
          cache_dir: Path | str | None = None, log: Callable[[str], None] | None = None) -> BuildResult:
    """Build every figure whose cache entry is missing; return where all outputs are.

    ``only`` restricts the build to the named scripts (name, or a script's file such as
    ``figures/pages/diffusion/ddpm_loss.py``: its stem is the name).
    Raises FigureError naming every failing script after the others have finished.
    """
    root = Path(root).resolve()
    preset = check_preset(preset)
    cache = Path(cache_dir).resolve() if cache_dir else default_cache(root)
    log = log or _log_stderr
    packages = tuple(packages)
    scripts = discover(root)
    if only is not None:
        wanted = [Path(only).stem] if isinstance(only, (str, Path)) else [Path(o).stem for o in only]
        unknown = [w for w in wanted if w not in scripts]
        if unknown:
            raise FigureError(f"no figure script named {', '.join(unknown)} "
                              f"(known: {', '.join(scripts) or 'none'})")
        scripts = {n: scripts[n] for n in wanted}

    _clean_stray_tmp(cache)
    started = time.perf_counter()
    results, pending = _lookup(scripts, root, cache, preset, packages)

    errors: dict[str, str] = {}
    if pending:
        history = Timings.load(root, cache)
        cpus = os.cpu_count() or 1
        # One worker per core, each child one thread. A third worker on two cores (once here, to cover scripts
        # sleeping on a lock) made every process share its core by time slices, which cost ~30% more CPU per
        # model (the whole quick tree: 1475 CPU-s against 1145, 2 cores); with the longest-chain-first order
        # below no script waited on a lock in a cold build.
        workers = max(1, min(jobs or cpus, len(pending)))
        env = _child_env(root, cache, preset, packages, max(1, cpus // workers))
        keys: dict[str, str | None] = {}  # artifact -> its key today (None: unknown), worked out once

        def made(artifact: str) -> bool:
            if artifact not in keys:
                keys[artifact] = history.key(artifact, preset, root, packages)
            return _made(cache, artifact, keys[artifact])

        pending = [dict((s.name, (s, k)) for s, k in pending)[name]
                   for name in history.order([s.name for s, _ in pending], made)]
        progress = _Progress(history, [s.name for s, _ in pending], made, cpus, log)

        idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()  # one per pool thread at most
        started_workers: list[_Worker] = []

        def run(item: tuple[Script, str]):
            script, key = item
            start = time.perf_counter()
            try:
                worker = idle.get_nowait()
            except queue.Empty:
                worker = _Worker(root, env)
                started_workers.append(worker)
            try:
                entry, error, timing = _run_script(script, key, cache, preset, worker,
                                                   warm_ups(script, root, packages))
            except OSError as err:  # e.g. a full disk while publishing
                entry, error, timing = None, f"figure {script.name} failed: {type(err).__name__}: {err}", {}
            idle.put(worker)
            return script, key, entry, error, timing, time.perf_counter() - start

        with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(workers) as pool:
            stack.callback(lambda: [w.close() for w in started_workers])
            futures = [pool.submit(run, item) for item in pending]
            for future in concurrent.futures.as_completed(futures):
                script, key, entry, error, timing, seconds = future.result()
                if error:
                    errors[script.name] = error
                    progress.done(script.name, f"FAILED {script.name} after {seconds:.1f}s")
                    continue
                results[script.name] = ScriptResult(script.name, key, "built",
                                                    {n: entry / n for n in script.outputs}, script.page, seconds)
                history.record(script.name, seconds, timing)
                history.save()  # after every script: a build stopped halfway still informs the next one
                progress.done(script.name, f"built {script.name} in {seconds:.1f}s")
    if errors:
        raise FigureError("\n".join(errors[n] for n in sorted(errors)))
    log(f"figures: {len(scripts)} script(s), {len(pending)} built, {len(scripts) - len(pending)} cached, "
        f"{time.perf_counter() - started:.1f}s")
    return BuildResult([results[n] for n in scripts])


def run_one(script_path: str, out: str, preset: str) -> int:
    """Child side of build(): import the script by file path and call make(out, preset).

    On error, prints the traceback without the builder's own frames, then a one-line summary
    (the parent reports the last line), and returns 1.
    """
    path = Path(script_path).resolve()
    # the project root: the folder that holds figures/ (scripts may sit at any depth below it)
    root = str(next((p.parent for p in path.parents if p.name == "figures"), path.parent))
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = _import_script(path)
        module.make(Path(out), preset)
    except Exception as err:  # noqa: BLE001 - reported by the parent, by script name
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # the builder's own frames
            tb = tb.tb_next
        traceback.print_exception(type(err), err, tb)
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        print(f"{type(err).__name__}: {first}" if first else type(err).__name__, file=sys.stderr, flush=True)
        return 1
    record = {"cpu": time.process_time(), "artifacts": ARTIFACT_TIMES}
    Path(out).with_name(Path(out).name + "-timing").write_text(json.dumps(record))
    return 0


# ----------------------------------------------------------------------------- shared artifacts

#: what cached() did in this process: one record per call (artifact name, the artifact whose producer asked
#: for it, and for the call that produced it: own CPU seconds, wall seconds, seconds waiting on the lock)
ARTIFACT_TIMES: list[dict] = []
_PRODUCING: list[str] = []  # the artifacts whose producers are running in this process, innermost last


def artifact_key(name: str, modules: Sequence[str], config_json: str, preset: str, root: Path,
                 packages: Sequence[str] | None = None) -> str:
    """The cache key of artifact ``name``: the sources of ``modules`` with what they import, the config (JSON),
    the preset and the library versions (see :func:`cached`)."""
    h = _Hash("lineage-artifact-key/1")
    h.add(name)
    for module in sorted(set(modules)):
        h.add(module)
        h.add_files(root, module_closure(module, root=root, packages=packages))
    h.add(config_json)
    h.add_common(preset)
    return h.hexdigest()


def cached(name: str, modules: Sequence[str], producer: Callable[[Path], None], *, preset: str,
           config: dict | None = None, root: Path | str | None = None, cache_dir: Path | str | None = None,
           packages: Sequence[str] | None = None) -> Path:
    """A directory that ``producer(dir)`` filled, made once per key and shared across processes.

    The key covers ``name``, the sources of ``modules`` (dotted names) and of the module that
    defines ``producer`` (when it is a project module), with what they import, ``preset``,
    ``config`` (as JSON) and the library versions. Parallel callers with the same key wait on
    a file lock, so the producer runs exactly once.
    """
    root = Path(root).resolve() if root else default_root()
    producer_module = getattr(producer, "__module__", None) or ""
    if producer_module.split(".")[0] in (packages or default_packages()):
        modules = [*modules, producer_module]
    cache = Path(cache_dir).resolve() if cache_dir else default_cache(root)
    preset = check_preset(preset)
    if not name or "/" in name or name.startswith("."):
        raise FigureError(f"bad artifact name {name!r}")
    config_json = json.dumps(config or {}, sort_keys=True)
    modules = sorted(set(modules))
    key = artifact_key(name, modules, config_json, preset, root, packages)
    entry = cache / "artifacts" / name / key
    record = {"artifact": name, "parent": _PRODUCING[-1] if _PRODUCING else None, "cpu": 0.0, "wall": 0.0,
              "wait": 0.0, "modules": modules, "config": config_json}
    ARTIFACT_TIMES.append(record)
    if _read_manifest(entry) is not None:
        return entry
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    with open(cache / "locks" / f"{name}.lock", "w") as lock:
        start = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)
        record["wait"] = time.perf_counter() - start
        if _read_manifest(entry) is not None:
            return entry
        tmp = _make_tmp(cache, f"artifact-{name}")
        cpu, wall = time.process_time(), time.perf_counter()
        _PRODUCING.append(name)
        try:
            producer(tmp)
            _write_manifest(tmp, artifact=name, key=key, preset=preset, config=config_json)
            _publish(tmp, entry)
        finally:
            _PRODUCING.pop()
            shutil.rmtree(tmp, ignore_errors=True)
        # CPU of this producer alone: nested artifacts it made are counted under their own names
        nested = sum(r["cpu"] for r in ARTIFACT_TIMES if r["parent"] == name)
        record.update(cpu=time.process_time() - cpu - nested, wall=time.perf_counter() - wall, built=True)
        _prune(entry, preset, {"config": config_json})
    return entry


def clean(root: Path | str | None = None, cache_dir: Path | str | None = None, artifacts: bool = False) -> Path:
    """Delete cached figures (and shared artifacts too when ``artifacts``); return the cache dir."""
    root = Path(root).resolve() if root else default_root()
    cache = Path(cache_dir).resolve() if cache_dir else default_cache(root)
    for sub in ("figures", "tmp") + (("artifacts", "locks") if artifacts else ()):
        shutil.rmtree(cache / sub, ignore_errors=True)
    return cache
