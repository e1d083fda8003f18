"""MkDocs hook (``hooks: [figures/hook.py]`` in mkdocs.yml).

Figures: ``on_files`` builds every figure through :func:`figures.builder.build` (cached,
so a rebuild is cheap) and publishes each image output as ``site/figures/<name>``; pages
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
import sys
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


def _build_figures() -> dict[str, Path]:
    if _REPO not in sys.path:  # mkdocs loads hooks by path; it resets sys.path afterwards
        sys.path.append(_REPO)
    from figures import builder

    try:
        result = builder.build(builder.default_root(), packages=builder.default_packages(), log=log.info)
    except builder.FigureError as err:
        raise PluginError(str(err)) from None
    return result.outputs()


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
