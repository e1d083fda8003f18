"""``python -m figures``: build, list or clean the cached figures.

    python -m figures build [--preset quick|full] [--jobs N] [--only SCRIPT ...]
    python -m figures list
    python -m figures clean [--all]
    python -m figures radius [MODULE ...]

The root is ``$LINEAGE_ROOT`` (default: this repository), the packages whose sources key
the cache are ``$LINEAGE_PACKAGES`` (default ``refimpl,figures``), the cache dir is
``$LINEAGE_CACHE`` (default ``<root>/.cache/lineage``), the preset ``$LINEAGE_PRESET``.
``_run-one SCRIPT OUT PRESET`` and ``_worker`` are internal: the builder runs each script that way (see
``figures.builder._Worker``).
"""

from __future__ import annotations

import argparse
import os
import sys

from figures import builder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run-one"]:
        return builder.run_one(*argv[1:])
    if argv == ["_worker"]:
        return builder.worker_loop()
    parser = argparse.ArgumentParser(prog="python -m figures", description="Build Lineage's figures.")
    parser.add_argument("--cache", help="cache dir (default $LINEAGE_CACHE or <root>/.cache/lineage)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the figures whose cache entry is missing")
    p_build.add_argument("--preset", choices=builder.PRESETS, default=None,
                         help="default $LINEAGE_PRESET or quick")
    p_build.add_argument("--jobs", type=int, default=None, help="parallel scripts (default: CPU count)")
    p_build.add_argument("--only", action="append", metavar="SCRIPT", help="build only this script (repeatable)")
    sub.add_parser("list", help="list the figure scripts and their outputs")
    p_clean = sub.add_parser("clean", help="delete cached figures")
    p_clean.add_argument("--all", action="store_true", help="also delete shared artifacts (trained models)")
    p_radius = sub.add_parser("radius", help="what an edit of each module reruns: figure scripts and model modules")
    p_radius.add_argument("modules", nargs="*", metavar="MODULE", help="e.g. refimpl/ddim.py (default: all)")
    args = parser.parse_args(argv)

    root = builder.default_root()
    try:
        if args.command == "build":
            builder.build(root, preset=args.preset, jobs=args.jobs, only=args.only,
                          packages=builder.default_packages(), cache_dir=args.cache)
        elif args.command == "list":
            for script in builder.discover(root).values():
                print(f"{script.name:28} {script.page:32} {', '.join(script.outputs)}")
        elif args.command == "radius":
            radius = builder.blast_radius(root, builder.default_packages())
            unknown = [m for m in args.modules if m not in radius]
            if unknown:
                raise builder.FigureError(f"not a project module: {', '.join(unknown)}")
            scripts, models = len(builder.discover(root)), len(builder.model_modules(root))
            shown = [m for m in radius if not args.modules or m in args.modules]
            width = max([36, *(len(m) for m in shown)])
            print(f"{'module':{width}} {'scripts':>9} {'models':>8}   (of {scripts} scripts, {models} model modules)")
            for module in shown:
                keyed_scripts, keyed_models = radius[module]
                print(f"{module:{width}} {len(keyed_scripts):9d} {len(keyed_models):8d}   {' '.join(keyed_models)}")
        elif args.command == "clean":
            cache = builder.clean(root, args.cache, artifacts=args.all)
            print(f"cleaned {cache}", file=sys.stderr)
    except builder.FigureError as err:
        print(f"figures: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `python -m figures radius | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
