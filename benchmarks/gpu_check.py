#!/usr/bin/env python
"""GPU acceptance check: everything this repository claims about a CUDA GPU, measured in one run (<= 10 minutes on
one H100) from a clean checkout, with one table at the end.

    1. the CUDA test subset (tests/test_cuda.py; TensorRT's engine tests skip without tensorrt, which is too large to
       carry: they stay for a machine with TensorRT installed)
    2. the demo model's bf16 pipeline on the GPU: the demo scene's four prompts, answers and masks against the
       float32 CPU pipeline, per-stage latency, peak GPU memory
    3. a random model of LENS-3B's shape (Qwen2.5-VL-3B + the paper's context module + SAM2 Hiera-L, bf16): per-stage
       latency of one query with --new-tokens generated tokens (forced), tokens/s, peak memory, against the paper's
       Table A4 (MLLM 1.5 s, context query 0.07 s, connector 0.002 s, SAM2 0.025 s)
    4. SAM2 Hiera-L tracking at 1024 px under bf16 autocast: masks per second (goal >= 60)
    5. one stage-2 (GRPO) step (benchmarks/grpo_step.py) on a LENS-3B-wide tiny-vocabulary model, bf16

The GPU machine has torch, transformers, onnx and onnxruntime but not sam2 and its small dependencies, and its
transformers may be older than this package needs: `--download-wheels DIR` (here, with a package index) writes the
wheels in WHEELS to DIR; carry DIR to the GPU machine and `--wheels DIR` installs them before anything runs
(pip install --no-index --no-deps). The wheels, all pure Python (measured): transformers 5.25.0 13.8 MB, sam2 1.1.0
0.18 MB (built here without its optional CUDA extension), hydra-core 1.3.8 0.17 MB, antlr4-python3-runtime 4.9.3
0.14 MB, omegaconf 2.3.1 0.08 MB, iopath 0.1.10 0.03 MB: 14.4 MB in all. Not carried: av (36 MB, only for video
files in `lens track`), TensorRT (GBs). With --no-deps the wheels' own dependencies must be on the GPU machine already
(transformers 5.25: huggingface-hub >= 2.4, tokenizers >= 0.23.1, safetensors >= 0.8, kernels 0.19; sam2:
torchvision); after installing, each one it lacks is named with the version it has.

    python benchmarks/gpu_check.py --download-wheels wheels          # here: fetch the wheels to carry (14 MB)
    python3 benchmarks/gpu_check.py --wheels wheels                  # on the GPU machine, from the checkout
    python benchmarks/gpu_check.py --smoke                           # CPU: the parts that run without a GPU

Without a CUDA GPU the GPU parts print "skipped (no CUDA GPU)" and only the CPU parts run (the 3B-shape builder
on the meta device, the demo pipeline on the CPU, the table).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _smoke import parse_with_smoke

REPO = Path(__file__).resolve().parents[1]
# What the GPU machine lacks: pip requirement -> why. Installed from carried wheels with --no-deps.
WHEELS = {
    "transformers==5.25.0": "the GPU image's transformers (5.17) predates the generation API lens uses",
    "sam2==1.1.0": "SAM2 (built without its optional CUDA extension: SAM2_BUILD_CUDA=0)",
    "hydra-core==1.3.8": "sam2 builds its models from Hydra configs",
    "omegaconf==2.3.1": "hydra's and lens's configs",
    "antlr4-python3-runtime==4.9.3": "omegaconf's interpolation grammar",
    "iopath==0.1.10": "sam2's checkpoint loading",
}
# Table A4 of the paper: LENS-3B latency per component on a GPU (seconds).
PAPER_LATENCY = {"MLLM": 1.5, "context query": 0.07, "connector": 0.002, "SAM2": 0.025}
TRACKING_GOAL = 60.0  # masks/s, SAM2 Hiera-L at 1024 px
BUDGET_S = 600


@dataclass
class Row:
    part: str
    measured: str
    reference: str = ""
    verdict: str = ""  # "ok", "NOT met", "failed", "skipped ..."


def render_table(rows: list[Row], elapsed_s: float) -> str:
    """The one table the check prints (markdown, for benchmarks/README.md)."""
    lines = ["| part | measured | goal / paper | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.part} | {r.measured} | {r.reference} | {r.verdict} |" for r in rows]
    within = "within" if elapsed_s <= BUDGET_S else "OVER"
    lines.append(f"| total | {elapsed_s:.0f} s | <= {BUDGET_S} s | {within} budget |")
    return "\n".join(lines)


def install_wheels(folder: Path) -> None:
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no .whl files there (make them with --download-wheels {folder})")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels]
    print("installing carried wheels:", ", ".join(Path(w).name for w in wheels), flush=True)
    subprocess.run(cmd, check=True)


def unmet_requirements(requirements: list[str]) -> list[str]:
    """Which of `requirements` (pip requirement strings; extras' and other Pythons' ones are skipped) this Python's
    installed packages do not meet, each as one line: the carried wheels go in with --no-deps, so their own
    dependencies must already be on the GPU machine."""
    import importlib.metadata

    from packaging.requirements import Requirement

    unmet = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{requirement}: not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement}: {version} installed")
    return unmet


def check_carried_dependencies() -> None:
    """After --wheels: one line per dependency of a carried wheel that this machine lacks (parts may then fail)."""
    import importlib.metadata

    for requirement in WHEELS:
        name = requirement.split("==")[0]
        for line in unmet_requirements(importlib.metadata.requires(name) or []):
            print(f"warning: {name} needs {line}; carry that wheel too", file=sys.stderr, flush=True)


def download_wheels(folder: Path) -> None:
    """The wheels of WHEELS (all pure Python: any Python 3 takes them), fetched or built from their source (sam2,
    antlr4 and iopath publish none) with `pip wheel --no-deps`."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SAM2_BUILD_CUDA="0")  # sam2 without its optional CUDA extension: a pure-Python wheel
    for requirement in WHEELS:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder)]
        subprocess.run([*cmd, requirement], check=True, env=env)
    wheels = sorted(folder.glob("*.whl"))
    for wheel in wheels:
        print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB")
    print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB in all: carry {folder}")


