"""The figure builder: find figure scripts, key them, run the stale ones, cache the outputs.

A figure script is ``figures/<name>.py`` with a top-level ``OUTPUTS`` (see CONTRIBUTING.md).
Scripts are found by reading their AST, never by importing them.

Cache layout (``<cache>`` is ``$LINEAGE_CACHE`` or ``<root>/.cache/lineage``)::

    <cache>/figures/<script>/<key>/      outputs + .manifest.json (complete entries only)
    <cache>/artifacts/<name>/<key>/      shared artifacts made by cached()
    <cache>/tmp/<tag>.<pid>.<random>/    work in progress (removed once <pid> is gone)
    <cache>/locks/<name>.lock            cross-process locks for cached()

An entry appears only through ``os.rename`` of a finished temp dir that already holds its
manifest, so a build killed at any moment leaves at worst stray temp dirs.

The key of a script is a sha256 over its source, the sources of the project modules it
imports (transitively, found by static import analysis), its ``INPUTS``, the preset and
the installed versions of torch, diffusers, matplotlib and numpy.

This module imports only the standard library, so the CLI and the hook start fast.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
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
LIBRARY_MODULES = frozenset({"builder", "hook", "registry", "models", "__init__", "__main__"})
MANIFEST = ".manifest.json"
KEY_FORMAT = "lineage-figure-key/1"


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


def _parse_script(path: Path) -> Script | None:
    """The Script declared in ``path``, or None when it is a library module (no OUTPUTS)."""
    where = f"figures/{path.name}"
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
    if path.stem in LIBRARY_MODULES:
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
    """All figure scripts under ``<root>/figures``, by name; output names must be unique."""
    root = Path(root).resolve() if root else default_root()
    scripts: dict[str, Script] = {}
    owner: dict[str, str] = {}
    for path in sorted((root / "figures").glob("*.py")):
        script = _parse_script(path)
        if script is None:
            continue
        for out in script.outputs:
            if out in owner:
                raise FigureError(f"output {out!r} is declared by both {owner[out]} and {script.name}")
            owner[out] = script.name
        scripts[script.name] = script
    return scripts


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


def _imported_names(root: Path, path: Path) -> set[str]:
    """Every dotted name that ``path`` may import (anywhere in the file, lazily or not)."""
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
    return names


def module_closure(target: str | Path, *, root: Path | str | None = None,
                   packages: Sequence[str] | None = None) -> list[Path]:
    """The project files executed when ``target`` is run or imported, sorted.

    ``target`` is a file (Path, or a str ending in ``.py``) or a dotted module name. The
    result holds the file itself, every module under ``packages`` in ``root`` that it
    imports (transitively), and the ``__init__.py`` of each such module's packages.
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
    while todo:
        for name in sorted(_imported_names(root, todo.pop())):
            add_module(name)
    return sorted(seen)


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
        path = Path(script) if str(script).endswith(".py") else root / "figures" / f"{script}.py"
        if not path.is_file():
            raise FigureError(f"no figure script {path}")
        parsed = _parse_script(path)
        if parsed is None:
            raise FigureError(f"{path} is not a figure script (no OUTPUTS)")
        script = parsed
    h = _Hash(KEY_FORMAT)
    h.add_files(root, module_closure(script.path, root=root, packages=packages))
    h.add("inputs")
    h.add_files(root, _input_files(root, script))
    h.add_common(preset)
    return h.hexdigest()


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


