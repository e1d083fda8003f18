"""``python -m refimpl sdxl ...``: SDXL's micro-conditioning, its buckets, the base/refiner split of a schedule, the
U-Net sizes counted from the configs, and the shapes through a tiny SDXL-style U-Net."""

from __future__ import annotations

import torch

from refimpl import sdxl
from refimpl.cli import add_common, nonnegative_int, open_fraction, positive_int


def add_commands(commands) -> None:
    """``python -m refimpl sdxl conditioning|bucket|split|sizes|anatomy``."""
    cmd = commands.add_parser("conditioning", help="the six micro-conditioning ids and the vector they make")
    cmd.add_argument("--original-size", nargs=2, type=positive_int, default=(1024, 1024), metavar=("H", "W"),
                     help="c_size: the training image's size before resizing (default 1024 1024)")
    cmd.add_argument("--crop", nargs=2, type=nonnegative_int, default=(0, 0), metavar=("TOP", "LEFT"),
                     help="c_crop: pixels cropped from the top and the left (default 0 0)")
    cmd.add_argument("--target-size", nargs=2, type=positive_int, default=(1024, 1024), metavar=("H", "W"),
                     help="the bucket (target) size (default 1024 1024)")
    add_common(cmd)
    cmd.set_defaults(run=_run_conditioning)

    cmd = commands.add_parser("bucket", help="the bucket of an image size, its resize and one random crop")
    cmd.add_argument("--size", nargs=2, type=positive_int, required=True, metavar=("H", "W"), help="image size")
    add_common(cmd)
    cmd.set_defaults(run=_run_bucket)

    cmd = commands.add_parser("split", help="split SDXL's sampling timesteps between the base and the refiner")
    cmd.add_argument("--steps", type=positive_int, default=40, help="sampling steps (default 40)")
    cmd.add_argument("--split", type=open_fraction, default=0.8,
                     help="denoising_end of the base = denoising_start of the refiner (default 0.8)")
    add_common(cmd)
    cmd.set_defaults(run=_run_split)

    cmd = commands.add_parser("sizes", help="count the parameters of the SD 1.5, SDXL base and refiner U-Nets")
    add_common(cmd)
    cmd.set_defaults(run=_run_sizes)

    cmd = commands.add_parser("anatomy", help="print the tensor shapes through a tiny SDXL-style diffusers U-Net")
    add_common(cmd)
    cmd.set_defaults(run=_run_anatomy)


def _run_conditioning(args) -> int:
    ids = sdxl.micro_conditioning_ids(tuple(args.original_size), tuple(args.crop), tuple(args.target_size))
    torch.manual_seed(args.seed)
    added = sdxl.AddedConditioning()  # SDXL base's sizes, random weights: the shapes, not the values, are the point
    pooled = torch.zeros(1, sdxl.POOLED_WIDTH)
    with torch.no_grad():
        vector, emb = added.vector(pooled, ids[None]), added(pooled, ids[None])
    print("ids (h, w, top, left, h_tgt, w_tgt): " + " ".join(f"{v:g}" for v in ids.tolist()))
    print(f"Fourier features: {sdxl.N_IDS} x {sdxl.FOURIER_DIM} = {sdxl.N_IDS * sdxl.FOURIER_DIM}")
    print(f"vector [pooled text {sdxl.POOLED_WIDTH}; features]: {' x '.join(map(str, vector.shape))}")
    print(f"added to the timestep embedding: {' x '.join(map(str, emb.shape))}")
    return 0


def _run_bucket(args) -> int:
    height, width = args.size
    bucket = sdxl.nearest_bucket(height, width)
    resized = sdxl.cover_size(height, width, bucket)
    image = torch.zeros(1, *resized)  # a stand-in of the resized image: only its size matters for the crop
    _, (top, left) = sdxl.random_crop(image, bucket, torch.Generator().manual_seed(args.seed))
    print(f"image {height}x{width} (h/w {height / width:.3f}) -> bucket {bucket[0]}x{bucket[1]} "
          f"(h/w {bucket[0] / bucket[1]:.3f})")
    print(f"resized to {resized[0]}x{resized[1]}, crop corner drawn from top 0..{resized[0] - bucket[0]}, "
          f"left 0..{resized[1] - bucket[1]}: ({top}, {left})")
    ids = sdxl.micro_conditioning_ids((height, width), (top, left), bucket)
    print("ids (h, w, top, left, h_tgt, w_tgt): " + " ".join(f"{v:g}" for v in ids.tolist()))
    return 0


def _run_split(args) -> int:
    timesteps = sdxl.leading_timesteps(args.steps)
    base, refiner = sdxl.split_timesteps(timesteps, args.split)
    cutoff = int(round(sdxl.T_TRAIN - args.split * sdxl.T_TRAIN))
    print(f"{args.steps} steps, split {args.split:g}: timesteps >= {cutoff} to the base, below to the refiner")
    print(f"base    ({len(base):3d} steps): {' '.join(map(str, base))}")
    print(f"refiner ({len(refiner):3d} steps): {' '.join(map(str, refiner))}")
    return 0


def _run_sizes(args) -> int:
    counts = {name: sdxl.parameter_counts(config) for name, config in sdxl.UNET_CONFIGS.items()}
    print(f"{'U-Net':14s}{'total':>15s}{'blocks':>8s}{'attention':>14s}{'text K/V':>13s}{'feed-forward':>15s}"
          f"{'ResNet':>14s}{'other':>13s}")
    for name, c in counts.items():
        p = c["parts"]
        print(f"{sdxl.NAMES[name]:14s}{c['total']:>15,}{c['transformer_blocks']:>8d}{p['attention']:>14,}"
              f"{p['text_kv']:>13,}{p['feed_forward']:>15,}{p['resnet']:>14,}{p['other']:>13,}")
    old, new = counts["sd15"], counts["sdxl-base"]
    grow = new["total"] - old["total"]
    print(f"SDXL base / SD 1.5 = {new['total'] / old['total']:.2f}x, +{grow:,} parameters, of which:")
    for label, keys in (("transformer blocks", ("attention", "text_kv", "feed_forward")), ("ResNet blocks", ("resnet",)),
                        ("other", ("other",))):
        delta = sum(new["parts"][k] - old["parts"][k] for k in keys)
        print(f"  {label:19s}{delta:+15,} ({delta / grow:+.0%})")
    return 0


def _run_anatomy(args) -> int:
    for name, shape in sdxl.trace_sdxl_unet(seed=args.seed):
        print(f"{name}: {' x '.join(map(str, shape))}")
    return 0
