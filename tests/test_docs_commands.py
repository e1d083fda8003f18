"""Every command shown on a page runs (verification ladder, rung 4).

Commands are the lines of ```bash blocks in docs/. They run in quick mode: `--preset full`
becomes `--preset quick`. A train command whose quick-mode arguments equal an earlier one
but for --out starts from a copy of that run's finished checkpoint (so the command itself
runs and resumes instead of training the same quick model twice); everything else runs as is.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)```bash\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.slow


def page_commands(page: Path) -> list[str]:
    commands = []
    for block in FENCE.finditer(page.read_text(encoding="utf-8")):
        for line in block["body"].splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if page_commands(p))


def test_the_pages_show_commands():
    assert ROOT / "docs" / "diffusion" / "ddpm.md" in PAGES


def quick(argv: list[str]) -> list[str]:
    return ["quick" if argv[i - 1] == "--preset" and arg == "full" else arg for i, arg in enumerate(argv)]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_every_command_on_the_page_runs(page, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LINEAGE_NO_PROGRESS="1")
    trained: dict[tuple[str, ...], str] = {}  # quick-mode train arguments without --out -> out dir
    for command in page_commands(page):
        argv = quick(shlex.split(command))
        assert argv[:3] == ["python", "-m", "refimpl"], f"{page.name}: not a refimpl command: {command}"
        if argv[4:5] == ["train"]:
            out = option(argv, "--out")
            key = tuple(a for i, a in enumerate(argv) if a != "--out" and argv[i - 1] != "--out")
            if key in trained and not (tmp_path / out).exists():
                shutil.copytree(tmp_path / trained[key], tmp_path / out)
            trained.setdefault(key, out)
        result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{page.name}: `{command}` failed:\n{result.stderr[-2000:]}"
        picture = option(argv, "--out")
        if argv[4:5] == ["sample"]:
            assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG", command
