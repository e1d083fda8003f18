"""Classifier guidance: Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (NeurIPS 2021),
arXiv 2105.05233 (ADM).

A classifier p_phi(y | x_t, t) trained on noised images x_t = q_sample(x_0, t, eps) steers a diffusion model (here
an unconditional one; ADM also guides class-conditional models) towards a class y through its gradient
g = grad_x log p_phi(y | x_t, t), scaled by the gradient scale s:

- Algorithm 1 (ancestral sampling): x_{t-1} ~ N(mu + s Sigma g, Sigma), with mu, Sigma the model's reverse step;
- Algorithm 2 (DDIM): eps_hat = eps_theta(x_t) - sqrt(1 - alpha_bar_t) s g, then the DDIM update.

With s = 1 and exact pieces the guided score is that of p_t(x | y) ∝ p_t(x) p_t(y | x), so both algorithms sample
p(x | y); s > 1 uses the score of p_t(x) p_t(y | x)^s at every noise level, which favours points the classifier
finds unambiguous (fidelity up, diversity down); those tilted noisy densities are not the noised laws of one
distribution, so it does not sample p(x) p(y | x)^s exactly. The guidance arithmetic lives in refimpl.guidance
(classifier_guided_mean / classifier_guided_eps, checked there against a labelled Gaussian mixture); this module adds
the noisy classifier, its gradient and the two sampling loops for trained networks.

What we changed, at 8x8 digits scale: ADM's classifier is the downsampling trunk of its U-Net with attention pooling
(``--classifier_pool attention``), trained on noised ImageNet with the diffusion schedule of the model it guides
(openai/guided-diffusion, scripts/classifier_train.py: t from the uniform schedule sampler, ``diffusion.q_sample``,
cross-entropy). Ours is
refimpl.nets.EncoderNet (the same trunk idea, mean pooling instead of attention pooling), trained the same way on the
scikit-learn digits minus refimpl.digits_eval.HOLDOUT, with the linear T = 1000 schedule of the DDPM digits model.
Sigma in Algorithm 1 is DDPM's fixed variance (refimpl.ddpm.reverse_variance) instead of ADM's learned one.

Code timesteps are 0-indexed (refimpl.ddpm): code ``t`` is the paper's t + 1.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from refimpl.core import LineageError
from refimpl.ddpm import Model, ddpm_sample
from refimpl.schedules import q_sample
from refimpl.guidance import classifier_guided_eps, classifier_guided_mean
from refimpl.schedules import Schedule, gather, make_schedule

#: grad_log_py(x_t, t) -> grad_x log p(y | x_t, t) for a fixed class y, t int64 (B,): a trained classifier through
#: :func:`classifier_grad`, or an exact one (refimpl.guidance.LabelledMixture.grad_log_class_prob)
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLERS = ("ddim", "ddpm")
CLASSES = 10

#: sizes per preset; a preset changes sizes, never the algorithm (linear betas, T = 1000: the DDPM digits schedule)
PRESETS = {
    "quick": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "model": {"kind": "encoder", "base": 32}},
    "full": {"steps": 30000, "batch_size": 256, "lr": 3e-4, "model": {"kind": "encoder", "base": 64}},
}


def training_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits the noisy classifier is trained on: all but the last refimpl.digits_eval.HOLDOUT, which the
    evaluation classifier never sees either, so accuracies measured on them are on unseen digits."""
    from refimpl.data import digits
    from refimpl.digits_eval import HOLDOUT

    images, labels = digits()
    return images[:-HOLDOUT], labels[:-HOLDOUT]


