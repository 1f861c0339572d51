"""The one place that makes torchvision importable next to a CPU-only torch.

PyPI ships torchvision only as a CUDA build. Its compiled ops library fails to load against the
CPU build of torch, and torchvision's import then dies in ``_meta_registrations`` while
registering fake kernels for ``torchvision::nms`` and ``torchvision::qnms``: those two are the
only ops it registers unconditionally. open_clip, torchmetrics and Lightning all import
torchvision, so without this nothing on a CPU machine imports at all.

We declare the two op schemas (no kernels) before torchvision is imported, which lets that
import finish. The platform never calls torchvision's compiled ops or image decoders: images are
decoded with Pillow/tifffile, and resizing uses torch. On a machine where torch and torchvision
are both CUDA builds, nothing is changed.

Every package of the platform imports this module first (see the package ``__init__`` files). It
lives in ``datamodules``, the lowest layer, so that every package can import it without an upward import.
"""

from __future__ import annotations

import importlib.metadata
import sys

import torch


def _torchvision_needs_stub_ops() -> bool:
    if "torchvision" in sys.modules:
        return False
    try:
        torchvision_version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return False
    torchvision_is_cuda = "+cu" in torchvision_version or "+" not in torchvision_version
    return torch.version.cuda is None and torchvision_is_cuda


_stub_library = None
if _torchvision_needs_stub_ops():
    _stub_library = torch.library.Library("torchvision", "DEF")  # kept alive for the process
    for _op in ("nms", "qnms"):
        _stub_library.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
