"""training: stage-1 alignment (python -m training.align) and stage-2 GRPO (python -m training.grpo)."""
