"""The library's `lens` commands: segment, track, make-tiny, export, eval, make-synthetic.

`add_commands` puts them on an argparse sub-command parser; the `lens` program itself (package `lens_cli`) adds
the commands built on the packages above the library (`bag`, `plot-run`) and dispatches. Building the parser
imports neither torch nor transformers: each command imports what it needs when it runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import LensError
from .model.config import DEFAULT_MODEL_ID
from .vocab import ANSWER_FORMATS, BACKENDS, CONTEXT_PASS_MODES, DTYPES, SYNTHETIC_BACKGROUNDS

DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"
# Masks are written losslessly so that they keep exactly 0 and 255; overlays may also be lossy pictures.
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = (*MASK_SUFFIXES, ".jpg", ".jpeg", ".webp")


def check_output_file(path: Path | None, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output file that cannot be written, before any expensive work: a directory, a file in a folder
    that does not exist, or (with `suffixes`) a name whose extension is not one of them."""
    if path is None:
        return
    if path.is_dir():
        example = f" such as {path / ('out' + suffixes[0])}" if suffixes else ""
        raise LensError(f"{option} {path} is a directory; pass a file name{example}")
    if not path.parent.is_dir():
        raise LensError(f"{option} {path}: folder {path.parent} does not exist; create it first")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        got = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise LensError(f"{option} {path} has {got}; expected a file name ending in {', '.join(suffixes)}")


def add_model_argument(p) -> None:
    """--model: a checkpoint directory or Hub id (shared by the commands that load a model)."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL_ID, help=f"checkpoint directory or Hub id (default: {DEFAULT_MODEL_ID})"
    )


def add_backend_arguments(p, backend_help: str) -> None:
    """--backend / --backend-dir: torch, or the graphs/engines of a `lens export` directory."""
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=backend_help)
    p.add_argument("--backend-dir", type=Path, help="export directory for --backend onnxruntime|tensorrt")


def add_device_dtype_arguments(p, device_help: str = DEVICE_HELP, dtype_help: str | None = None) -> None:
    """--device / --dtype of the loaded model."""
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=dtype_help)


def _add_overrides(p, context_pass_help: str, answer_format_help: str) -> None:
    """--context-pass / --answer-format: override what the checkpoint's config says."""
    p.add_argument("--context-pass", choices=CONTEXT_PASS_MODES, help=context_pass_help)
    p.add_argument("--answer-format", choices=ANSWER_FORMATS, help=answer_format_help)


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image from a text prompt and print the result as JSON",
        description="Reason about the prompt with the MLLM, then segment with SAM2. Prints box, score, "
        "generated text, image size and per-stage timings as JSON.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"checkpoint directory or Hugging Face Hub id (default: {DEFAULT_MODEL_ID}, the released LENS)",
    )
    p.add_argument(
        "--image", required=True, help="input image file (JPEG, PNG, ...); grayscale/RGBA/16-bit are converted"
    )
    p.add_argument("--prompt", required=True, help="referring expression or command, e.g. 'the red cup on the left'")
    p.add_argument(
        "--out-mask",
        type=Path,
        help=f"write the mask (0/255, same size as the image) to this {'/'.join(MASK_SUFFIXES)} file (lossless)",
    )
    p.add_argument(
        "--out-overlay",
        type=Path,
        help=f"write the image with the tinted mask, the box and the prompt ({'/'.join(IMAGE_SUFFIXES)})",
    )
    p.add_argument("--json", type=Path, help="also write the JSON result to this file")
    add_device_dtype_arguments(p, dtype_help="weights dtype (default: auto = bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the MLLM (default: 256)")
    _add_overrides(
        p,
        "override the checkpoint's context-pass mode (released checkpoints need 'official')",
        "override the prompt/answer format (think_answer for the CoT checkpoints)",
    )
    add_backend_arguments(
        p,
        "what runs SAM2 + the context head: torch (default), or the graphs/engines that `lens export` "
        "wrote to --backend-dir (the MLLM always runs in torch)",
    )
    p.add_argument(
        "--depth",
        type=Path,
        help="depth image registered to --image (16-bit PNG in millimetres, float32 "
        "TIFF in metres, or .npy): also print the object's 3D point and box",
    )
    p.add_argument("--camera-info", type=Path, help="camera_calibration YAML of the camera (with --depth)")
    p.add_argument(
        "--depth-scale",
        type=float,
        default=0.001,
        help="metres per unit of a 16-bit depth (default: 0.001, millimetres)",
    )
    p.set_defaults(func=cmd_segment)


