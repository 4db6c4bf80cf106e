"""lens_model: the LENS architecture (Qwen2.5-VL/Qwen2-VL + context queries + SAM2), inference and checkpoints."""
from .checkpoint import load_model, load_sam2_checkpoint, save_model
from .config import LensConfig, PromptConfig, SamConfig
from .errors import CheckpointError, ImageError, LensError, PromptError
from .modeling import LensModel
from .pipeline import LensPipeline, SegmentationResult

__all__ = [
    "CheckpointError", "ImageError", "LensConfig", "LensError", "LensModel", "LensPipeline", "PromptConfig",
    "PromptError", "SamConfig", "SegmentationResult", "load_model", "load_sam2_checkpoint", "save_model",
]
__version__ = "0.1.0"