def _run_script(script: Script, key: str, root: Path, cache: Path, preset: str,
                env: dict[str, str]) -> tuple[Path | None, str | None]:
    """Run one script in a subprocess; (entry, None) on success, (None, error) on failure."""
    tmp = _make_tmp(cache, script.name)
    log = tmp.with_name(tmp.name + "-log")
    try:
        with open(log, "wb") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "figures", "_run-one", str(script.path), str(tmp), preset],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = _tail(log)
            if proc.returncode < 0:
                tail.append(f"killed by signal {-proc.returncode}")
            why = tail[-1] if tail else f"exit status {proc.returncode}"
            context = "".join(f"\n    {line}" for line in tail[:-1])
            return None, f"figure {script.name} failed: {why}{context}"
        present = {p.name for p in tmp.iterdir()}
        missing = sorted(set(script.outputs) - present)
        extra = sorted(present - set(script.outputs))
        if missing:
            return None, f"figure {script.name} failed: it did not write {', '.join(missing)} (declared in OUTPUTS)"
        if extra:
            return None, f"figure {script.name} failed: it wrote {', '.join(extra)}, which is not in OUTPUTS"
        if any(not (tmp / n).is_file() for n in script.outputs):
            return None, f"figure {script.name} failed: an output is not a regular file"
        _write_manifest(tmp, script=script.name, key=key, preset=preset)
        entry = cache / "figures" / script.name / key
        _publish(tmp, entry)
        _prune(entry, preset)
        return entry, None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        log.unlink(missing_ok=True)


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build(root: Path | str = REPO_ROOT, preset: str | None = None, jobs: int | None = None,
          only: str | Iterable[str] | None = None, packages: Sequence[str] = DEFAULT_PACKAGES,
          cache_dir: Path | str | None = None, log: Callable[[str], None] | None = None) -> BuildResult:
    """Build every figure whose cache entry is missing; return where all outputs are.

    ``only`` restricts the build to the named scripts (name or ``figures/<name>.py``).
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
    results: dict[str, ScriptResult] = {}
    pending: list[tuple[Script, str]] = []
    for script in scripts.values():
        key = script_key(script, root=root, preset=preset, packages=packages)
        entry = cache / "figures" / script.name / key
        if _read_manifest(entry) is not None:
            results[script.name] = ScriptResult(script.name, key, "cached",
                                                {n: entry / n for n in script.outputs}, script.page)
            log(f"cached {script.name}")
        else:
            pending.append((script, key))

    errors: dict[str, str] = {}
    if pending:
        cpus = os.cpu_count() or 1
        workers = max(1, min(jobs or cpus, len(pending)))
        env = _child_env(root, cache, preset, packages, max(1, cpus // workers))

        def run(item: tuple[Script, str]):
            script, key = item
            start = time.perf_counter()
            try:
                entry, error = _run_script(script, key, root, cache, preset, env)
            except OSError as err:  # e.g. a full disk while publishing
                entry, error = None, f"figure {script.name} failed: {type(err).__name__}: {err}"
            return script, key, entry, error, time.perf_counter() - start

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(run, item) for item in pending]
            for future in concurrent.futures.as_completed(futures):
                script, key, entry, error, seconds = future.result()
                if error:
                    errors[script.name] = error
                    log(f"FAILED {script.name} after {seconds:.1f}s")
                else:
                    results[script.name] = ScriptResult(script.name, key, "built",
                                                        {n: entry / n for n in script.outputs},
                                                        script.page, seconds)
                    log(f"built {script.name} in {seconds:.1f}s")
    if errors:
        raise FigureError("\n".join(errors[n] for n in sorted(errors)))
    return BuildResult([results[n] for n in scripts])


def run_one(script_path: str, out: str, preset: str) -> int:
    """Child side of build(): import the script by file path and call make(out, preset).

    On error, prints the traceback without the builder's own frames, then a one-line summary
    (the parent reports the last line), and returns 1.
    """
    path = Path(script_path).resolve()
    root = str(path.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        spec = importlib.util.spec_from_file_location(f"figures.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.make(Path(out), preset)
    except Exception as err:  # noqa: BLE001 - reported by the parent, by script name
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        print(f"{type(err).__name__}: {first}" if first else type(err).__name__, file=sys.stderr, flush=True)
        return 1
    return 0


# ----------------------------------------------------------------------------- shared artifacts


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
    h = _Hash("lineage-artifact-key/1")
    h.add(name)
    for module in sorted(set(modules)):
        h.add(module)
        h.add_files(root, module_closure(module, root=root, packages=packages))
    h.add(config_json)
    h.add_common(preset)
    key = h.hexdigest()
    entry = cache / "artifacts" / name / key
    if _read_manifest(entry) is not None:
        return entry
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    with open(cache / "locks" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_manifest(entry) is not None:
            return entry
        tmp = _make_tmp(cache, f"artifact-{name}")
        try:
            producer(tmp)
            _write_manifest(tmp, artifact=name, key=key, preset=preset, config=config_json)
            _publish(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(entry, preset, {"config": config_json})
    return entry


def clean(root: Path | str | None = None, cache_dir: Path | str | None = None, artifacts: bool = False) -> Path:
    """Delete cached figures (and shared artifacts too when ``artifacts``); return the cache dir."""
    root = Path(root).resolve() if root else default_root()
    cache = Path(cache_dir).resolve() if cache_dir else default_cache(root)
    for sub in ("figures", "tmp") + (("artifacts", "locks") if artifacts else ()):
        shutil.rmtree(cache / sub, ignore_errors=True)
    return cache
