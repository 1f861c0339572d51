"""WebDataset shards of fusion and restoration samples, one module per job.

- :mod:`~datamodules.shards.writer`: encode samples, write tar files, keep ``index.json``;
- :mod:`~datamodules.shards.build`: shards from folders of paired images;
- :mod:`~datamodules.shards.tar`: read tar streams and check samples against the contract;
- :mod:`~datamodules.shards.stream`: shard URLs, per-shard counts, what a stream read and skipped;
- :mod:`~datamodules.shards.verify`: totals and a full decode of a shard set;
- :mod:`~datamodules.shards.cli`: ``python -m datamodules.shards build|inspect|verify``.

May import :mod:`datamodules.schema` and :mod:`datamodules.images`; never model code.
"""
