"""The LENS model: its config, the MLLM + context head + SAM2 module, checkpoints, SAM2 memory weights, tiny models."""
