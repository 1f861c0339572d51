"""Full-resolution inference: padding and tiling, colour restoration, and the writer of fused images.

- :mod:`~lightning_modules.inference.tiling`: pad to a network's size multiple, or fuse in overlapping tiles;
- :mod:`~lightning_modules.inference.color`: put colour back on a fused luminance image (YCbCr);
- :mod:`~lightning_modules.inference.writer`: the Lightning callback that writes predictions as PNG files.

May import :mod:`datamodules` (schema, image codec) and Lightning's callback API; never a family's module.
"""
