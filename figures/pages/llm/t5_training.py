"""Span-corruption training of the quick T5 on the notes: training and held-out loss vs steps against the unigram
baseline (t5_loss.svg), and the T5 page's 复现 table (t5_repro.md)."""

from pathlib import Path

from figures.zoo.t5 import held_out_curve, t5_checkpoint
from refimpl import checkpoint
from refimpl.text import corpus
from refimpl.plots import save, subplots

PAGE = "llm/t5.md"
OUTPUTS = ("t5_loss.svg", "t5_repro.md")


def make(out: Path, preset: str) -> None:
    directory = t5_checkpoint(preset)
    ckpt, curve = checkpoint.load(directory, expect_model="t5"), held_out_curve(directory)
    history = ckpt.extra["history"]
    fig, ax = subplots(figsize=(6.4, 4.4))
    ax.plot([s for s, _ in history], [v for _, v in history], color="C0", alpha=0.6,
            label="训练批：全部目标 token")
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["target"] for p in curve], "o-", color="C1", label="留出集：全部目标 token")
    ax.plot(steps, [p["span"] for p in curve], "s-", color="C2", label="留出集：仅被破坏的字符")
    ax.axhline(curve[-1]["unigram"], color="C3", linestyle=":", label="unigram 基线（被破坏的字符）")
    ax.set(xlabel="训练步数", ylabel="交叉熵（nats/token）", title=f"笔记上的 span corruption（{preset} 预设）")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)  # below: no curve runs under it
    fig.tight_layout()
    save(fig, out / "t5_loss.svg")

    config, last = ckpt.config, curve[-1]
    model = config["model"]
    params = sum(v.numel() for v in ckpt.model_state.values())
    rows = [
        ("预训练目标", "span corruption：破坏 15% 的 token，平均 span 长 3（Sec. 3.3.4，最终模型 Sec. 3.7）",
         f"同一算法：窗口 {config['length']} 字符，每窗破坏 {round(0.15 * config['length'])} 个字符，"
         f"{max(round(round(0.15 * config['length']) / 3), 1)} 个 span", "—"),
        ("模型", "Base：编码器、解码器各 12 块，d_model 768，d_ff 3072，12 头，约 2.2 亿参数",
         f"各 {model['depth']} 块，d_model {model['width']}，d_ff {4 * model['width']}，{model['heads']} 头，"
         f"{params / 1e6:.2f}M 参数", "—"),
        ("词表", "SentencePiece 32,000 个 wordpiece", f"{model['vocab_size']} 个（每个字符一个 token + 特殊 token）", "—"),
        ("预训练量", "第 3.1 节的基线：2^19 步 × 128 条 × 512 token ≈ 340 亿 token（C4）；第 3.7 节发布的模型：100 万步 × 2^11 条，约 1 万亿 token",
         f"{config['steps']} 步 × {config['batch_size']} 个窗口（本站笔记的训练部分，{len(corpus()[0]) / 1e4:.0f} 万字符）", "—"),
        ("留出集：被破坏字符的交叉熵（nats）", "只在图 6（第 3.4.2 节）画了预训练损失曲线，用来讨论数据重复；不可比",
         f"{last['span']:.3f} ± {last['se']:.3f}", f"unigram {last['unigram']:.3f}"),
        ("留出集：全部目标 token（含 sentinel）", "—", f"{last['target']:.3f}", "—"),
    ]
    lines = ["| 项目 | 论文（T5） | 我们测得 | 参照 |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", f"预设 {preset}；留出集是笔记中每 10 行留出的 1 行，取 256 个随机窗口（种子固定）按训练时的方式破坏，"
              f"共 {last['tokens']} 个被破坏字符；± 为逐窗口差值（模型 − unigram）的标准误。"]
    (out / "t5_repro.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
