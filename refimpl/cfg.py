"""CFG: Ho & Salimans, "Classifier-Free Diffusion Guidance" (NeurIPS 2021 workshop; arXiv 2207.12598).

One network eps_theta(z, c) is trained as a conditional and an unconditional model at once: each training
example's label c is replaced by the null label (refimpl.nets.null_label) with probability p_uncond, and the
loss is DDPM's L_simple (Algorithm 1). At sampling time the two predictions are combined (Eq. 6),

    eps~(z, c) = (1 + w) eps(z, c) - w eps(z),

which needs no classifier (Algorithm 2 is ancestral sampling with eps~). Here ``guided_model`` wraps a trained
network into an ordinary ``model(x_t, t) -> eps~``, so every sampler of the project runs guided. The mixing
itself is refimpl.guidance.cfg_eps, with the paper's w and diffusers' guidance_scale = 1 + w.

Code timesteps are 0-indexed like diffusers (refimpl.ddpm): code ``t`` is the paper's ``t + 1``.
"""

from __future__ import annotations

import math

import torch

from refimpl.core import LineageError
from refimpl.ddpm import Model, loss_simple
from refimpl.guidance import cfg_eps
from refimpl.nets import null_label
from refimpl.schedules import Schedule, make_schedule

CLASSES = 10  # digits 0..9; the null label is 10
P_UNCOND = 0.2  # the paper trains with p_uncond in {0.1, 0.2, 0.5} and finds 0.1 and 0.2 best (Sec. 4.2)
SAMPLERS = ("ddim", "ddpm")


# --8<-- [start:drop_labels]
def drop_labels(y: torch.Tensor, p_uncond: float, null: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """CFG Algorithm 1: c <- null (the null label) with probability p_uncond, independently for each example.
    The coin flips are drawn from ``generator`` on the CPU, then moved to y's device."""
    drop = torch.rand(y.shape, generator=generator) < p_uncond
    return torch.where(drop.to(y.device), torch.full_like(y, null), y)


def loss_cfg(net: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor, schedule: Schedule, p_uncond: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """CFG Algorithm 1: drop labels, then DDPM's L_simple (refimpl.ddpm.loss_simple) on eps_theta(z, c), with c
    the labels after dropout. ``net(x, t, y=labels)`` is a labelled refimpl.nets model."""
    c = drop_labels(y, p_uncond, null_label(net), generator)
    return loss_simple(lambda x_t, t: net(x_t, t, y=c), x0, schedule, generator)
# --8<-- [end:drop_labels]


# --8<-- [start:guided_model]
def guided_model(net: torch.nn.Module, y, *, w: float | None = None, guidance_scale: float | None = None) -> Model:
    """CFG Eq. (6) as a noise prediction ``model(x_t, t) -> eps~`` for any sampler of the project.

    ``y`` is the class (an int) or one class per sample (an int64 tensor of shape (B,)). Give exactly one of the
    paper's ``w`` (w = 0: the conditional model, w = -1: the unconditional one) and diffusers' ``guidance_scale``
    = 1 + w. Each call runs ONE forward pass on the batch [x_t; x_t] with labels [y; null] and splits the output
    into eps(z, c) and eps(z), the way diffusers' pipelines batch classifier-free guidance
    (StableDiffusionPipeline.__call__: ``torch.cat([latents] * 2)``, ``noise_pred.chunk(2)``; there the
    unconditional half comes first). Bad arguments are refused before any model call."""
    cfg_eps(torch.zeros(()), torch.zeros(()), w=w, guidance_scale=guidance_scale)  # exactly one convention
    null = null_label(net)
    y = torch.as_tensor(y)
    if y.dtype != torch.long or y.ndim > 1 or bool(((y < 0) | (y >= null)).any()):
        raise LineageError(f"class labels must be integers in 0..{null - 1}, got {y.tolist()!r}")

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = y.to(x_t.device).expand(x_t.shape[0])
        eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), y=torch.cat([labels, torch.full_like(labels, null)]))
        eps_cond, eps_uncond = eps.chunk(2)
        return cfg_eps(eps_cond, eps_uncond, w=w, guidance_scale=guidance_scale)

    return model
# --8<-- [end:guided_model]


