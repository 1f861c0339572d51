"""Everything between files on disk and a batch; never imports model code.

- :mod:`~datamodules.schema`: the sample contract (tasks, degradations, metadata, batches, luminance);
- :mod:`~datamodules.images`: reading source images exactly, the shard PNG codec, pairing by stem;
- :mod:`~datamodules.shards`: writing, building, reading, inspecting and verifying WebDataset shards;
- :mod:`~datamodules.synthesis`: training pairs synthesised from clean images (defocus, exposure, degradations);
- :mod:`~datamodules.demo`: the built-in demo set;
- :mod:`~datamodules.pairs`: paired folders for validation, test and predict;
- :mod:`~datamodules.mixture`: the multi-task streaming LightningDataModule;
- :mod:`~datamodules.torchvision_compat`: the one shim that lets torchvision import next to a CPU torch.

Modules here may import each other (downwards: schema and images at the bottom) and third-party
libraries; never :mod:`lightning_modules` or :mod:`recipes`.
"""

from datamodules import torchvision_compat as _torchvision_compat  # noqa: F401  (must come first)
