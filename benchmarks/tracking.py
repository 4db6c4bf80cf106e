#!/usr/bin/env python
"""Reason once, track at camera rate: where a SAM2-tracked frame's time goes on a CPU, what each lever saves, how it
compares with a full LENS-3B query, and the size of the tracker's memory bank over a long stream.

Part 1, per SAM2 input size (--sizes; SAM2 --sam with random weights and memory modules): the real StreamingTracker
follows a box through a clip cut from the sample photo, once per way (--ways) and memory window (--memory-frames):

    torch         SAM2 in torch eager, float32 (what `lens track` runs on a CPU without an export)
    onnxruntime   image encoder, memory attention and memory encoder from `lens export`'s float32 graphs
    int8          the same from its --int8 graphs (dynamic int8 matrix products)

Each run starts the target on frame 0, tracks --memory-frames... frames until the memory bank is full, then times
--timed-frames frames stage by stage (image encoder, memory attention, mask decoder, memory encoder, the rest). The
floor is what a single-image segmentation of the same frame costs the same way: image encoder + LENS mask decoder.
Masks are compared with the first run's (by default torch reading SAM2's 7 memories; agreement over every tracked
frame: random weights, so it shows drift, not quality).

Clock (--clock): `cpu` (default) runs everything on one thread and reads the process's CPU time, which other jobs
on a shared machine barely move; `wall` runs --threads threads and reads wall time (what a robot feels, on a quiet
machine). Part 1b prices a full LENS-3B query the same way: the time per generated token and the prefill of a
Qwen2.5-VL-3B-shaped decoder with random weights, measured with 2 and 4 of its 36 layers (float32) and extrapolated
linearly to 36 layers and to 256 generated tokens (the vision encoder is not included: a lower bound).

Part 2 streams --stream-frames frames through a tiny SAM2 and prints the stored frame outputs and tensor bytes as the
stream goes on: they must stop growing once the bank is full (exit status 1 otherwise). With --device cuda, part 3
prints masks per second of SAM2 Hiera-L tracking at 1024 px under bf16 autocast (goal >= 60).

    python benchmarks/tracking.py                                # CPU: Hiera-T at 1024 and 512 px, ~30 min
    python benchmarks/tracking.py --sizes 512 --ways torch,int8 --memory-frames 7,1
    python benchmarks/tracking.py --clock wall --threads 2       # wall time on 2 threads
    python benchmarks/tracking.py --device cuda --sizes 1024     # GPU: part 3 (Hiera-L masks/s)
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _smoke import parse_with_smoke
from PIL import Image

from lens_model.model.config import LensConfig, SamConfig
from lens_model.model.context import ContextHead
from lens_model.model.sam import build_sam, decode_masks, encode_image
from lens_model.model.sam_memory import attach_memory, load_sam_memory
from lens_model.model.tiny import tiny_lens_config
from lens_model.parity import mask_agreement
from lens_model.tracking.tracker import StreamingTracker

SAMPLE_PHOTO = os.path.join(os.path.dirname(__file__), "..", "assets", "sample.jpg")
GPU_GOAL_MASKS_PER_S = 60
STAGES = ("image encoder", "memory attention", "mask decoder", "memory encoder")
TARGET_RATIO = 1.3  # goal: tracked frame <= 1.3 x (image encoder + mask decoder) of the same frame
GENERATED_TOKENS = 256
PROMPT_TOKENS = 350  # a LENS prompt: 256 image tokens (448 x 448 px) + the chat template and the question


def clip(n: int, hw: tuple[int, int] = (360, 480)) -> list[np.ndarray]:
    """n crops of the sample photo sliding diagonally (a moving camera)."""
    photo = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    h, w = hw
    steps = [(i % 16) * 2 for i in range(n)]
    return [np.ascontiguousarray(photo[s : s + h, s : s + w]) for s in steps]


def start_mask(hw: tuple[int, int] = (360, 480)) -> np.ndarray:
    mask = np.zeros(hw, bool)
    mask[100:250, 150:330] = True
    return mask


class Clock:
    """Milliseconds of CPU time (one thread: other jobs barely move it) or of wall time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.now = time.process_time if kind == "cpu" else time.perf_counter

    def ms(self, fn) -> tuple[float, object]:
        start = self.now()
        out = fn()
        return (self.now() - start) * 1e3, out


