"""The `lens` command (entry point `lens = lens_cli:main`, also `python -m lens_cli`): one module per command
(segment, track, make_tiny, export, evaluate, make_synthetic, plot_run, bag, demo), each with `add_parser(sub)` and
`run(args)`; the options several share are in `lens_cli.options`. This package sits above the others: it may
import lens_model, training and lens_ros; none of them imports it.

Building the parser imports no torch, transformers or sam2 (`lens --help` answers at once); each command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

from lens_model.errors import LensError

from . import bag, demo, evaluate, export, make_synthetic, make_tiny, plot_run, segment, track

# In the order `lens --help` lists them.
COMMANDS = (segment, track, make_tiny, export, evaluate, make_synthetic, plot_run, bag, demo)

EXAMPLES = """examples:
  lens make-tiny --out /tmp/lens-tiny
  lens segment --model /tmp/lens-tiny --image assets/sample.jpg --prompt "the astronaut's helmet" --out-overlay o.png
  lens segment --image photo.jpg --prompt "the mug left of the laptop" --device cuda   # released OuyBin/LENS weights
  lens export --model /tmp/lens-tiny --out /tmp/lens-tiny-onnx            # ONNX graphs of SAM2 + context head
  lens segment --model /tmp/lens-tiny --backend onnxruntime --backend-dir /tmp/lens-tiny-onnx --image ... --prompt ...
  lens demo                                   # the web page, with the bundled demo model: http://127.0.0.1:7860
  lens bag --in recording --out recording_lens --image-topic /camera/image_raw --prompt "the red cup" --every 5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lens",
        description="LENS: text-prompted segmentation with a reasoning MLLM and SAM2.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


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
