"""The learning check shared by every 2-D toy model (verification ladder, rung 3)."""

import torch

from refimpl.data import toy_2d
from refimpl.metrics import sliced_wasserstein


def assert_near_the_data(samples: torch.Tensor, name: str = "swissroll") -> None:
    """Sliced Wasserstein from ``samples`` to fresh data of the toy ``name``, against two baselines measured here:
    two independent data draws of the same size (the noise floor) and a moment-matched Gaussian. The samples
    must be nearer the floor than the Gaussian: below the midpoint of the two."""
    n = samples.shape[0]
    generator = torch.Generator().manual_seed(11)
    data, data_again = toy_2d(name, n, generator), toy_2d(name, n, generator)
    gaussian = data.mean(0) + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(data.T.cov()).T
    distance = lambda a: sliced_wasserstein(a, data, generator=torch.Generator().manual_seed(0))  # noqa: E731
    floor, gaussian_distance, model_distance = distance(data_again), distance(gaussian), distance(samples)
    assert floor < gaussian_distance / 2  # the metric separates the baselines at this n
    assert model_distance < (floor + gaussian_distance) / 2, (model_distance, floor, gaussian_distance)
