"""Training: losses, metrics, schedule, checkpoints, DDP plumbing, and the training recipe.

Components (losses, metrics, schedule, checkpoint, evaluate, logging, distributed) are plain
building blocks; :mod:`mmfurnace.train.recipe` is the loop that wires them. Nothing heavy is
imported here so that ``mmfurnace.config`` can import ``mmfurnace.train.config`` cheaply.

``mmfurnace.train(cfg, resume=False, ...)`` runs :func:`mmfurnace.train.recipe.train`.
"""

from mmfurnace.entrypoints import make_callable

make_callable(__name__, "mmfurnace.train.recipe:train")
