"""The anatomy table: tensor shapes through Stable Diffusion v1 at 512x512 (documented), diffusers'
StableDiffusionPipeline with tiny components (traced with forward hooks) and our trained LDM (traced)."""

from pathlib import Path

from figures.zoo.ldm import ldm_checkpoint
from refimpl import ldm

PAGE = "latent/ldm.md"
OUTPUTS = ("ldm_anatomy.md",)
STAGES = {"tokens": "词元 tokens", "text embeddings": "文本嵌入 τθ(y)", "latents z_T": "潜变量 z_T",
          "U-Net eps": "U-Net 输出 ε", "decoded image": "解码图像 D(z)"}


def make(out: Path, preset: str) -> None:
    traces = {key: dict(trace) for key, trace in ldm.anatomy(*ldm.load(ldm_checkpoint(preset))).items()}
    lines = ["| 阶段 | Stable Diffusion v1，512×512（文档） | diffusers 管线，微型组件（实测） | 本站 LDM（实测） |",
             "| --- | --- | --- | --- |"]
    for stage, title in STAGES.items():
        cells = [" × ".join(map(str, traces[key][stage])) for key in ("sd_v1_512", "tiny_sd", "ours")]
        lines.append(f"| {title} | " + " | ".join(f"`{c}`" for c in cells) + " |")
    (out / "ldm_anatomy.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
