"""SDXL's U-Net, counted and traced (the SDXL page): sdxl_params.svg (the parameters of SD 1.5, SDXL base and the
refiner by part, and their transformer blocks by feature level, from the released configs on the meta device),
sdxl_repro.md (the paper's size claims beside the counts) and sdxl_anatomy.md (the shapes through a tiny, randomly
initialised diffusers UNet2DConditionModel with SDXL's added conditioning)."""

from pathlib import Path

import numpy as np

from refimpl import sdxl
from refimpl.plots import save, subplots

PAGE = "modern/sdxl.md"
OUTPUTS = ("sdxl_params.svg", "sdxl_repro.md", "sdxl_anatomy.md")

PARTS = {"attention": "注意力（除读文本的 K/V）", "text_kv": "交叉注意力读文本的 K/V", "feed_forward": "Transformer 块的前馈层",
         "resnet": "残差块 (ResNet)", "other": "其余（卷积、嵌入、上下采样）"}
COLORS = {"attention": "C0", "text_kv": "C9", "feed_forward": "C2", "resnet": "C1", "other": "0.6"}
TRANSFORMER = ("attention", "text_kv", "feed_forward")
MODEL_COLORS = ("0.45", "C3", "C4")  # SD 1.5, SDXL base, refiner (not the parts' colours of the left panel)

NAMES = {"latents": "潜变量", "text encoder 1 states": "文本编码器 1 的隐状态", "text encoder 2 states": "文本编码器 2 的隐状态",
         "text context (concatenated)": "文本上下文（两者拼接）", "pooled text embedding": "池化文本嵌入",
         "micro-conditioning ids": "微条件的 6 个数", "timestep embedding": "时间步嵌入",
         "[pooled text; Fourier features of the 6 ids]": "［池化文本；6 个数的傅里叶特征］",
         "added embedding (summed with the timestep's)": "附加嵌入（与时间步嵌入相加）",
         "middle block (transformer)": "中间块（有 Transformer）", "output: eps": "输出：ε"}
KINDS = {"transformer": "有 Transformer", "ResNet only": "只有残差块"}


def chinese(name: str) -> str:
    """The page's name of a traced position."""
    if name.startswith(("down, level ", "up, level ")):
        way, rest = name.split(", level ")
        level, kind = rest.split(" (")
        return f"{'下行' if way == 'down' else '上行'}第 {level} 层（{KINDS[kind.rstrip(')')]}）"
    return NAMES[name]


def millions(n: int, sign: bool = False) -> str:
    """n in millions, one decimal ("1,942.0M"); with ``sign``, always signed, with a true minus ("−209.8M")."""
    return (f"{n / 1e6:+,.1f}M" if sign else f"{n / 1e6:,.1f}M").replace("-", "−")


