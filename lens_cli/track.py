"""Follow an object through a video: LENS on grounding frames, SAM2 memory in between (`lens track`)."""

from __future__ import annotations

from pathlib import Path

from lens_model.errors import LensError
from lens_model.outputs import check_output_dir

from .options import (
    add_backend_arguments,
    add_device_dtype_arguments,
    add_model_argument,
    add_override_arguments,
    load_pipeline,
)


def add_parser(sub) -> None:
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
    p.add_argument(
        "--multi-target",
        action="store_true",
        help="split the prompt into several objects ('the cup and the spoon'; rule in docs/cli.md) and track each: "
        "one image-encoder pass per frame for all, each lost and re-grounded on its own; writes OUT/labels/ too",
    )
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier lens track in --out-dir (its masks, tracks.jsonl and overlay.mp4 are "
        "removed first; other files in the folder are left alone)",
    )
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
        "torch (default), or the export in --backend-dir: its graphs (engines) run SAM2's image encoder, the "
        "context head and mask decoder on LENS frames, and the image encoder, memory attention and memory encoder "
        "on tracked frames; SAM2's decoder for tracked frames stays torch. The export must hold the tracking graphs "
        "(lens export with SAM2 memory weights)",
    )
    p.add_argument(
        "--memory-frames",
        type=int,
        metavar="K",
        help="spatial memories SAM2 reads per tracked frame, the LENS frame included (1-7; default: SAM2's 7). "
        "Fewer make tracked frames cheaper on a CPU, at some tracking quality: SAM2 then sees less history",
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
    add_override_arguments(
        p,
        "override the checkpoint's context-pass mode (released checkpoints need 'official')",
        "override the prompt/answer format (think_answer for the CoT checkpoints)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from lens_model.image_io import read_prompt
    from lens_model.inference.backends import check_backend_args
    from lens_model.inference.targets import command_targets
    from lens_model.model.checkpoint import resolve_model_dir
    from lens_model.tracking.state import TrackingPolicy
    from lens_model.tracking.track_video import earlier_outputs, remove_earlier_outputs, track_video, tracking_memory
    from lens_model.tracking.tracker import StreamingTracker
    from lens_model.tracking.video_io import open_video

    for name in ("reason_every", "lost_after", "max_new_tokens", "memory_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LensError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not args.fps > 0:
        raise LensError(f"--fps must be > 0, got {args.fps}")
    check_output_dir(args.out_dir, "--out-dir", {"--video": args.video})
    earlier = earlier_outputs(args.out_dir) if args.out_dir.is_dir() else []
    if earlier and not args.overwrite:
        raise LensError(
            f"--out-dir {args.out_dir} holds the outputs of an earlier lens track ({len(earlier)} files: "
            f"{', '.join(p.name for p in earlier[:3])}{', ...' if len(earlier) > 3 else ''}); pass --overwrite to "
            "replace them, or another --out-dir"
        )
    # Cheap checks first: the video, the prompt, the backend and the SAM2 memory weights, before the model loads.
    prompt = read_prompt(args.prompt)
    command_targets(prompt, args.multi_target)  # an empty phrase or too many targets: refused before loading
    video = open_video(args.video, folder_fps=args.fps)
    choice = check_backend_args(args.backend, args.backend_dir)
    model_dir = resolve_model_dir(args.model)
    memory = tracking_memory(model_dir, choice, args.sam_memory_checkpoint)
    pipe = load_pipeline(args, str(model_dir))
    # torch: SAM2's memory modules run in torch; an export: its tracking graphs, on the backend the pipeline opened
    memory = memory if memory is not None else pipe.backend
    tracker = StreamingTracker.from_lens_model(
        pipe.model, memory, num_frames=video.num_frames, memory_frames=args.memory_frames
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    remove_earlier_outputs(args.out_dir)  # --overwrite: no mask of a longer earlier run may outlive it
    summary = track_video(
        pipe,
        tracker,
        video,
        prompt,
        args.out_dir,
        reason_every=args.reason_every,
        policy=TrackingPolicy(lost_after_frames=args.lost_after),
        progress=not args.no_progress,
        multi_target=args.multi_target,
    )
    print(
        f"{summary.frames} frames, {summary.lens_queries} LENS queries, {summary.lost_frames} frames lost "
        f"(SAM2 memory on {args.backend}); "
        f"wrote {args.out_dir / 'masks'}, {args.out_dir / 'tracks.jsonl'}, {args.out_dir / 'overlay.mp4'}"
    )
    return 0
