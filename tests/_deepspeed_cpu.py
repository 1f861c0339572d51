"""Test-only: Lightning's DeepSpeed strategy on CPU processes, so ZeRO runs on a machine without GPUs.

``DeepSpeedStrategy`` (here the project's
:class:`~cluster.deepspeed_strategy.StreamingDeepSpeedStrategy`, which the DeepSpeed batch script
uses) refuses every accelerator but CUDA and checks that device indices match the local ranks. On
CPU neither applies: this subclass sets the environment up as ``DDPStrategy`` does and starts
torch.distributed the way DeepSpeedStrategy does (rank variables, including the LOCAL_RANK that
DeepSpeed insists on, then ``deepspeed.init_distributed``; gloo on CPU), only without the
device-index check. Its root device is ``cpu:<local rank>`` (DeepSpeed reads the index as the
local rank; tensors on ``cpu:N`` are ordinary CPU tensors). Everything else — ZeRO partitioning,
sharded checkpoints — is DeepSpeed's own code path. DeepSpeed compiles its shared-memory
communication op for the CPU once into ``$TORCH_EXTENSIONS_DIR`` (``<project>/.cache/torch_extensions``
under ``make`` and pytest); the tests build it before any run
(:func:`_deepspeed_roundtrip.build_deepspeed_cpu_ops`).

Select it on the command line: ``--trainer.strategy=tests._deepspeed_cpu.CPUDeepSpeedStrategy``.
"""

from __future__ import annotations

import torch
from lightning_fabric.utilities.seed import reset_seed
from pytorch_lightning.strategies import DDPStrategy

from cluster.deepspeed_strategy import StreamingDeepSpeedStrategy


class CPUDeepSpeedStrategy(StreamingDeepSpeedStrategy):
    """DeepSpeed ZeRO through Lightning on CPU processes (tests only)."""

    def setup_environment(self) -> None:
        """DDP's set-up, without DeepSpeedStrategy's CUDA-only check."""
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        """DeepSpeedStrategy's distributed set-up without its CUDA device-index check."""
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        """``cpu:<local rank>``: DeepSpeed takes the index as the process's local rank."""
        return torch.device("cpu", self.local_rank)