def cuda_tests(timeout_s: int) -> Row:
    """The CUDA test subset, in a subprocess: its pass/skip/fail counts."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py", "tests/test_export_tensorrt.py"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
    verdict = "ok" if proc.returncode == 0 else "failed"
    seconds = time.perf_counter() - start
    return Row("CUDA tests (tests/test_cuda.py, TensorRT)", f"{summary} ({seconds:.0f} s)", "", verdict)


def demo_pipeline(device: str) -> list[Row]:
    """The demo model in bf16 on `device` against float32 on the CPU, on the demo scene's prompts."""
    import json

    import numpy as np
    import torch

    from lens_model.data.refer import decode_segmentation
    from lens_model.image_io import load_image
    from lens_model.inference.pipeline import LensPipeline
    from lens_model.parity import mask_agreement

    spec = json.loads((REPO / "assets" / "demo-scene.json").read_text())
    rgb = load_image(REPO / "assets" / spec["image"])
    h, w = rgb.shape[:2]
    objects = [(o["expression"], decode_segmentation(o["segmentation"], h, w)) for o in spec["objects"]]
    model = str(REPO / "assets" / "demo-model")
    reference = LensPipeline.from_pretrained(model, device="cpu", dtype="float32")
    dtype = "bfloat16" if device == "cuda" else "float32"
    pipe = LensPipeline.from_pretrained(model, device=device, dtype=dtype)
    pipe(rgb, objects[0][0])  # warm-up (CUDA kernels, allocator)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    agree, same_text, hits, timings = [], 0, 0, []
    for expression, gt in objects:
        want, got = reference(rgb, expression), pipe(rgb, expression)
        agree.append(mask_agreement(got.mask, want.mask))
        same_text += got.text == want.text
        hits += float((got.mask & gt).sum() / max((got.mask | gt).sum(), 1)) >= 0.5
        timings.append(got.timings)
    stages = {k: float(np.median([t[k] for t in timings])) * 1e3 for k in timings[0]}
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else "n/a (CPU)"
    n = len(objects)
    ok = same_text == n and hits == n and min(agree) >= 0.98
    return [
        Row(
            f"demo model, {dtype} on {device}: {n} prompts of the demo scene",
            f"same answers {same_text}/{n}, right object {hits}/{n}, masks agree with CPU float32 >= {min(agree):.2%}",
            "all; >= 98 % (bf16)",
            "ok" if ok else "failed",
        ),
        Row(
            "demo model latency per query (median ms)",
            ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + f"; peak GPU memory {peak}",
        ),
    ]


