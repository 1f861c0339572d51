"""SLURM batch scripts, DeepSpeed configs and a one-host SLURM cluster for tests."""

from datamodules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
