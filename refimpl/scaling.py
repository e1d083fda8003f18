"""Compute-optimal scaling of language models: Kaplan et al., "Scaling Laws for Neural Language Models" (2020),
arXiv 2001.08361, and Hoffmann et al., "Training Compute-Optimal Large Language Models" (2022, "Chinchilla"),
arXiv 2203.15556.

- Parameter counts: Kaplan's model size ``N`` is the number of parameters "excluding all vocabulary and positional
  embeddings" (Kaplan Sec. 1.3, Eq. (2.1): ``N ~ 12 n_layer d_model^2``); Chinchilla counts every parameter,
  embedding matrices included (Chinchilla App. F). :func:`parameter_counts` gives both.
- Compute: ``C ~ 6 N D`` floating-point operations for ``D`` training tokens (Kaplan Sec. 2.1; Chinchilla Sec. 3.3).
- The parametric loss of Chinchilla Eq. (2), ``L(N, D) = E + A / N^alpha + B / D^beta`` (:class:`Law`), fitted as in
  Chinchilla Eq. (3) / (11): the Huber loss (delta = 1e-3) between predicted and observed log losses, the prediction
  written as ``LSE(a - alpha log N, b - beta log D, e)``, minimised by L-BFGS from a grid of initialisations
  (:func:`fit_law`); confidence intervals by refitting on 80 % subsamples of the runs, 100 times, as for Chinchilla
  Table 2 (:func:`bootstrap_laws`).
- The compute-optimal allocation of that law in closed form, Chinchilla Eq. (4):
  ``N_opt(C) = G (C/6)^a``, ``D_opt(C) = G^-1 (C/6)^b``, ``G = (alpha A / (beta B))^(1/(alpha+beta))``,
  ``a = beta / (alpha+beta)``, ``b = alpha / (alpha+beta)`` (:meth:`Law.compute_optimal`).
- A grid runner for the miniature: character-level LLaMA models (:class:`refimpl.llama.Llama`; newer than both
  papers, but at this scale it learns far faster than GPT-2's layout, see the LLaMA page) of several widths,
  each trained on the notes for several token budgets with a cosine learning-rate schedule whose length matches the
  budget (Chinchilla App. B), scored on the held-out notes with :func:`refimpl.gpt.held_out_losses`
  (:func:`run_grid`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from refimpl.core import LineageError
from refimpl.gpt import check_notes, fit_notes, held_out_losses, text_data
from refimpl.llama import Llama
from refimpl.text import unigram_nll

#: sizes per preset; a preset changes sizes, never the algorithm. Every (width, steps) pair is one training run.
PRESETS = {
    "quick": {"widths": [16, 24, 32, 48], "depth": 2, "heads": 2, "steps": [40, 80, 160, 320], "context": 32,
              "batch_size": 8, "lr": 2e-2},
    "full": {"widths": [32, 64, 96, 128], "depth": 4, "heads": 4, "steps": [250, 500, 1000, 2000], "context": 64,
             "batch_size": 16, "lr": 5e-3},
}
WARMUP_FRACTION = 0.1  # linear warmup over the first tenth of every run, then cosine decay to zero at its last step
BLOCK = 4  # evaluation windows per block of the held-out standard errors (as on the LLaMA page)
HUBER_DELTA = 1e-3  # Chinchilla Sec. 3.3 and App. D.2
#: Chinchilla App. D.2's grid of initialisations of (a, b, e, alpha, beta), with A, B, E = exp(a), exp(b), exp(e)
INIT_GRID = {"a": np.arange(0.0, 26.0, 5.0), "b": np.arange(0.0, 26.0, 5.0), "e": np.arange(-1.0, 1.01, 0.5),
             "alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5)}


# --- parameter and compute counts ----------------------------------------------------------------

# --8<-- [start:counts]
def parameter_counts(model: Llama) -> dict[str, int]:
    """``total`` (Chinchilla's N: every parameter, embeddings included, App. F), ``embedding`` (the token embedding
    and the untied output layer, the model's vocabulary matrices; RoPE has no position parameters) and
    ``non_embedding`` (Kaplan's N, Sec. 1.3: all parameters but vocabulary and positional embeddings)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.token.weight.numel() + model.head.weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def training_flops(n_params: float, tokens: float) -> float:
    """Kaplan Sec. 2.1's C ~ 6 N D: 2 N multiply-adds per token forward, twice that backward (Chinchilla Sec. 3.3
    uses the same approximation for its frontier)."""
    return 6.0 * n_params * tokens
# --8<-- [end:counts]


def hand_count(vocab_size: int, width: int, depth: int, heads: int, kv_heads: int, mlp_hidden: int
               ) -> dict[str, int]:
    """The same counts from the shapes of :class:`refimpl.llama.Llama`: per block the query and output projections
    (d x d each), the key and value projections (d x kv_heads d/heads each), SwiGLU's three matrices (3 d h) and two
    RMSNorm gains (2 d); a final RMSNorm (d); the token embedding and the untied output layer (V d each). With
    kv_heads = heads and h = 8d/3 the matrices make Kaplan's Eq. (2.1), N ~ 12 n_layer d^2."""
    kv = kv_heads * (width // heads)
    non_embedding = depth * (2 * width * width + 2 * width * kv + 3 * width * mlp_hidden + 2 * width) + width
    embedding = 2 * vocab_size * width
    return {"total": non_embedding + embedding, "embedding": embedding, "non_embedding": non_embedding}


# --- the parametric loss and its compute-optimal frontier ----------------------------------------

# --8<-- [start:law]
@dataclass(frozen=True)
class Law:
    """Chinchilla Eq. (2): L(N, D) = E + A / N^alpha + B / D^beta (nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) of N_opt ~ C^a and D_opt ~ C^b, Chinchilla Eq. (4): a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
        return self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)

    def compute_optimal(self, C):
        """Chinchilla Eq. (4): the (N, D) that minimise L under 6 N D = C. Setting dL/dN = 0 along D = C / (6 N)
        gives alpha A N^-alpha = beta B D^-beta, i.e. N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        a, b = self.exponents
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return G * np.power(np.asarray(C, dtype=float) / 6.0, a), np.power(np.asarray(C, dtype=float) / 6.0, b) / G
# --8<-- [end:law]


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber (1964): r^2 / 2 where |r| <= delta, delta (|r| - delta / 2) beyond."""
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


# --8<-- [start:fit]
def _objective(theta, log_n, log_d, log_l, delta):
    """Chinchilla Eq. (11) divided by delta, and its gradient: sum_i Huber_delta(LSE(a - alpha log N_i,
    b - beta log D_i, e) - log L_i) / delta, theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    r = top + np.log(total) - log_l
    weighted = weights * (np.clip(r, -delta, delta) / delta / total)  # Huber'(r) / delta * d LSE / d term
    # elementwise sums, no BLAS call: 16 numbers gain nothing from it, and an idle multi-threaded BLAS spins
    grad = np.array([*weighted.sum(axis=1), -(weighted[0] * log_n).sum(), -(weighted[1] * log_d).sum()])
    return float(huber(r, delta).sum() / delta), grad


def fit_law(N, D, L, *, delta: float = HUBER_DELTA, starts: int = 16, extra_starts=()) -> Law:
    """Fit :class:`Law` to losses ``L`` of runs with ``N`` parameters and ``D`` tokens (Chinchilla Sec. 3.3 and
    App. D.2). The objective is evaluated at every point of Chinchilla's grid of initialisations (:data:`INIT_GRID`,
    4500 points) and L-BFGS runs from the ``starts`` best of them (and from ``extra_starts``, each an (a, b, e, alpha,
    beta)); the best local minimum wins. The objective is divided by delta, so that its gradients are of order one
    and L-BFGS's default tolerances (scipy's) apply: with delta = 1e-3 the raw objective is ~1e-5 and they would stop
    it early, the problem Besiroglu et al. (2024) found in the paper's own fit."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency, as scipy is

    with threadpool_limits(1):  # L-BFGS on 5 numbers: a multi-threaded BLAS only spins (20x the CPU time)
        return _fit_law(N, D, L, delta, starts, extra_starts, minimize)


def _fit_law(N, D, L, delta, starts, extra_starts, minimize) -> Law:
    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=float)) for x in (N, D, L))
    grid = np.array(list(itertools.product(*INIT_GRID.values())))
    terms = np.stack([grid[:, None, 0] - grid[:, None, 3] * log_n, grid[:, None, 1] - grid[:, None, 4] * log_d,
                      np.broadcast_to(grid[:, None, 2], (len(grid), len(log_n)))])
    r = np.logaddexp.reduce(terms, axis=0) - log_l
    ranked = grid[np.argsort(huber(r, delta).sum(axis=1), kind="stable")[:starts]]
    best = None
    for x0 in [*ranked, *map(np.asarray, extra_starts)]:
        result = minimize(_objective, x0, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                          options={"maxiter": 1000})
        if best is None or result.fun < best.fun:
            best = result
    a, b, e, alpha, beta = best.x
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta))
# --8<-- [end:fit]


def law_theta(law: Law) -> tuple[float, float, float, float, float]:
    """(a, b, e, alpha, beta) of ``law``: the coordinates :func:`fit_law` optimises."""
    return math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta


def bootstrap_laws(N, D, L, *, times: int = 100, fraction: float = 0.8, seed: int = 0, start: Law | None = None,
                   starts: int = 1) -> list[Law]:
    """Chinchilla Table 2's intervals: refit on ``times`` random subsets of ``fraction`` of the runs (drawn without
    replacement), each from the ``starts`` best grid points and from ``start`` (the fit on all runs)."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    rng = np.random.default_rng(seed)
    keep = max(1, round(fraction * len(L)))
    extra = [law_theta(start)] if start is not None else []
    laws = []
    for _ in range(times):
        idx = np.sort(rng.choice(len(L), size=keep, replace=False))
        laws.append(fit_law(N[idx], D[idx], L[idx], starts=starts, extra_starts=extra))
    return laws


# --- the grid of training runs ---------------------------------------------------------------------

def grid_config(preset: str = "quick", *, seed: int = 0, data=None) -> dict:
    """The JSON config of a grid: the model config of every width (a LLaMA of fixed depth and heads), the step
    budgets, context, batch, learning rate and seed shared by every run, the tokenizer's characters and the training
    text's hash (``data``: a :func:`refimpl.gpt.text_data` tuple already read; default: read the notes now)."""
    if preset not in PRESETS:
        raise LineageError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    p = PRESETS[preset]
    tok, _, _, text_hash = data or text_data()
    with torch.device("meta"):  # only the configs: no weights, no draw from the global RNG
        models = {str(w): Llama(len(tok), width=w, depth=p["depth"], heads=p["heads"]).config for w in p["widths"]}
    return {"data": "notes", "text_sha256": text_hash, "chars": tok.chars, "models": models, "steps": p["steps"],
            "context": p["context"], "batch_size": p["batch_size"], "lr": p["lr"], "seed": seed}


def run_name(width: int, steps: int) -> str:
    return f"w{width}-s{steps}"


def run_config(grid: dict, width: int, steps: int) -> dict:
    """The config of one run of ``grid``: its model, ``steps`` optimizer steps, warmup over the first tenth and a
    cosine decay that reaches zero at the last step (the schedule's length matches the token budget)."""
    return {"data": grid["data"], "text_sha256": grid["text_sha256"], "chars": grid["chars"],
            "model": grid["models"][str(width)], "context": grid["context"], "seed": grid["seed"], "steps": steps,
            "batch_size": grid["batch_size"], "lr": grid["lr"], "warmup": max(1, round(WARMUP_FRACTION * steps)),
            "lr_decay": "cosine"}


def tokens(config: dict) -> int:
    """D: the training tokens a run predicts, steps x batch x context (each window of context + 1 characters gives
    context predictions; windows are drawn at random, so long runs see characters again)."""
    return config["steps"] * config["batch_size"] * config["context"]


# --8<-- [start:train]
def train_run(config: dict, out=None, *, device=None, progress: bool = True, data=None
              ) -> tuple[Llama, list[tuple[int, float]]]:
    """One point of the grid: GPT's training on the notes (:func:`refimpl.gpt.fit_notes`: random windows, next-
    character loss) with the cosine schedule the config records. Reruns resume ``out``. Returns the model and the
    training-loss history (mean of every 10 steps)."""
    from refimpl.training import build_seeded

    data = data or text_data()
    check_notes(config, data)
    model = build_seeded(Llama, config)  # the initial weights follow config["seed"]: equal within a width
    history = fit_notes(model, config, config["context"], out, model_name="scaling", device=device,
                        progress=progress, data=data)
    return model, history
# --8<-- [end:train]


def block_means(losses: torch.Tensor, size: int) -> list[float]:
    """Means of consecutive blocks of ``size`` per-character losses (the last partial block dropped)."""
    blocks = losses.numel() // size
    return losses[: blocks * size].reshape(blocks, size).mean(1).tolist()


def run_grid(grid: dict, out, *, device=None, progress: bool = True, data=None) -> dict:
    """Train every (width, steps) run of ``grid`` into ``out/<run_name>`` (existing runs resume, finished ones are
    kept) and score each on the held-out notes; write and return ``out/results.json``: ``grid``, ``runs`` (width,
    steps, tokens D, the parameter counts, held-out loss in nats/char and its block means, the training-loss
    history: [step, mean loss of the last 10 steps]), ``unigram`` (the add-one
    unigram baseline on the same targets) with its block means, ``block_chars``, ``targets`` (held-out characters
    scored) and ``train_chars``."""
    out = Path(out)
    data = data or text_data()
    check_notes(grid, data)
    _, train_ids, held_ids, _ = data
    size = BLOCK * grid["context"]
    targets = held_ids[1:]
    vocab = len(data[0])
    runs = []
    for width, steps in itertools.product(map(int, grid["models"]), grid["steps"]):
        config = run_config(grid, width, steps)
        model, history = train_run(config, out / run_name(width, steps), device=device, progress=progress, data=data)
        losses = held_out_losses(model, held_ids, context=grid["context"])
        runs.append({"width": width, "steps": steps, "tokens": tokens(config), **parameter_counts(model),
                     "held_out": float(losses.mean()), "blocks": block_means(losses, size), "history": history})
    unigram = [unigram_nll(train_ids, targets[i * size: (i + 1) * size], vocab) for i in range(targets.numel() // size)]
    results = {"grid": grid, "runs": runs, "unigram": unigram_nll(train_ids, targets, vocab), "unigram_blocks": unigram,
               "block_chars": size, "targets": targets.numel(), "train_chars": train_ids.numel()}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results) + "\n")
    tmp.replace(out / "results.json")
    return results


def read_results(out) -> dict:
    """The ``results.json`` that :func:`run_grid` wrote into ``out`` (a LineageError if there is none)."""
    path = Path(out) / "results.json"
    try:
        results = json.loads(path.read_text())
        runs = results["runs"]
        if not runs or not all({"tokens", "total", "non_embedding", "held_out"} <= set(r) for r in runs):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise LineageError(f"no grid results in {out} (run `python -m refimpl scaling train --out {out}` first)") \
            from None
    return results


def fit_grid(results: dict, *, count: str = "total", times: int = 100, seed: int = 0) -> dict:
    """The law fitted to a grid's held-out losses with N counted as ``count`` ("total": Chinchilla's, or
    "non_embedding": Kaplan's) and C = 6 N D; its compute-optimal exponents, the bootstrap's fits (``samples``) and
    their 10th and 90th percentiles (``interval``, Chinchilla Table 2's intervals) of every fitted quantity, and the
    root-mean-square residual in log loss. JSON-ready."""
    if count not in ("total", "non_embedding"):
        raise LineageError(f"count must be 'total' or 'non_embedding', got {count!r}")
    runs = results["runs"]
    N, D, L = (np.array([r[k] for r in runs], dtype=float) for k in (count, "tokens", "held_out"))
    law = fit_law(N, D, L)
    laws = bootstrap_laws(N, D, L, times=times, seed=seed, start=law) if times else []

    def summary(law: Law) -> dict:
        a, b = law.exponents
        return {**asdict(law), "a": a, "b": b}

    fitted = summary(law)
    samples = [summary(x) for x in laws]
    interval = {k: [float(np.percentile([s[k] for s in samples], q)) for q in (10, 90)] for k in fitted} \
        if samples else {}
    residuals = np.log(law.loss(N, D)) - np.log(L)
    return {"count": count, "law": fitted, "interval": interval, "bootstrap": {"times": times, "fraction": 0.8},
            "samples": samples, "residual_rms": float(np.sqrt(np.mean(residuals ** 2)))}
