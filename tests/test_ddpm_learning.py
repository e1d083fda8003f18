"""Learning: the quick DDPM runs the site shows really learn (verification ladder, rung 3).

The models and samples come from figures.zoo.ddpm, the same cached artifacts the site build
uses, so a test run trains each model once (the cache key covers refimpl's sources).
"""

import numpy as np
import pytest
import torch

from figures.zoo.ddpm import ddpm_checkpoint, ddpm_history, ddpm_samples
from learning import assert_near_the_data
from refimpl.data import digits, toy_2d
from refimpl.digits_eval import evaluate
from refimpl.schedules import make_schedule
from refimpl.training import load_model

pytestmark = pytest.mark.slow


def gaussian_loss(data: torch.Tensor) -> float:
    """L_simple of the best predictor that only knows the data's mean and covariance.

    For x_0 ~ N(mu, S), eps and x_t are jointly Gaussian and E[eps | x_t] is linear in x_t, with
    per-dimension error 1 - (1 - abar_t) tr((abar_t S + (1 - abar_t) I)^{-1}) / d. Averaged over
    the uniform t of Algorithm 1, this is what a network that learned nothing beyond second
    moments reaches; a model that learned the data's shape must go below it.
    """
    flat = data.flatten(1).double()
    eigenvalues = torch.linalg.eigvalsh(torch.cov(flat.T))
    alpha_bar = make_schedule("linear", 1000).alpha_bar.double()[:, None]
    per_t = 1 - (1 - alpha_bar) * (1 / (alpha_bar * eigenvalues + (1 - alpha_bar))).mean(1, keepdim=True)
    return float(per_t.mean())


def final_loss(history) -> float:
    return float(np.mean([loss for _, loss in history[-30:]]))  # last 300 steps: batch noise averaged out


def test_swissroll_loss_falls_below_the_gaussian_baseline():
    history = ddpm_history("swissroll", "quick")
    data = toy_2d("swissroll", 100_000, torch.Generator().manual_seed(5))
    assert final_loss(history) < history[0][1]
    assert final_loss(history) < gaussian_loss(data)


def test_swissroll_samples_are_close_to_the_data():
    """Sliced Wasserstein to fresh data, against two baselines measured here: the noise floor of two
    independent data draws of the same size, and a moment-matched Gaussian. The samples must be
    nearer the floor than the Gaussian: below the midpoint of the two."""
    n = 2000
    samples = ddpm_samples("swissroll", "quick", n=n)["x0"]
    assert_near_the_data(samples)


def test_digits_loss_falls_below_the_gaussian_baseline():
    history = ddpm_history("digits", "quick")
    images, _ = digits()
    assert final_loss(history) < history[0][1]
    assert final_loss(history) < gaussian_loss(images)


def test_generated_digits_are_recognisable():
    """Classifier score (the Inception-Score formula with our digits classifier): uniform noise and
    real digits are measured here; generated digits must score above their midpoint."""
    generated = ddpm_samples("digits", "quick", n=256)["x0"]
    images, _ = digits()
    noise = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    real_score, noise_score = evaluate(images[:256]).classifier_score, evaluate(noise).classifier_score
    score = evaluate(generated).classifier_score
    assert noise_score < real_score
    assert score > (noise_score + real_score) / 2, (score, noise_score, real_score)


def test_checkpoint_of_the_shared_model_loads():
    model, ckpt = load_model(ddpm_checkpoint("swissroll", "quick"), "ddpm")
    assert ckpt.step == ckpt.config["steps"]
    assert sum(p.numel() for p in model.parameters()) > 0


def test_ddim_samples_of_the_shared_model_are_recognised():
    """DDIM (eta = 0, 50 steps, no retraining: DDIM Sec. 4) on the same digits model: the share of samples that
    the separately trained digits classifier recognises with probability >= 0.9. Measured on the quick model:
    0.79 (also 0.75 and 0.77 with 10 and 20 steps), against 0.94 for the held-out real digits and 0.07 for
    uniform noise. Asserted: above the midpoint of noise and real digits, the same kind of bar as the
    classifier-score test above."""
    from refimpl.ddim import sample_from_checkpoint
    from refimpl.digits_eval import HOLDOUT, classifier

    model = classifier()

    @torch.no_grad()
    def recognised(images: torch.Tensor) -> float:
        return float((model(images.clamp(-1, 1)).softmax(1).max(1).values >= 0.9).float().mean())

    generated = sample_from_checkpoint(ddpm_checkpoint("digits", "quick"), 256, steps=50, eta=0.0, seed=0, disable=True)
    real = recognised(digits()[0][-HOLDOUT:])
    noise = recognised(torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    assert noise < real
    assert recognised(generated) > (noise + real) / 2, (recognised(generated), noise, real)
