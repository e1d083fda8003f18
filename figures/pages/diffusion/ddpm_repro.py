"""The DDPM page's 复现 table: the paper's CIFAR-10 numbers beside what our quick models measure."""

import json
from pathlib import Path

import torch

from figures.zoo.ddpm import ddpm_checkpoint, ddpm_samples
from refimpl.data import digits, toy_2d
from refimpl.digits_eval import HOLDOUT, evaluate
from refimpl.metrics import sliced_wasserstein

PAGE = "diffusion/ddpm.md"
OUTPUTS = ("ddpm_repro.md", "ddpm_repro.json")

#: DDPM Table 1 (CIFAR-10, unconditional, L_simple); FID is against the training set (Sec. 4.1)
PAPER = {"fid": "3.17", "is": "9.46 ± 0.11", "nll": "≤ 3.75 bits/dim"}


def make(out: Path, preset: str) -> None:
    generator = torch.Generator().manual_seed(1)
    n_toy = 2000
    toy = ddpm_samples("swissroll", preset, n=n_toy)["x0"]
    data, data_again = toy_2d("swissroll", n_toy, generator), toy_2d("swissroll", n_toy, generator)
    gaussian = data.mean(0) + torch.randn(n_toy, 2, generator=generator) @ torch.linalg.cholesky(data.T.cov()).T
    sw = {name: sliced_wasserstein(data, other, generator=torch.Generator().manual_seed(2))
          for name, other in (("model", toy), ("data", data_again), ("gaussian", gaussian))}

    generated = ddpm_samples("digits", preset, n=256)["x0"]
    images, _ = digits()
    real_train = images[:-HOLDOUT][torch.randperm(len(images) - HOLDOUT, generator=generator)[:256]]
    model_report, real_report = evaluate(generated), evaluate(real_train)
    steps = {data: json.loads((ddpm_checkpoint(data, preset) / "config.json").read_text())["step"]
             for data in ("swissroll", "digits")}

    measured = {"preset": preset, "sliced_wasserstein": sw, "steps": steps,
                "digits": {"model": vars(model_report), "real": vars(real_report)}}
    (out / "ddpm_repro.json").write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    rows = [
        ("样本质量（越低越好）", f"FID {PAPER['fid']}（CIFAR-10，Inception 特征）",
         f"Fréchet 距离 {model_report.frechet_distance:.2f}（digits，自训分类器特征，256 个样本）",
         f"真实训练图 vs 留出图：{real_report.frechet_distance:.2f}"),
        ("样本质量（越高越好）", f"IS {PAPER['is']}",
         f"分类器分数 {model_report.classifier_score:.2f}（满分 10）",
         f"真实图：{real_report.classifier_score:.2f}；分类器留出准确率 {model_report.accuracy_holdout:.1%}"),
        ("二维分布", "—",
         f"瑞士卷切片 Wasserstein 距离 {sw['model']:.3f}（{n_toy} 点）",
         f"两次独立取数据：{sw['data']:.3f}；同均值同协方差的高斯：{sw['gaussian']:.3f}"),
        ("似然", f"NLL {PAPER['nll']}", "未测（本页不计算变分界）", "—"),
        ("训练规模", "800k 步，batch 128，TPU v3-8 约 10.6 小时",
         f"瑞士卷 {steps['swissroll']} 步；digits {steps['digits']} 步（{preset} 预设）", "—"),
    ]
    lines = ["| 指标 | 论文报告（表 1） | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    (out / "ddpm_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
