"""Guidance: classifier guidance and classifier-free guidance, with exact pieces on a labelled Gaussian mixture.

- Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (NeurIPS 2021), arXiv 2105.05233 (ADM):
  classifier guidance steers a diffusion model with the gradient of a classifier p_phi(y | x_t) trained on noisy
  inputs, scaled by s. Algorithm 1 (ancestral sampling) shifts the reverse-step mean to mu + s Sigma grad log
  p_phi(y | x_t); Algorithm 2 (DDIM) replaces the noise prediction by
  eps_hat = eps_theta(x_t) - sqrt(1 - alpha_bar_t) grad log p_phi(y | x_t).
  The printed Algorithm 2 lists the gradient scale s as an input but leaves it out of the eps_hat line; the
  authors' code (openai/guided-diffusion: ``cond_fn`` returns the gradient times ``classifier_scale`` and
  ``condition_score`` subtracts sqrt(1 - alpha_bar) times it) applies s in both algorithms, and so do we.
- Ho & Salimans, "Classifier-Free Diffusion Guidance" (2021 workshop; arXiv 2207.12598): one network trained with
  and without the condition, combined as eps~ = (1 + w) eps(z, c) - w eps(z) (Eq. 6), which is classifier
  guidance with the implicit classifier p^i(c | z) ∝ p(z | c) / p(z) when the scores are exact.

With exact scores both guided noise predictions are the noise prediction of the tilted density
p_t(x | y)^(1 + w) p_t(x)^(-w) ∝ p_t(x) p_t(y | x)^(1 + w), so classifier guidance of an unconditional model with
scale s is CFG with w = s - 1 (the remark in Ho & Salimans Sec. 3.1). A labelled Gaussian mixture has every piece
in closed form: p(y | x_t) is the summed responsibility of y's components of the noised mixture and
grad_x log p(y | x_t) = grad log p_t(x | y) - grad log p_t(x). Noise predictions follow the DDPM convention
eps = -sqrt(1 - alpha_bar) * score (refimpl.mixture.eps_model); code timesteps are 0-indexed (refimpl.ddpm).
"""

from __future__ import annotations

import math

import torch

from refimpl.core import LineageError
from refimpl.ddpm import Model
from refimpl.mixture import GaussianMixture, by_level, eps_model
from refimpl.schedules import Schedule

_F64 = torch.float64


# --8<-- [start:classifier_guidance]
def classifier_guided_eps(eps: torch.Tensor, grad_log_py: torch.Tensor, alpha_bar_t, scale: float) -> torch.Tensor:
    """ADM Algorithm 2 (classifier-guided DDIM): eps_hat = eps - sqrt(1 - alpha_bar_t) * s * grad log p(y | x_t).

    ``eps`` is the model's noise prediction at x_t, ``grad_log_py`` the classifier gradient at x_t, ``alpha_bar_t``
    a float or a tensor that broadcasts against eps (the paper's alpha_bar_t, code ``schedule.alpha_bar[t]``).
    Since eps = -sqrt(1 - alpha_bar_t) * score, this adds s * grad log p(y | x_t) to the score."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=eps.dtype, device=eps.device)
    return eps - (1 - alpha_bar_t).sqrt() * scale * grad_log_py


def classifier_guided_mean(mean: torch.Tensor, variance, grad_log_py: torch.Tensor, scale: float) -> torch.Tensor:
    """ADM Algorithm 1 (classifier-guided ancestral sampling): the reverse step x_{t-1} ~ N(mu + s Sigma g, Sigma)
    with g = grad log p(y | x_t); returns the shifted mean mu + s Sigma g for a diagonal Sigma = ``variance``
    (a float or a tensor broadcasting against mean, e.g. DDPM's beta_t or beta_tilde_t)."""
    return mean + scale * variance * grad_log_py
# --8<-- [end:classifier_guidance]


# --8<-- [start:cfg_eps]
def cfg_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float | None = None,
            guidance_scale: float | None = None) -> torch.Tensor:
    """Classifier-free guidance, Ho & Salimans Eq. (6): eps~ = (1 + w) eps(z, c) - w eps(z).

    Give exactly one of the two conventions for the guidance strength:

    - ``w``, the paper's: w = 0 is the conditional model, w > 0 guides, w = -1 is the unconditional model;
    - ``guidance_scale``, that of Stable Diffusion and diffusers (``noise_pred_uncond + guidance_scale *
      (noise_pred_text - noise_pred_uncond)``, the weight of Imagen's Eq. 2): eps(z) + s (eps(z, c) - eps(z)),
      so s = 1 + w; s = 1 is the conditional model ("no guidance" in diffusers) and s = 7.5 is w = 6.5.
    """
    if (w is None) == (guidance_scale is None):
        raise LineageError("give exactly one of w (Ho & Salimans: (1 + w) eps_c - w eps_u) and guidance_scale "
                           "(diffusers: eps_u + s (eps_c - eps_u), s = 1 + w)")
    if guidance_scale is not None:
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    return (1 + w) * eps_cond - w * eps_uncond
# --8<-- [end:cfg_eps]


