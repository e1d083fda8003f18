"""The closed-form sampler benchmark that the DDIM, improved-DDPM and solvers pages share.

The data is :func:`refimpl.mixture.mixture_2d`, a 2-D Gaussian mixture whose noised densities are
exact, so the "network" is the exact noise prediction eps* and the only error left is the sampler's.
Quality is the cross-entropy gap |mean log p_data(samples) - mean log p_data(data)| in nats: zero for a
perfect sampler up to Monte Carlo error, whose standard error (std of log p over sqrt(N)) is the floor.
(Sliced Wasserstein was too noisy at affordable N to order the samplers.) One x_T for every sampler.
"""

from __future__ import annotations

from functools import cached_property

import torch

from refimpl.ddpm import ddpm_sample
from refimpl.mixture import eps_model, mixture_2d
from refimpl.schedules import make_schedule

N = 10_000


class Benchmark:
    """The mixture, its exact eps model under ``schedule_name`` (T = 1000), N starting points x_T."""

    def __init__(self, schedule_name: str = "linear", n: int = N):
        self.mixture = mixture_2d()
        self.schedule = make_schedule(schedule_name, 1000)
        self.model = eps_model(self.mixture, self.schedule)
        data_log_p = self.mixture.log_prob(self.mixture.sample(200_000, torch.Generator().manual_seed(1))[0])
        self.target = float(data_log_p.mean())
        self.floor = float(data_log_p.std()) / n ** 0.5  # Monte Carlo standard error of a perfect sampler
        self.x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def gap(self, x0: torch.Tensor) -> float:
        """|mean log p_data(x0) - mean log p_data(data)| (nats)."""
        return abs(float(self.mixture.log_prob(x0).mean()) - self.target)

    def run(self, sampler, **kwargs) -> float:
        """The gap of ``sampler(model, x_T, schedule, **kwargs)``; noise (if any) from seed 4."""
        return self.gap(sampler(self.model, self.x_T, self.schedule, generator=torch.Generator().manual_seed(4),
                                disable=True, **kwargs))

    @cached_property
    def ddpm_1000(self) -> float:
        """The gap of DDPM's ancestral sampler with all 1000 steps: the quality to reach."""
        return self.run(ddpm_sample)

    @property
    def reach(self) -> float:
        """A sampler "reaches 1000-step DDPM" when its gap is at most ddpm_1000 + 2 floor."""
        return self.ddpm_1000 + 2 * self.floor


def fewest(values: dict[int, float], target: float) -> int | None:
    """The smallest key whose value is <= target (None if none is)."""
    reached = [key for key, value in values.items() if value <= target]
    return min(reached) if reached else None
