"""Greedy generation with and without the KV cache (refimpl.llama.generate): tokens per second and the largest
logit difference between the two. Printed, never asserted.

Without the cache, step s recomputes all L + s positions (cost ~ sum over steps of the sequence length, quadratic
in the number of new tokens); with it, step s runs one position against the cached keys and values (linear).

Usage: python benchmarks/kv_cache.py [--width 256] [--depth 4] [--prompt 32] [--new 256] [--device cpu]
"""

import argparse
import os
import platform
import time

import torch

from refimpl.core import pick_device
from refimpl.llama import Llama, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = Llama(1000, args.width, args.depth, args.heads, args.kv_heads).to(device).eval()
    prompt = torch.randint(0, 1000, (args.batch, args.prompt), device=device)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{device}; width {args.width}, depth {args.depth}, heads {args.heads}/{args.kv_heads} kv, batch "
          f"{args.batch}, prompt {args.prompt}, {args.new} new tokens")
    results = {}
    for cache in (False, True):
        start = time.perf_counter()
        tokens, logits = generate(model, prompt, args.new, cache=cache)
        seconds = time.perf_counter() - start
        results[cache] = (tokens, logits)
        print(f"  {'with' if cache else 'without':7} cache: {seconds:7.2f} s, "
              f"{args.batch * args.new / seconds:8.1f} tokens/s")
    same = torch.equal(results[True][0], results[False][0])
    diff = (results[True][1] - results[False][1]).abs().max().item()
    print(f"  same tokens: {same}; largest logit difference {diff:.2e}")


if __name__ == "__main__":
    main()
