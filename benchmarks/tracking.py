#!/usr/bin/env python
"""Reason once, track at camera rate: milliseconds per SAM2-tracked frame against milliseconds per full LENS query on
the same frames, and the size of the tracker's memory bank over a long stream.

Part 1 builds a LENS model with random weights: a tiny Qwen2.5-VL (--hidden, 2 layers) at realistic token counts
(--mllm-image 448 px = 256 image tokens, --new-tokens generated tokens, forced) and a real SAM2 (--sam, Hiera-T by
default) at --sam-size px (1024 as released), with SAM2's memory modules (random). It runs one LENS query per frame
on --lens-frames frames, then starts the tracker from the first query's mask and tracks --track-frames frames.
Part 2 streams --stream-frames frames through a tiny SAM2 at --stream-size px and prints the number of stored
frame outputs and tensor bytes as the stream goes on: they must stop growing once the bank is full (exit status 1
otherwise). With --device cuda, part 3 prints masks per second of SAM2 Hiera-L tracking at 1024 px (bf16 autocast).

    python benchmarks/tracking.py                              # CPU: Hiera-T 1024 px, tiny MLLM, 1,000-frame stream
    python benchmarks/tracking.py --device cuda --hidden 2048  # GPU: LENS-3B-wide tiny MLLM, then Hiera-L masks/s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from _smoke import parse_with_smoke
from PIL import Image

from lens_model.inference.pipeline import LensPipeline
from lens_model.model.config import SamConfig
from lens_model.model.modeling import LensModel
from lens_model.model.sam_memory import load_sam_memory
from lens_model.model.tiny import build_tiny_processor, tiny_lens_config, tiny_mllm_config
from lens_model.tracking.tracker import StreamingTracker

SAMPLE_PHOTO = os.path.join(os.path.dirname(__file__), "..", "assets", "sample.jpg")
GPU_GOAL_MASKS_PER_S = 60


def clip(n: int, hw: tuple[int, int] = (360, 480)) -> list[np.ndarray]:
    """n crops of the sample photo sliding diagonally (a moving camera)."""
    photo = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    h, w = hw
    steps = [(i % 16) * 2 for i in range(n)]
    return [np.ascontiguousarray(photo[s : s + h, s : s + w]) for s in steps]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3, out


def sam_config(name: str, size: int) -> SamConfig:
    if name == "tiny":
        return tiny_lens_config(sam_image_size=size).sam
    return SamConfig(config_name=f"configs/sam2/{name}.yaml", overrides=[f"++model.image_size={size}"], image_size=size)


def lens_vs_tracking(args, device: torch.device) -> None:
    torch.manual_seed(0)
    processor = build_tiny_processor(max_pixels=args.mllm_image**2)
    lens_config = tiny_lens_config(num_queries=args.queries)
    lens_config.max_pixels = args.mllm_image**2
    lens_config.sam = sam_config(args.sam, args.sam_size)
    model = LensModel(tiny_mllm_config(processor.tokenizer, hidden=args.hidden), lens_config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model.to(device=device, dtype=dtype).eval()
    model.mllm.generation_config.min_new_tokens = args.new_tokens  # a random model may stop early: force the count
    pipe = LensPipeline(model, processor, max_new_tokens=args.new_tokens)
    frames = clip(max(args.lens_frames, args.track_frames + 1))
    prompt = "the red cup on the left of the table"
    lens_ms, results = [], []
    for frame in frames[: args.lens_frames]:
        ms, result = timed(lambda frame=frame: pipe(frame, prompt), device)
        lens_ms.append(ms)
        results.append(result)
    tokens = results[0].num_tokens
    tracker = StreamingTracker.from_lens_model(model, load_sam_memory(lens_config.sam, allow_random=True))
    mask = results[0].mask
    if not mask.any():  # untrained: fall back to a box so that the tracker has a target
        mask = np.zeros(mask.shape, bool)
        mask[100:250, 150:330] = True
    tracker.start("target", mask, frames[0])
    track_ms = []
    for frame in frames[1 : args.track_frames + 1]:
        ms, _ = timed(lambda frame=frame: tracker.track(frame), device)
        track_ms.append(ms)
    image = torch.zeros(1, 3, args.sam_size, args.sam_size, device=device)
    with torch.inference_mode(), model.sam_autocast():
        encoder_ms = statistics.median(timed(lambda: model.sam.forward_image(image), device)[0] for _ in range(2))
    lens, track = statistics.median(lens_ms), statistics.median(track_ms)
    stats = tracker.memory_stats()
    per_frame = (stats.tensor_bytes / stats.stored_frames) / 2**20
    stages = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in results[-1].timings.items() if k != "total")
    print(
        f"part 1: SAM2 {args.sam} at {args.sam_size} px; MLLM hidden {args.hidden} x 2 layers, "
        f"{args.mllm_image}x{args.mllm_image} image, {tokens} generated tokens; {device.type}, {dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| per frame | median ms | min ms | frames |\n|---|---:|---:|---:|")
    print(f"| full LENS query | {lens:.0f} | {min(lens_ms):.0f} | {len(lens_ms)} |")
    print(f"| tracked frame (one target) | {track:.0f} | {min(track_ms):.0f} | {len(track_ms)} |")
    print(f"| of which SAM2 image encoder | {encoder_ms:.0f} | | |")
    print(f"LENS query / tracked frame: {lens / track:.2f}x")
    print(f"LENS query stages (last query, ms): {stages}")
    print(
        f"memory bank at {args.sam_size} px: {per_frame:.2f} MiB per stored frame, at most "
        f"{1 + tracker.lookback()} stored = {per_frame * (1 + tracker.lookback()):.1f} MiB per target"
    )


def memory_bank(args) -> bool:
    torch.set_num_threads(1)  # thousands of tiny operations: one thread avoids the scheduling overhead
    config = sam_config("tiny", args.stream_size)
    torch.manual_seed(0)
    from lens_model.model.sam import build_sam
    from lens_model.model.sam_memory import attach_memory

    sam = build_sam(config)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    tracker = StreamingTracker(sam)
    frames = clip(16, (120, 160))
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:120] = True
    tracker.start("target", mask, frames[0])
    checkpoints = {1, 10, 100, 1000, args.stream_frames}
    rows, peak, start = [], (0, 0), time.perf_counter()
    for i in range(1, args.stream_frames + 1):
        tracker.track(frames[i % len(frames)])
        stats = tracker.memory_stats()
        peak = max(peak, (stats.stored_frames, stats.tensor_bytes))
        if i in checkpoints:
            rows.append((i, stats.stored_frames, stats.tensor_bytes))
    elapsed = time.perf_counter() - start
    bound = 1 + tracker.lookback()
    print(
        f"\npart 2: memory bank over {args.stream_frames} frames (tiny SAM2 at {args.stream_size} px, "
        f"{elapsed / args.stream_frames * 1e3:.0f} ms/frame): bound {bound} stored frames "
        f"(conditioning frame + {tracker.lookback()} that SAM2 reads)"
    )
    print("| frames tracked | stored frame outputs | tensor KiB |\n|---:|---:|---:|")
    for i, stored, nbytes in rows:
        print(f"| {i} | {stored} | {nbytes / 1024:.1f} |")
    flat = peak[0] <= bound and rows[-1][2] == peak[1]
    print(f"peak {peak[0]} stored, {peak[1] / 1024:.1f} KiB: {'flat' if flat else 'GROWING'}")
    return flat


def gpu_masks_per_second(args, device: torch.device) -> None:
    from lens_model.model.sam import build_sam
    from lens_model.model.sam_memory import attach_memory

    config = sam_config("sam2_hiera_l", 1024)
    sam = build_sam(config, device=device)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    tracker = StreamingTracker(sam, autocast_dtype=torch.bfloat16)
    frames = clip(16)
    mask = np.zeros(frames[0].shape[:2], bool)
    mask[100:250, 150:330] = True
    tracker.start("target", mask, frames[0])
    for frame in frames[1:11]:  # warm-up, and fills the memory bank
        tracker.track(frame)
    n = args.gpu_frames
    ms, _ = timed(lambda: [tracker.track(frames[i % len(frames)]) for i in range(n)], device)
    rate = n / (ms / 1e3)
    print(f"\npart 3: SAM2 Hiera-L at 1024 px, bf16 autocast, {torch.cuda.get_device_name(device)}: {rate:.1f} masks/s")
    print(f"goal >= {GPU_GOAL_MASKS_PER_S} masks/s: {'met' if rate >= GPU_GOAL_MASKS_PER_S else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="sam2_hiera_t", help="SAM2 of part 1: tiny or a sam2 config name")
    parser.add_argument("--sam-size", type=int, default=1024, help="SAM2 input side of part 1 (default 1024)")
    parser.add_argument("--hidden", type=int, default=256, help="MLLM hidden size of part 1 (LENS-3B: 2048)")
    parser.add_argument("--queries", type=int, default=64, help="context queries (LENS: 64)")
    parser.add_argument("--mllm-image", type=int, default=448, help="MLLM image side (448 px = 256 image tokens)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per LENS query (default 64)")
    parser.add_argument("--lens-frames", type=int, default=2, help="frames with a full LENS query (default 2)")
    parser.add_argument("--track-frames", type=int, default=4, help="tracked frames (default 4)")
    parser.add_argument("--stream-frames", type=int, default=1000, help="frames of the memory-bank stream")
    parser.add_argument("--stream-size", type=int, default=64, help="SAM2 input side of the stream (default 64)")
    parser.add_argument("--gpu-frames", type=int, default=200, help="timed frames of the GPU part")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parse_with_smoke(
        parser,
        dict(
            sam="tiny",
            sam_size=128,
            hidden=64,
            queries=8,
            mllm_image=112,
            new_tokens=2,
            lens_frames=1,
            track_frames=2,
            stream_frames=20,
            gpu_frames=2,
        ),
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.inference_mode():
        lens_vs_tracking(args, device)
        flat = memory_bank(args)
        if device.type == "cuda":
            gpu_masks_per_second(args, device)
        else:
            print("\npart 3 (Hiera-L masks/s) needs --device cuda: not run")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
