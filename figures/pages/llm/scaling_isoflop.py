"""The scaling-laws page's second figure: IsoFLOP slices of the fitted Chinchilla law with their minima and the
measured runs, and the compute-optimal N_opt(C), D_opt(C) with the bootstrap's 10-90 % band against the papers'
exponents (scaling_isoflop.svg); the fitted laws under both ways of counting N (scaling_fit.md) and the page's 复现
table (scaling_repro.md)."""

from pathlib import Path

import matplotlib as mpl
import numpy as np

from figures.zoo.scaling import fits, results, scaling_grid
from refimpl.plots import save, subplots
from refimpl.scaling import Law, training_flops

PAGE = "llm/scaling-laws.md"
OUTPUTS = ("scaling_isoflop.svg", "scaling_fit.md", "scaling_repro.md")
KEYS = ("E", "A", "B", "alpha", "beta")
#: the papers' numbers shown for comparison (Kaplan Eq. (6.1) and Sec. 1.1; Chinchilla Table 2 and Eq. (10))
KAPLAN_A = 0.73
CHINCHILLA_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _law(summary: dict) -> Law:
    return Law(**{k: summary[k] for k in KEYS})


def make(out: Path, preset: str) -> None:
    run = scaling_grid(preset)
    res, fit_all = results(run), fits(run)
    fit = fit_all["total"]
    law = _law(fit["law"])
    runs = res["runs"]
    N = np.array([r["total"] for r in runs], dtype=float)
    D = np.array([r["tokens"] for r in runs], dtype=float)
    C = training_flops(N, D)
    norm = mpl.colors.LogNorm(C.min(), C.max())
    cmap = mpl.colormaps["viridis"]

    fig, (left, right) = subplots(1, 2, figsize=(7.1, 3.5))
    n = np.geomspace(N.min() / 4, N.max() * 4, 100)
    for c in np.geomspace(C.min() * 1.5, C.max() / 1.5, 4):
        left.plot(n, law.loss(n, c / (6 * n)), color=cmap(norm(c)), lw=1.2)
        n_opt, d_opt = law.compute_optimal(c)
        left.plot(n_opt, law.loss(n_opt, d_opt), "v", color=cmap(norm(c)), ms=7, mec="black", mew=0.6)
    left.scatter(N, [r["held_out"] for r in runs], c=C, cmap=cmap, norm=norm, s=16, edgecolors="gray",
                 linewidths=0.5, zorder=3)
    left.set_xscale("log")
    left.set_xlabel("模型参数 N（总数）")
    left.set_ylabel("留出集交叉熵（nats/字符）")
    left.set_title("等算力切片（IsoFLOP）", fontsize=9.5)

    c = np.geomspace(C.min(), C.max(), 50)
    n_opt, d_opt = law.compute_optimal(c)
    samples = [_law(s) for s in fit["samples"]]
    for values, color, label in ((n_opt, "C0", "N_opt"), (d_opt, "C1", "D_opt")):
        band = np.array([s.compute_optimal(c)[0 if label == "N_opt" else 1] for s in samples])
        right.fill_between(c, *np.percentile(band, [10, 90], axis=0), color=color, alpha=0.2, lw=0)
        right.plot(c, values, color=color, lw=1.6, label=f"{label}（拟合）")
    mid = np.sqrt(c[0] * c[-1])
    anchor = law.compute_optimal(mid)[0]
    for slope, style, label in ((KAPLAN_A, ":", f"N_opt ∝ C^{KAPLAN_A}（Kaplan）"), (0.5, "--", "N_opt ∝ C^0.5（Chinchilla）")):
        right.plot(c, anchor * (c / mid) ** slope, color="gray", ls=style, lw=1.1, label=label)
    right.set_xscale("log")
    right.set_yscale("log")
    for ax in (left, right):  # 11 pt: mathtext draws the powers of ten's exponents at 70%
        ax.tick_params(which="both", labelsize=11)
    right.set_xlabel("训练算力 C（FLOPs）")
    right.set_ylabel("计算最优的 N 与 D")
    right.set_title("计算最优分配", fontsize=9.5)
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save(fig, out / "scaling_isoflop.svg")

    def cell(summary: dict, key: str, fmt: str) -> str:
        value = format(summary["law"][key], fmt)
        if key in summary["interval"]:
            low, high = (format(x, fmt) for x in summary["interval"][key])
            return f"{value}（{low} – {high}）"
        return value

    rows = [("E（nats/字符）", "E", ".2f"), ("A", "A", ".3g"), ("B", "B", ".3g"), ("α", "alpha", ".2f"),
            ("β", "beta", ".2f"), ("a = β/(α+β)（N_opt ∝ C^a）", "a", ".2f"), ("b = α/(α+β)（D_opt ∝ C^b）", "b", ".2f")]
    paper = {**{k: format(v, "g") for k, v in CHINCHILLA_LAW.items()}, "a": "0.46", "b": "0.54"}
    lines = ["| 拟合量 | 按总参数计 N（Chinchilla 的数法） | 按非嵌入参数计 N（Kaplan 的数法） | Chinchilla 方法 3（论文式 (10)、表 2） |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {cell(fit_all['total'], key, fmt)} | {cell(fit_all['non_embedding'], key, fmt)} | "
              f"{paper[key]} |" for name, key, fmt in rows]
    lines.append(f"| 对数损失的残差（均方根） | {fit_all['total']['residual_rms']:.3f} | "
                 f"{fit_all['non_embedding']['residual_rms']:.3f} | — |")
    boot = fit["bootstrap"]
    lines += ["", f"同样的 {len(runs)} 个运行、同样的留出集损失，只是 N 的数法不同。括号里是自助法（bootstrap）的第 10 与第 90 "
              f"百分位数：每次随机抽取 {boot['fraction']:.0%} 的运行（不放回）重新拟合，共 {boot['times']} 次，与 Chinchilla "
              f"表 2 的做法相同。"]
    (out / "scaling_fit.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    g = res["grid"]
    nk = fit_all["non_embedding"]

    def exponent(summary: dict, key: str) -> str:
        low, high = summary["interval"][key]
        return f"{summary['law'][key]:.2f}（{low:.2f} – {high:.2f}）"

    tokens = sorted({r["tokens"] for r in runs})
    repro = [
        ("数据", "Kaplan：WebText2，约 2.3×10^10 个 BPE token；Chinchilla：MassiveText，Chinchilla 训练 1.4T 个 token",
         f"本站笔记 {res['train_chars']:,} 个训练字符（字符级，词表 {next(iter(g['models'].values()))['vocab_size']:,} 个符号）", "—"),
        ("模型规模", "Kaplan：768 到 1.5×10^9 个非嵌入参数；Chinchilla：70M 到 16B 以上",
         f"{min(N):,.0f} – {max(N):,.0f} 个参数（非嵌入 {min(r['non_embedding'] for r in runs):,} – "
         f"{max(r['non_embedding'] for r in runs):,}），{len(g['models'])} 种宽度", "—"),
        ("训练量 D", "Kaplan：2.2×10^7 到 2.3×10^10 个 token；Chinchilla：5B 到 500B 个 token",
         f"{tokens[0]:,} – {tokens[-1]:,} 个字符（最多约 {tokens[-1] / res['train_chars']:.1f} 遍训练文本）", "—"),
        ("学习率调度", "Kaplan：所有运行 3000 步预热后余弦衰减到 0，步数固定；Chinchilla：余弦周期与 D 相配，衰减 10 倍",
         f"每个运行预热 10%，余弦衰减到 0，周期与步数相配；峰值学习率 {g['lr']:g}", "—"),
        ("N_opt ∝ C^a 的 a", f"Kaplan {KAPLAN_A}（式 (6.1)）；Chinchilla 0.50 / 0.49 / 0.46（表 2 的三种方法）",
         f"按总参数 {exponent(fit, 'a')}；按非嵌入参数 {exponent(nk, 'a')}", "—"),
        ("D_opt ∝ C^b 的 b", "Kaplan 0.27；Chinchilla 0.50 / 0.51 / 0.54",
         f"按总参数 {exponent(fit, 'b')}；按非嵌入参数 {exponent(nk, 'b')}", "—"),
    ]
    lines = ["| 项目 | 论文（Kaplan 2020 / Chinchilla 2022） | 我们测得（本站笔记，字符级） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in repro]
    (out / "scaling_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
