"""The ControlNet page's 复现 table: what the paper reports beside what our quick run measures."""

import json
from pathlib import Path

from figures.zoo.controlnet import N, controlnet_checkpoint, controlnet_samples
from refimpl.digits_eval import read_as

PAGE = "finetuning/controlnet.md"
OUTPUTS = ("controlnet_repro.md",)


def make(out: Path, preset: str) -> None:
    samples = controlnet_samples(preset)
    labels, other = samples["labels"], (samples["labels"] + 1) % 10
    step = json.loads((controlnet_checkpoint(preset) / "config.json").read_text())["step"]
    rows = [
        ("零卷积", "训练开始时 ControlNet 不改变原模型输出", "初始化时输出与原模型逐位相同（torch.equal，测试）", "—"),
        ("只用控制图（空文本）", "无提示词时也能按条件图生成",
         f"分类器读出控制图的数字：{read_as(samples['empty'], labels):.0%}；同一 z_T 的原模型 "
         f"{read_as(samples['zero'], labels):.0%}（各 {N} 个）", "随机猜测 10%"),
        ("控制图与文本冲突（文本写 k+1）", "—",
         f"s = 1：读作控制图 {read_as(samples['mismatched_1'], labels):.0%}、读作文本 "
         f"{read_as(samples['mismatched_1'], other):.0%}；s = 3：控制图 {read_as(samples['mismatched_3'], labels):.0%}、"
         f"文本 {read_as(samples['mismatched_3'], other):.0%}", "—"),
        ("训练规模", "—", f"{step} 步（{preset} 预设，CPU），只训练 ControlNet", "—"),
    ]
    lines = ["| 项目 | 论文报告 | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "controlnet_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
