"""The BERT page's 复现 table: what the paper reports beside what the quick run measures on the held-out notes."""

import json
from pathlib import Path

from figures.zoo.bert import bert_run
from refimpl import bert

PAGE = "llm/bert.md"
OUTPUTS = ("bert_repro.md",)


def make(out: Path, preset: str) -> None:
    run_dir = bert_run(preset)
    final = json.loads((run_dir / "held_out.json").read_text())["held_out"][-1]
    model, _ = bert.load(run_dir / "ckpt")
    c, params = model.config, sum(p.numel() for p in model.parameters())
    config = json.loads((run_dir / "ckpt" / "config.json").read_text())["config"]
    rows = [
        ("留出文本上被遮住字符的交叉熵", "表 6：留出训练数据上的掩码 LM 困惑度，BASE 3.99、LARGE 3.23（按 WordPiece，不可比）",
         f"{final['model']:.2f} nats/字（{final['targets']} 个被选中的位置）",
         f"一元（unigram）基线 {final['unigram']:.2f} nats/字"),
        ("被遮住字符的首选准确率", "未报告", f"{final['model_top1']:.1%}",
         f"一元基线（总猜最常见的字）{final['unigram_top1']:.1%}"),
        ("下游任务", "GLUE 80.5（BERT-LARGE，摘要）", "不可比：本站不做微调，没有 GLUE", "—"),
        ("模型规模", "BASE：L=12，H=768，A=12，1.1 亿参数；LARGE：L=24，H=1024，A=16，3.4 亿参数",
         f"L={c['depth']}，H={c['width']}，A={c['heads']}，{params / 1e3:.0f} 千参数，字表 {c['vocab_size']}", "—"),
        ("预训练规模", "batch 256 个序列 × 512 token，100 万步（约 40 个 epoch，33 亿词）",
         f"batch {config['batch_size']} 个序列 × {c['max_len']} 字，{config['steps']} 步（{preset} 预设）", "—"),
    ]
    lines = ["| 项目 | 论文报告 | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "bert_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
