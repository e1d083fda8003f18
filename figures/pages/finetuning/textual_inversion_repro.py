"""The Textual Inversion page's 复现 table: what the paper does beside what our quick runs measure."""

import json
import math
from pathlib import Path

import torch

from figures.zoo.textual_inversion import PUSHED, evaluation, ti_checkpoint
from refimpl import textual_inversion
from refimpl.digits_eval import classifier
from refimpl.styles import skew

PAGE = "finetuning/textual-inversion.md"
OUTPUTS = ("textual_inversion_repro.md",)


def make(out: Path, preset: str) -> None:
    samples = evaluation(preset)
    n = samples["word"].shape[0]

    def stats(key: str) -> str:
        values = skew(samples[key])
        with torch.no_grad():
            p = (classifier()(samples[key].clamp(-1, 1)).argmax(1) == 3).float().mean().item()
        return (f"skew {values.mean():+.2f} ± {values.std() / math.sqrt(n):.3f}，读作 3：{p:.0%} ± "
                f"{math.sqrt(p * (1 - p) / n):.0%}")

    config = json.loads((ti_checkpoint(preset) / "config.json").read_text())["config"]
    width = config["model"]["width"]
    word, init = textual_inversion.PLACEHOLDER, textual_inversion.INIT_WORD
    rows = [
        ("概念图像", "3–5 张", f"{config['subject_size']} 张斜体 3，skew {skew(samples['subject']).mean():+.2f}", "—"),
        ("训练的参数", "一个词嵌入 v*（LDM：1280 维），模型冻结", f"一行 {width} 个数（其余全部冻结，逐位不变）",
         "DreamBooth：整个模型"),
        ("初始化", "一个粗略描述词的嵌入", f"“{init}” 的嵌入", "—"),
        ("新词的样本", "高于人写描述的视觉保真度", f"“the digit {word}”：{stats('word')}",
         f"冻结模型 “the digit {init}”：{stats('plain')}"),
        ("推得更狠", "失真与可编辑性的权衡",
         f"学习率 {PUSHED['lr']:g}、{PUSHED['steps']} 步：{stats('pushed')}", "—"),
        ("训练规模", "5000 步（官方代码 README）", f"{config['steps']} 步，批量 {config['batch_size']}，学习率 "
         f"{config['lr']:g}（{preset} 预设，CPU）", "官方配置：基础学习率 0.005，批量 4"),
    ]
    lines = [f"| 项目 | 论文 | 我们测得（均值 ± 标准误，各 {n} 个样本） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "textual_inversion_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
