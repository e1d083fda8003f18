"""unCLIP's cached artifacts (library module, no OUTPUTS): the trained quick run (clip/, prior/, decoder/: the layout
of ``python -m refimpl unclip train --out``) and the measured comparison of image variations with image-to-image on
the held-out digits, shared by the unCLIP figures and tests/test_unclip.py. Only the unCLIP figures import this
module, so it imports refimpl.unclip statically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from figures.builder import cached
from figures.zoo.clip import clip_checkpoint
from refimpl import unclip
from refimpl.core import pick_device

MODULES = ["refimpl.unclip"]
T_LEVELS = (250, 500, 750)  # image-to-image noising steps compared with the variations (code t, T = 1000)
SEEDS = (0, 1)  # two samples per input and method: the second measures diversity
PER_DIGIT = 20  # text-to-image samples per digit, captions cycling through the eight EN/ZH templates
DECODER_SCALE = 3.0  # decoder guidance scale used for every measured sample
STEPS = 25  # DDIM steps per stage (and of the DDIM inversion of the variations)
ETA = 1.0  # DDIM eta of the variations (unCLIP Sec. 3.1: eta > 0; eta = 0 reconstructs)


def unclip_checkpoint(preset: str) -> Path:
    """The run directory of the preset's unCLIP, trained on the cached CLIP of the same preset."""
    config = unclip.train_config(preset)
    clip_run = clip_checkpoint(preset)

    def produce(out: Path) -> None:
        unclip.train(config, clip_run, out, device=pick_device(), progress=False)

    return cached("unclip", MODULES, produce, preset=preset,
                  config={**config, "clip": clip_run.parent.name + "/" + clip_run.name})


def captions() -> tuple[list[str], torch.Tensor]:
    """Digit-major text-to-image captions (PER_DIGIT per digit, template j % 8 for the j-th) and their labels."""
    from refimpl.captions import caption, templates

    names = templates()
    texts = [caption(names[j % len(names)], k) for k in range(10) for j in range(PER_DIGIT)]
    return texts, torch.arange(10).repeat_interleave(PER_DIGIT)


def comparison(preset: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(numbers, samples) on the held-out digits: for unCLIP variations (key ``var``: DDIM-inverted x_T decoded with
    eta = ETA), image-to-image from each t in T_LEVELS (``i2i_<t>``) and the eta = 0 reconstruction (``recon``,
    deterministic: one seed), with each seed of SEEDS, the samples ``<method>_<seed>`` (B, 1, 8, 8) and per
    method ``kept`` (share the classifier reads as the input's label), ``distance`` (mean RMS pixel distance to
    the input, pixels in [-1, 1]) and ``diversity`` (mean RMS distance between the two seeds' samples); plus the
    text-to-image samples ``t2i`` of :func:`captions` and their ``t2i_accuracy`` (overall, ``en``, ``zh``)."""
    run = unclip_checkpoint(preset)

    def produce(out: Path) -> None:
        from refimpl.digits_eval import classifier

        model = unclip.load(run).to(pick_device())
        images, labels = unclip.held_out()
        probe = classifier()
        samples, numbers = {"inputs": images, "labels": labels}, {"n": int(labels.numel())}

        def read(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return probe(x.clamp(-1, 1).cpu()).argmax(1)

        numbers["inputs_correct"] = read(images).eq(labels).float().mean().item()
        methods = {"var": lambda s: model.variations(images, eta=ETA, decoder_scale=DECODER_SCALE, steps=STEPS,
                                                     seed=s),
                   "recon": lambda s: model.variations(images, eta=0.0, decoder_scale=DECODER_SCALE, steps=STEPS)}
        for t in T_LEVELS:
            methods[f"i2i_{t}"] = (lambda t: lambda s: unclip.image_to_image(
                model.decoder, images.to(model.device), t, model.decoder_schedule, steps=STEPS, seed=s))(t)
        rms = lambda a, b: (a - b).pow(2).flatten(1).mean(1).sqrt().mean().item()  # noqa: E731
        for name, run_method in methods.items():
            outs = [run_method(s).float().cpu() for s in (SEEDS[:1] if name == "recon" else SEEDS)]
            numbers[name] = {"kept": sum(read(x).eq(labels).float().mean().item() for x in outs) / len(outs),
                             "distance": sum(rms(x, images) for x in outs) / len(outs)}
            if len(outs) == 2:
                numbers[name]["diversity"] = rms(outs[0], outs[1])
            for s, x in zip(SEEDS, outs):
                samples[f"{name}_{s}"] = x.contiguous()
        texts, t2i_labels = captions()
        x = model.text_to_image(texts, decoder_scale=DECODER_SCALE, steps=STEPS).float().cpu()
        right = read(x).eq(t2i_labels).float()
        zh = torch.tensor([not text.isascii() for text in texts])
        numbers["t2i_accuracy"] = {"all": right.mean().item(), "en": right[~zh].mean().item(),
                                   "zh": right[zh].mean().item(), "n": int(right.numel())}
        samples["t2i"], samples["t2i_labels"] = x.contiguous(), t2i_labels
        save_file(samples, str(out / "samples.safetensors"))
        (out / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True))

    config = {"run": run.parent.name + "/" + run.name, "t": T_LEVELS, "seeds": SEEDS, "per_digit": PER_DIGIT,
              "decoder_scale": DECODER_SCALE, "steps": STEPS, "eta": ETA}
    path = cached("unclip-comparison", MODULES, produce, preset=preset, config=config)
    return json.loads((path / "numbers.json").read_text()), load_file(str(path / "samples.safetensors"))