class StageTimes:
    """Per-stage milliseconds of the frames a tracker runs, from hooks on SAM2's modules and the tracker's encoder."""

    def __init__(self, tracker: StreamingTracker, clock: Clock) -> None:
        self.clock, self.current, self.frames = clock, defaultdict(float), []
        sam = tracker.sam
        for stage, module in (
            ("memory attention", sam.memory_attention),
            ("mask decoder", sam.sam_mask_decoder),
            ("memory encoder", sam.memory_encoder),
        ):
            module.register_forward_pre_hook(lambda *_, stage=stage: self._start(stage))
            module.register_forward_hook(lambda *_, stage=stage: self._stop(stage))
        encode = tracker._encode  # the image encoder of the frame (torch or the export), timed from outside

        def timed_encode(frame):
            self._start("image encoder")
            out = encode(frame)
            self._stop("image encoder")
            return out

        tracker._encode = timed_encode
        self._started: dict[str, float] = {}

    def _start(self, stage: str) -> None:
        self._started[stage] = self.clock.now()

    def _stop(self, stage: str) -> None:
        self.current[stage] += (self.clock.now() - self._started.pop(stage)) * 1e3

    def frame(self, fn) -> object:
        """Run one frame (`fn`) and keep its stage times and total."""
        self.current = defaultdict(float)
        total, out = self.clock.ms(fn)
        self.current["frame"] = total
        self.frames.append(dict(self.current))
        return out


def sam_config(name: str, size: int) -> SamConfig:
    if name == "tiny":
        return tiny_lens_config(sam_image_size=size).sam
    return SamConfig(config_name=f"configs/sam2/{name}.yaml", overrides=[f"++model.image_size={size}"], image_size=size)


def build_tracking_sam(config: SamConfig):
    torch.manual_seed(0)
    sam = build_sam(config)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    with torch.no_grad():  # random weights score the object absent: shift the presence head so masks come through
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    return sam.float().eval()


def export_int8(sam, config: SamConfig, out: Path) -> Path:
    """`lens export --int8 --no-cpu-timing` of this SAM2 (a small context head beside it, unused here)."""
    from lens_model.export import ExportOptions, export_parts
    from lens_model.export.parts import SegmentationParts

    lens_config = LensConfig(num_queries=8, sam=config)
    lens_config.connector_heads = 4
    parts = SegmentationParts(sam, ContextHead(64, lens_config).eval(), lens_config, 64)
    start = time.perf_counter()
    export_parts(parts, out, ExportOptions(int8=True, overwrite=True))
    print(f"  exported float32 + int8 graphs in {time.perf_counter() - start:.0f} s")
    return out


def make_tracker(way: str, sam, export_dir: Path | None, memory_frames: int, threads: int):
    """A tracker of `way` on its own copy of `sam` (the export's modules replace SAM2's own)."""
    from lens_model.export import use_exported_memory_modules
    from lens_model.inference.backends import OnnxRuntimeBackend

    sam = copy.deepcopy(sam)
    if way == "torch":
        return StreamingTracker(sam, memory_frames=memory_frames), None
    # onnxruntime: the float32 files; int8: the export's CPU choice, which is int8 (exported --int8 without timing)
    backend = OnnxRuntimeBackend(export_dir, threads=threads, follow_cpu_choice=way == "int8")
    use_exported_memory_modules(sam, backend)
    return StreamingTracker(sam, memory_frames=memory_frames, image_encoder=backend), backend


