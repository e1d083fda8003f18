"""The MoE page's figure: each expert's share of the held-out tokens per layer, with and without the Switch
load-balancing loss, and the fraction of expert choices a capacity limit would drop (moe_balance.svg); the measured
numbers (moe_balance.md) and the page's 复现 table (moe_repro.md)."""

import json
from pathlib import Path

from figures.zoo.moe import CAPACITY_FACTORS, moe_runs, stats
from refimpl.plots import save, subplots

PAGE = "llm/moe.md"
OUTPUTS = ("moe_balance.svg", "moe_balance.md", "moe_repro.md")
RUNS = {"moe": ("有负载均衡损失（α = 0.01）", "C1"), "moe_noaux": ("无负载均衡损失（α = 0）", "C0")}


def make(out: Path, preset: str) -> None:
    run = moe_runs(preset)
    s = stats(run)
    config = json.loads((run / "moe" / "config.json").read_text())["config"]
    m = config["model"]
    r, se = s["runs"], s["se"]
    assert RUNS["moe"][0].endswith(f"α = {r['moe']['aux_coef']:g}）")  # the legend states the run's alpha

    fig, (left, right) = subplots(1, 2, figsize=(7.0, 3.2), gridspec_kw={"width_ratios": [1.5, 1]})
    n, layers = m["experts"], m["depth"]
    width = 0.38
    for j, (name, (label, color)) in enumerate(RUNS.items()):
        xs = [layer * (n + 1) + e + (j - 0.5) * width for layer in range(layers) for e in range(n)]
        left.bar(xs, [share for load in r[name]["load"] for share in load], width, color=color, label=label)
    left.axhline(1 / n, color="gray", ls=":", lw=1.2, label=f"均匀（1/{n}）")
    left.set_xticks([layer * (n + 1) + e for layer in range(layers) for e in range(n)],
                    [f"{e + 1}" for _ in range(layers) for e in range(n)])
    left.set_xlabel("　　".join(f"第 {layer + 1} 层的专家" for layer in range(layers)))
    left.set_ylabel("分到的选择（占比）")
    left.legend(loc="upper left", fontsize=8)
    left.set_ylim(0, max(max(load) for name in RUNS for load in r[name]["load"]) * 1.45)
    for name, (label, color) in RUNS.items():
        right.plot(CAPACITY_FACTORS, [100 * r[name]["dropped"][str(c)] for c in CAPACITY_FACTORS], color=color,
                   marker="o", ms=4)
    right.set_xlabel("容量因子（capacity factor）")
    right.set_ylabel("被丢弃的选择（%）")
    right.set_xticks(CAPACITY_FACTORS)
    right.set_ylim(bottom=0)
    fig.tight_layout()
    save(fig, out / "moe_balance.svg")

    def held(name: str) -> str:
        return f"{r[name]['held_out']:.3f} ± {se[name]:.3f}"

    def below(name: str) -> str:
        d = s["unigram"] - r[name]["held_out"]
        return f"{d:.3f} ± {se[f'{name}-unigram']:.3f}（{d / se[f'{name}-unigram']:.0f} 个标准误）"

    p = {name: r[name]["params"] for name in ("dense", "moe", "moe_noaux")}
    d_dense = r["moe"]["held_out"] - r["dense"]["held_out"]
    d_aux = r["moe"]["held_out"] - r["moe_noaux"]["held_out"]
    d_load = r["moe_noaux"]["max_load"] - r["moe"]["max_load"]
    d_balance = r["moe_noaux"]["balance"] - r["moe"]["balance"]
    rows = [
        ("前馈层", f"SwiGLU，宽 {config['model']['expert_hidden'] * m['top_k']}",
         f"{n} 个 SwiGLU 专家，各宽 {m['expert_hidden']}，每个 token 用 {m['top_k']} 个", "同左"),
        ("负载均衡损失 α", "—", f"{r['moe']['aux_coef']:g}", f"{r['moe_noaux']['aux_coef']:g}"),
        ("参数（总数）", *(f"{p[name]['total']:,}" for name in ("dense", "moe", "moe_noaux"))),
        ("前馈层参数（全部专家与路由器）", *(f"{p[name]['mlp']:,}" for name in ("dense", "moe", "moe_noaux"))),
        ("每个 token 用到的前馈层参数", *(f"{p[name]['active_mlp']:,}" for name in ("dense", "moe", "moe_noaux"))),
        (f"留出集交叉熵（nats/字符，第 {config['steps']} 步）", *(held(name) for name in ("dense", "moe", "moe_noaux"))),
        ("比 unigram 基线低（配对）", *(below(name) for name in ("dense", "moe", "moe_noaux"))),
        ("负载均衡损失 N·Σ f_i P_i（两层平均，均匀为 1）", "—",
         *(f"{r[name]['balance']:.3f}" for name in ("moe", "moe_noaux"))),
        ("N × 最大份额（两层平均，均匀为 1）", "—", *(f"{r[name]['max_load']:.3f}" for name in ("moe", "moe_noaux"))),
    ]
    lines = ["| | 稠密（LLaMA 页的 quick 模型） | MoE（有负载均衡损失） | MoE（无负载均衡损失） |",
             "| --- | --- | --- | --- |", *[f"| {' | '.join(row)} |" for row in rows], "",
             f"同一段留出文本上的配对差：**MoE − 稠密** {d_dense:+.3f} ± {se['moe-dense']:.3f} nats/字符"
             f"（{abs(d_dense) / se['moe-dense']:.1f} 个标准误）；**有 − 无负载均衡损失** {d_aux:+.3f} ± "
             f"{se['moe-moe_noaux']:.3f} nats/字符；负载均衡损失（每块留出文本各算一次再平均）**无 − 有** "
             f"{d_balance:+.3f} ± {se['balance']:.3f}（{d_balance / se['balance']:.1f} 个标准误），N × 最大份额 **无 − 有** "
             f"{d_load:+.3f} ± {se['max_load']:.3f}（{d_load / se['max_load']:.1f} 个标准误）。unigram 基线 "
             f"{s['unigram']:.3f} nats/字符。",
             "",
             f"留出集共 {s['targets']:,} 个字符；± 是标准误，按每块 {s['block_chars']} 个字符（{s['blocks']} 块）的块均值"
             f"估计，只反映留出文本的抽样，**不含换一个随机种子重新训练带来的变化**。{preset} 预设：三者都训练 "
             f"{config['steps']} 步，batch {config['batch_size']}，上下文 {config['context']} 个字符，学习率 "
             f"{config['lr']:g}（预热 {config['warmup']} 步），种子 {config['seed']}，每步的训练窗口相同。右图按训练时"
             f"一步的 token 数（{s['group']} 个）分组套用容量上限。"]
    (out / "moe_balance.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    repro = [
        ("路由", "Switch：每个 token 只去 1 个专家（k = 1），门值 p_i(x)；Mixtral：8 个专家选 2 个，门值是两者 logit 的 softmax",
         f"两种都实现；quick 模型用 Mixtral 的做法：{n} 个专家选 {m['top_k']} 个",
         "与 transformers 的 MixtralForCausalLM 逐数一致（tests/test_moe.py）"),
        ("规模", "Switch：最大的模型上万亿参数（基于 T5）；Mixtral 8x7B：共 47B 参数，每个 token 用 13B",
         f"共 {p['moe']['total']:,} 个参数，每个 token 用到的前馈层参数 {p['moe']['active_mlp']:,}", "—"),
        ("结论", "Switch：同样的计算资源下预训练最多比 T5-Base/Large 快 7 倍；Mixtral：在所有评测的基准上达到或超过 Llama 2 70B 与 GPT-3.5",
         f"每个 token 算力相同时，MoE − 稠密的留出集损失之差 {d_dense:+.3f} ± {se['moe-dense']:.3f} nats/字符",
         f"unigram 基线 {s['unigram']:.3f}"),
    ]
    lines = ["| 项目 | 论文（Switch / Mixtral） | 我们测得（本站笔记，字符级） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in repro]
    (out / "moe_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
