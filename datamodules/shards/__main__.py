"""``python -m datamodules.shards``: see :mod:`datamodules.shards.cli`."""

import sys

from datamodules.shards.cli import main

sys.exit(main())