def floor_decoder_ms(way: str, sam, backend, clock: Clock, size: int, repeats: int) -> float:
    """The LENS mask decoder of one prompt on one frame, the same way (the second half of the floor)."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        features = encode_image(sam, torch.randn(1, 3, size, size, generator=gen))
        prompt = torch.randn(1, 1, 256, generator=gen)
        if way == "torch":
            fn = lambda: decode_masks(sam, features, prompt)  # noqa: E731
        else:
            fn = lambda: backend.decode(prompt, features)  # noqa: E731
        fn()
        return statistics.median(clock.ms(fn)[0] for _ in range(repeats))


def track_run(tracker, frames, clock: Clock, timed: int):
    times = StageTimes(tracker, clock)
    masks = [tracker.start("target", start_mask(), frames[0]).mask]
    with torch.inference_mode():
        for frame in frames[1:]:
            masks.append(times.frame(lambda frame=frame: tracker.track(frame))["target"].mask)
    return times.frames[-timed:], masks


def stage_table(args, size: int, clock: Clock) -> list[dict]:
    config = sam_config(args.sam, size)
    sam = build_tracking_sam(config)
    export_dir = None
    if any(w != "torch" for w in args.ways):
        export_dir = export_int8(sam, config, Path(tempfile.mkdtemp(prefix=f"lens-tracking-{size}-")))
    warm = max(args.memory_frames) - 1  # frames tracked before the largest window is full
    frames = clip(1 + warm + args.timed_frames)
    rows, reference = [], None
    for way in args.ways:
        for k in args.memory_frames:
            tracker, backend = make_tracker(way, sam, export_dir, k, args.threads)
            timed, masks = track_run(tracker, frames, clock, args.timed_frames)
            stages = {s: statistics.median(f.get(s, 0.0) for f in timed) for s in (*STAGES, "frame")}
            stages["rest"] = stages["frame"] - sum(stages[s] for s in STAGES)
            floor = stages["image encoder"] + floor_decoder_ms(way, sam, backend, clock, size, 3)
            if reference is None:  # the first run (torch reading SAM2's 7 memories, by default) is the reference
                reference = masks
            agreement = float(np.mean([mask_agreement(a, b) for a, b in zip(masks[1:], reference[1:])]))
            row = dict(size=size, way=way, memory_frames=k, floor=floor, agreement=agreement, **stages)
            rows.append(row)
            # Free this run's SAM2 copy and ONNX Runtime sessions (their arenas keep their peak: GBs at 1024 px)
            # before the next run: hooks make cycles that only the collector breaks. Without it a 1024 px run
            # grew past 17 GB and was killed.
            del tracker, backend, masks, timed
            gc.collect()
            print(
                f"  {way:<12} {k} memories: frame {stages['frame']:.0f} ms = "
                + ", ".join(f"{s} {stages[s]:.0f}" for s in (*STAGES, "rest"))
                + f"; floor {floor:.0f} ms; ratio {stages['frame'] / floor:.2f}; masks agree {agreement:.2%}",
                flush=True,
            )
    if export_dir is not None:
        shutil.rmtree(export_dir)  # the 1024 px export with its int8 graphs: hundreds of MB
    return rows


def print_table(rows: list[dict], clock: Clock, threads: int) -> None:
    unit = "CPU ms, 1 thread" if clock.kind == "cpu" else f"wall ms, {threads} threads"
    head = f"| size | way | memories | {' | '.join(STAGES)} | rest | tracked frame | floor | ratio | frames/s | masks |"
    print("\n" + head)
    print("|---:|---|---:|" + "---:|" * (len(STAGES) + 6))
    for r in rows:
        cells = " | ".join(f"{r[s]:.0f}" for s in (*STAGES, "rest", "frame", "floor"))
        flag = " ✔" if r["frame"] <= TARGET_RATIO * r["floor"] else ""
        print(
            f"| {r['size']} | {r['way']} | {r['memory_frames']} | {cells} | {r['frame'] / r['floor']:.2f}{flag} | "
            f"{1e3 / r['frame']:.2f} | {r['agreement']:.1%} |"
        )
    print(f"({unit}; floor = image encoder + LENS mask decoder, the same way; ✔: frame <= {TARGET_RATIO} x floor)")


def token_times(args, clock: Clock) -> dict[str, float]:
    """Per generated token and prefill of a Qwen2.5-VL-3B-shaped decoder (float32, random), from 2 and 4 of its 36
    layers, extrapolated linearly to all 36 -> {token_ms, prefill_ms, layers}."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from lens_model.model.paper_shapes import qwen2_5_vl_3b_config

    measured = {}
    counts = (1, 2) if args.mllm == "small" else (2, 4)
    for layers in counts:
        config = qwen2_5_vl_3b_config()
        text = config.text_config
        if args.mllm == "small":  # --smoke: the same code on a narrow model
            text.hidden_size, text.intermediate_size, text.vocab_size = 64, 128, 1000
            text.num_attention_heads, text.num_key_value_heads = 4, 2
            text.rope_parameters["mrope_section"] = [2, 3, 3]
        text.num_hidden_layers = layers
        text.layer_types = ["full_attention"] * layers
        config.vision_config.depth = 1
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(config).float().eval()
        ids = torch.randint(0, 1000, (1, PROMPT_TOKENS))
        new = args.new_tokens
        with torch.inference_mode():
            model.generate(input_ids=ids[:, :32], max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
            greedy = dict(input_ids=ids, do_sample=False)
            prefill, _ = clock.ms(lambda m=model: m.generate(**greedy, max_new_tokens=1))
            run, _ = clock.ms(lambda m=model: m.generate(**greedy, max_new_tokens=new + 1, min_new_tokens=new + 1))
        measured[layers] = (prefill, (run - prefill) / new)
        del model
    (l1, (p1, t1)), (l2, (p2, t2)) = measured.items()
    full = 36  # Qwen2.5-VL-3B's decoder layers

    def scale(a: float, b: float) -> float:  # linear in the number of layers: each layer costs the same
        return a + (b - a) * (full - l1) / (l2 - l1)

    print(
        f"\npart 1b: Qwen2.5-VL-3B-shaped decoder ({'narrow, --smoke' if args.mllm == 'small' else 'float32'}, random),"
        f" prompt {PROMPT_TOKENS} tokens, {args.new_tokens} generated: "
        + "; ".join(f"{n} layers: prefill {p:.0f} ms, {t:.0f} ms/token" for n, (p, t) in measured.items())
        + f" -> {full} layers (linear extrapolation): prefill {scale(p1, p2):.0f} ms, {scale(t1, t2):.0f} ms/token"
    )
    return {"token_ms": scale(t1, t2), "prefill_ms": scale(p1, p2)}


def query_vs_tracking(rows: list[dict], tokens: dict[str, float]) -> None:
    """A full LENS-3B query (prefill + 256 tokens + a tracked frame's floor) against the fastest tracked frame."""
    generation = tokens["prefill_ms"] + GENERATED_TOKENS * tokens["token_ms"]
    print(
        f"\nfull LENS-3B query, estimated: prefill {tokens['prefill_ms'] / 1e3:.1f} s + {GENERATED_TOKENS} tokens x "
        f"{tokens['token_ms']:.0f} ms = {generation / 1e3:.1f} s of MLLM (extrapolated; vision encoder not included), "
        "plus SAM2 (the floor) per size:"
    )
    for size in sorted({r["size"] for r in rows}, reverse=True):
        best = min((r for r in rows if r["size"] == size), key=lambda r: r["frame"])
        query = generation + best["floor"]
        print(
            f"  {size} px: query {query / 1e3:.1f} s vs tracked frame {best['frame'] / 1e3:.2f} s ({best['way']}, "
            f"{best['memory_frames']} memories, {1e3 / best['frame']:.2f} frames/s): {query / best['frame']:.0f}x"
        )


def memory_bank(args) -> bool:
    torch.set_num_threads(1)  # thousands of tiny operations: one thread avoids the scheduling overhead
    config = sam_config("tiny", args.stream_size)
    torch.manual_seed(0)
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


def gpu_masks_per_second(frames_timed: int, device: torch.device) -> float:
    """Masks per second of SAM2 Hiera-L tracking at 1024 px under bf16 autocast on `device` (random weights)."""
    config = sam_config("sam2_hiera_l", 1024)
    sam = build_sam(config, device=device)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    tracker = StreamingTracker(sam, autocast_dtype=torch.bfloat16)
    frames = clip(16)
    tracker.start("target", start_mask(), frames[0])
    with torch.inference_mode():
        for frame in frames[1:11]:  # warm-up, and fills the memory bank
            tracker.track(frame)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for i in range(frames_timed):
            tracker.track(frames[i % len(frames)])
        torch.cuda.synchronize(device)
    return frames_timed / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="sam2_hiera_t", help="SAM2 of part 1: tiny or a sam2 config name")
    parser.add_argument("--sizes", default="1024,512", help="SAM2 input sides of part 1 (default 1024,512)")
    parser.add_argument("--ways", default="torch,onnxruntime,int8", help="ways of part 1 (default all three)")
    parser.add_argument("--memory-frames", default="7,3,1", help="memory windows of part 1 (default 7,3,1)")
    parser.add_argument("--timed-frames", type=int, default=2, help="timed frames per run, after the bank is full")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="cpu: 1 thread, CPU time (default)")
    parser.add_argument("--threads", type=int, default=2, help="threads with --clock wall (default 2)")
    parser.add_argument("--mllm", choices=["3b", "small"], default="3b", help="part 1b's decoder shape (default 3b)")
    parser.add_argument("--new-tokens", type=int, default=4, help="tokens generated in part 1b (default 4)")
    parser.add_argument("--stream-frames", type=int, default=1000, help="frames of the memory-bank stream")
    parser.add_argument("--stream-size", type=int, default=64, help="SAM2 input side of the stream (default 64)")
    parser.add_argument("--gpu-frames", type=int, default=200, help="timed frames of the GPU part")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: part 3 only)")
    args = parse_with_smoke(
        parser,
        dict(
            sam="tiny",
            sizes="64",
            ways="torch",  # the export's ways are smoke-tested by sam_backends.py (an export takes a minute)
            memory_frames="3,1",
            timed_frames=1,
            mllm="small",
            new_tokens=2,
            stream_frames=20,
            gpu_frames=2,
        ),
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.ways = args.ways.split(",")
    args.memory_frames = [int(k) for k in args.memory_frames.split(",")]
    args.sizes = [int(s) for s in args.sizes.split(",")]
    unknown = set(args.ways) - {"torch", "onnxruntime", "int8"}
    if unknown:
        parser.error(f"--ways: unknown {sorted(unknown)}; choose among torch, onnxruntime, int8")
    device = torch.device(args.device)
    if device.type == "cuda":
        rate = gpu_masks_per_second(args.gpu_frames, device)
        gpu = torch.cuda.get_device_name(device)
        print(f"part 3: SAM2 Hiera-L at 1024 px, bf16 autocast, {gpu}: {rate:.1f} masks/s")
        print(f"goal >= {GPU_GOAL_MASKS_PER_S} masks/s: {'met' if rate >= GPU_GOAL_MASKS_PER_S else 'NOT met'}")
        return 0
    clock = Clock(args.clock)
    if args.clock == "cpu":
        args.threads = 1
    torch.set_num_threads(args.threads)
    print(
        f"part 1: SAM2 {args.sam} (random weights), {clock.kind} clock, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    rows = []
    for size in args.sizes:
        print(f"{size} px:")
        rows += stage_table(args, size, clock)
    print_table(rows, clock, args.threads)
    query_vs_tracking(rows, token_times(args, clock))
    flat = memory_bank(args)
    print("\npart 3 (Hiera-L masks/s) needs --device cuda: not run")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