# --- training and sampling ------------------------------------------------------------

def train_config(preset: str = "quick", *, p_uncond: float = P_UNCOND, steps: int | None = None,
                 seed: int = 0) -> dict:
    """The JSON config of a CFG run on digits: the sizes of DDPM's digits preset (refimpl.ddpm.PRESETS), the
    same network with a class embedding (``num_classes`` = 10, plus the null label), linear schedule, T = 1000."""
    from refimpl.ddpm import PRESETS, optimisation
    from refimpl.nets import build_model, model_config

    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if not 0 < p_uncond < 1:
        raise LineageError(f"p_uncond must be in (0, 1): the one network must learn both p(x | c) and p(x), "
                           f"got {p_uncond}")
    sizes = PRESETS[preset]["digits"]
    model = model_config(build_model(**sizes["model"], in_channels=1, num_classes=CLASSES))
    return {"data": "digits", "schedule": "linear", "T": 1000, "p_uncond": p_uncond, "model": model, "seed": seed,
            **optimisation(sizes, steps)}


# --8<-- [start:train]
def train(config: dict, out=None, *, device=None, resume: bool = True, progress: bool = True):
    """CFG Algorithm 1 on digits: repeat { (x, c) ~ data, c <- null w.p. p_uncond, step on L_simple }.
    ``out`` is the checkpoint directory (resumed if it holds a run with the same config). Returns (net, history)."""
    from refimpl.data import sampler
    from refimpl.nets import model_from_config
    from refimpl.training import fit_config

    schedule = make_schedule(config["schedule"], config["T"]).to(device or "cpu")
    net = model_from_config(config["model"], seed=config["seed"])
    batch = sampler(config["data"], labels=True)

    def loss_fn(net, generator):
        x0, y = batch(config["batch_size"], generator)
        return loss_cfg(net, x0.to(schedule.device), y.to(schedule.device), schedule, config["p_uncond"], generator)

    history = fit_config(net, loss_fn, config, out, "cfg", device, resume, progress)
    return net, history
# --8<-- [end:train]


def load_for_sampling(ckpt, device=None) -> tuple[torch.nn.Module, Schedule]:
    """Load a CFG checkpoint: (network on ``device``, its schedule on ``device``); bad checkpoints -> LineageError."""
    from refimpl.training import load_model

    net, checkpoint = load_model(ckpt, "cfg")
    device = torch.device(device or "cpu")
    return net.to(device), make_schedule(checkpoint.config["schedule"], checkpoint.config["T"]).to(device)


def sample(net: torch.nn.Module, schedule: Schedule, labels, *, guidance_scale: float, sampler: str = "ddim",
           steps: int = 50, seed: int = 0, disable: bool = True) -> torch.Tensor:
    """Guided digits, one per entry of ``labels`` (int64, (N,)): x_T is the first draw of a generator seeded
    ``seed`` (so every guidance scale starts from the same x_T), then DDIM (eta = 0, ``steps`` steps) or DDPM's
    ancestral sampler (all T steps; CFG's Algorithm 2) on :func:`guided_model`."""
    from refimpl.ddim import ddim_sample
    from refimpl.ddpm import ddpm_sample

    if sampler not in SAMPLERS:
        raise LineageError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if not math.isfinite(guidance_scale):
        raise LineageError(f"guidance scale must be a finite number, got {guidance_scale}")
    labels = torch.as_tensor(labels)
    model = guided_model(net, labels.to(schedule.device), guidance_scale=guidance_scale)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((labels.shape[0], 1, 8, 8), generator=generator).to(schedule.device)
    with torch.no_grad():
        if sampler == "ddim":
            return ddim_sample(model, x_T, schedule, steps=steps, disable=disable)
        return ddpm_sample(model, x_T, schedule, generator=generator, disable=disable)


def diversity(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Within-class diversity: the mean Euclidean distance between two different samples of the same class,
    averaged over the classes present (features: (N, D), e.g. refimpl.digits_eval's 32-d classifier features)."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c].double()
        n = f.shape[0]
        if n > 1:
            per_class.append(torch.cdist(f, f).sum() / (n * (n - 1)))
    return float(torch.stack(per_class).mean())
