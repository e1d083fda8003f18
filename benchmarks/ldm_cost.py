"""Training cost of the same text-conditional denoiser in latent space (LDM) and in pixel space.

The denoiser of refimpl.ldm is convolutional plus attention over the H*W positions, so the same network (same
width, same weights' shapes but the input/output channels) runs on 4x4x2 latents or on 8x8x1 pixels. Per training
step (batch of the quick preset) we time forward + backward + Adam, and count the forward FLOPs with
torch.utils.flop_counter; the latent step includes encoding the batch with the (frozen) autoencoder.
Printed, never asserted. Usage: python benchmarks/ldm_cost.py [--preset quick|full] [--steps 30]
"""

import argparse
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from refimpl import ldm
from refimpl.captions import random_captions
from refimpl.ddpm import loss_simple
from refimpl.schedules import make_schedule


def step_cost(model, data, tokens, schedule, steps: int, encode=None) -> tuple[float, float]:
    """(seconds per training step, forward GFLOPs per step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        x0 = data if encode is None else encode(data)
        loss = loss_simple(lambda x, t: model(x, t, tokens), x0, schedule)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        x0 = data if encode is None else encode(data)
        model(x0, torch.zeros(x0.shape[0], dtype=torch.long), tokens)
    return seconds, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick", choices=tuple(ldm.PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    config = ldm.train_config(args.preset)
    dm, ae = config["diffusion"], config["autoencoder"]
    torch.manual_seed(0)
    images, labels = ldm.training_digits()
    batch = dm["batch_size"]
    data, tokens = images[:batch], random_captions(labels[:batch])
    schedule = make_schedule("linear", 1000)
    autoencoder = ldm.Autoencoder(**ae["model"]).eval().requires_grad_(False)

    def encode(x):
        with torch.no_grad():
            return ldm.sample_latent(*autoencoder.encode(x))

    rows = []
    for space, channels, encoder in (("pixel 8x8x1", 1, None), ("latent 4x4x2", 2, encode)):
        model = ldm.LatentDenoiser(**{**dm["model"], "latent_channels": channels})
        params = sum(p.numel() for p in model.parameters())
        seconds, gflops = step_cost(model, data, tokens, schedule, args.steps, encoder)
        rows.append((space, params, gflops, seconds))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads; preset {args.preset}, batch {batch}, width {dm['model']['width']}")
    print(f"{'space':14s} {'parameters':>11s} {'fwd GFLOPs':>11s} {'s / step':>9s}")
    for space, params, gflops, seconds in rows:
        print(f"{space:14s} {params:11d} {gflops:11.3f} {seconds:9.4f}")
    print(f"latent / pixel: FLOPs x{rows[1][2] / rows[0][2]:.2f}, time x{rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()
