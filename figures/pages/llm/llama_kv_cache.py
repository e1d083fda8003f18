"""The KV cache's memory per token and per full-context sequence at the shapes of LLaMA-7B and Llama 2 70B, with
multi-head, grouped-query and multi-query attention (llama_kv_cache.md): refimpl.llama.kv_cache_size, in 16-bit
values."""

from pathlib import Path

from refimpl.llama import kv_cache_size

PAGE = "llm/llama.md"
OUTPUTS = ("llama_kv_cache.md",)
BYTES = 2  # fp16 / bf16
#: name, layers, query heads, head width, context, key/value heads of the released model (the published configs)
SHAPES = (("LLaMA-7B", 32, 32, 128, 2048, 32), ("Llama 2 70B", 80, 64, 128, 4096, 8))


def size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def make(out: Path, preset: str) -> None:
    lines = ["| 形状 | 注意力 | 键值头 | 每个 token | 一条满上下文序列 |", "| --- | --- | --- | --- | --- |"]
    for name, layers, heads, head_dim, context, released in SHAPES:
        for label, kv in (("多头（MHA）", heads), ("分组查询（GQA）", 8), ("多查询（MQA）", 1)):
            per_token = kv_cache_size(layers, kv, head_dim) * BYTES
            mark = "**（发布的配置）**" if kv == released else ""
            lines.append(f"| {name}：{layers} 层、{heads} 头、头宽 {head_dim} | {label}{mark} | {kv} | "
                         f"{size(per_token)} | {size(per_token * context)}（{context} 个 token） |")
    (out / "llama_kv_cache.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
