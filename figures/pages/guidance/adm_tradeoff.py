"""Fidelity and diversity of classifier-guided digits against the gradient scale s; writes the page's 复现 table."""

import math
from pathlib import Path

import torch

from figures.zoo.adm import DDIM_STEPS, PER_LABEL, classifier_checkpoint, guided_digits, per_sample_stats
from refimpl.adm import load_classifier, noisy_accuracy
from refimpl.data import digits
from refimpl.digits_eval import HOLDOUT
from refimpl.plots import save, subplots
from refimpl.schedules import make_schedule

PAGE = "guidance/classifier-guidance.md"
OUTPUTS = ("adm_tradeoff.svg", "adm_repro.md")
NOISY_STEPS = (0, 300, 999)  # code timesteps at which the table reports the noisy classifier's accuracy
DRAWS = 4  # noise draws per held-out digit and timestep


def repro_table(preset: str, scales: list[float], hit: torch.Tensor, spread: torch.Tensor) -> str:
    """The 复现 table: the paper's reported results next to what the cached artifacts measure."""
    schedule = make_schedule("linear", 1000)
    images, labels = digits()
    x0, y = images[-HOLDOUT:].repeat(DRAWS, 1, 1, 1), labels[-HOLDOUT:].repeat(DRAWS)
    acc = noisy_accuracy(load_classifier(classifier_checkpoint(preset), schedule), x0, y, schedule, NOISY_STEPS,
                         torch.Generator().manual_seed(0))
    by_scale = " / ".join(f"{s:g}" for s in scales)
    rows = [
        ("样本质量", "引导后 FID：ImageNet 128×128 为 2.97，256×256 为 4.59，512×512 为 7.72（越低越好）",
         f"生成数字被评估分类器判为所要求数字的比例，s = {by_scale}："
         + " / ".join(f"{v:.3f}" for v in hit.mean(1).tolist()),
         "随机猜 0.1；无引导（s = 0）时与要求无关"),
        ("多样性", "论文：引导以多样性换取保真度",
         f"类内特征离散度（到本类均值的平均平方距离），s = {by_scale}："
         + " / ".join(f"{v:.0f}" for v in spread.mean(1).tolist()), "—"),
        ("带噪分类器", "在加噪的 ImageNet 上训练，噪声调度与扩散模型相同",
         "留出数字上的准确率，代码 t = " + " / ".join(map(str, NOISY_STEPS)) + "："
         + " / ".join(f"{v:.2f}" for v in acc.tolist()), f"随机猜 0.1；{HOLDOUT} 张留出数字，每张 {DRAWS} 次加噪"),
        ("采样步数", "引导 + 25 步采样即追平 BigGAN-deep", f"DDIM（算法 2）{DDIM_STEPS} 步，每个尺度 {PER_LABEL * 10} 个样本",
         "所有尺度从同一组 x_T 出发"),
    ]
    lines = ["| 项目 | 论文（摘要与官方 README） | 我们测得（digits，quick 预设） | 参照 |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]) + f"\n\n预设：{preset}。\n"


def make(out: Path, preset: str) -> None:
    samples = guided_digits(preset)
    hit, spread = per_sample_stats(samples)
    scales, n = samples["scales"].tolist(), hit.shape[1]
    fig, (left, right) = subplots(1, 2, figsize=(7.5, 3.0))
    for ax, stat, label in ((left, hit, "判为所要求数字的比例"),
                            (right, spread, "类内特征离散度")):
        mean, se = stat.mean(1).numpy(), (stat.std(1) / math.sqrt(n)).numpy()
        ax.errorbar(scales, mean, yerr=2 * se, marker="o", capsize=3)
        ax.set(xscale="symlog", xlabel="梯度尺度 s", title=label)
        ax.set_xticks(scales, [f"{s:g}" for s in scales])
    left.axhline(0.1, color="gray", ls="--", lw=1)
    left.set_ylim(0, 1.05)
    save(fig, out / "adm_tradeoff.svg")
    (out / "adm_repro.md").write_text(repro_table(preset, scales, hit, spread), encoding="utf-8")
