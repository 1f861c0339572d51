"""Count the operations of a training step that would make the host wait for a GPU, on any device, CPU included.

On a GPU the host queues kernels and runs ahead; it has to stop and wait for every queued kernel when it needs a
value that only the device has, and when it copies Python data to the device with a blocking copy. On the CPU
nothing waits, so a CPU profile cannot show these; this counter recognises them by what they are:

- value reads: ``.item()``, ``bool()``/``if tensor``, ``int()``, ``torch.equal`` of a device tensor
  (``aten::_local_scalar_dense`` and friends);
- outputs whose size depends on the data: ``nonzero``, ``unique``, ``masked_select``, ``repeat_interleave``
  without ``output_size``, boolean-mask indexing and assignment (``x[mask]``, ``x[mask] = y``);
- device-to-host copies: ``.tolist()``, ``.numpy()``, ``.cpu()`` of a device tensor;
- host-to-device copies: ``torch.tensor(data, device=...)`` / ``torch.as_tensor`` of Python data, ``.to(device)``
  or ``.cuda()`` of a tensor built on the host (pageable memory: a blocking copy).

"Device tensors" are the step's inputs (the batch, the model's parameters and buffers), everything computed
from them, and tensors created with an explicit ``device=``; a tensor built on the host from Python numbers
(e.g. AdamW's step count without the fused kernel, which stays on the CPU for CUDA parameters too) is not, so
reading it costs nothing and is not counted. Limits: ``.to("cpu")`` of a device tensor is indistinguishable
from ``.to(x.device)`` on a CPU run and is not counted; reads that a library makes only for CPU tensors (kornia
checks CPU inputs' value ranges) would be counted although a GPU run skips them. On a GPU,
``torch.cuda.set_sync_debug_mode("warn")`` reports the real ones.

    counter = HostSyncCounter([*batch_tensors, *module.parameters(), *module.buffers()])
    with counter:
        step()
    counter.counts  # {"nonzero": 2, "optimizer: item()/bool() (aten._local_scalar_dense)": 1, ...}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten
#: aten operations that read a value back or whose output size depends on the data, by what they need.
DATA_DEPENDENT = {
    aten._local_scalar_dense: "value read: .item(), bool(), int()",
    aten.is_nonzero: "value read: .item(), bool(), int()",
    aten.equal: "value read: torch.equal",
    aten.nonzero: "size from data: nonzero",
    aten.masked_select: "size from data: masked_select",
    aten._unique: "size from data: unique",
    aten._unique2: "size from data: unique",
    aten.unique_dim: "size from data: unique",
    aten.unique_consecutive: "size from data: unique",
    aten.unique_dim_consecutive: "size from data: unique",
}
BOOLEAN_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _sync_reason(func: Any, args: tuple, kwargs: dict) -> str | None:
    """Why ``func`` on device tensors would wait for the device, or None."""
    packet = func.overloadpacket
    if packet in DATA_DEPENDENT:
        return DATA_DEPENDENT[packet]
    if packet is aten.repeat_interleave and isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None:
        return "size from data: repeat_interleave"
    if packet in BOOLEAN_INDEXING and any(index.dtype in (torch.bool, torch.uint8) for index in _tensors(args[1])):
        return "size from data: boolean-mask indexing"
    return None


def _device_target(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to``/``.cuda`` arguments name a device (or a tensor to follow), not only a dtype."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(arg, torch.device | str | int | torch.Tensor) and not isinstance(arg, bool) for arg in args)


class _DataDependentOps(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        on_device = any(self.counter.on_device(tensor) for tensor in _tensors((args, kwargs)))
        if on_device:
            reason = _sync_reason(func, args, kwargs)
            if reason is not None:
                self.counter.record(reason)
        output = func(*args, **kwargs)
        if on_device:
            self.counter.mark(_tensors(output))
        return output


class _HostCopies(TorchFunctionMode):
    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        counter = self.counter
        self_tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in ("tolist", "numpy", "cpu") and self_tensor is not None and counter.on_device(self_tensor):
            counter.record(f"device-to-host copy: .{name}()")
        output = func(*args, **kwargs)
        on_device = kwargs.get("device") is not None  # created on the device (or copied there)
        if func in (torch.tensor, torch.as_tensor) and on_device:
            data = args[0] if args else kwargs.get("data")
            if not (isinstance(data, torch.Tensor) and counter.on_device(data)):
                counter.record(f"host-to-device copy: torch.{name}(data, device=...)")
        elif name in ("to", "cuda") and self_tensor is not None and not counter.on_device(self_tensor):
            if name == "cuda" or _device_target(args[1:], kwargs):
                counter.record(f"host-to-device copy: .{name}(device)")
                on_device = True
        if on_device:
            counter.mark(_tensors(output))
        return output


class HostSyncCounter:
    """While active, counts the host-device synchronisations a GPU would make, by reason (see the module docstring).

    Args:
        device_tensors: The step's inputs that live on the device: batch tensors, parameters, buffers.
    """

    def __init__(self, device_tensors: Iterable[torch.Tensor]) -> None:
        self._device = WeakTensorKeyDictionary()
        self.mark(device_tensors)
        self.counts: Counter[str] = Counter()
        self._in_optimizer = False
        self._modes: list[Any] = []
        self._hooks: list[Any] = []

    def mark(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._device[tensor] = True

    def on_device(self, tensor: torch.Tensor) -> bool:
        return tensor in self._device

    def record(self, reason: str) -> None:
        self.counts[f"optimizer: {reason}" if self._in_optimizer else reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def outside_optimizer(self) -> int:
        return sum(count for reason, count in self.counts.items() if not reason.startswith("optimizer: "))

    def _optimizer_step(self, inside: bool) -> Any:
        def hook(*_: Any) -> None:
            self._in_optimizer = inside

        return hook

    def __enter__(self) -> HostSyncCounter:
        self._hooks = [
            register_optimizer_step_pre_hook(self._optimizer_step(True)),
            register_optimizer_step_post_hook(self._optimizer_step(False)),
        ]
        self._modes = [_HostCopies(self), _DataDependentOps(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        for handle in self._hooks:
            handle.remove()
