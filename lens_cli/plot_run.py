"""A training run's curves as a PNG (`lens plot-run`; training.plots)."""

from __future__ import annotations

import sys
from pathlib import Path

from lens_model.errors import LensError
from lens_model.outputs import check_output_file

from .options import IMAGE_SUFFIXES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot-run",
        help="draw a training run's curves (loss parts, rewards, validation) as a PNG",
        description="Reads RUN_DIR/metrics.jsonl written by python -m training.align / training.grpo.",
    )
    p.add_argument("run_dir", type=Path, help="the run's output_dir")
    p.add_argument("--out", type=Path, help="image to write, e.g. a .png (default: RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    from training.plots import draw_curves, read_metrics

    metrics = args.run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise LensError(f"{metrics} not found: pass the output_dir of a training run")
    out = args.out or args.run_dir / "curves.png"
    check_output_file(out, "--out" if args.out else "the figure", IMAGE_SUFFIXES, {"metrics.jsonl": metrics})
    read = read_metrics(metrics)
    if read.torn_line is not None:
        print(
            f"lens plot-run: warning: {metrics} line {read.torn_line} is cut off (a run stopped while writing it); "
            f"plotting the {len(read.rows)} complete line(s)",
            file=sys.stderr,
        )
    draw_curves(read.rows, out, str(metrics))
    print(f"wrote {out}")
    return 0
