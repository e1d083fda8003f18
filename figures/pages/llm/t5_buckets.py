"""T5's relative position buckets (encoder and decoder) and the biases the quick model learned per head."""

from pathlib import Path

import torch

from figures.zoo.t5 import t5_checkpoint
from refimpl import t5
from refimpl.plots import save, subplots

PAGE = "llm/t5.md"
OUTPUTS = ("t5_buckets.svg",)
HEADS = 4  # heads drawn in the right panel


def make(out: Path, preset: str) -> None:
    model, _ = t5.load(t5_checkpoint(preset))
    fig, (left, right) = subplots(1, 2, figsize=(10, 3.8))
    rel = torch.arange(-200, 201)
    for bidirectional, name, color in ((True, "encoder (bidirectional)", "C0"), (False, "decoder (causal)", "C1")):
        left.step(rel, t5.relative_position_bucket(rel, bidirectional), where="mid", color=color, label=name)
    for x in (-128, 128):
        left.axvline(x, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="relative position  key - query", ylabel="bucket (32 buckets, max_distance 128)",
             title="the bucket function")
    left.legend()
    near = torch.arange(-40, 41)
    with torch.no_grad():
        bias = model.encoder_bias.embedding(t5.relative_position_bucket(near, True)).T
    for h in range(min(HEADS, bias.shape[0])):
        right.plot(near, bias[h], label=f"head {h}")
    right.axvline(0, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="relative position  key - query", ylabel="learned bias added to the logit",
              title=f"encoder biases learned by the {preset} model")
    right.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out / "t5_buckets.svg")
