"""User-facing errors. Each message is one line naming the cause: which file or field, what was expected and
what to do. The CLI prints them without a traceback."""


class LensError(Exception):
    """Base class of errors caused by user input (files, prompts, checkpoints, options)."""


class ImageError(LensError):
    """An image that is missing, unreadable or of an unsupported kind."""


class PromptError(LensError):
    """An empty or otherwise unusable text prompt."""


class CheckpointError(LensError):
    """A model directory or weights file that is missing, incomplete or does not match its config."""


class DepthError(LensError):
    """A depth image or camera model that cannot give a 3D target: unreadable calibration, zero intrinsics, sizes
    that disagree, an unsupported depth encoding or distortion model."""


class NonFiniteOutputError(LensError):
    """The model computed NaN or infinite logits or scores (corrupt weights, an overflow in reduced precision)."""
