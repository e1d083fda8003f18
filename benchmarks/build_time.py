"""Site build times: cold (empty figure cache), warm (nothing changed), and after one edit.

Printed, never asserted. Usage: python benchmarks/build_time.py [--preset quick|full]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(cache: Path, site: Path, preset: str) -> float:
    env = dict(os.environ, LINEAGE_CACHE=str(cache), LINEAGE_PRESET=preset, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                   cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick", choices=("quick", "full"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, site = Path(tmp) / "cache", Path(tmp) / "site"
        cold = build(cache, site, args.preset)
        warm = build(cache, site, args.preset)
        # figures cached but not the trained models: what a figure-script edit costs at most
        for entry in (cache / "figures").iterdir():
            subprocess.run(["rm", "-rf", str(entry)], check=True)
        figures_only = build(cache, site, args.preset)
    print(f"machine: {os.cpu_count()} cores; preset {args.preset}")
    print(f"cold build (empty cache, trains models):        {cold:8.1f} s")
    print(f"figures rebuilt, models and samples cached:      {figures_only:8.1f} s")
    print(f"warm build (nothing changed, all cached):        {warm:8.1f} s")
    print(f"cold / warm: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
