"""Evaluation of generated videos: the pixel-only judge of the `shapes` demo (shapes_judge)."""
