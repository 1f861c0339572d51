"""One entry point per model family (python -m recipes.<name>), plus configs."""

from datamodules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
