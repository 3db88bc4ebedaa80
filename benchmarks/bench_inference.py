"""Benchmark: frames per second of the whole segmenter, torch against onnxruntime, per batch size.

A segmenter (the named encoder with its deterministic random weights, a decoder of `--width`)
runs the video path on synthetic frames of Kvasir-SEG's typical size (576×720): resize to the
training size, encoder, decoder, probabilities at the frame's size. torch runs the pyfunc's own
segmenter (`Segmenter.predict_proba_batch`: bf16 encoder on CUDA, fp32 on CPU); onnxruntime runs
the `polypseg export` graph (`ExportGraph`, fp32, CUDA provider when present) through
`OnnxPredictor`. The first batch of each is a warm-up, not timed. Prints one JSON line.

    python benchmarks/bench_inference.py                      # CPU: the tiny SAM at 256 px
    python benchmarks/bench_inference.py --encoder sam_vit_b --image-size 512   # the GPU form
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from polypseg.evaluation.predictors import OnnxPredictor, batch_input, providers
from polypseg.export.onnx import ExportGraph, to_onnx
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import encoder_architecture
from polypseg.models.segmenter import Segmenter


def frames_per_second(run, frames: list[np.ndarray], batch: int, batches: int) -> float:
    run(frames[:batch])  # warm-up: allocations, kernel choice, onnxruntime's first run
    start = time.perf_counter()
    for _ in range(batches):
        run(frames[:batch])
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="sam_tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=256, help="decoder width")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per batch size")
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--frame-width", type=int, default=720)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    shape = (args.height, args.frame_width, 3)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(max(sizes))]
    encoder = encoder_architecture(args.encoder)
    torch.manual_seed(0)
    decoder = SimpleDecoder(encoder.out_channels, args.width).eval()
    segmenter = Segmenter(encoder, decoder, args.image_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        example = torch.from_numpy(batch_input(frames[:2], args.image_size))
        metadata = {"encoder": args.encoder, "image_size": str(args.image_size)}
        to_onnx(ExportGraph(encoder, decoder).eval(), example, metadata).save(
            Path(tmp) / "m.onnx", external_data=False
        )
        export_s = time.perf_counter() - start
        runtime = OnnxPredictor(Path(tmp) / "m.onnx")
        run = runtime.proba_batch
        ort_fps = {b: frames_per_second(run, frames, b, args.batches) for b in sizes}
    segmenter.to(device)
    run = segmenter.predict_proba_batch
    torch_fps = {b: frames_per_second(run, frames, b, args.batches) for b in sizes}
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    figures = {
        "device": f"{device.type}: {name or platform.machine()}",
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_provider": providers()[0],
        "encoder": args.encoder,
        "image_size": args.image_size,
        "frame_size": list(shape[:2]),
        "export_s": round(export_s, 1),
        "torch_fps": {str(b): round(v, 2) for b, v in torch_fps.items()},
        "onnxruntime_fps": {str(b): round(v, 2) for b, v in ort_fps.items()},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
