"""One entry point per model family (python -m recipes.<name>), plus configs."""

from lightning_modules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
