"""The allowed values of the training configs' named choices, in one place (plain Python, no torch).

The config classes validate against these; the modules that implement them (losses, GRPO objective, the
schedule builder, the part freezer, the samplers) import them. Dtypes, answer formats and context-pass modes are
the library's (`lens_model.vocab`); reward names live with the reward registry (`training.rewards`).
"""

from __future__ import annotations

# Parts of a LensModel that a stage can train (training.runner.TRAINABLE_MODULES maps them to submodules).
# sam_image_encoder is not in the paper's recipe (SAM2's encoder stays frozen); stage 1 can train it for a model
# whose SAM2 starts from random weights (a tiny LENS trained from scratch).
# mllm_language is the MLLM without its vision encoder (a vision encoder pretrained on dense labels, stage 0 of the
# demo model, stays as it is while the language model learns to read it).
TRAINABLE_PARTS = ("context", "sam_decoder", "sam_prompt_encoder", "mllm", "mllm_language", "sam_image_encoder")
# The parts that train the MLLM's language model.
LANGUAGE_MODEL_PARTS = ("mllm", "mllm_language")
# Per-pixel term of the mask loss: bce (released code) | focal (the paper).
PIXEL_LOSSES = ("bce", "focal")
# Learning-rate decay after the warm-up (transformers' schedules of the same names).
LR_SCHEDULERS = ("cosine", "linear", "constant")
# How GRPO averages token losses: sequence (GRPO, as released) | token (DAPO) | constant (Dr.GRPO).
LOSS_AGGREGATIONS = ("sequence", "token", "constant")
# Who samples GRPO's completions: generate (in-process, KV cache) | vllm (GPU servers).
ROLLOUT_BACKENDS = ("generate", "vllm")
# Stage 2's objective: lens (corrected, the default) | released (the released stage-2 trainer exactly; docs/design.md,
# "Stage 2").
COMPAT_MODES = ("lens", "released")
# Which answers' masks stage 2's segmentation loss trains on: all (the paper, as released) | grounded (only answers
# whose box hits the GT box, IoU >= GROUNDED_BOX_IOU: a mask decoder taught the GT mask under an answer that names
# another object learns to ignore the answer; docs/design.md, "Stage 2 on the demo model").
SEG_LOSS_ANSWERS = ("all", "grounded")
GROUNDED_BOX_IOU = 0.5
# DeepSpeed ZeRO stages.
ZERO_STAGES = (0, 1, 2, 3)


def trains_language_model(parts) -> bool:
    """Whether a `trainable` list trains the MLLM's language model (the answer's token losses need it)."""
    return any(part in LANGUAGE_MODEL_PARTS for part in parts)


__all__ = [
    "COMPAT_MODES",
    "GROUNDED_BOX_IOU",
    "LANGUAGE_MODEL_PARTS",
    "LOSS_AGGREGATIONS",
    "LR_SCHEDULERS",
    "PIXEL_LOSSES",
    "ROLLOUT_BACKENDS",
    "SEG_LOSS_ANSWERS",
    "TRAINABLE_PARTS",
    "ZERO_STAGES",
    "trains_language_model",
]
