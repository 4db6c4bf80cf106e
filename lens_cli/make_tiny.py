"""A tiny, randomly initialised LENS checkpoint for tests and demos (`lens make-tiny`)."""

from __future__ import annotations

from pathlib import Path

from lens_model.errors import LensError
from lens_model.vocab import CONTEXT_PASS_MODES


def add_parser(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    from lens_model.model.tiny import make_tiny

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
