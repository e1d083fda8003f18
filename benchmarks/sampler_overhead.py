"""Our sampler loops (refimpl.ddpm.ddpm_sample, refimpl.ddim.ddim_sample) against diffusers' loops.

Same model (a fixed random MLP or the small U-Net), same schedule, same batch: time per step of
each loop and their ratio. Printed, never asserted. Usage: python benchmarks/sampler_overhead.py
"""

import os
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from refimpl.core import pick_device
from refimpl.ddim import ddim_sample
from refimpl.ddpm import ddpm_sample
from refimpl.nets import MLPDenoiser, UNet
from refimpl.schedules import make_schedule


def ours(model, x_T, schedule, steps=None):
    generator = torch.Generator(x_T.device).manual_seed(0)
    if steps is None:
        return ddpm_sample(model, x_T, schedule, generator=generator, disable=True)
    return ddim_sample(model, x_T, schedule, steps=steps, eta=0.0, disable=True)


@torch.no_grad()
def theirs(model, x_T, scheduler):
    generator = torch.Generator(x_T.device).manual_seed(0)
    x = x_T
    for t in scheduler.timesteps:
        eps = model(x, torch.full((x.shape[0],), int(t), device=x.device))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    device = pick_device()
    torch.manual_seed(0)
    schedule = make_schedule("linear", 1000).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              variance_type="fixed_small")
    scheduler.set_timesteps(1000)
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                         steps_offset=0, timestep_spacing="leading")
    ddim.set_timesteps(50)
    cases = [("MLP, 2-D, batch 2000", MLPDenoiser().to(device).eval(), (2000, 2)),
             ("U-Net, 8x8, batch 64", UNet().to(device).eval(), (64, 1, 8, 8))]
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                                 f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"))
    print(f"{'sampler':8s} {'model':24s} {'ours ms/step':>13s} {'diffusers ms/step':>18s} {'ratio':>7s}")
    for name, model, shape in cases:
        x_T = torch.randn(shape, device=device)
        for sampler, steps, their_scheduler in (("DDPM", None, scheduler), ("DDIM-50", 50, ddim)):
            n = steps or 1000
            t_ours = timed(lambda: ours(model, x_T, schedule, steps)) / n
            t_theirs = timed(lambda: theirs(model, x_T, their_scheduler)) / n
            print(f"{sampler:8s} {name:24s} {1e3 * t_ours:13.3f} {1e3 * t_theirs:18.3f} {t_ours / t_theirs:7.2f}")


if __name__ == "__main__":
    main()
