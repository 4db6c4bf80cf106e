"""Shared setup of the learning benchmarks: CPU DeepSpeed, offline hub, a work folder with synthetic scenes
and a tiny untrained LENS (both kept between runs when --workdir is given)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def prepare(workdir: Path | None, prefix: str, n_images: int, seed: int, image_size: int, threads: int):
    """-> (work folder, synthetic scenes root, tiny LENS checkpoint dir)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.tiny import make_tiny

    torch.set_num_threads(threads)
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    scenes = work / "scenes"
    if not (scenes / "synthetic" / "refs(unc).p").exists():
        make_synthetic(scenes, n_images=n_images, seed=seed, image_size=image_size)
    init = work / "init"
    if not (init / "config.json").exists():
        make_tiny(init, seed=0, context_pass="official")
    return work, scenes, init
