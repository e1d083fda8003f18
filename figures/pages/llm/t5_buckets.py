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
    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.6))
    rel = torch.arange(-200, 201)
    for bidirectional, name, color in ((True, "编码器（双向）", "C0"), (False, "解码器（因果）", "C1")):
        left.step(rel, t5.relative_position_bucket(rel, bidirectional), where="mid", color=color, label=name)
    for x in (-128, 128):
        left.axvline(x, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="相对位置 r（键 − 查询）", ylabel="桶编号（32 个桶，max_distance 128）", title="桶函数")
    # lower right, short handles: clear of the steps near 0
    left.legend(loc="lower right", bbox_to_anchor=(1.0, 0.06), handlelength=1.0, handletextpad=0.4, borderaxespad=0)
    near = torch.arange(-40, 41)
    with torch.no_grad():
        bias = model.encoder_bias.embedding(t5.relative_position_bucket(near, True)).T
    for h in range(min(HEADS, bias.shape[0])):
        right.plot(near, bias[h], label=f"头 {h}")
    right.axvline(0, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="相对位置 r（键 − 查询）", ylabel="学到的偏置（加到 logit 上）",
              title=f"{preset} 模型编码器学到的偏置")
    right.legend()
    fig.tight_layout()
    save(fig, out / "t5_buckets.svg")