def make(out: Path, preset: str) -> None:
    counts = {name: sdxl.parameter_counts(config) for name, config in sdxl.UNET_CONFIGS.items()}
    labels = [sdxl.NAMES[name] for name in counts]

    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.3), gridspec_kw={"width_ratios": [1.25, 1]})
    y = np.arange(len(counts))[::-1]
    start = np.zeros(len(counts))
    for part, label in PARTS.items():
        values = np.array([c["parts"][part] for c in counts.values()]) / 1e9
        left.barh(y, values, left=start, color=COLORS[part], label=label, height=0.6)
        start += values
    for yi, c in zip(y, counts.values()):
        left.text(c["total"] / 1e9 + 0.04, yi, f"{c['total'] / 1e9:.2f}B", va="center", fontsize=8)
    left.set_yticks(y, labels)
    left.set(xlabel="参数量（十亿）", xlim=(0, 3.0), title="按部件")

    levels = max(len(c["transformer_by_level"]) for c in counts.values())
    width = 0.27
    for k, (name, c) in enumerate(counts.items()):
        values = [c["transformer_by_level"].get(i, 0) / 1e9 for i in range(levels)]
        right.bar(np.arange(levels) + (k - 1) * width, values, width, color=MODEL_COLORS[k], label=labels[k])
    right.set_xticks(np.arange(levels), ["1", "1/2", "1/4", "1/8"][:levels])
    right.set(xlabel="特征图边长（相对潜变量）", ylabel="Transformer 块参数（十亿）", title="Transformer 块在哪一层")
    right.legend(fontsize=8, loc="upper left")
    fig.legend(*left.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    save(fig, out / "sdxl_params.svg")

    old, new, ref = counts["sd15"], counts["sdxl-base"], counts["sdxl-refiner"]
    grow = new["total"] - old["total"]

    def delta(keys):
        return sum(new["parts"][k] - old["parts"][k] for k in keys)

    kv_old, kv_new = old["parts"]["text_kv"], new["parts"]["text_kv"]
    kv_wide = kv_new * (2048 - 768) // 2048  # K/V weights scale with the context width (tests/test_sdxl.py)
    rows = [
        ("U-Net 参数量", "表 1：SD 1.x 860M，SDXL 2.6B；摘要：U-Net 大三倍",
         f"SD 1.5 {old['total']:,}；SDXL base {new['total']:,}（{new['total'] / old['total']:.2f} 倍）",
         "发布的配置（diffusers 的转换器核对过官方 YAML），在 meta 设备上实例化计数"),
        ("增加来自哪里", "摘要：主要来自更多的注意力块和更大的交叉注意力上下文",
         f"增加 {millions(grow)}：Transformer 块 {millions(delta(TRANSFORMER), True)}（增量的 "
         f"{delta(TRANSFORMER) / grow:.0%}），残差块 {millions(delta(('resnet',)), True)}，"
         f"其余 {millions(delta(('other',)), True)}；"
         f"Transformer 块 {old['transformer_blocks']} → {new['transformer_blocks']} 个",
         "SDXL 少一层（通道倍数 1,2,4），残差块反而变少"),
        ("更大的交叉注意力上下文", "第 2.1 节：OpenCLIP ViT-bigG 与 CLIP ViT-L 合用，两者的输出拼接",
         f"读文本的 K/V {millions(kv_old)} → {millions(kv_new)}；其中把上下文从 768 加宽到 2048 单独带来 "
         f"{millions(kv_wide)}", "K/V 投影的参数与上下文宽度成正比（测试逐项核对）"),
        ("最高分辨率层的注意力", "第 2.1 节：去掉最高特征层的 Transformer 块，去掉最低一层",
         f"SD 1.5 在边长 1 倍的层有 {millions(old['transformer_by_level'][0])}；SDXL base 为 0",
         "按层统计 Transformer 块的参数"),
        ("Refiner", "摘要：用事后的图生图技术提升样本视觉保真度的精修模型",
         f"{ref['total']:,}，Transformer 块 {ref['transformer_blocks']} 个，上下文只有 OpenCLIP bigG 的 1280 维",
         "官方 sd_xl_refiner.yaml"),
    ]
    lines = ["| 项目 | 论文报告 | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "sdxl_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    table = ["| 位置 | 形状 |", "| --- | --- |"]
    table += [f"| {chinese(name)} | {' × '.join(map(str, shape))} |" for name, shape in sdxl.trace_sdxl_unet()]
    a, b = sdxl.TINY["text_widths"]
    table += ["", f"diffusers 的 `UNet2DConditionModel`（`addition_embed_type=\"text_time\"`），随机权重，极小配置：4×16×16 的"
              f"潜变量，三层（第 1 层只有残差块，第 2、3 层有 Transformer 块），两个假想文本编码器宽 {a} 和 {b}，"
              f"池化嵌入宽 {sdxl.TINY['pooled']}，每个数 {sdxl.TINY['feature_dim']} 维傅里叶特征。形状由前向钩子在一次真实"
              "的前向里记录，不是手写的；每层记录的是该层下采样（或上采样）之前的特征图。"]
    (out / "sdxl_anatomy.md").write_text("\n".join(table) + "\n", encoding="utf-8")