def lens_3b_query(device: str, new_tokens: int) -> list[Row]:
    """One query of a random LENS-3B-shaped model in bf16: per-stage latency against Table A4, tokens/s, memory."""
    import numpy as np
    import torch
    from PIL import Image

    from lens_model.inference.backends import TorchBackend
    from lens_model.inference.pipeline import LensPipeline
    from lens_model.inference.timing import StageTimer
    from lens_model.model.paper_shapes import lens_3b_shape
    from lens_model.model.tiny import build_tiny_processor

    processor = build_tiny_processor(max_pixels=448 * 448)  # Qwen's image processor; 448 x 448 = 256 image tokens
    start = time.perf_counter()
    model = lens_3b_shape(device=device, dtype=torch.bfloat16, tokenizer=processor.tokenizer)
    built = time.perf_counter() - start
    model.mllm.generation_config.min_new_tokens = new_tokens  # random weights: force the answer's length
    pipe = LensPipeline(model, processor, max_new_tokens=new_tokens)
    image = np.asarray(Image.open(REPO / "assets" / "sample.jpg").convert("RGB"))
    pipe(image, "the astronaut's helmet", max_new_tokens=8)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    result = pipe(image, "the astronaut's helmet on the left of the flag")
    peak = torch.cuda.max_memory_allocated() / 2**30
    t = result.timings
    # The connector (context head) on its own: inside sam_decode in the pipeline's stages
    timer = StageTimer(model.device)
    states = torch.randn(1, model.context.num_queries, model.hidden_size, device=model.device, dtype=model.dtype)
    head = TorchBackend(model)
    for _ in range(3):
        with timer.stage("connector"):
            head.prompt_embeddings(states)
    connector = timer.times["connector"] / 3
    ours = {
        "MLLM": t["mllm_vision"] + t["generate"],
        "context query": t["context"],
        "connector": connector,
        "SAM2": t["sam_encode"] + t["sam_decode"] - connector,
    }
    rows = [
        Row(
            f"LENS-3B shape (random, bf16): {name}",
            f"{seconds:.3f} s",
            f"{PAPER_LATENCY[name]} s",
            f"{seconds / PAPER_LATENCY[name]:.2f}x the paper's",
        )
        for name, seconds in ours.items()
    ]
    rows.append(
        Row(
            "LENS-3B shape: generation",
            f"{result.num_tokens} tokens in {t['generate']:.2f} s = {result.num_tokens / t['generate']:.0f} tokens/s; "
            f"peak GPU memory {peak:.1f} GiB; built in {built:.0f} s",
            "(paper: answer length not stated)",
        )
    )
    return rows


def tracking_rate(frames: int) -> Row:
    import torch
    from tracking import gpu_masks_per_second

    rate = gpu_masks_per_second(frames, torch.device("cuda"))
    verdict = "ok" if rate >= TRACKING_GOAL else "NOT met"
    return Row("SAM2 Hiera-L tracking, 1024 px, bf16", f"{rate:.1f} masks/s", f">= {TRACKING_GOAL:.0f}", verdict)


