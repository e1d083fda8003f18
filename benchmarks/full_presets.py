"""Cost of every trainer's ``full`` preset on this machine: seconds per training step, measured, and the full
run's projected time (steps x seconds per step). Printed, never asserted.

Each trainer runs through its own command line (``python -m refimpl PAPER train --preset full``), three times in
one process, each into a fresh directory: WARM steps untimed (CUDA context, cuDNN autotuning, caches), WARM steps
timed, WARM + MEASURE steps timed; the difference of the last two, over MEASURE, is the time per step without
start-up (model building, data loading, checkpoint writing cancel). Two-stage trainers (LDM) are measured per
stage, the other stage held at one step.

Usage: python benchmarks/full_presets.py [--only NAME ...] [--measure N] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LINEAGE_NO_PROGRESS", "1")

import torch  # noqa: E402

from refimpl import (adm, bert, clip, ddpm, gpt, glide, iddpm, ldm, llama, ncsn, nonequilibrium,  # noqa: E402
                     sde, t5)
from refimpl.__main__ import PAPERS  # noqa: E402
from refimpl.cli import main as cli  # noqa: E402

#: name -> (command line without --preset/--steps/--out, steps of the full preset, steps flag)
TRAINERS = {
    "nonequilibrium": (["nonequilibrium", "train", "--data", "swissroll"], nonequilibrium.PRESETS["full"]["steps"], "--steps"),
    "ncsn": (["ncsn", "train", "--data", "swissroll"], ncsn.PRESETS["full"]["steps"], "--steps"),
    "ddpm-toy": (["ddpm", "train", "--data", "swissroll"], ddpm.PRESETS["full"]["toy"]["steps"], "--steps"),
    "ddpm-digits": (["ddpm", "train", "--data", "digits"], ddpm.PRESETS["full"]["digits"]["steps"], "--steps"),
    "sde-vp": (["sde", "train", "--data", "swissroll"], sde.PRESETS["full"]["steps"], "--steps"),
    "iddpm-digits": (["iddpm", "train", "--data", "digits"], iddpm.PRESETS["full"]["digits"]["steps"], "--steps"),
    "adm-classifier": (["adm", "train", "--data", "digits"], adm.PRESETS["full"]["steps"], "--steps"),
    "cfg": (["cfg", "train"], ddpm.PRESETS["full"]["digits"]["steps"], "--steps"),
    "glide": (["glide", "train"], glide.PRESETS["full"]["steps"], "--steps"),
    "glide-clip": (["glide", "train-clip"], glide.PRESETS["full"]["clip_steps"], "--steps"),
    "clip": (["clip", "train"], clip.PRESETS["full"]["steps"], "--steps"),
    "ldm-autoencoder": (["ldm", "train", "--steps", "1"], ldm.PRESETS["full"]["ae_steps"], "--ae-steps"),
    "ldm-diffusion": (["ldm", "train", "--ae-steps", "1"], ldm.PRESETS["full"]["steps"], "--steps"),
    "gpt": (["gpt", "train"], gpt.PRESETS["full"]["steps"], "--steps"),
    "bert": (["bert", "train"], bert.PRESETS["full"]["steps"], "--steps"),
    "t5": (["t5", "train"], t5.PRESETS["full"]["steps"], "--steps"),
    "llama": (["llama", "train"], llama.PRESETS["full"]["steps"], "--steps"),
}


def run(argv: list[str]) -> float:
    """Seconds one command takes (its output swallowed); raises if it fails."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli(PAPERS, argv)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {err.getvalue().strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(TRAINERS), help="trainers to measure (default: all)")
    parser.add_argument("--warm", type=int, default=20, help="steps before timing (default 20)")
    parser.add_argument("--measure", type=int, default=100, help="timed steps (default 100)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = "cpu" if args.device == "cpu" or not torch.cuda.is_available() and args.device == "auto" else args.device
    card = torch.cuda.get_device_name() if device != "cpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {card}; torch {torch.__version__}; {args.warm} warm-up steps, {args.measure} timed steps")
    print("| trainer | s/step | full-preset steps | projected full run |\n| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or TRAINERS:
            command, full_steps, flag = TRAINERS[name]
            base = [*command, "--preset", "full", "--device", device, "--quiet", "--out"]
            try:
                times = [run([*base, str(Path(tmp) / f"{name}-{i}"), flag, str(steps)])
                         for i, steps in enumerate((args.warm, args.warm, args.warm + args.measure))]
                per_step = (times[2] - times[1]) / args.measure
            except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"| {name} | failed: {err} | {full_steps} | |")
                continue
            print(f"| {name} | {per_step:.4f} | {full_steps} | {per_step * full_steps / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
