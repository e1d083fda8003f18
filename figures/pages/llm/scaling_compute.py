"""The scaling-laws page's main figure: held-out loss of every run of the grid against its training compute
C = 6 N D, one line per model width, with the fitted Chinchilla law along each width and its compute-optimal frontier
(scaling_compute.svg); the grid's measured losses (scaling_grid.md); the training loss of each width's longest run
read at the shorter budgets against the runs whose cosine schedule ends there (scaling_schedule.md)."""

from pathlib import Path

import numpy as np

from figures.zoo.scaling import fits, results, scaling_grid
from refimpl.plots import save, subplots
from refimpl.scaling import Law, training_flops

PAGE = "llm/scaling-laws.md"
OUTPUTS = ("scaling_compute.svg", "scaling_grid.md", "scaling_schedule.md")


def make(out: Path, preset: str) -> None:
    run = scaling_grid(preset)
    res, fit = results(run), fits(run)["total"]
    law = Law(**{k: fit["law"][k] for k in ("E", "A", "B", "alpha", "beta")})
    runs = res["runs"]
    widths = sorted({r["width"] for r in runs})
    budgets = sorted({r["tokens"] for r in runs})
    colors = {w: f"C{i}" for i, w in enumerate(widths)}

    fig, ax = subplots(figsize=(6.4, 4.0))
    for w in widths:
        rows = sorted((r for r in runs if r["width"] == w), key=lambda r: r["tokens"])
        n = rows[0]["total"]
        c = [training_flops(n, r["tokens"]) for r in rows]
        ax.plot(c, [r["held_out"] for r in rows], "o-", color=colors[w], ms=4, lw=1.2,
                label=f"宽 {w}（N = {n:,}）")
        d = np.geomspace(budgets[0] / 2, budgets[-1] * 2, 60)
        ax.plot(training_flops(n, d), law.loss(n, d), "--", color=colors[w], lw=0.9, alpha=0.8)
    c_all = [training_flops(r["total"], r["tokens"]) for r in runs]
    c = np.geomspace(min(c_all) / 2, max(c_all) * 2, 80)
    n_opt, d_opt = law.compute_optimal(c)
    ax.plot(c, law.loss(n_opt, d_opt), color="black", lw=1.8, label="拟合律的计算最优前沿")
    ax.axhline(res["unigram"], color="gray", ls=":", lw=1.2, label="一元（unigram）基线")
    ax.set_xscale("log")
    ax.tick_params(which="both", labelsize=11)  # 11 pt: mathtext draws the powers of ten's exponents at 70%
    ax.set_xlabel("训练算力 C = 6ND（FLOPs；N 按总参数计）")
    ax.set_ylabel("留出集交叉熵（nats/字符）")
    ax.legend(loc="upper right", fontsize=8.5)
    fig.tight_layout()
    save(fig, out / "scaling_compute.svg")

    size = res["block_chars"]
    unigram = np.array(res["unigram_blocks"])
    header = ["宽", "N（总参数）", "N（非嵌入）", *(f"D = {d:,}" for d in budgets)]
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join(['---'] * len(header))} |"]
    for w in widths:
        rows = sorted((r for r in runs if r["width"] == w), key=lambda r: r["tokens"])
        cells = [f"{r['held_out']:.3f} ± {np.std(r['blocks'], ddof=1) / np.sqrt(len(r['blocks'])):.3f}"
                 for r in rows]
        lines.append(f"| {w} | {rows[0]['total']:,} | {rows[0]['non_embedding']:,} | {' | '.join(cells)} |")
    worst = max(runs, key=lambda r: r["held_out"])
    gap = np.array(worst["blocks"]) - unigram
    g = res["grid"]
    lines += ["", f"留出集交叉熵，单位 nats/字符；± 是标准误，按每块 {size} 个字符（{len(unigram)} 块）的块均值估计，只反映"
              f"留出文本（共 {res['targets']:,} 个字符）的抽样，不含换随机种子重新训练的变化。D 是训练时预测的字符数"
              f"（步数 × batch {g['batch_size']} × 上下文 {g['context']}）。一元（unigram）基线 {res['unigram']:.3f}；"
              f"最差的一格（宽 {worst['width']}、D = {worst['tokens']:,}）比它低 {-gap.mean():.3f} ± "
              f"{gap.std(ddof=1) / np.sqrt(len(gap)):.3f}（配对）。"]
    (out / "scaling_grid.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    steps = sorted({r["steps"] for r in runs})
    header = ["宽", *(f"第 {s} 步（D = {s * g['batch_size'] * g['context']:,}）" for s in steps[:-1])]
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join(['---'] * len(header))} |"]
    for w in widths:
        by_steps = {r["steps"]: dict(map(tuple, r["history"])) for r in runs if r["width"] == w}
        longest = by_steps[steps[-1]]
        cells = [f"{by_steps[s][s]:.3f} → {longest[s]:.3f}（{longest[s] - by_steps[s][s]:+.3f}）" for s in steps[:-1]]
        lines.append(f"| {w} | {' | '.join(cells)} |")
    lines += ["", f"训练损失（nats/字符，训练循环记录的最近 10 步的平均，每步 {g['batch_size']} 个窗口）。箭头左边：余弦周期恰好在"
              f"这一步结束的运行（与 D 相配）的最终值；右边：同一宽度、周期长 {steps[-1]} 步的运行在这一步读到的值"
              f"（Kaplan 式的读法：从一条更长的训练曲线中途读取）。同一宽度的运行初始权重相同、每一步抽到的训练窗口相同，"
              f"所以差值是配对的；但只有一个随机种子，也没有标准误。"]
    (out / "scaling_schedule.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
