"""Text prompt + image -> mask, box and reasoning as JSON (`lens segment`)."""

from __future__ import annotations

import sys
from pathlib import Path

from lens_model.errors import LensError
from lens_model.model.config import DEFAULT_MODEL_ID
from lens_model.outputs import check_distinct, check_output_file

from .options import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    add_backend_arguments,
    add_device_dtype_arguments,
    add_override_arguments,
    load_pipeline,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image from a text prompt and print the result as JSON",
        description="Reason about the prompt with the MLLM, then segment with SAM2. Prints box, score, "
        "generated text, image size, per-stage timings and whether the result is confident (and why not) as JSON; "
        "a result that is not confident (the object is probably not in the image) is also named on stderr.",
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
        "--multi-target",
        action="store_true",
        help="split the prompt into several objects ('the cup and the spoon', 'the red block, the blue block'; the "
        "rule is in docs/cli.md) and segment them in one batched call; prints {command, targets: [one entry per "
        "target, id = 1, 2, ...], ...}",
    )
    p.add_argument(
        "--out-mask",
        type=Path,
        help=f"write the mask (0/255, same size as the image; with --multi-target the union of the targets) to this "
        f"{'/'.join(MASK_SUFFIXES)} file (lossless)",
    )
    p.add_argument(
        "--out-label-mask",
        type=Path,
        help="with --multi-target: write the label mask (8-bit, 0 = background, k = target k) to this "
        f"{'/'.join(MASK_SUFFIXES)} file",
    )
    p.add_argument(
        "--out-overlay",
        type=Path,
        help=f"write the image with the tinted mask, the box and the prompt ({'/'.join(IMAGE_SUFFIXES)})",
    )
    p.add_argument("--json", type=Path, help="also write the JSON result to this file")
    add_device_dtype_arguments(p, dtype_help="weights dtype (default: auto = bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the MLLM (default: 256)")
    add_override_arguments(
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
    p.set_defaults(func=run)


def run(args) -> int:
    from lens_model.image_io import load_image, read_prompt
    from lens_model.inference.prompting import check_mllm_image_size
    from lens_model.inference.result_files import record_text, save_mask_png, save_overlay, segment_record
    from lens_model.inference.targets import command_targets
    from lens_model.outputs import write_atomic

    if args.max_new_tokens < 1:
        raise LensError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    # Validate the cheap inputs before loading a multi-GB model (from_pretrained checks the backend first).
    inputs = {"--image": args.image, "--depth": args.depth, "--camera-info": args.camera_info}
    check_output_file(args.out_mask, "--out-mask", MASK_SUFFIXES, inputs)
    check_output_file(args.out_overlay, "--out-overlay", IMAGE_SUFFIXES, inputs)
    check_output_file(args.json, "--json", inputs=inputs)
    check_output_file(args.out_label_mask, "--out-label-mask", MASK_SUFFIXES, inputs)
    check_distinct(
        {
            "--out-mask": args.out_mask,
            "--out-overlay": args.out_overlay,
            "--json": args.json,
            "--out-label-mask": args.out_label_mask,
        }
    )
    if args.out_label_mask is not None and not args.multi_target:
        raise LensError("--out-label-mask needs --multi-target (the label mask numbers the targets of a command)")
    rgb = load_image(args.image)
    check_mllm_image_size(rgb.shape[:2], str(args.image))
    prompt = read_prompt(args.prompt)
    phrases = command_targets(prompt, args.multi_target)  # an empty phrase or too many targets: before loading
    depth = None
    if args.depth or args.camera_info:
        from lens_model.geometry.target3d import DepthInput

        depth = DepthInput.from_files(args.depth, args.camera_info, rgb.shape[:2], args.depth_scale)
    pipe = load_pipeline(args, args.model)
    if args.multi_target:
        return _run_targets(args, pipe, rgb, prompt, phrases, depth)
    result = pipe(rgb, prompt)
    target_3d = None if depth is None else depth.target(result.mask).to_json_dict()
    record = segment_record(result, args.image, args.model, args.backend, target_3d, args.out_mask, args.out_overlay)
    text = record_text(record)  # before any file is written: NaN is refused
    if args.out_mask:
        save_mask_png(result.mask, args.out_mask, "--out-mask")
    if args.out_overlay:
        save_overlay(rgb, result, args.out_overlay, "--out-overlay")
    if args.json:
        write_atomic(args.json, text + "\n", "--json")
    print(text)
    if not result.confident:
        print(f"warning: the result is not confident: {result.reason}", file=sys.stderr)
    return 0


def _run_targets(args, pipe, rgb, command: str, phrases: list[str], depth) -> int:
    """--multi-target: every phrase in one batched call; one JSON entry per target, the union and label masks."""
    from lens_model.inference.result_files import (
        command_record,
        record_text,
        save_command_overlay,
        save_label_png,
        save_mask_png,
    )
    from lens_model.inference.targets import CommandResult
    from lens_model.outputs import write_atomic

    result = CommandResult(command, pipe(rgb, phrases))
    targets_3d = None if depth is None else [depth.target(t.mask).to_json_dict() for t in result.targets]
    record = command_record(
        result, args.image, args.model, args.backend, targets_3d, args.out_mask, args.out_overlay, args.out_label_mask
    )
    text = record_text(record)  # before any file is written: NaN is refused
    if args.out_mask:
        save_mask_png(result.union_mask(), args.out_mask, "--out-mask")
    if args.out_label_mask:
        save_label_png(result.label_image(), args.out_label_mask, "--out-label-mask")
    if args.out_overlay:
        save_command_overlay(rgb, result, args.out_overlay, "--out-overlay")
    if args.json:
        write_atomic(args.json, text + "\n", "--json")
    print(text)
    for k, target in zip(result.ids, result.targets):
        if not target.confident:
            print(f"warning: target {k} {target.prompt!r} is not confident: {target.reason}", file=sys.stderr)
    return 0
