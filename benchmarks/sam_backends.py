#!/usr/bin/env python
"""Per-graph latency of the per-frame part of LENS -- SAM2 image encoder, context head, mask decoder -- in torch
(eager, what `--backend torch` runs) vs the exported graphs in ONNX Runtime (and TensorRT engines where a CUDA GPU
and tensorrt are present), with the speed-up over torch. Builds what it measures (random weights), exports it with
`lens_model.export`, checks the outputs agree, then times each graph with the same inputs, the backends side by side
(rounds that call each once in turn). --int8 adds the `lens export --int8` graphs; --clock cpu times one thread by
the process's CPU time (other jobs on a shared machine barely move it) instead of wall time.

Torch runs in the precision the pipeline uses on the device (--torch-dtype auto): on CUDA the bf16 pipeline's
(SAM2's float32 weights under bf16 autocast, the context head in bf16), on CPU float32. Every backend output is
compared with torch's within the tolerance of lens_model.parity (it scales with the graph's width, the output's
scale and the lower of the two precisions; printed; int8 graphs are held to the masks instead); the script exits
with status 1 when one is exceeded, or when fewer than MIN_MASK_AGREEMENT of the mask pixels (logit > 0) agree when
each backend runs encoder -> context head -> decoder chained, as the pipeline does.

    python benchmarks/sam_backends.py     # tiny SAM2 at 256 px, context head 128 wide, 8 queries
    python benchmarks/sam_backends.py --sam sam2_hiera_t --image-size 1024 --hidden 2048 --queries 64  # Hiera-T
    python benchmarks/sam_backends.py --sam sam2_hiera_t --image-size 1024 --hidden 2048 --queries 64 --int8 --clock cpu
    python benchmarks/sam_backends.py --sam sam2_hiera_l --image-size 1024 --hidden 2048 --queries 64 --device cuda
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _smoke import parse_with_smoke

from lens_model.export import ExportOptions, export_parts
from lens_model.export.graphs import graph_widths
from lens_model.export.parts import SegmentationParts
from lens_model.export.tensorrt_runtime import tensorrt_available
from lens_model.inference.backends import OnnxRuntimeBackend, TensorRTBackend, mask_decoder_feeds
from lens_model.model.config import LensConfig, SamConfig
from lens_model.model.context import ContextHead
from lens_model.model.sam import build_sam, decode_masks, encode_image
from lens_model.model.tiny import tiny_lens_config
from lens_model.parity import compare, mask_agreement

MIN_MASK_AGREEMENT = 0.99  # fraction of low-res mask pixels (logit > 0) on which a backend agrees with torch


def compared_precision(fp16_graphs: bool, torch_dtype: torch.dtype) -> torch.dtype:
    """The lower precision of the two sides, which sets the tolerance (lens_model.parity)."""
    if torch_dtype != torch.float32:
        return torch_dtype
    return torch.float16 if fp16_graphs else torch.float32


def build_parts(sam_name: str, image_size: int, hidden: int, queries: int) -> SegmentationParts:
    if sam_name == "tiny":
        config = tiny_lens_config(num_queries=queries, sam_image_size=image_size)
    else:
        config = LensConfig(
            num_queries=queries,
            sam=SamConfig(
                config_name=f"configs/sam2/{sam_name}.yaml",
                overrides=[f"++model.image_size={image_size}"],
                image_size=image_size,
            ),
        )
    config.connector_heads = 16 if hidden % 16 == 0 and hidden >= 1024 else 4
    torch.manual_seed(0)
    return SegmentationParts(
        build_sam(config.sam).float().eval(), ContextHead(hidden, config).float().eval(), config, hidden
    )


def interleaved(calls: dict, repeats: int, warmup: int, cuda: bool, clock) -> dict[str, list[float]]:
    """Seconds of each call over `repeats` rounds that call each once in turn (after `warmup` such rounds), so
    that a load change on the machine hits every backend alike. `clock`: time.perf_counter or time.process_time."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + repeats):
        for name, fn in calls.items():
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(clock() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sam",
        default="tiny",
        help="tiny (the test model's SAM2) or a sam2 config name, e.g. sam2_hiera_t, sam2_hiera_l (default: tiny)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="SAM2 input side (default 256; released: 1024)")
    parser.add_argument("--hidden", type=int, default=128, help="MLLM hidden size = query-state width (LENS-3B: 2048)")
    parser.add_argument("--queries", type=int, default=8, help="context queries (LENS: 64)")
    parser.add_argument("--images", type=int, default=1, help="images per encoder call (default 1)")
    parser.add_argument("--prompts", type=int, default=1, help="prompts per context-head/decoder call (default 1)")
    parser.add_argument("--fp16", action="store_true", help="export float16 graphs (inputs and outputs float32)")
    parser.add_argument(
        "--torch-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="precision of the torch reference: auto = the pipeline's (bfloat16 on CUDA, float32 on CPU); "
        "bf16/fp16 run SAM2 under autocast and the context head in that dtype, as the pipeline does",
    )
    parser.add_argument(
        "--int8", action="store_true", help="also export and time the int8 graphs (lens export --int8) on the CPU"
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: wall time on torch's and ONNX Runtime's default threads (default); cpu: one thread each and "
        "the process's CPU time, which other jobs on a shared machine barely move",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime uses its CUDA provider if installed)")
    args = parse_with_smoke(parser, dict(image_size=128, hidden=64, queries=4, repeats=1, warmup=0))

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.clock == "cpu" and cuda:
        parser.error("--clock cpu times CPU work; on a GPU use --clock wall")
    threads = 1 if args.clock == "cpu" else None
    if threads:
        torch.set_num_threads(threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    parts = build_parts(args.sam, args.image_size, args.hidden, args.queries)
    s = args.image_size
    images = torch.randn(args.images, 3, s, s, device=device)
    states = torch.randn(args.prompts, args.queries, args.hidden, device=device)
    rows = torch.arange(args.prompts, device=device) % args.images

    out_dir = Path(tempfile.mkdtemp(prefix="lens-sam-backends-"))
    atexit.register(shutil.rmtree, out_dir, True)  # GBs at Hiera-T 1024 px with a 2048-wide head and --int8
    start = time.perf_counter()
    export_parts(parts, out_dir, ExportOptions(fp16=args.fp16, int8=args.int8, overwrite=True))  # on the CPU
    print(f"exported to {out_dir} in {time.perf_counter() - start:.1f} s")
    torch_dtype = getattr(torch, args.torch_dtype) if args.torch_dtype != "auto" else None
    torch_dtype = torch_dtype or (torch.bfloat16 if cuda else torch.float32)
    # As LensModel: SAM2 keeps float32 weights and runs under autocast; the context head is cast to the dtype.
    sam, context = parts.sam.to(device), parts.context.to(device, torch_dtype)
    low_precision = torch_dtype != torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=torch_dtype)) if low_precision else contextlib.nullcontext

    def encode(x):
        with autocast():
            return encode_image(sam, x)

    def decode(features, prompt_embed):
        with autocast():
            return decode_masks(sam, features, prompt_embed)

    # float32 (or --fp16) files; with --int8 also the int8 ones (the export's CPU choice: int8, exported untimed)
    backends = {"onnxruntime": OnnxRuntimeBackend(out_dir, device=device, threads=threads, follow_cpu_choice=False)}
    if args.int8:
        backends["onnxruntime int8"] = OnnxRuntimeBackend(out_dir, device=device, threads=threads)
    if cuda and tensorrt_available():
        from lens_model.export.tensorrt_build import EngineOptions, build_engines

        start = time.perf_counter()
        build_engines(
            out_dir,
            EngineOptions(max_batch=max(8, args.images, args.prompts), opt_batch=max(args.images, args.prompts)),
        )
        print(f"built TensorRT engines in {time.perf_counter() - start:.1f} s")
        backends["tensorrt"] = TensorRTBackend(out_dir, device=device)
    else:
        print("tensorrt: skipped (needs a CUDA GPU with TensorRT: pip install tensorrt)")

    failures = []
    with torch.inference_mode():
        features = encode(images)
        torch_states = states.to(torch_dtype)
        prompt = context(torch_states)
        row_features = features.select(rows)
        torch_fns = {
            "image_encoder": lambda: encode(images),
            "context_head": lambda: context(torch_states),
            "mask_decoder": lambda: decode(row_features, prompt),
        }
        want = {
            "image_encoder": [features.image_embed, *features.high_res_feats],
            "context_head": [prompt],
            "mask_decoder": list(decode(row_features, prompt)),
        }
        # Every backend gets the torch reference's own inputs (as float32 tensors), so each graph is compared alone.
        feeds = {
            "image_encoder": {"images": images},
            "context_head": {"query_states": torch_states.float()},
            "mask_decoder": {k: v.float() for k, v in mask_decoder_feeds(prompt, row_features).items()},
        }
        print(
            f"\n{args.sam} SAM2 at {s}px, context head {args.hidden} wide x {args.queries} queries, "
            f"{args.images} image(s), {args.prompts} prompt(s), {'fp16' if args.fp16 else 'fp32'} graphs, "
            f"{device} ({torch.get_num_threads()} torch threads); torch in {str(torch_dtype).split('.')[-1]}"
            + (" (SAM2 under autocast, context head cast)" if low_precision else "")
        )
        precision = compared_precision(args.fp16, torch_dtype)
        widths = graph_widths(sam, context)
        unit = "CPU ms, 1 thread" if args.clock == "cpu" else "wall ms"
        header = f"{'graph':<14}{'backend':<18}{'median ms':>10}{'min ms':>9}{'vs torch':>10}{'max |diff|':>12}"
        print(header + f"{'tolerance':>11}  ({unit}; lens_model.parity, {str(precision).split('.')[-1]}, width)")
        chained = {}
        for graph, fn in torch_fns.items():
            calls = {"torch": fn} | {name: (lambda b=b, g=graph: b.run(g, feeds[g])) for name, b in backends.items()}
            times = interleaved(calls, args.repeats, args.warmup, cuda, clock)
            base = statistics.median(times["torch"])
            print(f"{graph:<14}{'torch':<18}{base * 1e3:>10.2f}{min(times['torch']) * 1e3:>9.2f}{'1.00x':>10}")
            for name, backend in backends.items():
                outs = [o.to(device) for o in backend.run(graph, feeds[graph])]
                checked = [compare(o, w, widths[graph], precision) for o, w in zip(outs, want[graph])]
                diff = max(c.max_diff for c in checked)
                t = times[name]
                row = f"{'':<14}{name:<18}{statistics.median(t) * 1e3:>10.2f}{min(t) * 1e3:>9.2f}"
                row += f"{base / statistics.median(t):>9.2f}x{diff:>12.2e}"
                if "int8" in name:  # quantisation error is not rounding: held to the masks (below), not the rule
                    rel = max(
                        c.max_diff / max(float(w.float().pow(2).mean().sqrt()), 1e-30)
                        for c, w in zip(checked, want[graph])
                    )
                    print(f"{row}  int8: {rel:.1e} of the output's rms (checked on the chained masks)")
                else:
                    failed = [c for c in checked if not c.ok]
                    worst = failed[0] if failed else max(checked, key=lambda c: c.max_diff / max(c.tolerance, 1e-30))
                    verdict = "ok" if not failed else "EXCEEDED"
                    print(f"{row}{worst.tolerance:>11.2e}  {verdict} (width {widths[graph]})")
                    if failed:
                        failures.append(f"{graph} on {name}: {failed[0]}")
        # Chained, as the pipeline runs them: each backend's encoder -> head -> decoder, masks against torch's
        for name, backend in backends.items():
            row_feats = backend.encode_images(images).select(rows)
            low_res, _ = backend.decode(backend.prompt_embeddings(torch_states.float()), row_feats)
            chained[name] = mask_agreement(low_res, want["mask_decoder"][0])
            print(f"chained {name}: mask pixels agreeing with torch {chained[name]:.4%} (min {MIN_MASK_AGREEMENT:.0%})")
            if chained[name] < MIN_MASK_AGREEMENT:
                failures.append(f"masks on {name}: {chained[name]:.4%} of pixels agree, below {MIN_MASK_AGREEMENT:.0%}")
    for failure in failures:
        print(f"parity check failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
