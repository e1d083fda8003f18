"""The fidelity/diversity trade-off of classifier-free guidance on digits, measured across guidance scales.
Draws cfg_tradeoff.svg and writes the CFG page's 复现 table (cfg_repro.md/.json)."""

import json
from pathlib import Path

import torch

from figures.zoo.cfg import PER_CLASS, STEPS, tradeoff_metrics, tradeoff_samples
from refimpl.cfg import CLASSES, diversity
from refimpl.data import digits
from refimpl.digits_eval import HOLDOUT, classifier, evaluate
from refimpl.plots import save, subplots

PAGE = "guidance/cfg.md"
OUTPUTS = ("cfg_tradeoff.svg", "cfg_repro.md", "cfg_repro.json")


def real_digits() -> dict[str, float]:
    """References: the probe's accuracy on the held-out real digits and their within-class diversity, and the
    Frechet distance of CLASSES * PER_CLASS random training digits to the held-out ones (the floor at that size)."""
    images, labels = digits()
    probe = classifier()
    index = torch.randperm(len(images) - HOLDOUT, generator=torch.Generator().manual_seed(0))[:CLASSES * PER_CLASS]
    with torch.no_grad():
        return {"accuracy": float((probe(images[-HOLDOUT:]).argmax(1) == labels[-HOLDOUT:]).float().mean()),
                "diversity": diversity(probe.features(images[-HOLDOUT:]), labels[-HOLDOUT:]),
                "frechet": evaluate(images[index]).frechet_distance}


def make(out: Path, preset: str) -> None:
    rows, real = tradeoff_metrics(tradeoff_samples(preset)), real_digits()
    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.6))
    left.plot([r["diversity"] for r in rows], [r["accuracy"] for r in rows], "o-", color="C0")
    for r in rows:  # the guided points crowd at accuracy 1: label every point just above it
        left.annotate(f"{r['scale']:g}", (r["diversity"], r["accuracy"]), textcoords="offset points",
                      xytext=(0, 6), ha="center")
    left.plot([real["diversity"]], [real["accuracy"]], "*", color="C3", markersize=12, label="留出的真实数字")
    left.set(xlabel="类内多样性 (平均特征距离)", ylabel="指定数字的准确率",
             ylim=(0, 1.1), title="保真度与多样性 (点旁标注引导尺度 s)")
    left.legend(loc="lower left")
    right.plot([r["scale"] for r in rows], [r["frechet"] for r in rows], "s-", color="C1")
    right.axhline(real["frechet"], color="C3", linestyle=":", label=f"{CLASSES * PER_CLASS} 张真实训练数字")
    right.legend()
    right.set(xlabel="引导尺度 s = 1 + w", ylabel="到留出数字的 Fréchet 距离 (越低越好)",
              title="Fréchet 距离随引导尺度的变化")
    fig.tight_layout()
    save(fig, out / "cfg_tradeoff.svg")

    (out / "cfg_repro.json").write_text(json.dumps({"rows": rows, "real": real, "per_class": PER_CLASS,
                                                    "steps": STEPS, "preset": preset}, indent=2) + "\n")
    table = ["| guidance_scale s | w = s − 1 | 指定数字的准确率 | 类内多样性 | Fréchet 距离 |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['scale']:g} | {r['scale'] - 1:g} | {r['accuracy']:.3f} | {r['diversity']:.2f} | {r['frechet']:.2f} |"
              for r in rows]
    table += [f"| 真实数字（留出集） | — | {real['accuracy']:.3f} | {real['diversity']:.2f} | {real['frechet']:.2f} |", "",
              f"每个数字 {PER_CLASS} 个样本（共 {CLASSES * PER_CLASS} 个），DDIM（η = 0）{STEPS} 步，所有尺度从同一组 "
              f"x_T 出发；预设 {preset}。真实数字一行：准确率与类内多样性取自留出集，Fréchet 距离是随机 {CLASSES * PER_CLASS} 张"
              "训练集数字到留出集的距离，即这个样本量下的下限。"]
    (out / "cfg_repro.md").write_text("\n".join(table) + "\n", encoding="utf-8")
