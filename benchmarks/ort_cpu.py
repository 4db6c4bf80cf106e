#!/usr/bin/env python
"""ONNX Runtime on a CPU: the levers that are not quantisation, measured side by side.

Part 1, attention: one cross-attention of SAM2's memory attention (queries: the frame's (S/16)² tokens; keys and
values: 7 frames of memory + 64 pointer tokens; width 256, one head) five ways: torch's fused
`scaled_dot_product_attention`; the graph `torch.onnx.export` writes for it at opset 18 (MatMul, Softmax, MatMul);
ONNX Runtime's fused `com.microsoft.MultiHeadAttention`; and that graph with its q·kᵀ product, or both products,
quantised to int8 (dynamic). Each with its error relative to torch (max |diff| / rms).

Part 2, session options: every graph of a `lens export` directory (--export DIR) with ONNX Runtime's defaults,
with its SkipLayerNormalization fusion off, and with thread spinning off, on
--threads threads: median wall and CPU milliseconds, side by side.

    python benchmarks/ort_cpu.py --size 1024                          # attention at 1024 px (4096 x 28,736 tokens)
    python benchmarks/ort_cpu.py --size 512 --export runs/hiera-t-512-onnx --threads 2
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _smoke import parse_with_smoke

WIDTH = 256


def attention_graphs(folder: Path, queries: int, keys: int) -> dict[str, Path]:
    """The four ONNX forms of one single-head attention (B=1): unfused, fused, int8 q·kᵀ, int8 both products."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import quantize_dynamic

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, t, WIDTH]) for n, t in (("q", queries),)]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, keys, WIDTH]) for n in ("k", "v")]
    output = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [WIDTH**-0.5])
    unfused = [
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qs", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"], name="pv"),
    ]
    fused = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft", num_heads=1)]
    paths = {name: folder / f"{name}.onnx" for name in ("unfused", "fused", "int8 q·kᵀ", "int8 q·kᵀ and p·v")}
    opsets = [helper.make_opsetid("", 18)]
    graph = helper.make_graph(unfused, "attention", inputs, output, initializer=[scale])
    onnx.save(helper.make_model(graph, opset_imports=opsets), paths["unfused"])
    graph = helper.make_graph(fused, "attention", inputs, output)
    onnx.save(
        helper.make_model(graph, opset_imports=[*opsets, helper.make_opsetid("com.microsoft", 1)]), paths["fused"]
    )
    for name, exclude in (("int8 q·kᵀ", ["pv"]), ("int8 q·kᵀ and p·v", [])):
        quantize_dynamic(
            str(paths["unfused"]),
            str(paths[name]),
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": False},
        )
    return paths


def side_by_side(calls: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """(median wall ms, median CPU ms) of each call: one warm-up each, then rounds calling each once in turn."""
    for call in calls.values():
        call()
    wall: dict[str, list[float]] = {n: [] for n in calls}
    cpu: dict[str, list[float]] = {n: [] for n in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            w, c = time.perf_counter(), time.process_time()
            call()
            wall[name].append((time.perf_counter() - w) * 1e3)
            cpu[name].append((time.process_time() - c) * 1e3)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in calls}


def attention(args) -> None:
    from lens_model.export.cpu_choice import cpu_session

    side = args.size // 16
    queries, keys = side * side, 7 * side * side + 64
    folder = Path(tempfile.mkdtemp(prefix="lens-attention-"))
    atexit.register(shutil.rmtree, folder, True)
    paths = attention_graphs(folder, queries, keys)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, WIDTH, generator=gen) for n in (queries, keys, keys))
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    with torch.inference_mode():
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        calls = {"torch sdpa (fused)": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        sessions = {name: cpu_session(path, args.threads) for name, path in paths.items()}
        calls |= {f"onnxruntime {name}": (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}
        times = side_by_side(calls, args.rounds)
    rms = float(want.pow(2).mean().sqrt())
    errors = {
        f"onnxruntime {n}": float(np.abs(s.run(None, feeds)[0] - want.numpy()).max()) / rms for n, s in sessions.items()
    }
    print(f"part 1: one cross-attention at {args.size} px: {queries} queries x {keys} keys, width {WIDTH}, 1 head")
    print("| way | wall ms | CPU ms | vs torch (CPU) | max error / rms |\n|---|---:|---:|---:|---:|")
    base = times["torch sdpa (fused)"][1]
    for name, (wall, cpu) in times.items():
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {base / cpu:.2f}x | {errors.get(name, 0.0):.1e} |")


def session_options(args) -> None:
    from lens_model.export import read_metadata
    from lens_model.export.cpu_choice import SKIP_LAYER_NORM_FUSION, timing_inputs

    export = args.export
    if export is None:
        print("\npart 2 (session options) needs an export: pass --export DIR (lens export --model M --out DIR)")
        return
    meta = read_metadata(export)
    print(f"\npart 2: session options, {export} ({meta.image_size} px), {args.threads} thread(s)")
    print("| graph | ONNX Runtime defaults | SkipLayerNorm fusion off | thread spinning off |\n|---|---:|---:|---:|")
    for name, graph in meta.graphs.items():
        feeds = {s.name: t.numpy() for s, t in zip(graph.inputs, timing_inputs(graph))}
        sessions = {
            "defaults": session(export / graph.onnx, args.threads, spinning=True),
            "no SkipLayerNorm fusion": session(export / graph.onnx, args.threads, True, [SKIP_LAYER_NORM_FUSION]),
            "no spinning": session(export / graph.onnx, args.threads, spinning=False),
        }
        times = side_by_side({n: (lambda s=s: s.run(None, feeds)) for n, s in sessions.items()}, args.rounds)
        cells = " | ".join(f"{w:.1f} wall, {c:.1f} CPU" for w, c in times.values())
        print(f"| {name} | {cells} |")
    print("(median ms)")


def session(path: Path, threads: int, spinning: bool, disabled: list[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="SAM2 input side of part 1 (default 1024)")
    parser.add_argument("--export", type=Path, help="a lens export directory: part 2 times its graphs")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch and ONNX Runtime (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parse_with_smoke(parser, dict(size=128, rounds=1))
    torch.set_num_threads(args.threads)
    attention(args)
    session_options(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
