"""The ``python -m refimpl`` command line: one sub-command per paper, one-line errors.

Each paper module that has a command line defines ``add_commands(subparsers)``; it is
named in ``refimpl.__main__.PAPERS`` (kept there, not here, so that adding a paper does
not change this module, which every paper's CLI imports: the figure cache would retrain
every model) and imported only when its command runs. Every user error (bad option, bad
value, missing or wrong checkpoint, missing device) is printed as a single
``refimpl: error: ...`` line with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from refimpl.core import PRESETS, LineageError

class _Parser(argparse.ArgumentParser):
    """argparse, but errors become LineageError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise LineageError(f"{message} (see '{self.prog} --help')")


def _number(convert, accept, what: str):
    """An argparse type: ``convert(text)`` if ``accept`` holds for it, else "expected <what>, got <text>"."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


# the argument types of the commands: step counts, crop offsets, a split of a schedule, scales, digit classes
positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
open_fraction = _number(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
positive_float = _number(float, lambda v: v > 0, "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
digit = _number(int, lambda v: 0 <= v <= 9, "a digit class 0-9")


def png_path(text: str) -> Path:
    """An output picture: a .png path whose directory exists."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must be a .png file, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"output directory does not exist: {path.parent}")
    return path


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command takes."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default="quick",
                        help="quick: CPU, seconds to a minute; full: GPU-sized (default quick)")


def add_train_command(commands, run, *, help: str, name: str = "train", data: Sequence[str] | None = None,
                      default: str = "swissroll", inputs: dict[str, str] | None = None,
                      steps: dict[str, str] | None = None, options: Callable | None = None,
                      out_help: str = "checkpoint directory"):
    """A training command: [--data], --preset, [inputs], the step counts, [options], --out and the common options.

    ``data``: the --data choices (None: no --data); ``inputs``: required directories the run starts from
    (option -> help); ``steps``: the step-count options (option -> what it counts; default ``--steps``,
    training steps); ``options``: a function adding the command's own options before --out. Returns the parser,
    for options after the common ones."""
    cmd = commands.add_parser(name, help=help)
    if data is not None:
        cmd.add_argument("--data", choices=data, default=default)
    add_preset(cmd)
    for option, option_help in (inputs or {}).items():
        cmd.add_argument(option, required=True, help=option_help)
    for option, what in ({"--steps": "training steps"} if steps is None else steps).items():
        cmd.add_argument(option, type=positive_int, help=f"{what} (default: the preset's)")
    if options is not None:
        options(cmd)
    cmd.add_argument("--out", required=True, help=out_help)
    add_common(cmd)
    cmd.set_defaults(run=run)
    return cmd


def add_sample_command(commands, run, *, help: str, name: str = "sample", inputs: dict[str, str] | None = None,
                       ckpt_help: str | None = "checkpoint directory written by train", options: Callable | None = None,
                       n: int | None = 1000, n_help: str = "number of samples",
                       out_help: str = "output picture (.png)"):
    """A command that writes a picture: [inputs], --ckpt, [options], --n, --out (a .png) and the common options.

    ``inputs``: required directories before --ckpt (option -> help); ``options``: a function adding the
    command's own options after --ckpt; ``ckpt_help`` or ``n`` None: no --ckpt or --n (``options`` adds it where
    the command wants it). Returns the parser, for options after the common ones."""
    cmd = commands.add_parser(name, help=help)
    for option, option_help in (inputs or {}).items():
        cmd.add_argument(option, required=True, help=option_help)
    if ckpt_help is not None:
        cmd.add_argument("--ckpt", required=True, help=ckpt_help)
    if options is not None:
        options(cmd)
    if n is not None:
        cmd.add_argument("--n", type=positive_int, default=n, help=n_help)
    cmd.add_argument("--out", required=True, type=png_path, help=out_help)
    add_common(cmd)
    cmd.set_defaults(run=run)
    return cmd


def main(papers: dict[str, str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` for ``PAPER COMMAND ...`` (``papers``: command -> module) and run it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="refimpl", description="Lineage reference implementations: python -m refimpl PAPER COMMAND ...")
    subparsers = parser.add_subparsers(dest="paper", metavar="PAPER", parser_class=_Parser)
    subparsers.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module in papers.items():
        sub = subparsers.add_parser(name, help=f"{name} commands")
        if wanted == name:
            commands = sub.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
            commands.required = True
            importlib.import_module(module).add_commands(commands)
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int | None] = args.run
        return int(run(args) or 0)
    except LineageError as err:
        print(f"refimpl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refimpl: interrupted (the last checkpoint is intact; rerun to resume)", file=sys.stderr)
        return 130
