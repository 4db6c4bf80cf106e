"""Evaluation: metrics (gIoU, cIoU, ...) and the resumable, sharded evaluation loop."""
