"""The `lens` command line (entry point `lens = lens_cli:main`, also `python -m lens_cli`): see `lens_cli.commands`."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
