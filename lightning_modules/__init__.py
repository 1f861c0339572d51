"""LightningModules: the shared base and one module per model family, and what they are built from.

- :mod:`~lightning_modules.fusion`: :class:`FusionModule`, the base (mixed-task batches, per-task
  losses, validation metrics, predict);
- one LightningModule per family: :mod:`~lightning_modules.gifnet`, :mod:`~lightning_modules.lure`, ...;
- :mod:`~lightning_modules.networks`: the plain networks they train (no Lightning);
- :mod:`~lightning_modules.losses`: intensity, gradient, SSIM-family and focus losses;
- :mod:`~lightning_modules.text`: the frozen open_clip prompt encoder and its embedding cache;
  :mod:`~lightning_modules.prompts`: the prompt table; :mod:`~lightning_modules.image_features`: the
  frozen open_clip visual tower (image features for UP-Fusion's channel pruning);
- :mod:`~lightning_modules.metrics`: the standard fusion metrics, classical baselines, the metric tracker;
- :mod:`~lightning_modules.inference`: tiling, colour restoration, the prediction writer.

Imports point down: this package may import :mod:`datamodules`; never :mod:`recipes`.
"""

from datamodules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
