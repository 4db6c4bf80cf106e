"""The `lens` command line (entry point `lens = lens_cli:main`, also `python -m lens_cli`): see `lens_cli.main`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
