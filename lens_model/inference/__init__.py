"""Inference: image + prompt -> MLLM answer -> context pass -> SAM2 mask (prompting, answers, generation, pipeline,
backends)."""
