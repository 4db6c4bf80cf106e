"""SAM2 + context head as ONNX graphs and TensorRT engines (`lens export`)."""

from __future__ import annotations

import sys
from pathlib import Path

from .options import add_model_argument


def add_parser(sub) -> None:
    from lens_model.export import DEFAULT_OPSET, SUPPORTED_OPSETS

    p = sub.add_parser(
        "export",
        help="export SAM2 + context head to ONNX (and TensorRT engines) for per-frame inference",
        description="Writes three ONNX graphs (SAM2 image encoder, context head, mask decoder; dynamic "
        "batch), plus SAM2's memory attention and memory encoder for tracking when SAM2 memory weights are "
        "given (--sam-memory-checkpoint) or in the model directory, and lens_export.json (names, shapes, "
        "normalisation, weights hash, versions) to --out. --format tensorrt also builds TensorRT engines for "
        "this machine's GPU. Run them with: lens segment|track --backend onnxruntime|tensorrt --backend-dir OUT",
    )
    add_model_argument(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--sam-memory-checkpoint",
        type=Path,
        help="SAM2 memory weights for the tracking graphs: the official SAM2 .pt of the model's SAM2 config "
        "(sam2_hiera_large.pt for the released LENS; default: sam2_memory.safetensors in the model directory, "
        "else no tracking graphs)",
    )
    p.add_argument(
        "--format",
        choices=["onnx", "tensorrt"],
        default="onnx",
        help="onnx (default), or tensorrt: ONNX plus engines built here (needs a CUDA GPU and tensorrt)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="graphs (and engines) that compute in float16, normalisation layers in float32; inputs and "
        "outputs stay float32 (for GPUs: TensorRT, or onnxruntime-gpu)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write NAME.int8.onnx per graph: dynamic int8 quantisation of the matrix products, for CPUs "
        "(--backend onnxruntime on a CPU runs it where it was timed faster)",
    )
    p.add_argument(
        "--no-cpu-timing",
        action="store_true",
        help="skip timing each graph on this CPU (torch, ONNX Runtime, int8; seconds to minutes); without the "
        "timings --backend onnxruntime runs every graph's float32 file in ONNX Runtime",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, one of {list(SUPPORTED_OPSETS)} (default: {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--image-size", type=int, help="SAM2 input side, a multiple of 32 (default: the model's, 1024 as released)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="TensorRT: largest batch (images or prompts) per engine call; larger ones run in chunks (default: 8)",
    )
    p.add_argument(
        "--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit in GB (default: 4)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the export in an existing output directory (built beside it and swapped in when complete; "
        "only the files lens export writes are replaced, nothing else in the folder)",
    )
    p.set_defaults(func=run)


def cpu_way(choice) -> str:
    """How --backend onnxruntime runs a graph on a CPU, in words."""
    if choice.runtime == "torch":
        return "torch"
    fusions = f", {', '.join(choice.disabled_optimizers)} off" if choice.disabled_optimizers else ""
    return f"onnxruntime on {choice.onnx}{fusions}"


def run(args) -> int:
    from lens_model.export import ExportOptions, export_model
    from lens_model.export.op_support import TENSORRT_TARGET, check_file

    options = ExportOptions(
        opset=args.opset,
        image_size=args.image_size,
        fp16=args.fp16,
        overwrite=args.overwrite,
        int8=args.int8,
        cpu_timing=not args.no_cpu_timing and args.format == "onnx",
    )
    options.validate()
    engine_options = None
    if args.format == "tensorrt":
        from lens_model.export.tensorrt_build import EngineOptions
        from lens_model.export.tensorrt_runtime import require_tensorrt

        engine_options = EngineOptions(max_batch=args.max_batch, workspace_gb=args.workspace_gb)
        engine_options.validate()
        require_tensorrt()  # refuse before the ONNX export, which takes minutes for LENS-3B
    meta = export_model(
        args.model, args.out, options, sam_memory_checkpoint=args.sam_memory_checkpoint, engines=engine_options
    )

    def shapes(specs) -> str:
        return ", ".join(f"{t.name} {tuple(t.shape)}" for t in specs)

    for name, graph in meta.graphs.items():
        _, problems = check_file(args.out / graph.onnx)
        size = sum(f.stat().st_size for f in args.out.glob(f"{graph.onnx}*")) / 1e6
        print(
            f"{name}: {args.out / graph.onnx} ({size:.1f} MB){' + ' + graph.engine if graph.engine else ''}\n"
            f"    {shapes(graph.inputs)} -> {shapes(graph.outputs)}"
        )
        for problem in problems:
            print(f"    warning: {TENSORRT_TARGET} may not parse this graph: {problem}", file=sys.stderr)
        if graph.cpu is not None:
            timed = ", ".join(f"{way} {ms:.1f}" for way, ms in graph.cpu.ms.items())
            print(f"    on this CPU ({graph.cpu.threads} threads, median ms): {timed}; runs: {cpu_way(graph.cpu)}")
    if meta.memory is not None:
        print(
            f"tracking: memory_attention + memory_encoder (SAM2 memory: up to {meta.memory['num_maskmem']} frames "
            f"and {meta.memory['max_obj_ptrs_in_encoder']} object pointers)"
        )
    else:
        print(
            "tracking: not exported (no SAM2 memory weights: pass the official SAM2 checkpoint of the model's SAM2 "
            "size with --sam-memory-checkpoint)"
        )
    print(
        f"precision {meta.precision}; model weights sha256 {meta.model_hash}; metadata: {args.out / 'lens_export.json'}"
    )
    print(
        f"run: lens segment --model {args.model} --backend {'tensorrt' if meta.tensorrt else 'onnxruntime'} "
        f"--backend-dir {args.out} --image IMAGE --prompt TEXT"
    )
    if meta.memory is not None:
        print(
            f"track: lens track --model {args.model} --backend {'tensorrt' if meta.tensorrt else 'onnxruntime'} "
            f"--backend-dir {args.out} --video VIDEO --prompt TEXT --out-dir DIR"
        )
    return 0
