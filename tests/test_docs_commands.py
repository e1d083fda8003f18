"""Every command shown on a page runs (verification ladder, rung 4).

Commands are the lines of ```bash blocks in docs/. They run in quick mode: `--preset full`
becomes `--preset quick`. A train command (train, train-clip, ..., reflow, distill) whose quick-mode arguments equal those of one that
already ran in this test session (on any page, in any xdist worker) but for --out starts from a
copy of that run's finished checkpoint, so the command itself runs and resumes instead of training
the same quick model again; everything else runs as is, except that a `from-pretrained` command (released weights,
which a page names by their Hugging Face name) runs offline against a tiny local stand-in of that model
(tests/tiny_checkpoints.py). The shared runs live in the session's
temporary directory, so nothing trained by older code is ever reused.

The first run of a train command whose quick model the site build also trains for its figures (FIGURE_RUNS)
starts from the figure cache's checkpoint of that model (the same LINEAGE_CACHE as the session's site build;
its file lock makes the test wait for the build's training, or train it for the build). The copy cannot hide a
mismatch: resuming, refimpl.training.fit refuses a checkpoint whose recorded config differs from the command's.

In quick mode a page's full-preset block mostly repeats its quick block: `--out runs/x-full` then holds the same
quick run as `runs/x`. Such a directory is an alias of the first one. A train command that starts from an alias
(`--base runs/ldm-full`) shares the run that starts from the first directory, and a later command that, with
aliases replaced by their first directory, is the very command line that already ran on the page (the name of
its output picture aside) is the same computation on the same files and is not run again.
"""

import fcntl
import hashlib
import importlib
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from clitools import refimpl

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


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """A directory shared by every xdist worker of this session (the workers' common basetemp parent)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    (root / "docs-runs").mkdir(exist_ok=True)
    return root / "docs-runs"


def run(argv: list[str], cwd: Path, page: Path, command: str, env: dict[str, str] | None = None) -> None:
    result = refimpl(*argv[3:], cwd=cwd, env=env, timeout=600)  # argv: python -m refimpl ...
    assert result.returncode == 0, f"{page.name}: `{command}` failed:\n{result.stderr[-2000:]}"


def tiny_hub(shared: Path) -> dict[str, str]:
    """The environment of a `from-pretrained` command: an offline Hugging Face cache in which tiny random checkpoints
    (tests/tiny_checkpoints.py, built here once per session) stand in for the released models that pages name."""
    from tiny_checkpoints import PAGE_MODELS, hf_cache

    with open(shared / "hf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return {**os.environ, **hf_cache(shared / "hf", PAGE_MODELS)}


#: the commands that train (train, train-clip, ...; reflow and distill train from a parent model) and write --out
TRAINING = ("train", "reflow", "distill")

#: "paper command [options]" of a quick train command (without --preset quick and --out) -> the figure cache's
#: checkpoint of the same model (its figures/zoo module, function, arguments)
FIGURE_RUNS = {
    "adm train": ("figures.zoo.adm", "classifier_checkpoint", ()),
    "cfg train": ("figures.zoo.cfg", "cfg_checkpoint", ()),
    "ddpm train --data digits": ("figures.zoo.ddpm", "ddpm_checkpoint", ("digits",)),
    "ddpm train --data swissroll": ("figures.zoo.ddpm", "ddpm_checkpoint", ("swissroll",)),
    "glide train": ("figures.zoo.glide", "glide_checkpoint", ()),
    "glide train-clip": ("figures.zoo.glide", "clip_checkpoint", ()),
    "iddpm train --data digits": ("figures.zoo.iddpm", "iddpm_checkpoint", ("digits",)),
    "ncsn train --data swissroll": ("figures.zoo.ncsn", "ncsn_checkpoint", ("swissroll",)),
    "nonequilibrium train": ("figures.zoo.nonequilibrium", "checkpoint", ()),
    "sde train --sde vp --data swissroll": ("figures.zoo.sde", "sde_checkpoint", ("vp", "swissroll")),
    "vpred train --data swissroll": ("figures.zoo.vpred", "vpred_checkpoint", ("swissroll",)),
    "flow train --data swissroll": ("figures.zoo.flow", "flow_checkpoint", ("swissroll",)),
    "flow reflow --parent runs/flow": ("figures.zoo.flow", "reflow_checkpoint", ("swissroll",)),
    "consistency distill --teacher runs/ddpm": ("figures.zoo.consistency", "consistency_checkpoint", ("swissroll",)),
    "dit train --size B --patch 2": ("figures.zoo.dit", "dit_checkpoint", ("B", 2)),
    "clip train": ("figures.zoo.clip", "clip_checkpoint", ()),
    "unclip train --clip runs/clip": ("figures.zoo.unclip", "unclip_checkpoint", ()),
    "imagen train --t5 runs/t5": ("figures.zoo.imagen", "imagen_checkpoint", ()),
    "ldm train": ("figures.zoo.ldm", "ldm_checkpoint", ()),
    "lora train --base runs/ldm": ("figures.zoo.lora", "style_checkpoint", ()),
    "lora train-gpt --base runs/gpt": ("figures.zoo.lora", "gpt_checkpoint", ()),
    "controlnet train --base runs/ldm": ("figures.zoo.controlnet", "controlnet_checkpoint", ()),
    "dreambooth train --base runs/ldm": ("figures.zoo.dreambooth", "dreambooth_checkpoint", ()),
    "textual-inversion train --base runs/ldm": ("figures.zoo.textual_inversion", "ti_checkpoint", ()),
    "gpt train": ("figures.zoo.gpt", "gpt_run", ()),
    "bert train": ("figures.zoo.bert", "bert_checkpoint", ()),
    "t5 train": ("figures.zoo.t5", "t5_checkpoint", ()),
    "llama train": ("figures.zoo.llama", "llama_checkpoint", ()),
    "scaling train": ("figures.zoo.scaling", "scaling_grid", ()),
    "moe train": ("figures.zoo.moe", "moe_checkpoint", ()),
}


def figure_run(argv: list[str]) -> Path | None:
    """The figure cache's checkpoint of the quick model this train command trains, or None."""
    words = [a for i, a in enumerate(argv[3:], 3)
             if a not in ("--out", "--preset") and argv[i - 1] not in ("--out", "--preset")]
    if option(argv, "--preset") not in (None, "quick") or " ".join(words) not in FIGURE_RUNS:
        return None
    module, function, args = FIGURE_RUNS[" ".join(words)]
    return getattr(importlib.import_module(module), function)(*args, "quick")


