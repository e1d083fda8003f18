"""The LLaMA page's main figure: held-out loss against steps of the quick LLaMA, of GPT-2's blocks in LLaMA's frame
and of the GPT page's model, all of the same width, depth, heads, context, steps, batch, learning rate, seed and
data, against the unigram baseline (llama_ablation.svg); the measured numbers (llama_ablation.md) and the page's
复现 table (llama_repro.md)."""

import json
from pathlib import Path

from figures.zoo.llama import EVAL_EVERY, ablation_run, curve
from refimpl.plots import save, subplots

PAGE = "llm/llama.md"
OUTPUTS = ("llama_ablation.svg", "llama_ablation.md", "llama_repro.md")
RUNS = {"gpt": ("GPT（GPT 页的模型：输出层与嵌入绑定）", "C0", "--"),
        "gpt_blocks": ("GPT-2 的块，LLaMA 的嵌入与输出层", "C0", "-"),
        "llama": ("LLaMA 的块（RMSNorm、SwiGLU、RoPE、GQA）", "C1", "-")}


def make(out: Path, preset: str) -> None:
    run = ablation_run(preset)
    c = curve(run)
    config = json.loads((run / "llama" / "config.json").read_text())["config"]
    m = config["model"]

    fig, ax = subplots(figsize=(6.4, 3.8))
    for name, (label, color, style) in RUNS.items():
        ax.plot(*zip(*c[name]["train"]), color=color, ls=style, lw=0.8, alpha=0.3)
        ax.plot(c["steps"], c[name]["held_out"], color=color, ls=style, marker="o", ms=3, label=label)
    ax.axhline(c["unigram"], color="gray", ls=":", lw=1.2, label="一元（unigram）基线")
    ax.set_xlabel("训练步数")
    ax.set_ylabel("交叉熵（nats/字符）")
    ax.set_ylim(c["llama"]["held_out"][-1] - 0.3, c["unigram"] + 1.2)  # the untrained models start near ln V: cut
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    save(fig, out / "llama_ablation.svg")

    se, last = c["se"], {name: c[name]["held_out"][-1] for name in RUNS}
    p = {name: c[name]["params"] for name in RUNS}

    def diff(a: str, b: str) -> str:
        d, s = last[a] - last[b], se[f"{a}-{b}"]
        return f"{d:+.3f} ± {s:.3f} nats/字符（{abs(d) / s:.0f} 个标准误）"

    rows = [
        ("块", "LayerNorm、GELU MLP（宽 256）、带偏置、多头", "同左",
         f"RMSNorm、SwiGLU（宽 {m['mlp_hidden']}）、无偏置、{m['heads']} 个查询头共用 {m['kv_heads']} 个键值头"),
        ("位置", "学出来的绝对位置，N(0, 0.02) 起步", "学出来的绝对位置，N(0, 1) 起步", "RoPE（无位置参数）"),
        ("嵌入与输出层", "绑定，嵌入 N(0, 0.02) 起步", "不绑定，嵌入 N(0, 1) 起步", "同左"),
        ("参数（总数）", *(f"{p[name]['total']:,}" for name in RUNS)),
        ("参数（不含嵌入、位置与输出层）", *(f"{p[name]['non_embedding']:,}" for name in RUNS)),
        (f"留出集交叉熵（nats/字符，第 {c['steps'][-1]} 步）", *(f"{last[name]:.3f} ± {se[name]:.3f}" for name in RUNS)),
        ("比 unigram 基线低（配对）", *(f"{c['unigram'] - last[name]:.3f} ± {se[f'{name}-unigram']:.3f}" for name in RUNS)),
    ]
    lines = [f"| | {' | '.join(label.split('（')[0] for label, _, _ in RUNS.values())} |", "| --- | --- | --- | --- |",
             *[f"| {' | '.join(r)} |" for r in rows], "",
             f"同一段留出文本上的配对差（负数：前者的损失更低）：**只换块**（LLaMA 的块 − GPT-2 的块，嵌入与输出层相同）"
             f"{diff('llama', 'gpt_blocks')}；**只换嵌入与输出层**（GPT-2 的块在 LLaMA 的框架里 − GPT 页的模型）"
             f"{diff('gpt_blocks', 'gpt')}。unigram 基线 {c['unigram']:.3f} nats/字符。",
             "",
             f"留出集共 {c['targets']:,} 个字符；± 是标准误，按每块 {c['block_chars']} 个字符（{c['blocks']} 块）的块均值"
             f"估计，只反映留出文本的抽样，不含换一个随机种子重新训练带来的变化。{preset} 预设：三者都训练 "
             f"{config['steps']} 步，batch {config['batch_size']}，上下文 {config['context']} 个字符，学习率 "
             f"{config['lr']:g}（预热 {config['warmup']} 步），种子 {config['seed']}，每步的训练窗口相同；"
             f"每 {EVAL_EVERY} 步测一次留出集。"]
    (out / "llama_ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    repro = [
        ("架构", "前置 RMSNorm、SwiGLU（宽 2/3·4d）、RoPE，去掉绝对位置嵌入（Sec. 2.2）；LLaMA 1 全部是多头注意力",
         f"同样的块；另加 GQA（{m['heads']} 个查询头共用 {m['kv_heads']} 个键值头，Llama 2 的大模型才用）",
         "与 transformers 的 LlamaForCausalLM 逐数一致（tests/test_llama.py）"),
        ("规模", "6.7B–65.2B 参数，32–80 层，宽 4096–8192，上下文 2048 个 token",
         f"{p['llama']['total']:,} 个参数，{m['depth']} 层，宽 {m['width']}，上下文 {config['context']} 个字符", "—"),
        ("训练量", "1.0T–1.4T 个 token，batch 4M token；AdamW（β2 = 0.95）、余弦衰减、权重衰减 0.1",
         f"{config['steps']} 步 × {config['batch_size']} × {config['context']} 个字符；项目统一的 AdamW"
         f"（权重衰减 0），预热后学习率 {config['lr']:g} 恒定", "—"),
        ("结论", "LLaMA-13B 在多数基准上胜过 GPT-3（175B）；LLaMA-65B 与 Chinchilla-70B、PaLM-540B 相当",
         f"同宽同深、只换块：留出集损失之差 {diff('llama', 'gpt_blocks')}",
         f"unigram 基线 {c['unigram']:.3f}"),
    ]
    lines = ["| 项目 | 论文（LLaMA） | 我们测得（本站笔记，字符级） | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in repro]
    (out / "llama_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
