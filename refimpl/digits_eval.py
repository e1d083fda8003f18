"""A small digits classifier used as a sample-quality probe for the 8x8 digits models.

FID and Inception Score need an ImageNet network; for 8x8 digits we train our own
classifier on the real training split (seconds on a CPU) and report, for a set of
images, the analogues of the two paper metrics:

- classifier score ``exp(E_x KL(p(y|x) || p(y)))`` (the Inception Score formula with our
  classifier; 10 is the maximum for 10 balanced, confidently classified classes);
- Frechet distance between Gaussian fits of the classifier's hidden features of the
  images and of held-out real digits (the FID formula with our features).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from refimpl.data import HOLDOUT, digits  # HOLDOUT: the last 297 of the 1797 digits are never seen by the classifier

#: the figure builder's worker trains the probe once, before it forks the scripts that import this module
#: (figures.builder.PRELOAD): ~2 CPU-s that each of some 20 scripts of a cold build would otherwise spend again
WORKER_WARM_UP = "classifier"


class DigitsClassifier(nn.Module):
    """An MLP on the 64 pixels: 64 -> 128 -> 32 (features) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 32), nn.SiLU())
        self.head = nn.Linear(32, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@lru_cache(maxsize=1)
@torch.enable_grad()
def classifier(seed: int = 0) -> DigitsClassifier:
    """Train (deterministically, full batch, about two CPU seconds) on all but the held-out digits. A pure function
    of ``seed``: the global RNG is left as it was (the figure builder trains it once per worker process, before it
    forks the scripts that use it, so a script must see the same RNG state whether it trained the probe or not)."""
    images, labels = digits()
    x, y = images[:-HOLDOUT], labels[:-HOLDOUT]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(400):
        # light Gaussian pixel noise so the probe is not brittle on slightly-off samples
        noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
        loss = nn.functional.cross_entropy(model(noisy), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@dataclass
class DigitsReport:
    accuracy_holdout: float  # classifier accuracy on held-out real digits (is the probe good?)
    classifier_score: float  # Inception-Score formula with our classifier
    frechet_distance: float  # FID formula with our classifier's features, against held-out digits


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) for Gaussian fits of two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^{1/2}) = sum of sqrt of eigenvalues of S_a^{1/2} S_b S_a^{1/2} (symmetric PSD)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


@torch.no_grad()
def evaluate(images: torch.Tensor) -> DigitsReport:
    """Score a batch of (N, 1, 8, 8) images in [-1, 1] (values outside are clamped)."""
    model = classifier()
    all_images, labels = digits()
    held_x, held_y = all_images[-HOLDOUT:], labels[-HOLDOUT:]
    accuracy = float((model(held_x).argmax(1) == held_y).float().mean())
    images = images.detach().float().cpu().clamp(-1, 1)
    probs = model(images).softmax(1)
    marginal = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
    score = float(kl.mean().exp())
    distance = _frechet(model.features(images).double().numpy(), model.features(held_x).double().numpy())
    return DigitsReport(accuracy, score, distance)


def read_as(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` (clamped to [-1, 1]) that :func:`classifier` reads as ``labels``."""
    with torch.no_grad():
        return (classifier()(images.clamp(-1, 1)).argmax(1) == labels).float().mean().item()