def test_figure_runs_name_page_commands():
    """Every FIGURE_RUNS entry is a command some page shows (a stale entry would silently stop sharing)."""
    shown = {" ".join(a for i, a in enumerate(argv[3:], 3)
                      if a not in ("--out", "--preset") and argv[i - 1] not in ("--out", "--preset"))
             for page in PAGES for argv in map(shlex.split, page_commands(page))}
    assert set(FIGURE_RUNS) <= shown, set(FIGURE_RUNS) - shown


def run_train(argv: list[str], same: list[str], cwd: Path, page: Path, command: str, shared: Path) -> None:
    """Run a train command, starting from a finished copy of the same quick run if one exists: ``same`` is
    ``argv`` with the page's alias directories replaced by their first ones (a run from runs/t5-full, a copy
    of runs/t5, is the run from runs/t5).

    An exclusive lock per run key makes a second worker wait for the first one's training
    instead of training the same model at the same time."""
    out = cwd / option(argv, "--out")
    key = " ".join(a for i, a in enumerate(same) if a != "--out" and same[i - 1] != "--out")
    done = shared / hashlib.sha256(key.encode()).hexdigest()[:16]
    with open(f"{done}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            source = done if done.exists() else figure_run(same)
            if source is not None:
                shutil.copytree(source, out)
        run(argv, cwd, page, command)
        if not done.exists():
            shutil.copytree(out, f"{done}.tmp")
            os.rename(f"{done}.tmp", done)


def unaliased(argv: list[str], aliases: dict[str, str]) -> tuple[str, ...]:
    """The command line with every alias directory replaced by its first one and the output picture's name dropped."""
    return tuple("<picture>" if argv[i - 1] == "--out" and arg.endswith(".png") else aliases.get(arg, arg)
                 for i, arg in enumerate(argv))


def plan(commands: list[str]) -> list[tuple[str, list[str], str, list[str]]]:
    """(command, quick argv, "train" | "run" | "repeat", quick argv with aliases replaced) for a page's commands,
    in order (see the module docstring)."""
    first_out: dict[tuple[str, ...], str] = {}  # a train command line without its --out -> its first --out
    aliases: dict[str, str] = {}
    ran: set[tuple[str, ...]] = set()
    steps = []
    for command in commands:
        argv = quick(shlex.split(command))
        line = unaliased(argv, aliases)
        if argv[4:5] and argv[4].startswith(TRAINING):
            key = tuple(a for i, a in enumerate(line) if "--out" not in (a, line[i - 1]))
            aliases[option(argv, "--out")] = first_out.setdefault(key, option(argv, "--out"))
            steps.append((command, argv, "train", [aliases.get(a, a) for a in argv]))
        else:
            steps.append((command, argv, "repeat" if line in ran else "run", list(line)))
            ran.add(line)
    return steps


def test_a_full_block_repeats_only_what_quick_mode_makes_identical():
    commands = ["python -m refimpl ddpm train --data digits --preset quick --out runs/a",
                "python -m refimpl ddpm sample --ckpt runs/a --n 64 --out a.png",
                "python -m refimpl ddpm train --data digits --preset full --out runs/a-full",
                "python -m refimpl ddpm sample --ckpt runs/a-full --n 64 --out full.png",  # the same computation
                "python -m refimpl ddpm sample --ckpt runs/a-full --n 16 --out full.png",  # another --n: runs
                "python -m refimpl ddpm train --data swissroll --preset full --out runs/b-full",
                "python -m refimpl ddpm sample --ckpt runs/b-full --n 64 --out b.png"]  # another model: runs
    assert [kind for _, _, kind, _ in plan(commands)] == ["train", "run", "train", "repeat", "run", "train", "run"]
    fine_tune = "python -m refimpl lora train --preset full --base runs/a-full --out runs/lora-full"
    assert plan([*commands, fine_tune])[-1][3][5:] == ["--preset", "quick", "--base", "runs/a", "--out", "runs/lora-full"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_every_command_on_the_page_runs(page, tmp_path, shared_runs):
    for command, argv, kind, same in plan(page_commands(page)):
        assert argv[:3] == ["python", "-m", "refimpl"], f"{page.name}: not a refimpl command: {command}"
        if kind == "train":  # the shared-run logic applies to every trainer
            run_train(argv, same, tmp_path, page, command, shared_runs)
        elif kind == "run":  # a released model named on a page is a tiny local stand-in: nothing is downloaded
            run(argv, tmp_path, page, command, tiny_hub(shared_runs) if argv[4:5] == ["from-pretrained"] else None)
            picture = option(argv, "--out")
            if argv[4:5] == ["sample"] and picture is not None:  # `gpt sample` prints text
                assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG", command
