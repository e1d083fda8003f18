"""``python -m refimpl PAPER COMMAND ...`` (also installed as the ``refimpl`` command)."""

import sys

from refimpl.cli import main as run

#: paper command -> module that implements it (imported only when its command runs)
PAPERS: dict[str, str] = {
    "nonequilibrium": "refimpl.nonequilibrium",
    "ncsn": "refimpl.ncsn",
    "ddpm": "refimpl.ddpm",
    "sde": "refimpl.sde",
    "ddim": "refimpl.ddim",
    "iddpm": "refimpl.iddpm",
    "solvers": "refimpl.solvers",
    "adm": "refimpl.adm",
    "cfg": "refimpl.cfg",
    "glide": "refimpl.glide",
    "clip": "refimpl.clip",
    "unclip": "refimpl.unclip",
    "imagen": "refimpl.imagen",
    "ldm": "refimpl.ldm",
    "lora": "refimpl.lora",
    "dreambooth": "refimpl.dreambooth",
    "textual-inversion": "refimpl.textual_inversion",
    "controlnet": "refimpl.controlnet",
    "gpt": "refimpl.gpt",
    "bert": "refimpl.bert",
    "t5": "refimpl.t5",
}


def main() -> int:
    return run(PAPERS)


if __name__ == "__main__":
    sys.exit(main())
