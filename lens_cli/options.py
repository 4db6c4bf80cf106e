"""What several `lens` commands share: the --model, --device/--dtype, --backend and override options. The checks of
output paths before any expensive work are lens_model.outputs'. Building these options imports no torch."""

from __future__ import annotations

from pathlib import Path

from lens_model.model.config import DEFAULT_MODEL_ID
from lens_model.vocab import ANSWER_FORMATS, BACKENDS, CONTEXT_PASS_MODES, DTYPES

DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N (default: auto)"
# Masks are written losslessly so that they keep exactly 0 and 255; overlays may also be lossy pictures.
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = (*MASK_SUFFIXES, ".jpg", ".jpeg", ".webp")


def add_model_argument(p) -> None:
    """--model: a checkpoint directory or Hub id (shared by the commands that load a model)."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL_ID, help=f"checkpoint directory or Hub id (default: {DEFAULT_MODEL_ID})"
    )


def add_backend_arguments(p, backend_help: str) -> None:
    """--backend / --backend-dir: torch, or the graphs/engines of a `lens export` directory."""
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=backend_help)
    p.add_argument("--backend-dir", type=Path, help="export directory for --backend onnxruntime|tensorrt")


def add_device_dtype_arguments(p, device_help: str = DEVICE_HELP, dtype_help: str | None = None) -> None:
    """--device / --dtype of the loaded model."""
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=dtype_help)


def add_override_arguments(p, context_pass_help: str, answer_format_help: str) -> None:
    """--context-pass / --answer-format: override what the checkpoint's config says."""
    p.add_argument("--context-pass", choices=CONTEXT_PASS_MODES, help=context_pass_help)
    p.add_argument("--answer-format", choices=ANSWER_FORMATS, help=answer_format_help)


def load_pipeline(args, model: str):
    """The LensPipeline of `model` with the options of `add_device_dtype_arguments`, `add_override_arguments`,
    `add_backend_arguments` and --max-new-tokens (segment and track). Imports torch."""
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(
        model,
        device=args.device,
        dtype=args.dtype,
        context_pass=args.context_pass,
        answer_format=args.answer_format,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        backend_dir=args.backend_dir,
    )
