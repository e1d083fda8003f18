"""Learning: the quick VP-SDE score model the site shows really learns swissroll (verification ladder, rung 3).

The model comes from figures.models.sde_checkpoint, the same cached artifact the site build uses.
"""

import pytest
import torch

from figures.models import sde_checkpoint
from refimpl.data import toy_2d
from refimpl.metrics import sliced_wasserstein
from refimpl.sde import sample_from_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sampler,steps", [("em", 1000), ("pc", 1000)])
def test_vp_samples_are_close_to_swissroll(sampler, steps):
    """Sliced Wasserstein to fresh data, against the two baselines of tests/test_ddpm_learning.py measured here:
    two independent data draws (the floor) and a moment-matched Gaussian. Samples must lie below their midpoint."""
    n = 2000
    samples = sample_from_checkpoint(sde_checkpoint("vp", "swissroll", "quick"), n, sampler=sampler, steps=steps,
                                     disable=True)
    generator = torch.Generator().manual_seed(11)
    data, data_again = toy_2d("swissroll", n, generator), toy_2d("swissroll", n, generator)
    gaussian = data.mean(0) + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(data.T.cov()).T
    distance = lambda a: sliced_wasserstein(a, data, generator=torch.Generator().manual_seed(0))  # noqa: E731
    floor, gaussian_distance, model_distance = distance(data_again), distance(gaussian), distance(samples)
    assert floor < gaussian_distance / 2  # the metric separates the baselines at this n
    assert model_distance < (floor + gaussian_distance) / 2, (model_distance, floor, gaussian_distance)