# --8<-- [start:classifier_loss]
def classifier_loss(classifier: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor, schedule: Schedule,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """ADM Sec. 4 (guided-diffusion's classifier_train.py): cross-entropy of p_phi(y | x_t, t) on x_t drawn from
    q(x_t | x_0) (DDPM Eq. 4) with t uniform over the T steps and eps ~ N(0, I), so the classifier sees every noise
    level the sampler will ask it about. ``generator`` draws t and eps (on its device, then moved to x0's)."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    return F.cross_entropy(classifier(q_sample(x0, t, eps, schedule), t), y)
# --8<-- [end:classifier_loss]


# --8<-- [start:classifier_grad]
def classifier_grad(classifier: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
    """ADM Sec. 4.1: g = grad_{x_t} log p_phi(y | x_t, t), by autograd through log_softmax of the logits.

    ``y`` is an int or an int64 tensor of shape (B,); the gradient is taken even under torch.no_grad (the samplers
    run without grad). Rows are independent (the classifier has no batch statistics), so the gradient of the sum
    over rows is each row's own gradient."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x, t), dim=-1)
        labels = torch.as_tensor(y, device=x.device).expand(x.shape[0])
        (grad,) = torch.autograd.grad(log_probs[torch.arange(x.shape[0]), labels].sum(), x)
    return grad
# --8<-- [end:classifier_grad]


def classifier_grad_fn(classifier: torch.nn.Module, y) -> GradFn:
    """The :data:`GradFn` of a trained noisy classifier for class ``y``."""
    return lambda x_t, t: classifier_grad(classifier, x_t, t, y)


# --8<-- [start:algorithm_1]
def guided_ddpm_sample(model: Model, grad_log_py: GradFn, x_T: torch.Tensor, schedule: Schedule, *,
                       scale: float = 1.0, variance: str = "fixed_small", generator: torch.Generator | None = None,
                       callback=None, disable: bool = False) -> torch.Tensor:
    """ADM Algorithm 1: DDPM ancestral sampling (DDPM Algorithm 2) with every reverse step's mean shifted,
    x_{t-1} ~ N(mu + s Sigma g, Sigma), g = grad_log_py(x_t, t), Sigma = sigma_t^2 I of ``variance``.

    This is refimpl.ddpm.ddpm_sample with a ``mean_shift`` (same noise draws from ``generator``, so scale 0
    reproduces it bit for bit). At the last step (code t = 0, no noise) the shift is s beta_tilde_1 g = 0 for
    "fixed_small". ``callback(t, x, x0_pred)`` gets the unguided x_0 prediction (DDPM Eq. 15)."""
    def shift(x_t: torch.Tensor, t: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
        return classifier_guided_mean(torch.zeros_like(x_t), sigma2, grad_log_py(x_t, t), scale)

    return ddpm_sample(model, x_T, schedule, variance=variance, generator=generator, callback=callback,
                       disable=disable, mean_shift=shift if scale != 0 else None)
# --8<-- [end:algorithm_1]


# --8<-- [start:algorithm_2]
def classifier_guided_model(model: Model, grad_log_py: GradFn, schedule: Schedule, scale: float = 1.0) -> Model:
    """ADM Algorithm 2's eps_hat(x_t) = eps_theta(x_t) - sqrt(1 - alpha_bar_t) s g as a model ``(x_t, t) -> eps``,
    for refimpl.ddim.ddim_sample (Algorithm 2) or any other eps-sampler of the project."""

    def eps_hat(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(x_t, t)
        if scale == 0:
            return eps
        alpha_bar_t = gather(schedule.alpha_bar.to(x_t.device), t, x_t)
        return classifier_guided_eps(eps, grad_log_py(x_t, t), alpha_bar_t, scale)

    return eps_hat
# --8<-- [end:algorithm_2]


def guided_sample(model: Model, grad_log_py: GradFn, x_T: torch.Tensor, schedule: Schedule, *, scale: float = 1.0,
                  sampler: str = "ddim", steps: int = 50, generator: torch.Generator | None = None, callback=None,
                  disable: bool = False) -> torch.Tensor:
    """Classifier-guided sampling with ``sampler`` "ddim" (Algorithm 2, ``steps`` DDIM steps, eta = 0) or "ddpm"
    (Algorithm 1, all T steps, Sigma = beta_tilde_t; ``steps`` unused)."""
    from refimpl.ddim import ddim_sample

    if not scale >= 0:
        raise LineageError(f"guidance scale must be >= 0, got {scale}")
    if sampler == "ddim":
        return ddim_sample(classifier_guided_model(model, grad_log_py, schedule, scale), x_T, schedule, steps=steps,
                           generator=generator, callback=callback, disable=disable)
    if sampler == "ddpm":
        return guided_ddpm_sample(model, grad_log_py, x_T, schedule, scale=scale, generator=generator,
                                  callback=callback, disable=disable)
    raise LineageError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")


@torch.no_grad()
def noisy_accuracy(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                   timesteps, generator: torch.Generator | None = None) -> torch.Tensor:
    """Accuracy of ``classifier`` on q_sample(images, t, eps) for each code timestep in ``timesteps`` (fresh eps
    per t from ``generator``); returns a float tensor of the same length."""
    out = []
    for t in timesteps:
        t_batch = torch.full((images.shape[0],), int(t), dtype=torch.long)
        x_t = q_sample(images, t_batch, torch.randn(images.shape, generator=generator), schedule)
        out.append((classifier(x_t, t_batch).argmax(-1) == labels).float().mean())
    return torch.stack(out)


# --- training ----------------------------------------------------------------------

def train_config(preset: str = "quick", *, steps: int | None = None, seed: int = 0) -> dict:
    """The JSON config of a noisy-classifier run: the schedule of the DDPM digits model it guides (linear, T = 1000)
    and the model and optimisation sizes of ``preset``."""
    from refimpl.digits_eval import HOLDOUT
    from refimpl.nets import build_model, model_config

    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    sizes = PRESETS[preset]
    model = model_config(build_model(**sizes["model"], in_channels=1, out_dim=CLASSES))
    return {"data": "digits", "holdout": HOLDOUT, "schedule": "linear", "T": 1000, "model": model, "seed": seed,
            "steps": steps or sizes["steps"], "batch_size": sizes["batch_size"], "lr": sizes["lr"]}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """Train the noisy classifier: repeat { (x_0, y) ~ training digits, t ~ U{1..T}, step on classifier_loss }.
    ``out`` is the checkpoint directory (resumed if it holds a run with the same config). Returns (model, history)."""
    from refimpl.nets import model_from_config
    from refimpl.training import fit

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    classifier = model_from_config(config["model"], seed=config["seed"])
    images, labels = training_digits()

    def loss_fn(classifier, generator):
        index = torch.randint(0, images.shape[0], (config["batch_size"],), generator=generator)
        x0, y = images[index].to(schedule.device), labels[index].to(schedule.device)
        return classifier_loss(classifier, x0, y, schedule, generator)

    history = fit(classifier, loss_fn, steps=config["steps"], lr=config["lr"], out=out, model_name="adm-classifier",
                  config=config, device=device, seed=config["seed"], batch_size=config["batch_size"],
                  resume=resume, progress=progress)
    return classifier, history
# --8<-- [end:train]


def load_classifier(ckpt, schedule: Schedule | None = None, device=None) -> torch.nn.Module:
    """Load a noisy-classifier checkpoint (eval mode, on ``device``); with ``schedule``, refuse a classifier trained
    on another schedule than the diffusion model's (its gradients would be for other noise levels)."""
    from refimpl.training import load_model

    classifier, checkpoint = load_model(ckpt, "adm-classifier")
    if schedule is not None:
        ours = make_schedule(checkpoint.config["schedule"], checkpoint.config["T"])
        if ours.T != schedule.T or not torch.allclose(ours.alpha_bar, schedule.alpha_bar.cpu().to(ours.alpha_bar)):
            raise LineageError(f"the classifier in {ckpt} was trained on a {checkpoint.config['schedule']} schedule "
                               f"with T={checkpoint.config['T']}, not the diffusion model's")
    return classifier.to(device or "cpu")
