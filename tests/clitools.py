"""Helpers for tests that run the command line in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def refimpl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m refimpl ARGS`` in ``cwd`` with this checkout on the path, progress bars off."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LINEAGE_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "refimpl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr starting with 'refimpl: error:', no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refimpl: error:"), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def with_defaults(args: list[str], **defaults: str) -> list[str]:
    """``--flag value`` pairs of ``args`` over the defaults (``ckpt="run"`` is ``--ckpt run``), as one argv list."""
    merged = {f"--{k}": v for k, v in defaults.items()} | dict(zip(args[::2], args[1::2]))
    return [item for pair in merged.items() for item in pair]
