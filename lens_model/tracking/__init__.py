"""Tracking: SAM2 memory between LENS queries, its state machine, video in and out."""
