"""Shared test setup: quiet progress bars, one torch thread per xdist worker (and per subprocess it
starts: OMP_NUM_THREADS is inherited), the repo on sys.path.

The built site (``site``) is one strict build per test session; every test that uses it is marked
``pytest.mark.xdist_group("site")`` and ``make test`` runs ``pytest -n 2 --dist loadgroup``, so all of
them run on one worker and the site is built once. Set ``LINEAGE_SITE=DIR`` to test an already built
tree instead (it must have been built from this checkout with the same ``SOURCE_DATE_EPOCH``, see
``build_site``); the default, and CI, builds. Reports the site tests write (external links, browser
screenshots) go to ``reports_dir``: ``$LINEAGE_CACHE/reports`` (default ``.cache/lineage/reports``).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LINEAGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # CLI and docs-command subprocesses would otherwise start one OpenMP thread per core each; with two
    # workers on two cores that oversubscription made small U-Net calls up to ~100x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # two workers on two cores: no oversubscription


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def instructgpt_run():
    """The quick InstructGPT run of the site's figures (seed 0) on the toy preference task: ``(task, out)`` with
    ``out`` as refimpl.rlhf.instructgpt returns it (SFT, comparisons, reward model, PPO). Shared by test_rlhf and
    test_dpo (DPO trains on the same comparisons)."""
    from refimpl import preferences, rlhf

    sizes = preferences.SIZES["quick"]
    task = preferences.make_task(sizes["prompts"], sizes["responses"], 0)
    out = rlhf.instructgpt(task, demonstrations=sizes["demonstrations"], comparisons=sizes["comparisons"],
                           beta=preferences.BETA, generator=torch.Generator().manual_seed(0),
                           **rlhf.PPO_SETTINGS["quick"])
    return task, out


@pytest.fixture(scope="session")
def s64():
    """The DDPM linear schedule (T = 1000) in float64: closed-form identities hold to ~1e-12."""
    from refimpl.schedules import Schedule, linear_betas

    return Schedule(linear_betas(1000, dtype=torch.float64))


@pytest.fixture(scope="session")
def s32():
    """The float32 linear schedule (T = 1000), bit for bit diffusers' alphas_cumprod (see test_diffusers_parity)."""
    from refimpl.schedules import make_schedule

    return make_schedule("linear", 1000)


def source_date_epoch() -> str:
    """The build date MkDocs stamps into sitemap.xml(.gz) (it honours SOURCE_DATE_EPOCH): the environment's,
    else the time of the last commit (what `make build` uses), else 0 outside a git checkout."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    result = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "0"


@pytest.fixture(scope="session")
def build_site():
    """``build_site(site_dir) -> seconds``: a strict ``mkdocs build`` of this checkout into ``site_dir``
    (figures from the LINEAGE_CACHE figure cache), failing on any WARNING line."""

    def build(site_dir: Path) -> float:
        env = dict(os.environ, NO_MKDOCS_2_WARNING="1", SOURCE_DATE_EPOCH=source_date_epoch())
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stderr[-4000:]
        warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
        assert warnings == [], warnings
        return time.perf_counter() - start

    return build


@pytest.fixture(scope="session")
def site(build_site, tmp_path_factory) -> Path:
    """The built site: ``$LINEAGE_SITE`` if set, else one strict build per session (per xdist worker: keep
    its users in ``xdist_group("site")``)."""
    if os.environ.get("LINEAGE_SITE"):
        site_dir = Path(os.environ["LINEAGE_SITE"]).resolve()
        assert (site_dir / "index.html").is_file(), f"LINEAGE_SITE={site_dir} holds no built site"
        return site_dir
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' basetemps share a parent: one claim per run
        claim = tmp_path_factory.getbasetemp().parent / "site-build-claimed"
        try:
            claim.open("x").close()
        except FileExistsError:
            pytest.fail("a second xdist worker would build the site: run with --dist loadgroup (and see the "
                        "pytest pin in pyproject.toml: pytest-xdist#1386)")
    site_dir = tmp_path_factory.mktemp("site")
    build_site(site_dir)
    return site_dir


@pytest.fixture(scope="session")
def reports_dir() -> Path:
    """Where site tests write what a person reads (link report, screenshots): ``<figure cache>/reports``."""
    from figures.builder import default_cache, default_root

    path = default_cache(default_root()) / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path
