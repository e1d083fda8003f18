"""The MoE page's cached artifact (library module, no OUTPUTS): two quick MoE models (refimpl.moe.MoELlama) trained on
the notes, one with the Switch load-balancing loss (alpha = 10^-2) and one without, and their measurements against
the LLaMA page's quick dense model (figures/zoo/llama.py), which has the same width, depth, heads, context, steps,
batch, learning rate, seed and training windows and, per token, the same active MLP parameters (its SwiGLU is
twice as wide as one expert, and every token uses two experts). Shared by the MoE figures, tests/test_moe.py and the
docs-command test (the quick `moe train` starts from the ``moe`` checkpoint here).

Everything is measured on the held-out notes, routed in the windows of refimpl.gpt.held_out_losses (consecutive
windows of ``context`` characters). The standard errors are over blocks of BLOCK consecutive windows (as on the
LLaMA page): they say how much the held-out text decides a number, not how much the training seed does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from figures.builder import cached
from figures.zoo.llama import llama_checkpoint
from refimpl import gpt, llama, moe
from refimpl.core import pick_device
from refimpl.text import unigram_nll

MODULES = ["refimpl.moe"]
BLOCK = 4  # evaluation windows per block of the standard errors
RUNS = {"moe": moe.AUX_COEF, "moe_noaux": 0.0}  # run -> alpha of Switch Eq. (4)
#: capacity factors at which the drop rate is measured (Switch Eq. 3; the paper trains with 1.0-2.0)
CAPACITY_FACTORS = (1.0, 1.25, 1.5, 2.0)


def routed(model: moe.MoELlama, ids: torch.Tensor, context: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's (T, k) expert choices and (T, N) router probabilities for the held-out targets ``ids[1:]``, in
    text order, each window of ``context`` characters routed as refimpl.gpt.held_out_losses feeds it."""
    choices: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    probs: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    model.eval()
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, context):
            model(ids[start: start + context + 1][None, :-1])
            for layer, routing in enumerate(model.routings()):
                choices[layer].append(routing["index"].cpu())
                probs[layer].append(routing["probs"].cpu())
    return [torch.cat(c) for c in choices], [torch.cat(p) for p in probs]


def _blocks(values: torch.Tensor, size: int) -> torch.Tensor:
    n = values.shape[0] // size
    return values[: n * size].reshape(n, size, *values.shape[1:])


def _se(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel()))


