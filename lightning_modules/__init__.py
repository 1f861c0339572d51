"""LightningModules and the networks they train."""

from lightning_modules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
