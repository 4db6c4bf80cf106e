"""The segmentation part of a LENS checkpoint (SAM2 + context head) loaded without the reasoning model.

Exporting needs only these two modules; loading them alone keeps the export of LENS-3B within a few GB of
memory instead of the ~15 GB the float32 MLLM would take.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..model.config import LensConfig
from ..model.context import ContextHead
from ..model.sam import MEMORY_MODULES, build_sam


@dataclass
class SegmentationParts:
    sam: torch.nn.Module  # SAM2Base (with its memory modules when memory weights were found), eval mode, float32
    context: ContextHead  # eval mode, float32
    config: LensConfig
    hidden_size: int  # MLLM hidden size = width of the query states
    memory_weights: Path | None = None  # the file SAM2's memory modules were loaded from (None: no memory modules)


def load_segmentation_parts(
    model_dir: str | Path, sam_memory_checkpoint: str | Path | None = None
) -> SegmentationParts:
    """Checkpoint directory -> SAM2 and context head with the checkpoint's weights (float32, CPU). SAM2 gets its
    memory modules (for the tracking graphs) from `sam_memory_checkpoint` (an official SAM2 .pt or a
    sam2_memory.safetensors), else from the model directory's sam2_memory.safetensors; without either it has
    none (LENS checkpoints keep SAM2 without them), and only single-image graphs can be exported."""
    from ..model.checkpoint import MEMORY_WEIGHTS_FILE, load_segmentation_weights, read_configs
    from ..model.sam_memory import attach_memory, load_sam_memory

    model_dir = Path(model_dir)
    mllm_config, lens_config = read_configs(model_dir)
    hidden = mllm_config.get_text_config().hidden_size
    context = ContextHead(hidden, lens_config)
    sam = build_sam(lens_config.sam)
    load_segmentation_weights(model_dir, context, sam)
    memory_weights = Path(sam_memory_checkpoint) if sam_memory_checkpoint is not None else None
    if memory_weights is None and (model_dir / MEMORY_WEIGHTS_FILE).is_file():
        memory_weights = model_dir / MEMORY_WEIGHTS_FILE
    if memory_weights is not None:
        attach_memory(sam, load_sam_memory(lens_config.sam, weights=memory_weights))
    return SegmentationParts(sam.float().eval(), context.float().eval(), lens_config, hidden, memory_weights)


def sam_at_image_size(sam: torch.nn.Module, config: LensConfig, image_size: int) -> torch.nn.Module:
    """The same SAM2 weights built for another input side (position embeddings are interpolated by SAM2;
    no weight depends on the image size), without memory modules (the export takes those from `sam`, see
    `export_memory_graphs`). Returns `sam` itself when the size is unchanged."""
    if image_size == config.sam.image_size:
        return sam
    if image_size < 64 or image_size % 32:
        raise ValueError(
            f"SAM2 image size must be a multiple of 32 and at least 64 (Hiera downsamples by 32), got {image_size}"
        )
    overrides = [o for o in config.sam.overrides if not o.lstrip("+").startswith("model.image_size=")]
    sam_config = replace(config.sam, overrides=[*overrides, f"++model.image_size={image_size}"], image_size=image_size)
    resized = build_sam(sam_config)
    state = {k: v for k, v in sam.state_dict().items() if k.split(".")[0] not in MEMORY_MODULES}
    resized.load_state_dict(state, strict=True)
    return resized.float().eval()
