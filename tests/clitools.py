"""Helpers for tests that run the command line: ``python -m refimpl ARGS`` as a process of its own.

Starting Python and importing torch costs about 2 CPU-seconds, and the first optimizer a process builds another
1.7 (it imports torch._dynamo); the tests run a few hundred commands. So on Linux each test process keeps one
small fork server (:func:`serve`, a child that has imported only those third-party libraries and done nothing
with them, as the figure builder's workers do) and every command is a fresh fork of it: its own process, its own
working directory, environment and file descriptors, the project's code imported anew, exactly the
``runpy`` execution of ``refimpl/__main__.py`` that ``python -m refimpl`` performs. Elsewhere, and for any
command that needs a real interpreter (signals, the entry point itself), ``subprocess`` runs it.
"""

import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: third-party modules the fork server imports once (never a project module: each command imports the project's
#: code fresh, with its own environment)
PRELOAD = ("numpy", "torch", "torch._dynamo", "matplotlib", "sklearn.datasets", "safetensors.torch", "PIL.Image",
           "tqdm")
FORK = sys.platform == "linux"
_server: subprocess.Popen | None = None
_pending = bytearray()  # what the fork server answered that has not been read as a line yet


def refimpl(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m refimpl ARGS`` in ``cwd`` with this checkout on the path, progress bars off (``env``:
    the whole environment instead of this process's), as a fresh process forked from the fork server."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT), LINEAGE_NO_PROGRESS="1")
    if not FORK:
        return subprocess.run([sys.executable, "-m", "refimpl", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        code = _forked(["refimpl", *args], str(cwd), env, str(out), str(err), timeout)
        return subprocess.CompletedProcess([sys.executable, "-m", "refimpl", *args], code,
                                           out.read_text(errors="replace"), err.read_text(errors="replace"))


def _forked(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str, timeout: float) -> int:
    """Ask the fork server to run ``python -m argv[0] argv[1:]``; its exit status (negative: killed by a signal)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0, cwd=ROOT,
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
        atexit.register(_server.kill)
        _pending.clear()
    _server.stdin.write((json.dumps([argv, cwd, env, out, err]) + "\n").encode())
    pid = _reply(None)
    code = _reply(timeout)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        _reply(None)
        raise subprocess.TimeoutExpired(argv, timeout)
    return code


def _reply(timeout: float | None) -> int | None:
    """The fork server's next answer (one integer per line), or None if none comes within ``timeout`` seconds. The
    pipe is read unbuffered: a line already read ahead must not be waited for again."""
    fd = _server.stdout.fileno()
    while b"\n" not in _pending:
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("the test fork server died")
        _pending.extend(chunk)
    line, _, rest = bytes(_pending).partition(b"\n")
    _pending[:] = rest
    return int(line)


def serve() -> None:
    """The fork server: import :data:`PRELOAD`, then for each request line [argv, cwd, env, stdout path, stderr
    path] fork a child that runs the module, and answer its pid, then its exit status."""
    for name in PRELOAD:
        importlib.import_module(name)
    replies = sys.stdout
    for line in sys.stdin:
        argv, cwd, env, out, err = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_module(argv, cwd, env, out, err)
        print(pid, file=replies, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), file=replies, flush=True)


def _run_module(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: become ``python -m argv[0] argv[1:]`` run in ``cwd`` with ``env``; never returns."""
    import runpy
    import traceback

    import torch

    code = 1
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(path, flags, 0o644), fd)
        # what `python -m` puts first on the path (the working directory), then PYTHONPATH, then the rest
        sys.path[:] = [cwd, *env.get("PYTHONPATH", "").split(os.pathsep), *sys.path[1:]]
        if env.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [argv[0], *argv[1:]]
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:  # sys.exit("message"): printed, status 1, as the interpreter does
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


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


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()


def assert_generate_refuses(cli, run: str, tmp_path: Path, capsys) -> None:
    """``generate`` of a character-level model trained on the notes (LLaMA, MoE; ``cli(*args) -> exit status``, a
    trained checkpoint in ``run``) refuses in one line with exit 2: a prompt character outside the vocabulary, an
    empty prompt, ``--tokens 0``, a missing checkpoint, and a GPT's checkpoint."""
    from refimpl import gpt

    other = tmp_path / "gpt"
    data = gpt.text_data()
    gpt.train(gpt.train_config("quick", steps=1, data=data), other, progress=False, data=data)
    for extra, fragment in ((["--prompt", "扩散\U0001F600"], "not in the vocabulary"),
                            (["--prompt", ""], "empty"),
                            (["--tokens", "0"], "positive integer"),
                            (["--ckpt", str(tmp_path / "missing")], str(tmp_path / "missing")),
                            (["--ckpt", str(other)], "holds a 'gpt' model")):
        base = {"--ckpt": run, "--prompt": "扩散"} | dict(zip(extra[::2], extra[1::2]))
        assert cli("generate", *[item for pair in base.items() for item in pair]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refimpl: error:") and fragment in err[0], (fragment, err)

