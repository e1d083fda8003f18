"""Our sampler loops against diffusers' loops on the same model: DDPM, DDIM, DPM-Solver++(2M), EDM Heun.

Same model (a fixed random MLP or the small U-Net), same schedule, same batch, same timesteps: time per
model evaluation of each loop and their ratio (the model's own cost is in both, so the ratio shows the
loop's overhead). Printed, never asserted. Usage: python benchmarks/sampler_overhead.py
"""

import os
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler

from refimpl.core import pick_device
from refimpl.ddim import ddim_sample
from refimpl.ddpm import ddpm_sample
from refimpl.nets import MLPDenoiser, UNet
from refimpl.schedules import make_schedule
from refimpl.solvers import dpmpp_2m_sample, heun_sample, karras_timesteps

LINEAR = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def schedulers(schedule) -> dict:
    """diffusers' scheduler configured as our sampler of the same name (see tests/test_*parity*, test_solvers),
    with the arguments of its set_timesteps (called at the start of every run, as a pipeline does: the
    multistep and Heun schedulers keep state between steps)."""
    return {
        "DDPM-1000": (DDPMScheduler(**LINEAR, clip_sample=False, variance_type="fixed_small"),
                      {"num_inference_steps": 1000}),
        "DDIM-50": (DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                  timestep_spacing="leading"), {"num_inference_steps": 50}),
        "DPM++2M-20": (DPMSolverMultistepScheduler(**LINEAR, algorithm_type="dpmsolver++", solver_order=2,
                                                   final_sigmas_type="zero"),
                       {"timesteps": karras_timesteps(schedule, 20)[::-1]}),
        "Heun-10": (HeunDiscreteScheduler(**LINEAR, prediction_type="epsilon", timestep_spacing="leading"),
                    {"timesteps": karras_timesteps(schedule, 10)[::-1]}),
    }


def ours(name: str, model, x_T, schedule):
    generator = torch.Generator(x_T.device).manual_seed(0)
    if name == "DDPM-1000":
        return ddpm_sample(model, x_T, schedule, generator=generator, disable=True)
    if name == "DDIM-50":
        return ddim_sample(model, x_T, schedule, steps=50, eta=0.0, disable=True)
    if name == "DPM++2M-20":
        return dpmpp_2m_sample(model, x_T, schedule, steps=20, spacing="karras", disable=True)
    return heun_sample(model, x_T, schedule, steps=10, spacing="karras", disable=True)


@torch.no_grad()
def theirs(model, x_T, scheduler, timesteps: dict):
    """The pipeline loop: set_timesteps, scale the start, then scale_model_input, model, step."""
    generator = torch.Generator(x_T.device).manual_seed(0)
    scheduler.set_timesteps(**timesteps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), torch.full((x.shape[0],), int(t), device=x.device))
        x = scheduler.step(eps, t, x, **({"generator": generator} if isinstance(scheduler, DDPMScheduler) else {})
                           ).prev_sample
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
    cases = [("MLP, 2-D, batch 2000", MLPDenoiser().to(device).eval(), (2000, 2)),
             ("U-Net, 8x8, batch 64", UNet().to(device).eval(), (64, 1, 8, 8))]
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                                 f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"))
    print(f"{'sampler':11s} {'model':24s} {'NFE':>5s} {'ours ms/NFE':>12s} {'diffusers ms/NFE':>17s} {'ratio':>7s}")
    for case, model, shape in cases:
        x_T = torch.randn(shape, device=device)
        for name, (scheduler, timesteps) in schedulers(schedule).items():
            scheduler.set_timesteps(**timesteps)
            n = len(scheduler.timesteps)  # model evaluations, the same in both loops
            t_ours = timed(lambda: ours(name, model, x_T, schedule)) / n
            t_theirs = timed(lambda: theirs(model, x_T, scheduler, timesteps)) / n
            print(f"{name:11s} {case:24s} {n:5d} {1e3 * t_ours:12.3f} {1e3 * t_theirs:17.3f} {t_ours / t_theirs:7.2f}")


if __name__ == "__main__":
    main()
