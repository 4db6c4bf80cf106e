"""Segment the image topic of a rosbag2 and write the results to a new bag (`lens bag`; lens_ros.bag)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lens_model.errors import LensError

from .options import add_device_dtype_arguments, add_model_argument


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bag",
        help="segment the image topic of a rosbag2 and write masks, detections and reasoning to a new bag",
        description="Reads sensor_msgs/Image or CompressedImage from a rosbag2 (mcap or sqlite3; needs the "
        "rosbags package: pip install -e '.[ros]'), segments every N-th frame with the "
        "prompt and writes all input messages plus /lens/mask (Image mono8), /lens/masks (the label image), "
        "/lens/detections "
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
        "--multi-target",
        action="store_true",
        help="split the prompt into several objects ('the cup and the spoon'; rule in docs/cli.md), segmented (and "
        "tracked) together: one detection per target (id = k) and /lens/masks, the label image (k = target k)",
    )
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
    p.set_defaults(func=run)


def run(args) -> int:
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
        multi_target=args.multi_target,
    )
    print(json.dumps(summary.to_json_dict(), indent=2))
    for failure in summary.failed:
        print(f"warning: frame {failure['frame']} skipped: {failure['error']}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if summary.skipped_topics:
        print(
            f"warning: not copied (no type definition in the bag): {', '.join(summary.skipped_topics)}", file=sys.stderr
        )
    return 0
