"""Attention maps of the quick GPT (first two layers, all heads) on a sentence from the notes: causal, so each map
is lower-triangular; the rows are queries, the columns keys, both labelled with the characters."""

from pathlib import Path

import torch
from matplotlib import font_manager

from figures.zoo.gpt import gpt_run
from refimpl import gpt
from refimpl.plots import save, subplots

PAGE = "llm/transformer.md"
OUTPUTS = ("transformer_attention.svg",)
SENTENCE = "扩散模型的反向过程是一个去噪过程"
LAYERS = (0, 1)
CJK_FILES = ("NotoSansCJK-Regular", "NotoSansCJK", "SourceHanSans", "wqy-zenhei", "wqy-microhei")


def cjk_font() -> font_manager.FontProperties | None:
    """An installed font file with Chinese glyphs (by file name, in the order of CJK_FILES), or None (then the
    ticks show positions). Searched by file because matplotlib's font list may skip .ttc collections."""
    files = {Path(f).name: f for f in font_manager.findSystemFonts()}
    for prefix in CJK_FILES:
        for name in sorted(files):
            if name.startswith(prefix):
                return font_manager.FontProperties(fname=files[name])
    return None


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
    font = cjk_font()
    labels = list(SENTENCE) if font else [str(i) for i in range(len(SENTENCE))]
    heads = maps[0].shape[0]
    fig, axes = subplots(len(LAYERS), heads, figsize=(3.0 * heads, 3.2 * len(LAYERS)), squeeze=False)
    for row, (layer, weights) in enumerate(zip(LAYERS, maps)):
        for head, ax in enumerate(axes[row]):
            ax.imshow(weights[head].numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"layer {layer + 1}, head {head + 1}")
            ax.set_xticks(range(len(labels)), labels, fontproperties=font, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontproperties=font, fontsize=7)
            ax.set_xlabel("key")
        axes[row, 0].set_ylabel("query")
    save(fig, out / "transformer_attention.svg")