def grpo_step(timeout_s: int, smoke: bool) -> Row:
    """benchmarks/grpo_step.py on the GPU (bf16, LENS-3B width and depth, tiny vocabulary): the step's seconds."""
    sizes = ["--hidden", "64", "--layers", "1", "--max-new-tokens", "4"] if smoke else []
    sizes = sizes or ["--hidden", "2048", "--layers", "36", "--max-new-tokens", "64", "--sam-size", "1024"]
    device = ["--device", "cuda", "--dtype", "bfloat16"] if not smoke else ["--smoke"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "grpo_step.py"), *device, *sizes]
    cmd += ["--repeats", "2", "--warmup", "1", "--loop-repeats", "1"] if not smoke else []
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    print(proc.stdout[-2500:], proc.stderr[-1500:], sep="\n", flush=True)
    step = re.search(r"step \(sum of medians\)\s+([\d.]+)", proc.stdout)
    batched = re.search(r"batching alone .*?: ([\d.]+)x", proc.stdout)
    measured = f"{float(step.group(1)):.2f} s per step" if step else "no figure"
    if batched:
        measured += f"; batched rollout {batched.group(1)}x the per-row loop"
    what = "smoke sizes, CPU" if smoke else "K=4 x G=8, hidden 2048 x 36 layers, 64 new tokens, bf16"
    return Row(f"GRPO step ({what})", measured, "", "ok" if proc.returncode == 0 else "failed")


PARTS = ("tests", "demo", "lens3b", "tracking", "grpo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `parts` becomes a list of PARTS (an unknown one exits 2 with the known ones)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, help="install the carried wheels in this folder first")
    parser.add_argument("--download-wheels", type=Path, metavar="DIR", help="write the wheels to carry to DIR, exit")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens the LENS-3B-shaped model generates")
    parser.add_argument("--tracking-frames", type=int, default=200, help="timed frames of the tracking rate")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"parts to run, comma-separated (default: {','.join(PARTS)})",
    )
    # --smoke: the parts a CPU runs (grpo_step.py has its own smoke run)
    args = parse_with_smoke(parser, dict(parts="demo,lens3b", new_tokens=4, tracking_frames=2), argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose among {','.join(PARTS)}")
    if not args.parts:
        parser.error(f"--parts: none given; choose among {','.join(PARTS)}")
    return args


def main() -> int:
    args = parse_args()
    if args.download_wheels:
        download_wheels(args.download_wheels)
        return 0
    if args.wheels:
        install_wheels(args.wheels)
        check_carried_dependencies()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    machine = torch.cuda.get_device_name(0) if cuda else "no CUDA GPU"
    print(f"gpu_check on {machine}; torch {torch.__version__}", flush=True)
    rows: list[Row] = []

    def skipped(part: str) -> Row:
        return Row(part, "", "", "skipped (no CUDA GPU)")

    for part in args.parts:
        remaining = max(60, int(BUDGET_S - (time.perf_counter() - start)))
        try:
            if part == "tests":
                rows.append(cuda_tests(remaining) if cuda else skipped("CUDA tests"))
            elif part == "demo":
                rows += demo_pipeline("cuda" if cuda else "cpu")
            elif part == "lens3b":
                rows += lens_3b_query("cuda", args.new_tokens) if cuda else [lens_3b_on_meta()]
            elif part == "tracking":
                rows.append(tracking_rate(args.tracking_frames) if cuda else skipped("tracking masks/s"))
            elif part == "grpo":
                rows.append(grpo_step(remaining, smoke=not cuda))
        except Exception as exc:  # one part failing must not hide the others' figures
            rows.append(Row(part, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "", "failed"))
    print("\n" + render_table(rows, time.perf_counter() - start))
    return 1 if any(r.verdict == "failed" for r in rows) else 0


def lens_3b_on_meta() -> Row:
    """Without a GPU: the LENS-3B-shaped model on the meta device, its sizes against Table A4 (no memory used)."""
    from lens_model.model.paper_shapes import lens_3b_shape

    model = lens_3b_shape()
    millions = sum(p.numel() for p in model.mllm.parameters()) / 1e6
    return Row("LENS-3B shape on the meta device (no GPU)", f"MLLM {millions:.1f} M parameters", "3755.6 M", "built")


if __name__ == "__main__":
    raise SystemExit(main())
