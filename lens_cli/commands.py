"""The `lens` command: the library's commands (`lens_model.cli`) plus those built on the packages above it,
`bag` (lens_ros) and `plot-run` (training). The library never imports those packages; this package may.

Building the parser imports no torch, transformers or sam2 (`lens --help` answers at once); each command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lens_model.cli import add_commands, add_device_dtype_arguments, add_model_argument
from lens_model.errors import LensError

from .demo import add_demo

EXAMPLES = """examples:
  lens make-tiny --out /tmp/lens-tiny
  lens segment --model /tmp/lens-tiny --image assets/sample.jpg --prompt "the astronaut's helmet" --out-overlay o.png
  lens segment --image photo.jpg --prompt "the mug left of the laptop" --device cuda   # released OuyBin/LENS weights
  lens export --model /tmp/lens-tiny --out /tmp/lens-tiny-onnx            # ONNX graphs of SAM2 + context head
  lens segment --model /tmp/lens-tiny --backend onnxruntime --backend-dir /tmp/lens-tiny-onnx --image ... --prompt ...
  lens demo                                   # the web page, with the bundled demo model: http://127.0.0.1:7860
  lens bag --in recording --out recording_lens --image-topic /camera/image_raw --prompt "the red cup" --every 5
"""


def _add_bag(sub) -> None:
    p = sub.add_parser(
        "bag",
        help="segment the image topic of a rosbag2 and write masks, detections and reasoning to a new bag",
        description="Reads sensor_msgs/Image or CompressedImage from a rosbag2 (mcap or sqlite3; needs the "
        "rosbags package: pip install -e '.[ros]'), segments every N-th frame with the "
        "prompt and writes all input messages plus /lens/mask (Image mono8), /lens/detections "
        "(vision_msgs/Detection2DArray) and /lens/reasoning (String), stamped with the source "
        "image's header, to --out (renamed into place only when complete).",
    )
    p.add_argument(
        "--in",
        dest="in_bag",
        metavar="BAG",
        type=Path,
        required=True,
        help="input rosbag2 (directory, or a .mcap/.db3 file)",
    )
    p.add_argument("--out", metavar="BAG", type=Path, required=True, help="output rosbag2 directory (must not exist)")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic to segment")
    p.add_argument("--prompt", required=True, help="referring expression or command, e.g. 'the red cup on the left'")
    p.add_argument(
        "--every", type=int, default=1, help="segment frames 0, N, 2N, ... of the topic (default: 1, every frame)"
    )
    add_model_argument(p)
    add_device_dtype_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the MLLM (default: 256)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], help="output storage (default: the input's)")
    p.add_argument(
        "--overlay", action="store_true", help="also write /lens/overlay (Image rgb8: tinted mask, box, prompt)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--depth-topic",
        help="registered depth topic (Image 16UC1 mm or 32FC1 m): also write "
        "/lens/target_point (PointStamped) and /lens/detections_3d (Detection3DArray)",
    )
    p.add_argument("--camera-info-topic", help="CameraInfo topic of the depth image (with --depth-topic)")
    p.add_argument("--target-cloud", action="store_true", help="also write /lens/target_cloud (PointCloud2 x y z rgb)")
    p.add_argument(
        "--track",
        action="store_true",
        help="outputs on every frame: LENS on the first frame (and every --every N > 1 frames, and when the target "
        "is lost), SAM2 memory tracking in between; tracked frames write no reasoning",
    )
    p.add_argument(
        "--sam-memory-checkpoint",
        type=Path,
        help="with --track: SAM2 memory weights, the official SAM2 .pt of the model's SAM2 config (default: "
        "sam2_memory.safetensors in the model directory)",
    )
    p.set_defaults(func=cmd_bag)


def _add_plot_run(sub) -> None:
    p = sub.add_parser(
        "plot-run",
        help="draw a training run's curves (loss parts, rewards, validation) as a PNG",
        description="Reads RUN_DIR/metrics.jsonl written by python -m training.align / training.grpo.",
    )
    p.add_argument("run_dir", type=Path, help="the run's output_dir")
    p.add_argument("--out", type=Path, help="image to write, e.g. a .png (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lens",
        description="LENS: text-prompted segmentation with a reasoning MLLM and SAM2.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)  # segment, make-tiny, export, eval, make-synthetic
    _add_plot_run(sub)
    _add_bag(sub)
    add_demo(sub)
    return parser


def cmd_bag(args) -> int:
    try:
        from lens_ros.bag import depth_inputs, process_bag
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "rosbags":
            raise
        raise LensError(
            "lens bag needs the rosbags package: pip install 'rosbags>=0.10.9' (or the [ros] extra)"
        ) from None
    if args.sam_memory_checkpoint is not None and not args.track:
        raise LensError("--sam-memory-checkpoint is for tracking: add --track")
    summary = process_bag(
        args.in_bag,
        args.out,
        args.image_topic,
        args.prompt,
        every=args.every,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        storage=args.storage,
        overlay=args.overlay,
        progress=not args.no_progress,
        depth=depth_inputs(args.depth_topic, args.camera_info_topic, args.target_cloud),
        track=args.track,
        sam_memory_checkpoint=args.sam_memory_checkpoint,
    )
    print(json.dumps(summary.to_json_dict(), indent=2))
    for failure in summary.failed:
        print(f"warning: frame {failure['frame']} skipped: {failure['error']}", file=sys.stderr)
    if summary.skipped_topics:
        print(
            f"warning: not copied (no type definition in the bag): {', '.join(summary.skipped_topics)}", file=sys.stderr
        )
    return 0


def cmd_plot_run(args) -> int:
    from lens_model.cli import IMAGE_SUFFIXES, check_output_file
    from training.plots import draw_curves, read_metrics

    metrics = args.run_dir / "metrics.jsonl"
    check_output_file(args.out, "--out", IMAGE_SUFFIXES)
    if not metrics.is_file():
        raise LensError(f"{metrics} not found: pass the output_dir of a training run")
    read = read_metrics(metrics)
    if read.torn_line is not None:
        print(
            f"lens plot-run: warning: {metrics} line {read.torn_line} is cut off (a run stopped while writing it); "
            f"plotting the {len(read.rows)} complete line(s)",
            file=sys.stderr,
        )
    out = draw_curves(read.rows, args.out or args.run_dir / "curves.png", str(metrics))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LensError as exc:
        print(f"lens {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
