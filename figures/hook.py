"""MkDocs hook (``hooks: [figures/hook.py]`` in mkdocs.yml).

Figures: ``on_files`` builds every figure through :func:`figures.builder.build` (cached,
so a rebuild is cheap; under ``mkdocs serve`` it publishes placeholders instead and builds in
the background, see below) and publishes each image output as ``site/figures/<name>``; pages
link it as ``../figures/<name>``. ``.md``/``.json`` outputs are not published; look them
up with :func:`figure_output`. Nothing is written under ``docs/`` (``mkdocs serve`` must
not see its own output), everything lives in the figure cache.

Environment: ``LINEAGE_PRESET`` (quick|full), ``LINEAGE_CACHE`` (cache dir),
``LINEAGE_ROOT`` (project root; default this repository) and ``LINEAGE_PACKAGES``
(comma-separated packages whose sources key the cache; default ``refimpl,figures``).
The last two exist so tests can point the hook at a small fake project.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

_REPO = str(Path(__file__).resolve().parent.parent)
log = logging.getLogger("mkdocs.hooks.figures")

#: output name -> cached file, for every figure output (.md and .json included)
FIGURE_OUTPUTS: dict[str, Path] = {}


def figure_output(name: str) -> Path:
    """The cached file of figure output ``name`` (after on_files has run)."""
    try:
        return FIGURE_OUTPUTS[name]
    except KeyError:
        raise PluginError(f"no figure output named {name!r}") from None


def _builder():
    if _REPO not in sys.path:  # mkdocs loads hooks by path; it resets sys.path afterwards
        sys.path.append(_REPO)
    from figures import builder

    return builder


def _build_figures() -> dict[str, Path]:
    builder = _builder()
    try:
        if _SERVE["command"] == "serve":
            return _serve_figures(builder)
        result = builder.build(builder.default_root(), packages=builder.default_packages(), log=log.info)
    except builder.FigureError as err:
        raise PluginError(str(err)) from None
    return result.outputs()


# --- mkdocs serve: the site at once, figures as they finish ----------------------------
#
# `mkdocs build` (and `make build`) waits for every figure and fails on any error. `mkdocs serve` instead
# shows what the cache already holds and a placeholder for the rest, while `python -m figures build` runs in
# the background (its [k/N] progress lines go to the same terminal); the cache's figures/ folder is watched,
# so every figure that lands triggers a rebuild and a live reload of the open pages.

_SERVE: dict = {"command": "build", "process": None, "started_for": None}
_PLACEHOLDER_NOTE = "图正在生成（{name}），完成后页面会自动刷新。"


def on_startup(command, dirty):
    _SERVE["command"] = command


def on_serve(server, config, builder):  # noqa: ARG001 - mkdocs' signature; ``builder`` is its page builder
    figures = _builder()
    figures_dir = figures.default_cache(figures.default_root()) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    server.watch(str(figures_dir))
    return server


def _serve_figures(builder) -> dict[str, Path]:
    root = builder.default_root()
    outputs, missing = builder.ready(root, packages=builder.default_packages())
    if missing:
        process, wanted = _SERVE["process"], frozenset(s.name for s in missing)
        # one background build at a time; after a failed one, wait for an edit (a new set of missing scripts)
        if (process is None or process.poll() is not None) and (
                _SERVE["started_for"] != wanted or (process is not None and process.returncode == 0)):
            log.info(f"figures: {len(missing)} script(s) to build; building in the background, "
                     "pages show placeholders until then")
            _SERVE["process"] = subprocess.Popen([sys.executable, "-m", "figures", "build"], cwd=_REPO)
            _SERVE["started_for"] = wanted
        placeholders = builder.default_cache(root) / "placeholders"
        for script in missing:
            for name in script.outputs:
                outputs[name] = _placeholder(placeholders, name)
    return outputs


def _placeholder(folder: Path, name: str) -> Path:
    """A stand-in for output ``name`` until its script has run (serve only): a grey card for an image, a
    one-line note for a generated table."""
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    note = _PLACEHOLDER_NOTE.format(name=name)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        data = (f'<svg xmlns="http://www.w3.org/2000/svg" width="480" height="80" viewBox="0 0 480 80">'
                f'<rect width="480" height="80" fill="#eeeeee"/><text x="240" y="45" font-size="14" '
                f'text-anchor="middle" fill="#555">{note}</text></svg>').encode()
    elif suffix == ".png":
        data = _grey_png(480, 80)
    elif suffix == ".json":
        data = b"{}\n"
    else:
        data = f"> {note}\n".encode()
    tmp = path.with_name(f".{name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _grey_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\xee" * width for _ in range(height))  # filter byte 0, grey level 0xee
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def on_files(files, config):
    FIGURE_OUTPUTS.clear()
    FIGURE_OUTPUTS.update(_build_figures())
    for name, path in sorted(FIGURE_OUTPUTS.items()):
        if path.suffix.lower() in (".md", ".json"):
            continue
        uri = f"figures/{name}"
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# --- pages: registry content and generated tables ------------------------------------
#
# The Markdown itself comes from figures.registry (generator-independent); the hook only
# places it: the paper card after the H1 of a page whose front matter says `paper: <id>` (one card per id
# of a list),
# the bibliography at `<!-- lineage:bibliography -->`, a generated Markdown output of a
# figure script at `<!-- lineage:include NAME.md -->`, and at `<!-- lineage:repro-summary -->` every paper
# page's included tables merged into one (figures.summary).

_INCLUDE = re.compile(r"^<!-- lineage:include (\S+) -->$", re.MULTILINE)
_BIBLIOGRAPHY = "<!-- lineage:bibliography -->"
_SUMMARY = "<!-- lineage:repro-summary -->"
_H1 = re.compile(r"^# .+$", re.MULTILINE)


def on_page_markdown(markdown, page, config, files):
    from figures import registry

    paper_ids = registry.declared_papers(page.meta)
    try:
        if paper_ids:
            heading = _H1.search(markdown)
            if heading is None:
                raise PluginError(f"{page.file.src_uri}: a paper page needs a '# title' line for its card")
            cards = "\n".join(registry.paper_card(pid, page.file.src_uri) for pid in paper_ids)
            markdown = f"{markdown[:heading.end()]}\n\n{cards}\n{markdown[heading.end():]}"
        if _BIBLIOGRAPHY in markdown:
            markdown = markdown.replace(_BIBLIOGRAPHY, registry.bibliography(page_path=page.file.src_uri))
        if _SUMMARY in markdown:
            from figures import summary

            if any("placeholders" in path.parts for path in FIGURE_OUTPUTS.values()):  # serve, still building
                table = _PLACEHOLDER_NOTE.format(name="复现总表")
            else:
                table = summary.summary_table(figure_output, Path(config["docs_dir"]))
            markdown = markdown.replace(_SUMMARY, table)
    except (registry.RegistryError, ValueError) as err:
        raise PluginError(f"{page.file.src_uri}: {err}") from None
    return _INCLUDE.sub(lambda m: figure_output(m.group(1)).read_text(encoding="utf-8"), markdown)


# --- figures open full size -----------------------------------------------------------

_FIGURE_IMG = re.compile(r'<img\b[^>]*\bsrc="([^"]*figures/[^"]+)"[^>]*>')


def on_page_content(html, page, config, files):
    """Every generated figure links to its own file, so a reader can open it full size (a new tab)."""
    return _FIGURE_IMG.sub(lambda m: f'<a class="lineage-figure" href="{m.group(1)}" target="_blank" '
                                     f'title="打开原图">{m.group(0)}</a>', html)


# --- MathJax, served from the site itself ----------------------------------------------

#: the parts of MathJax 3 the pages load: the tex-chtml component, its fonts, TeX
#: extensions (for \require and preloading), the menu and the assistive MathML.
_MATHJAX_PARTS = ("tex-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y")


def on_post_build(config):
    try:
        import mathjax  # the django-static-mathjax package: MathJax 3.2.2, assets only
    except ImportError:
        raise PluginError("MathJax is missing: install the docs extra (pip install -e '.[docs]')") from None
    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = Path(config["site_dir"]) / "assets" / "mathjax"
    for part in _MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
