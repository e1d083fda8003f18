"""Learning: the quick VP-SDE score model the site shows really learns swissroll (verification ladder, rung 3).

The model comes from figures.zoo.sde.sde_checkpoint, the same cached artifact the site build uses.
"""

import pytest

from figures.zoo.sde import sde_checkpoint
from learning import assert_near_the_data
from refimpl.sde import sample_from_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sampler,steps", [("em", 1000), ("pc", 1000)])
def test_vp_samples_are_close_to_swissroll(sampler, steps):
    """Sliced Wasserstein to fresh data, against the two baselines of tests/test_ddpm_learning.py measured here:
    two independent data draws (the floor) and a moment-matched Gaussian. Samples must lie below their midpoint."""
    n = 2000
    samples = sample_from_checkpoint(sde_checkpoint("vp", "swissroll", "quick"), n, sampler=sampler, steps=steps,
                                     disable=True)
    assert_near_the_data(samples)
