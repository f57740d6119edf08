"""Training: datasets (2.5D windows, case-grouped splits), augmentation, losses, metrics, trainer.

Submodules are imported on demand: ``training.metrics`` and ``training.splits`` need only numpy and
scipy; ``training.losses``, ``training.augment`` and ``training.datasets`` import torch.
"""
