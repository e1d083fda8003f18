"""Flow matching's cached artifacts (library module, no OUTPUTS): the first flow trained with DDPM's quick config
on the straight path, and its reflow (the 2-rectified flow), which the flow-matching page's figures and
tests/test_flow.py share."""

from __future__ import annotations

from pathlib import Path

from figures.builder import cached
from refimpl import flow
from refimpl.core import pick_device

MODULES = ["refimpl.flow"]


def flow_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of the first flow (independent pairs) on ``data`` with DDPM's ``preset`` sizes."""
    config = flow.train_config(data, preset)

    def produce(out: Path) -> None:
        flow.train(config, out, device=pick_device(), progress=False)

    return cached(f"flow-{data}", MODULES, produce, preset=preset, config=config)


def reflow_checkpoint(data: str, preset: str) -> Path:
    """The checkpoint directory of the 2-rectified flow: :func:`flow_checkpoint`'s flow, reflowed with ``preset``'s
    sizes (the config names the parent by its weights, so a retrained parent means a new reflow)."""
    from refimpl.checkpoint import weights_digest

    parent = flow_checkpoint(data, preset)
    net, parent_config = flow.load_model(parent)
    config = flow.reflow_config(parent_config, weights_digest(net), preset)

    def produce(out: Path) -> None:
        flow.reflow(parent, config, out, device=pick_device(), progress=False)

    return cached(f"reflow-{data}", MODULES, produce, preset=preset, config=config)


def flows(data: str, preset: str) -> dict[str, flow.Velocity]:
    """The first flow and its reflow on ``data`` as velocity models, keyed "flow" and "reflow"."""
    return {name: flow.network(flow.load_model(ckpt)[0])
            for name, ckpt in (("flow", flow_checkpoint(data, preset)), ("reflow", reflow_checkpoint(data, preset)))}
