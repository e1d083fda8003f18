"""Attention maps of the quick GPT (first two layers, all heads) on a sentence from the notes: causal, so each map
is lower-triangular; the rows are queries, the columns keys, both labelled with the characters. One column per
layer, one row per head: two maps side by side leave room for a 16-character axis at a legible size."""

from pathlib import Path

import torch

from figures.zoo.gpt import gpt_run
from refimpl import gpt
from refimpl.plots import save, subplots

PAGE = "llm/transformer.md"
OUTPUTS = ("transformer_attention.svg",)
SENTENCE = "扩散模型的反向过程是一个去噪过程"
LAYERS = (0, 1)


def make(out: Path, preset: str) -> None:
    model, tok = gpt.load(gpt_run(preset))
    ids = tok.encode(SENTENCE, strict=True)[None]
    h = model.body.token(ids) + model.body.position[: ids.shape[1]]
    maps = []
    with torch.no_grad():
        for layer, block in enumerate(model.body.blocks[: max(LAYERS) + 1]):
            if layer in LAYERS:
                maps.append(block.attn(block.ln1(h), causal=True, need_weights=True)[1][0])
            h = block(h, causal=True)
    labels = list(SENTENCE)
    heads = maps[0].shape[0]
    fig, axes = subplots(heads, len(LAYERS), figsize=(2.6 * len(LAYERS) + 0.7, 2.7 * heads), squeeze=False,
                         sharex=True, sharey=True)
    for col, (layer, weights) in enumerate(zip(LAYERS, maps)):
        for head, ax in enumerate(axes[:, col]):
            ax.imshow(weights[head].numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"第 {layer + 1} 层，头 {head + 1}")
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            ax.tick_params(labelsize=8)  # 16 characters on a 2.3-inch axis
        axes[-1, col].set_xlabel("键 (key)")
    for ax in axes[:, 0]:
        ax.set_ylabel("查询 (query)")
    fig.tight_layout()
    save(fig, out / "transformer_attention.svg")
