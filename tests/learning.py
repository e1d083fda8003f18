"""The learning check shared by every 2-D toy model (verification ladder, rung 3)."""

import torch

from refimpl.data import toy_2d
from refimpl.metrics import sliced_wasserstein


def distances(samples: torch.Tensor, name: str = "swissroll") -> tuple[float, float, float]:
    """Sliced Wasserstein from ``samples`` to fresh data of the toy ``name``, and two baselines measured here:
    (model, floor, gaussian), the floor being two independent data draws of the same size and the other baseline
    a moment-matched Gaussian."""
    n = samples.shape[0]
    generator = torch.Generator().manual_seed(11)
    data, data_again = toy_2d(name, n, generator), toy_2d(name, n, generator)
    gaussian = data.mean(0) + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(data.T.cov()).T
    distance = lambda a: sliced_wasserstein(a, data, generator=torch.Generator().manual_seed(0))  # noqa: E731
    return distance(samples), distance(data_again), distance(gaussian)


def assert_near_the_data(samples: torch.Tensor, name: str = "swissroll") -> None:
    """The samples must be nearer the noise floor than the moment-matched Gaussian (:func:`distances`): below the
    midpoint of the two."""
    model_distance, floor, gaussian_distance = distances(samples, name)
    assert floor < gaussian_distance / 2  # the metric separates the baselines at this n
    assert model_distance < (floor + gaussian_distance) / 2, (model_distance, floor, gaussian_distance)
