#!/usr/bin/env python
"""Export a LENS checkpoint's SAM2 image encoder, context head and mask decoder to ONNX (and TensorRT engines)
without installing the `lens` command: the same options as `lens export`.

    python scripts/export_lens.py --model ~/models/LENS --out ~/models/LENS-onnx
    python scripts/export_lens.py --model ~/models/LENS --out ~/models/LENS-trt --format tensorrt --fp16  # robot GPU
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: import lens_cli from it

from lens_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
