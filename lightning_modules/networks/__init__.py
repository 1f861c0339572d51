"""The plain ``nn.Module`` networks each family trains, and the layers they share.

- :mod:`~lightning_modules.networks.layers`: layers shared across families (3x3 conv, norms);
- one module per family: :mod:`~lightning_modules.networks.gifnet`, :mod:`~lightning_modules.networks.lure`, ...

No Lightning here: a network can be imported, trained or exported without a trainer. May import
:mod:`lightning_modules.text` for the prompt-embedding type and :mod:`datamodules.schema`.
"""
