"""Everything between files on disk and a batch."""

from lightning_modules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
