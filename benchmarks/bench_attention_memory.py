"""Benchmark: peak memory of one SAM encoder forward, reference attention against the folded SDPA.

segment_anything's `Attention` materialises every block's attention matrix (and the global
blocks' relative-position bias, B×heads×HW×HW); `sam_attention.SDPAttention` folds the bias into
q and k and never builds it. Each implementation runs in its own process (peak RSS is a
per-process high-water mark): the figure is the peak's rise over the built model and its input,
in MiB, for `--batch` images; on CUDA, `torch.cuda.max_memory_allocated` over the same span.
One JSON line per implementation, with `ms_per_image`.

    python benchmarks/bench_attention_memory.py [--encoder sam_vit_b] [--batch 1]
        [--blocks 0] [--device cpu] [--dtype fp32|bf16] [--only reference|sdpa]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from polypseg.models.encoders import ENCODERS

IMPLEMENTATIONS = ("reference", "sdpa")


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Build the encoder (reference attention or ours), then one timed forward; the peak's rise."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    entry = ENCODERS[args.encoder]
    with torch.random.fork_rng(devices=[]):
        backbone = entry.build()
    if args.blocks:  # the peak is one block's: the first global one (ViT-B: 3rd) shows it
        backbone.blocks = backbone.blocks[: args.blocks]
    if args.only == "reference":  # undo `use_sdpa`: segment_anything's own attention
        from segment_anything.modeling.image_encoder import Attention

        for block in backbone.blocks:
            grid = tuple(
                (table.shape[0] + 1) // 2 for table in (block.attn.rel_pos_h, block.attn.rel_pos_w)
            )
            dim, heads = block.attn.qkv.in_features, block.attn.num_heads
            attention = Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=grid)
            attention.load_state_dict(block.attn.state_dict())
            block.attn = attention
    backbone = backbone.to(device, dtype).eval().requires_grad_(False)
    size = entry.preprocessing.input_size or 1024
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_mib(device)
    start = time.perf_counter()
    with torch.inference_mode():
        backbone(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "implementation": args.only,
        "encoder": args.encoder,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": str(device),
        "peak_rise_mib": round(_peak_mib(device) - before, 1),
        "ms_per_image": round(seconds / args.batch * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="sam_vit_b", help="a SAM registry name")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=0, help="keep the first N blocks (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="run one, in this process")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args)), flush=True)
        return
    for name in IMPLEMENTATIONS:  # a fresh process each: RSS peaks never go down
        command = [sys.executable, __file__, *sys.argv[1:], "--only", name]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