def _add_track(sub) -> None:
    p = sub.add_parser(
        "track",
        help="segment an object in a video: LENS on the first frame, SAM2 memory tracking on the rest",
        description="Reasons about the prompt with LENS on the first frame (and every --reason-every frames, "
        "and when the target is lost), follows the object in between with SAM2's memory attention. Writes "
        "OUT/masks/NNNNNN.png (0/255 per frame), OUT/tracks.jsonl (frame, time, source, state, box, score) and "
        "OUT/overlay.mp4. LENS checkpoints do not hold SAM2's memory modules: pass the official SAM2 checkpoint "
        "of the model's SAM2 size with --sam-memory-checkpoint (sam2_hiera_large.pt for the released LENS); "
        "tiny models from `lens make-tiny` carry their own.",
    )
    add_model_argument(p)
    p.add_argument("--video", type=Path, required=True, help="video file (MP4, MKV, AVI, ...) or a folder of frames")
    p.add_argument("--prompt", required=True, help="referring expression or command, e.g. 'the red cup on the left'")
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--reason-every",
        type=int,
        metavar="K",
        help="also run LENS on every K-th frame and restart tracking from its mask (default: first frame only)",
    )
    p.add_argument(
        "--sam-memory-checkpoint",
        type=Path,
        help="SAM2 memory weights: the official SAM2 .pt of the model's SAM2 config (default: "
        "sam2_memory.safetensors in the model directory); not with --backend onnxruntime|tensorrt",
    )
    add_backend_arguments(
        p,
        "torch (default), or the export in --backend-dir: its graphs (engines) run the context head and mask "
        "decoder on LENS frames and SAM2's memory attention and memory encoder on tracked frames; SAM2's image "
        "encoder and its decoder for tracked frames stay torch. The export must hold the tracking graphs "
        "(lens export with SAM2 memory weights)",
    )
    p.add_argument(
        "--lost-after",
        type=int,
        default=3,
        help="frames in a row without the object before the target is lost and LENS runs again (default: 3)",
    )
    p.add_argument(
        "--fps", type=float, default=30.0, help="frame rate of a frame folder, for times and the video (default: 30)"
    )
    add_device_dtype_arguments(p, dtype_help="weights dtype (default: auto = bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the MLLM (default: 256)")
    _add_overrides(
        p,
        "override the checkpoint's context-pass mode (released checkpoints need 'official')",
        "override the prompt/answer format (think_answer for the CoT checkpoints)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_track)


def _add_export(sub) -> None:
    from .export import DEFAULT_OPSET, SUPPORTED_OPSETS

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
    p.add_argument("--overwrite", action="store_true", help="replace the export files in an existing output directory")
    p.set_defaults(func=cmd_export)


def _add_make_tiny(sub) -> None:
    p = sub.add_parser(
        "make-tiny",
        help="write a tiny, randomly initialised LENS checkpoint for tests and demos",
        description="Builds a complete small LENS checkpoint (tiny Qwen2.5-VL, local tokenizer with the "
        "Qwen special tokens and chat template, small SAM2) in seconds on a CPU. Untrained.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    p.add_argument("--num-queries", type=int, default=8, help="number of context queries (default: 8)")
    p.add_argument("--context-pass", choices=CONTEXT_PASS_MODES, default="cached", help="default: cached")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=cmd_make_tiny)


def _add_eval(sub) -> None:
    from .data import DATASET_NAMES

    p = sub.add_parser(
        "eval",
        help="gIoU/cIoU of a model on a dataset split (resumable; shard with torchrun)",
        description="Evaluates with the LISA/LENS protocol and prints dataset, split, N, gIoU, cIoU, P@0.5. "
        "Per-sample results stream to OUT/samples-rank*.jsonl; re-running the same command "
        "resumes. Shard over processes/GPUs with: torchrun --nproc_per_node K -m lens_cli eval ...",
    )
    add_model_argument(p)
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset name")
    p.add_argument("--data-root", required=True, type=Path, help="dataset root (see README: Datasets)")
    p.add_argument(
        "--split",
        required=True,
        help="refcoco/refcoco+: val testA testB; refcocog: val test; "
        "reasonseg: val test; groundingsuite: eval; synthetic: as written",
    )
    p.add_argument("--image-dir", type=Path, help="image folder, when not in the standard place under --data-root")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples of the split")
    p.add_argument("--batch-size", type=int, default=1, help="samples per forward pass per process (default: 1)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/eval/DATASET-SPLIT)")
    p.add_argument(
        "--save-vis", type=int, default=0, metavar="K", help="save K GT|prediction overlay images (default: 0)"
    )
    p.add_argument(
        "--max-length", type=int, default=768, help="prompt + completion token budget (default: 768, as released)"
    )
    add_device_dtype_arguments(p, device_help="auto, cpu, cuda (with torchrun: each rank uses cuda:LOCAL_RANK)")
    _add_overrides(p, "override the checkpoint's context-pass mode", "override the answer format")
    p.add_argument(
        "--ignore-as-background",
        action="store_true",
        help="ReasonSeg: count 'ignore' regions as background, as the released LENS script does "
        "(default: leave them out of I and U, as LISA does)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=cmd_eval)


def _add_make_synthetic(sub) -> None:
    p = sub.add_parser(
        "make-synthetic",
        help="render synthetic referring scenes in the REFER layout",
        description="Images of coloured shapes with referring expressions that need attributes and "
        "spatial relations, written like RefCOCO (refs(unc).p, instances.json, images/). "
        "Evaluate with: lens eval --dataset synthetic --data-root DIR --split val",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--n", type=int, default=200, help="number of images (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default: 128)")
    p.add_argument("--min-objects", type=int, default=2, help="fewest shapes per scene (default: 2)")
    p.add_argument("--max-objects", type=int, default=4, help="most shapes per scene, at most 8 (default: 4)")
    p.add_argument(
        "--object-scale",
        type=float,
        default=1.0,
        help="multiply the shapes' sizes (small: 0.08-0.11, large: 0.15-0.2 of the side as half-extent; default: 1)",
    )
    p.add_argument(
        "--relation-rate",
        type=float,
        default=0.5,
        help="share of objects described by a spatial relation where one exists; 0: by attributes wherever they "
        "single the object out (default: 0.5)",
    )
    p.add_argument(
        "--background",
        choices=SYNTHETIC_BACKGROUNDS,
        default="noise",
        help="noise: flat grey with pixel noise; texture: with smooth blotches (default: noise)",
    )
    p.add_argument(
        "--distinct-colors",
        action="store_true",
        help="every object of a scene has its own colour (at most 4 objects) and attribute expressions name it",
    )
    p.set_defaults(func=cmd_make_synthetic)


def add_commands(sub) -> None:
    """The library's commands, in the order `lens --help` lists them."""
    _add_segment(sub)
    _add_track(sub)
    _add_make_tiny(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_make_synthetic(sub)


def cmd_segment(args) -> int:
    import numpy as np
    from PIL import Image

    from .image_io import load_image, read_prompt
    from .inference.pipeline import LensPipeline
    from .inference.prompting import check_mllm_aspect_ratio
    from .overlay import draw_overlay

    if args.max_new_tokens < 1:
        raise LensError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    # Validate the cheap inputs before loading a multi-GB model (from_pretrained checks the backend first).
    check_output_file(args.out_mask, "--out-mask", MASK_SUFFIXES)
    check_output_file(args.out_overlay, "--out-overlay", IMAGE_SUFFIXES)
    check_output_file(args.json, "--json")
    rgb = load_image(args.image)
    check_mllm_aspect_ratio(rgb.shape[:2], str(args.image))
    prompt = read_prompt(args.prompt)
    depth = None
    if args.depth or args.camera_info:
        from .geometry.target3d import DepthInput

        depth = DepthInput.from_files(args.depth, args.camera_info, rgb.shape[:2], args.depth_scale)
    pipe = LensPipeline.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        context_pass=args.context_pass,
        answer_format=args.answer_format,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        backend_dir=args.backend_dir,
    )
    result = pipe(rgb, prompt)
    data = result.to_json_dict()
    data.update(image=str(args.image), model=str(args.model), backend=args.backend)
    if depth is not None:
        data["target_3d"] = depth.target(result.mask).to_json_dict()
    if args.out_mask:
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(args.out_mask)
        data["mask_png"] = str(args.out_mask)
    if args.out_overlay:
        draw_overlay(rgb, result.mask, result.box, prompt).save(args.out_overlay)
        data["overlay_png"] = str(args.out_overlay)
    text = json.dumps(data, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def cmd_track(args) -> int:
    from .export.metadata import require_memory_graphs
    from .image_io import read_prompt
    from .inference.backends import check_backend_args
    from .inference.pipeline import LensPipeline
    from .model.checkpoint import resolve_model_dir
    from .model.sam_memory import load_model_sam_memory
    from .tracking.state import TrackingPolicy
    from .tracking.track_video import track_video
    from .tracking.tracker import StreamingTracker
    from .tracking.video_io import open_video

    for name in ("reason_every", "lost_after", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LensError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not args.fps > 0:
        raise LensError(f"--fps must be > 0, got {args.fps}")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise LensError(f"--out-dir {args.out_dir} is a file; pass a folder")
    # Cheap checks first: the video, the prompt, the backend and the SAM2 memory weights, before the model loads.
    prompt = read_prompt(args.prompt)
    video = open_video(args.video, folder_fps=args.fps)
    choice = check_backend_args(args.backend, args.backend_dir)
    model_dir = resolve_model_dir(args.model)
    memory = None
    if choice.name == "torch":
        memory = load_model_sam_memory(model_dir, args.sam_memory_checkpoint)
    elif args.sam_memory_checkpoint is not None:
        raise LensError(
            f"--sam-memory-checkpoint is not used with --backend {choice.name}: the memory graphs come from the "
            f"export in {choice.export_dir}"
        )
    else:
        require_memory_graphs(choice.meta, choice.export_dir)
    pipe = LensPipeline.from_pretrained(
        str(model_dir),
        device=args.device,
        dtype=args.dtype,
        context_pass=args.context_pass,
        answer_format=args.answer_format,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        backend_dir=args.backend_dir,
    )
    # torch: SAM2's memory modules run in torch; an export: its tracking graphs, on the backend the pipeline opened
    memory = memory if memory is not None else pipe.backend
    tracker = StreamingTracker.from_lens_model(pipe.model, memory, num_frames=video.num_frames)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = track_video(
        pipe,
        tracker,
        video,
        prompt,
        args.out_dir,
        reason_every=args.reason_every,
        policy=TrackingPolicy(lost_after_frames=args.lost_after),
        progress=not args.no_progress,
    )
    print(
        f"{summary.frames} frames, {summary.lens_queries} LENS queries, {summary.lost_frames} frames lost "
        f"(SAM2 memory on {args.backend}); "
        f"wrote {args.out_dir / 'masks'}, {args.out_dir / 'tracks.jsonl'}, {args.out_dir / 'overlay.mp4'}"
    )
    return 0


def cmd_export(args) -> int:
    from .export import ExportOptions, export_model
    from .export.op_support import TENSORRT_TARGET, check_file

    options = ExportOptions(opset=args.opset, image_size=args.image_size, fp16=args.fp16, overwrite=args.overwrite)
    options.validate()
    engine_options = None
    if args.format == "tensorrt":
        from .export.tensorrt_build import EngineOptions, build_engines
        from .export.tensorrt_runtime import require_tensorrt

        engine_options = EngineOptions(max_batch=args.max_batch, workspace_gb=args.workspace_gb)
        engine_options.validate()
        require_tensorrt()  # refuse before the ONNX export, which takes minutes for LENS-3B
    meta = export_model(args.model, args.out, options, sam_memory_checkpoint=args.sam_memory_checkpoint)
    if engine_options is not None:
        meta = build_engines(args.out, engine_options)

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


def cmd_make_tiny(args) -> int:
    from .model.tiny import make_tiny

    if args.num_queries < 1:
        raise LensError(
            f"--num-queries must be >= 1 (the context queries SAM2's prompt is read from), got {args.num_queries}"
        )
    if args.out.exists() and not args.out.is_dir():
        raise LensError(f"--out {args.out} is a file; pass a directory to write the checkpoint into")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise LensError(f"output directory {args.out} is not empty; pass --overwrite to replace it")
    path = make_tiny(args.out, seed=args.seed, num_queries=args.num_queries, context_pass=args.context_pass)
    print(f"wrote tiny LENS checkpoint to {path} (random weights: untrained, for tests and demos)")
    return 0


def cmd_eval(args) -> int:
    import os

    from .data import load_dataset
    from .distributed import dist_info
    from .eval.evaluate import REASONSEG_MLLM_LONGEST_SIDE, EvalOptions, format_table, run_eval
    from .inference.pipeline import LensPipeline

    for name in ("limit", "batch_size", "max_length"):  # max_length 0 must not mean "no bound"
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LensError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    records = load_dataset(args.dataset, args.data_root, args.split, image_dir=args.image_dir)
    if not records:
        raise LensError(f"{args.dataset} {args.split} under {args.data_root} has no samples")
    records = records[: args.limit] if args.limit else records
    rank, world = dist_info()
    device = args.device
    if world > 1 and device in ("auto", "cuda"):
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    pipe = LensPipeline.from_pretrained(
        str(args.model),
        device=device,
        dtype=args.dtype,
        context_pass=args.context_pass,
        answer_format=args.answer_format,
        mllm_longest_side=REASONSEG_MLLM_LONGEST_SIDE if args.dataset == "reasonseg" else None,
    )
    out = args.out or Path("runs") / "eval" / f"{args.dataset}-{args.split}"
    meta = {
        "dataset": args.dataset,
        "split": args.split,
        "model": str(args.model),
        "context_pass": pipe.config.context_pass,
        "max_length": args.max_length,
        "ignore_regions": "background" if args.ignore_as_background else "excluded",
    }
    options = EvalOptions(
        batch_size=args.batch_size,
        save_vis=args.save_vis,
        max_length=args.max_length,
        progress=not args.no_progress,
        ignore_as_background=args.ignore_as_background,
    )
    results = run_eval(pipe, records, out, options, rank=rank, world=world, meta=meta)
    if results is not None:
        print(format_table(results))
        if results["failed"]:
            print(
                f"{results['failed']} sample(s) failed and are not in the numbers; see {out / 'results.json'}",
                file=sys.stderr,
            )
        print(f"results: {out / 'results.json'}")
    return 0


def cmd_make_synthetic(args) -> int:
    from .data.synthetic import make_synthetic

    path = make_synthetic(
        args.out,
        n_images=args.n,
        seed=args.seed,
        image_size=args.image_size,
        relation_rate=args.relation_rate,
        progress=True,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        object_scale=args.object_scale,
        background=args.background,
        distinct_colors=args.distinct_colors,
    )
    print(f"wrote {args.n} synthetic scenes to {path} (REFER layout; lens eval --dataset synthetic --data-root {path})")
    return 0
