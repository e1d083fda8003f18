"""Site build times: cold (empty cache), warm (nothing changed) and figures-only; the CPU of every script and model.

Printed, never asserted. Usage:

    python benchmarks/build_time.py [--preset quick|full] [--cache DIR] [--write-costs] [--top N]
    python benchmarks/build_time.py --report CACHE   # only the CPU tables of the last build into CACHE

0. a fixed reference workload (:data:`REFERENCE`), before and after the builds: how fast the machine is at this
   hour (on shared cores the same tree's build times vary with it);
1. cold: ``mkdocs build --strict`` on an empty figure cache (trains every model, runs every script);
2. warm: the same build again, nothing changed; the hook's figure step (finding every script's key and
   its cache entry) is timed on its own, and the rest of the build is what a build whose figures are all
   cached costs anyway: the ratio of the two is the figure cache's overhead;
3. figures-only: the figure entries deleted, the trained models and sample banks kept: what editing every
   figure script at once would cost.

Then, from the cold build's records (figures.builder.Timings): each script's own CPU time (its work alone, not
the models it trained nor the time it slept waiting for another script's model), each trained artifact's CPU
time, longest first, their sum, and the critical path (the longest chain of work that must run in sequence:
the lower bound of a build on unlimited cores). ``--write-costs`` saves those records as figures/costs.json,
which the builder uses on a fresh clone to start the longest work first and to estimate what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from figures.builder import Timings  # noqa: E402

#: a fixed single-thread torch workload (the shapes of the site's models: an MLP and a small convolution, forward,
#: backward and Adam): the same work at every hour, so that builds timed at different hours can be compared. This
#: machine (2 shared cores) ran it 1.4-1.6x slower in some hours than in others, and every model with it.
REFERENCE = """
import time, torch
from torch import nn
torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(34, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1))
opt = torch.optim.Adam([*mlp.parameters(), *conv.parameters()])
x, z = torch.randn(256, 34), torch.randn(64, 32, 8, 8)
start = time.process_time()
for _ in range(300):
    loss = mlp(x).pow(2).mean() + conv(z).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(time.process_time() - start)
"""


def reference_seconds() -> float:
    """CPU seconds of :data:`REFERENCE` in a fresh one-thread process (lower: a faster machine at this hour)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", REFERENCE], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


_FIGURE_STEP = re.compile(r"figures: (\d+) script\(s\), (\d+) built, (\d+) cached, ([\d.]+)s")


def build(cache: Path, site: Path, preset: str) -> tuple[float, float]:
    """One strict build: (wall seconds, seconds of the hook's figure step as the builder reports it)."""
    env = dict(os.environ, LINEAGE_CACHE=str(cache), LINEAGE_PRESET=preset, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"build_time: the build failed:\n{proc.stderr[-3000:]}")
    step = _FIGURE_STEP.search(proc.stderr)
    return seconds, float(step.group(4)) if step else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=("quick", "full"))
    parser.add_argument("--cache", help="keep the cache here (default: a temporary directory, removed)")
    parser.add_argument("--write-costs", action="store_true", help="save the cold build's records as figures/costs.json")
    parser.add_argument("--top", type=int, default=25, help="rows of the per-script table (default 25)")
    parser.add_argument("--report", metavar="CACHE", help="build nothing: print the CPU tables of CACHE's records")
    args = parser.parse_args()
    if args.report:
        report(Timings.load(Path(args.report) / "no-root", Path(args.report)), args.top)
        return
    reference_before = reference_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache).resolve() if args.cache else Path(tmp) / "cache"
        if cache.exists():
            shutil.rmtree(cache)
        site = Path(tmp) / "site"
        cold, _ = build(cache, site, args.preset)
        timings = Timings.load(Path(tmp) / "no-root", cache)  # the cold build's own records only
        warm, warm_figures = build(cache, site, args.preset)
        shutil.rmtree(cache / "figures")
        figures_only, _ = build(cache, site, args.preset)
        if args.write_costs:
            (ROOT / "figures" / "costs.json").write_text(json.dumps(
                {"scripts": timings.scripts, "artifacts": timings.artifacts}, indent=1, sort_keys=True) + "\n")

    reference_after = reference_seconds()
    print(f"machine: {os.cpu_count()} cores; preset {args.preset}")
    print(f"reference workload (the same work at every hour): {reference_before:.2f} CPU s before the builds, "
          f"{reference_after:.2f} after")
    print(f"cold build (empty cache, trains models):        {cold:8.1f} s")
    print(f"figures rebuilt, models and samples cached:      {figures_only:8.1f} s")
    print(f"warm build (nothing changed, all cached):        {warm:8.1f} s")
    print(f"  of which the figure step (keys + cache check): {warm_figures:8.1f} s")
    base = warm - warm_figures
    print(f"  the same build without it:                     {base:8.1f} s  -> warm / all-cached = {warm / base:.2f}x")
    report(timings, args.top)


def report(timings: Timings, top: int) -> None:
    scripts = sorted(timings.scripts.items(), key=lambda kv: -kv[1]["own_cpu"])
    artifacts = sorted(timings.artifacts.items(), key=lambda kv: -kv[1]["cpu"])
    script_cpu = sum(v["own_cpu"] for _, v in scripts)
    artifact_cpu = sum(v["cpu"] for _, v in artifacts)
    print(f"\nCPU seconds (one thread each): scripts {script_cpu:.0f} + trained artifacts {artifact_cpu:.0f} "
          f"= {script_cpu + artifact_cpu:.0f}; / {os.cpu_count()} cores = {(script_cpu + artifact_cpu) / (os.cpu_count() or 1):.0f} s")
    length, chain = timings.critical_path()
    print(f"critical path: {length:.0f} s: {' -> '.join(chain)}")
    print(f"\n{'trained artifact':34} {'CPU s':>8} {'made by':>26}  needs")
    for name, info in artifacts:
        print(f"{name:34} {info['cpu']:8.1f} {info.get('made_by', ''):>26}  {', '.join(info.get('needs', []))}")
    print(f"\n{'figure script (own work)':34} {'CPU s':>8} {'waited s':>9}  artifacts")
    for name, info in scripts[:top]:
        print(f"{name:34} {info['own_cpu']:8.1f} {info['wait']:9.1f}  {', '.join(info['artifacts'])}")
    rest = scripts[top:]
    if rest:
        print(f"... {len(rest)} more scripts, {sum(v['own_cpu'] for _, v in rest):.0f} CPU s together")


if __name__ == "__main__":
    main()
