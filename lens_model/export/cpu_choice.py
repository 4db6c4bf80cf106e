"""Which way each exported graph runs fastest on a CPU, measured when it is exported, so that choosing an export never
makes a CPU robot slower than torch.

`lens export` times every graph on the exporting machine's CPU, side by side: one warm-up call of every way, then
3-15 rounds that call each way once in turn (a load change on the machine hits all alike), median wall time.
The ways (`CANDIDATES`):

    torch                                  the model's own module in torch eager, float32 (what --backend torch runs)
    onnxruntime                            the float32 graph
    onnxruntime, no SkipLayerNorm fusion   the same with ONNX Runtime's SkipLayerNormalization fusion off (profiled
                                           once to slow the mask decoder by 12-14 %; on other machines it helps)
    onnxruntime int8 [, no SkipLayerNorm fusion]   the int8 graph (`lens export --int8`), both ways

`--backend onnxruntime` on a CPU then runs each graph the fastest way (`CpuChoice` in lens_export.json). The tracking
graphs always run in ONNX Runtime: a LENS model holds no torch copy of SAM2's memory modules. Every CPU session runs
with ONNX Runtime's thread spinning off: spinning workers burn cycles that the other processes of a robot (or the
other graphs of this one) need, and made every graph slower on 2 shared cores (benchmarks/README.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .metadata import GRAPH_NAMES, MEMORY_TOKENS, CpuChoice, GraphSpec

TORCH = "torch"
ONNXRUNTIME = "onnxruntime"
SKIP_LAYER_NORM_FUSION = "SkipLayerNormFusion"
CANDIDATES = (
    TORCH,
    ONNXRUNTIME,
    "onnxruntime, no SkipLayerNorm fusion",
    "onnxruntime int8",
    "onnxruntime int8, no SkipLayerNorm fusion",
)


@dataclass(frozen=True)
class Way:
    """One way of running a graph on a CPU."""

    name: str  # one of CANDIDATES
    runtime: str  # TORCH or ONNXRUNTIME
    onnx: str | None = None  # the file ONNX Runtime runs
    disabled_optimizers: tuple[str, ...] = ()


def ways(graph: GraphSpec) -> list[Way]:
    """The ways of running `graph` on a CPU, in CANDIDATES order (torch only for the single-image graphs)."""
    out = [Way(TORCH, TORCH)] if graph.name in GRAPH_NAMES else []
    files = [(ONNXRUNTIME, graph.onnx)] + ([("onnxruntime int8", graph.int8_onnx)] if graph.int8_onnx else [])
    for label, onnx in files:
        out.append(Way(label, ONNXRUNTIME, onnx))
        out.append(Way(f"{label}, no SkipLayerNorm fusion", ONNXRUNTIME, onnx, (SKIP_LAYER_NORM_FUSION,)))
    return out


def fastest(ms: dict[str, float]) -> str:
    """The way with the smallest median time; on a tie the one listed first in CANDIDATES (torch, the reference,
    then float32 before int8)."""
    return min(ms, key=lambda name: (ms[name], CANDIDATES.index(name)))


def session_options(threads: int | None = None):
    """ONNX Runtime options of a CPU session: `threads` intra-op threads (None: ONNX Runtime's default, one per
    physical core), thread spinning off (module docstring). Disabled fusions go to the session itself
    (`cpu_session`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(path: Path, threads: int | None = None, disabled_optimizers: tuple[str, ...] | list[str] = ()):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path),
        session_options(threads),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers) or None,
    )


def interleaved_medians(
    calls: dict[str, Callable[[], object]], min_rounds: int = 3, max_rounds: int = 15, budget_s: float = 3.0
) -> dict[str, float]:
    """Median wall milliseconds of each call: one warm-up call each, then rounds that call each once in turn, at
    least `min_rounds`, more (up to `max_rounds`) while the rounds so far took less than `budget_s` (cheap graphs
    get more rounds: their times scatter most on a shared machine)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start_all = time.perf_counter()
    for done in range(max_rounds):
        if done >= min_rounds and time.perf_counter() - start_all > budget_s:
            break
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def timing_inputs(graph: GraphSpec) -> tuple[torch.Tensor, ...]:
    """One example of the graph's inputs: batch 1, the largest memory a tracking stream reads (a full bank)."""
    from .graphs import example_inputs

    dims = {MEMORY_TOKENS: graph.dynamic_dims[MEMORY_TOKENS][-1]} if MEMORY_TOKENS in graph.dynamic_dims else {}
    return example_inputs(graph.inputs, batch=1, dims=dims)


@torch.inference_mode()
def measure_cpu_choices(
    graphs: dict[str, GraphSpec], export_dir: Path, modules: dict[str, torch.nn.Module]
) -> dict[str, CpuChoice]:
    """Time every way of every graph on this CPU (module docstring) -> the fastest way of each. `modules`: the torch
    modules of the single-image graphs (the export's graph modules: they compute what the model's own do)."""
    threads = torch.get_num_threads()
    choices = {}
    for name, graph in graphs.items():
        inputs = timing_inputs(graph)
        feeds = {spec.name: tensor.numpy() for spec, tensor in zip(graph.inputs, inputs)}
        calls: dict[str, Callable[[], object]] = {}
        for way in ways(graph):
            if way.runtime == TORCH:
                calls[way.name] = lambda module=modules[name], inputs=inputs: module(*inputs)
            else:
                session = cpu_session(export_dir / way.onnx, threads, way.disabled_optimizers)
                calls[way.name] = lambda session=session, feeds=feeds: session.run(None, feeds)
        ms = interleaved_medians(calls)
        best = next(way for way in ways(graph) if way.name == fastest(ms))
        choices[name] = CpuChoice(
            runtime=best.runtime,
            onnx=best.onnx or graph.onnx,
            disabled_optimizers=list(best.disabled_optimizers),
            ms={k: round(v, 3) for k, v in ms.items()},
            threads=threads,
        )
    return choices
