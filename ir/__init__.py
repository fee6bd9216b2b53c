"""Intermediate representations: the graph level (ops on whole tensors), the tile level
(tasks with the regions they read and write) and the schedule level (per-SM task lists).
Nothing here knows about CUDA; the target is described as data in `target.py`."""
