"""`--smoke`, shared by every benchmark: run once with the script's smallest arguments (seconds), so that a script
broken by a change elsewhere fails CI (tests/test_benchmarks.py runs each script so) instead of rotting until its
next real run. A smoke run's figures mean nothing; explicit arguments still override the smallest ones."""

from __future__ import annotations

import argparse


def parse_with_smoke(
    parser: argparse.ArgumentParser, smallest: dict, argv: list[str] | None = None
) -> argparse.Namespace:
    """`parser.parse_args(argv)` with a --smoke flag that makes `smallest` ({dest: value}) the defaults."""
    shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in smallest.items())
    parser.add_argument(
        "--smoke", action="store_true", help=f"run once with the smallest arguments ({shown}): checks the script runs"
    )
    args = parser.parse_args(argv)
    unknown = set(smallest) - set(vars(args))
    if unknown:  # a renamed option: fail here rather than silently run the smoke pass at full size
        raise ValueError(f"smoke arguments {sorted(unknown)} are not options of {parser.prog}")
    if args.smoke:
        parser.set_defaults(**smallest)
        args = parser.parse_args(argv)
    return args
