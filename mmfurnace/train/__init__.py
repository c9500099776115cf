"""Training: losses, metrics, schedule, checkpoints, DDP plumbing, and the training recipe.

Components (losses, metrics, schedule, checkpoint, evaluate, logging, distributed) are plain
building blocks; :mod:`mmfurnace.train.recipe` is the loop that wires them. Nothing is imported
here so that ``mmfurnace.config`` can import ``mmfurnace.train.config`` cheaply.
"""
