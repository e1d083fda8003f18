"""``python -m refimpl PAPER COMMAND ...`` (also installed as the ``refimpl`` command)."""

import sys

from refimpl.cli import main as run

#: paper command -> module that implements it (imported only when its command runs)
PAPERS: dict[str, str] = {
    "nonequilibrium": "refimpl.commands.nonequilibrium",
    "ncsn": "refimpl.commands.ncsn",
    "ddpm": "refimpl.commands.ddpm",
    "sde": "refimpl.commands.sde",
    "ddim": "refimpl.commands.ddim",
    "vpred": "refimpl.commands.vpred",
    "flow": "refimpl.commands.flow",
    "consistency": "refimpl.commands.consistency",
    "dit": "refimpl.commands.dit",
    "sdxl": "refimpl.commands.sdxl",
    "sd3": "refimpl.commands.sd3",
    "iddpm": "refimpl.commands.iddpm",
    "solvers": "refimpl.commands.solvers",
    "adm": "refimpl.commands.adm",
    "cfg": "refimpl.commands.cfg",
    "glide": "refimpl.commands.glide",
    "clip": "refimpl.commands.clip",
    "unclip": "refimpl.commands.unclip",
    "imagen": "refimpl.commands.imagen",
    "ldm": "refimpl.commands.ldm",
    "lora": "refimpl.commands.lora",
    "dreambooth": "refimpl.commands.dreambooth",
    "textual-inversion": "refimpl.commands.textual_inversion",
    "controlnet": "refimpl.commands.controlnet",
    "gpt": "refimpl.commands.gpt",
    "bert": "refimpl.commands.bert",
    "t5": "refimpl.commands.t5",
    "llama": "refimpl.commands.llama",
    "scaling": "refimpl.commands.scaling",
    "moe": "refimpl.commands.moe",
    "rlhf": "refimpl.commands.rlhf",
    "dpo": "refimpl.commands.dpo",
}


def main() -> int:
    return run(PAPERS)


if __name__ == "__main__":
    sys.exit(main())
