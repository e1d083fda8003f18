"""``python -m figures``: build, list or clean the cached figures.

    python -m figures build [--preset quick|full] [--jobs N] [--only SCRIPT ...]
    python -m figures list
    python -m figures clean [--all]

The root is ``$LINEAGE_ROOT`` (default: this repository), the packages whose sources key
the cache are ``$LINEAGE_PACKAGES`` (default ``refimpl,figures``), the cache dir is
``$LINEAGE_CACHE`` (default ``<root>/.cache/lineage``), the preset ``$LINEAGE_PRESET``.
``_run-one SCRIPT OUT PRESET`` is internal: the builder runs each script that way.
"""

from __future__ import annotations

import argparse
import sys

from figures import builder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run-one"]:
        return builder.run_one(*argv[1:])
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
    args = parser.parse_args(argv)

    root = builder.default_root()
    try:
        if args.command == "build":
            result = builder.build(root, preset=args.preset, jobs=args.jobs, only=args.only,
                                   packages=builder.default_packages(), cache_dir=args.cache)
            built = sum(s.status == "built" for s in result.scripts)
            print(f"{len(result.scripts)} figure script(s), {built} built", file=sys.stderr)
        elif args.command == "list":
            for script in builder.discover(root).values():
                print(f"{script.name:28} {script.page:32} {', '.join(script.outputs)}")
        elif args.command == "clean":
            cache = builder.clean(root, args.cache, artifacts=args.all)
            print(f"cleaned {cache}", file=sys.stderr)
    except builder.FigureError as err:
        print(f"figures: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
