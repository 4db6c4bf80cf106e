"""The allowed values of the library's named choices, in one place (plain Python: no torch, importable anywhere).

The CLI, the ROS node's parameters, the model config and the training configs import these tuples instead of
retyping them.
"""

from __future__ import annotations

# What runs SAM2 + the context head: the loaded torch model, or the graphs / engines `lens export` wrote.
BACKENDS = ("torch", "onnxruntime", "tensorrt")

# Weights / compute dtypes, by torch's names; auto = bfloat16 on CUDA, float32 on CPU.
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The short spelling of the same dtypes (DeepSpeed, the transformers Trainer's --bf16, the released training
# scripts): the training configs' `precision` accepts them too, and `canonical_dtype` maps them to DTYPES.
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# How the MLLM's answer is written: Qwen grounding box tokens, or <think>/<answer> with a JSON box (CoT checkpoints).
ANSWER_FORMATS = ("grounding", "think_answer")

# How the context queries read the conversation: "official" re-forwards prompt + completion + queries with 1-D
# positions (the released checkpoints); "cached" reuses the generation KV cache with M-RoPE positions.
CONTEXT_PASS_MODES = ("official", "cached")

# Where a generated answer ends and what the context pass attends (docs/design.md, "Context positions"):
# "first_end" (inference, lens training): the answer ends at its first <|im_end|> or <|endoftext|>, and no
# <|endoftext|> is attended (as the released evaluation and demo); "im_end_only" (the released stage-2 trainer,
# GRPO `compat: released`): only <|im_end|> ends an answer, and everything up to it — or the whole padded row —
# counts and is attended, <|endoftext|> padding included.
COMPLETION_ENDS = ("first_end", "im_end_only")

# Backgrounds of the synthetic scenes (`lens make-synthetic --background`): flat grey with pixel noise, or with
# smooth low-saturation blotches too.
SYNTHETIC_BACKGROUNDS = ("noise", "texture")

# What the synthetic scenes ask (`lens make-synthetic --task`): "basic" attribute and relational expressions, or
# "reasoning" scenes where colour alone never decides, with relational expressions about an anchor and a rationale
# per sentence (lens_model.data.synthetic).
SYNTHETIC_TASKS = ("basic", "reasoning")
# What a reasoning scene's expression picks its object by (the sentence's `kind`): its own attributes ("the small
# red circle") or a spatial relation to an anchor ("the shape left of the red circle").
EXPRESSION_KINDS = ("attribute", "relational")


def canonical_dtype(name: str) -> str:
    """A dtype name or alias -> its name in DTYPES ("bf16" -> "bfloat16"); ValueError for anything else."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
    return name


__all__ = [
    "ANSWER_FORMATS",
    "BACKENDS",
    "COMPLETION_ENDS",
    "CONTEXT_PASS_MODES",
    "SYNTHETIC_BACKGROUNDS",
    "SYNTHETIC_TASKS",
    "DTYPES",
    "DTYPE_ALIASES",
    "EXPRESSION_KINDS",
    "canonical_dtype",
]