def moe_runs(preset: str) -> Path:
    """Directory holding the checkpoints ``moe/`` (with the balancing loss) and ``moe_noaux/`` (without) and
    ``stats.json``: per run (and ``dense``, the LLaMA page's model) the held-out loss, its standard error and the
    parameter counts; per MoE run the share of every expert per layer (``load``), per block of held-out text the
    mean over layers of the load-balancing loss N * sum_i f_i P_i (``balance``, Switch Eq. 4 without alpha; 1 when
    the first choices are even) and of N * max share (``max_load``, 1 = even), and the fraction of choices dropped
    at each capacity factor in batches of the training batch's size (``dropped``); paired standard errors
    (``se``)."""
    data = gpt.text_data()  # read once: the key and the training use the same text, even if the notes change meanwhile
    configs = {name: moe.train_config(preset, data=data, aux_coef=coef) for name, coef in RUNS.items()}
    dense = llama_checkpoint(preset)  # the LLaMA page's model: trained (and cached) there, measured here

    def produce(out: Path) -> None:
        _, train_ids, held_ids, _ = data
        config = configs["moe"]
        context, vocab, experts = config["context"], config["model"]["vocab_size"], config["model"]["experts"]
        size = BLOCK * context
        targets = held_ids[1:]
        losses, stats = {}, {"runs": {}, "se": {}}
        for name, cfg in configs.items():
            model, _ = moe.train(cfg, out / name, device=pick_device(), progress=False, data=data)
            losses[name] = gpt.held_out_losses(model, held_ids, context=context)
            choices, probs = routed(model.cpu(), held_ids, context)
            group = cfg["batch_size"] * context  # the tokens one training step routes together
            blocks = torch.stack([moe.max_load(torch.stack([moe.expert_load(b, experts) for b in _blocks(c, size)]))
                                  for c in choices]).mean(0)  # (blocks,): N * max share, mean over layers
            balance = torch.stack([torch.stack([moe.load_balancing_loss(p, c, experts).double()
                                                for p, c in zip(_blocks(ps, size), _blocks(cs, size))])
                                   for ps, cs in zip(probs, choices)]).mean(0)  # (blocks,): Switch Eq. 4 / alpha
            dropped = {}
            for factor in CAPACITY_FACTORS:
                capacity = moe.expert_capacity(group, experts, factor, cfg["model"]["top_k"])
                kept = [moe.capacity_mask(g, experts, capacity) for c in choices for g in torch.split(c, group)]
                dropped[str(factor)] = 1 - float(sum(k.sum() for k in kept)) / sum(k.numel() for k in kept)
            stats["runs"][name] = {
                "held_out": float(losses[name].mean()), "aux_coef": cfg["aux_coef"],
                "load": [moe.expert_load(c, experts).tolist() for c in choices],
                "max_load": float(blocks.mean()), "max_load_blocks": blocks.tolist(), "dropped": dropped,
                "balance": float(balance.mean()), "balance_blocks": balance.tolist(),
                "balance_layers": [float(moe.load_balancing_loss(p, c, experts)) for p, c in zip(probs, choices)],
                "params": _params(model)}
        dense_model, _, dense_config = llama.load(dense)
        assert dense_config["context"] == context and dense_config["seed"] == config["seed"]
        losses["dense"] = gpt.held_out_losses(dense_model, held_ids, context=context)
        stats["runs"]["dense"] = {"held_out": float(losses["dense"].mean()), "params": _params(dense_model)}
        means = {name: _blocks(l, size).mean(1) for name, l in losses.items()}
        means["unigram"] = torch.tensor([unigram_nll(train_ids, b, vocab) for b in _blocks(targets, size)],
                                        dtype=torch.float64)
        stats["unigram"] = unigram_nll(train_ids, targets, vocab)
        for name in ("moe", "moe_noaux", "dense"):
            stats["se"][name] = _se(means[name])
            stats["se"][f"{name}-unigram"] = _se(means[name] - means["unigram"])
        stats["se"]["moe-dense"] = _se(means["moe"] - means["dense"])
        stats["se"]["moe-moe_noaux"] = _se(means["moe"] - means["moe_noaux"])
        for measure in ("max_load", "balance"):
            stats["se"][measure] = _se(torch.tensor(stats["runs"]["moe_noaux"][f"{measure}_blocks"])
                                       - torch.tensor(stats["runs"]["moe"][f"{measure}_blocks"]))
        stats |= {"targets": targets.numel(), "blocks": len(means["unigram"]), "block_chars": size,
                  "group": configs["moe"]["batch_size"] * context}
        (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")

    return cached("moe", MODULES, produce, preset=preset, config=configs)


def _params(model: torch.nn.Module) -> dict:
    """Total parameters, those of the MLPs (all experts and routers), and the MLP parameters one token uses."""
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for block in model.blocks for p in block.mlp.parameters())
    active = mlp
    if isinstance(model, moe.MoELlama):
        c = model.config
        per_expert = mlp // c["depth"] - c["experts"] * c["width"]  # one layer's experts, without its router
        active = c["depth"] * (c["top_k"] * per_expert // c["experts"] + c["experts"] * c["width"])
    return {"total": total, "mlp": mlp, "active_mlp": active}


def moe_checkpoint(preset: str) -> Path:
    """The quick (or full) MoE model with the balancing loss, as `python -m refimpl moe train` writes it."""
    return moe_runs(preset) / "moe"


def stats(run: Path) -> dict:
    """The ``stats.json`` of a :func:`moe_runs` directory."""
    return json.loads((run / "stats.json").read_text())