# --8<-- [start:cfg_model]
def cfg_model(model, condition: torch.Tensor, guidance_scale: float, *, null: torch.Tensor) -> Model:
    """Classifier-free guidance of a conditional network ``model(x_t, t, c)`` as a two-argument ``model(x_t, t)``
    for the project's samplers: eps(x_t | null) + s (eps(x_t | c) - eps(x_t | null)) (:func:`cfg_eps` with
    ``guidance_scale`` s; s = 1 is the conditional model), one batched forward pass of 2B rows: the conditions
    ``condition`` (B, ...), then the null condition ``null`` expanded to their shape. With text (GLIDE Sec. 2.3) c
    is a caption's tokens and the null condition the empty caption's (refimpl.captions.tokenize([""]))."""
    both = torch.cat([condition, null.to(condition.device).expand_as(condition)])

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        return cfg_eps(eps_c, eps_u, guidance_scale=guidance_scale)

    return guided
# --8<-- [end:cfg_model]


# --8<-- [start:labelled_mixture]
class LabelledMixture:
    """A Gaussian mixture whose components carry class labels: p(x, y) = sum_{k: label_k = y} pi_k N(x; mu_k, S_k).

    ``labels`` gives each of the K components a class in 0..C-1; every class needs at least one component. All
    quantities are exact and float64; ``alpha_bar`` is a VP noise level (alpha_bar = 1: the data, x_0).
    """

    def __init__(self, mixture: GaussianMixture, labels):
        self.mixture = mixture
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if self.labels.shape != (mixture.K,) or bool((self.labels < 0).any()):
            raise LineageError(f"labels must be {mixture.K} class indices >= 0, one per component")
        self.classes = int(self.labels.max()) + 1
        if bool((torch.bincount(self.labels, minlength=self.classes) == 0).any()):
            raise LineageError("every class 0..C-1 needs at least one mixture component")
        self.prior = torch.zeros(self.classes, dtype=_F64).index_add_(0, self.labels, mixture.weights)  # p(y)

    def _check(self, y: int) -> int:
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.classes:
            raise LineageError(f"class must be an integer in 0..{self.classes - 1}, got {y!r}")
        return y

    def conditional(self, y: int) -> GaussianMixture:
        """p(x | y): the components labelled y, their weights renormalised to sum to 1."""
        rows = self.labels == self._check(y)
        weights = self.mixture.weights[rows]
        return GaussianMixture(weights / weights.sum(), self.mixture.means[rows], self.mixture.covs[rows])

    def log_class_prob(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p(y | x_t) for every class, shape (N, C), by Bayes' rule in log space: log p_t(x | y) + log p(y)
        - log p_t(x), with p_t the laws of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps. (Equivalently the log
        of the summed responsibilities of y's components of mixture.vp(alpha_bar).)"""
        log_px = self.mixture.vp(alpha_bar).log_prob(x)
        return torch.stack([self.conditional(y).vp(alpha_bar).log_prob(x) for y in range(self.classes)], dim=-1) \
            + torch.log(self.prior) - log_px[:, None]

    def grad_log_class_prob(self, x: torch.Tensor, y: int, alpha_bar: float) -> torch.Tensor:
        """grad_x log p(y | x_t) = grad log p_t(x | y) - grad log p_t(x), shape (N, D): the exact gradient of the
        noisy classifier that ADM trains, and of Ho & Salimans' implicit classifier
        p^i(y | x_t) ∝ p_t(x | y) / p_t(x)."""
        return self.conditional(y).vp(alpha_bar).score(x) - self.mixture.vp(alpha_bar).score(x)

    def eps(self, x: torch.Tensor, alpha_bar: float, y: int | None = None) -> torch.Tensor:
        """The exact noise prediction -sqrt(1 - alpha_bar) grad log p_t(x), or of p_t(x | y) when ``y`` is given."""
        density = self.mixture if y is None else self.conditional(y)
        return -math.sqrt(1 - float(alpha_bar)) * density.vp(alpha_bar).score(x)
# --8<-- [end:labelled_mixture]


# --8<-- [start:guided_eps_model]
def guided_eps_model(data: LabelledMixture, schedule: Schedule, y: int, *, classifier_scale: float | None = None,
                     w: float | None = None, guidance_scale: float | None = None) -> Model:
    """A guided noise prediction ``model(x_t, t)`` built from exact pieces, for any sampler of the project
    (``refimpl.ddim.ddim_sample``, ``refimpl.ddpm.ddpm_sample``; t int64 of shape (B,), code timesteps).

    Give exactly one of: ``classifier_scale`` s, classifier guidance of the unconditional exact eps with the exact
    classifier (ADM Algorithm 2's eps_hat); or ``w`` / ``guidance_scale``, classifier-free guidance of the exact
    conditional and unconditional eps (Ho & Salimans Eq. 6; guidance_scale = 1 + w). classifier_scale = 1 and
    w = 0 both give the exact conditional model p(x | y); classifier_scale = 0 and w = -1 the unconditional one.
    The output has x_t's dtype and device; the computation is float64 on the CPU.
    """
    if sum(v is not None for v in (classifier_scale, w, guidance_scale)) != 1:
        raise LineageError("give exactly one of classifier_scale, w and guidance_scale")
    conditional = data.conditional(y)  # refuses a bad class before any model call
    if classifier_scale is None:
        cond, uncond = eps_model(conditional, schedule), eps_model(data.mixture, schedule)
        return lambda x_t, t: cfg_eps(cond(x_t, t), uncond(x_t, t), w=w, guidance_scale=guidance_scale)
    alpha_bar = schedule.alpha_bar.detach().to("cpu", _F64)

    def guided(x: torch.Tensor, step: int) -> torch.Tensor:
        a = alpha_bar[step].item()
        return classifier_guided_eps(data.eps(x, a), data.grad_log_class_prob(x, y, a), a, classifier_scale)

    return by_level(guided)
# --8<-- [end:guided_eps_model]


def labelled_mixture_2d() -> LabelledMixture:
    """The project's labelled 2-D test data: three classes of two components each, placed so that neighbouring
    classes overlap (an exact classifier on x_0 is right about 90% of the time), scale about +-2 like
    refimpl.mixture.mixture_2d, so the linear DDPM schedule ends close to N(0, I)."""
    weights = [0.20, 0.15, 0.20, 0.10, 0.20, 0.15]
    means = [[-1.4, -0.6], [-0.6, -1.4], [1.4, -0.6], [0.6, -1.4], [0.0, 1.3], [0.0, 0.3]]
    stds = [0.6, 0.5, 0.6, 0.5, 0.6, 0.5]
    covs = [[[s * s, 0.0], [0.0, s * s]] for s in stds]
    return LabelledMixture(GaussianMixture(weights, means, covs), [0, 0, 1, 1, 2, 2])
