"""Import each named module in a fresh child of one warm interpreter; list those that fail.

    python tests/_import_each_module.py MODULE [MODULE ...]

A fresh interpreter per module costs torch's import every time (seconds each). Instead this process
imports the third-party libraries once (and the torchvision shim they need on a CPU torch) and forks
a child per module: each child starts with none of the project's modules loaded, so a module that
only imports because another one was imported first fails here.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import torchvision_compat  # noqa: E402,F401  (lets torchvision, and so Lightning, import)

WARM_UP = ("torch", "numpy", "cv2", "numba", "kornia", "torchmetrics", "pytorch_lightning", "open_clip", "webdataset")


def import_alone(module: str) -> None:
    try:
        importlib.import_module(module)
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


def main(modules: list[str]) -> int:
    for name in WARM_UP:
        importlib.import_module(name)
    context = multiprocessing.get_context("fork")
    failed = []
    for module in modules:
        child = context.Process(target=import_alone, args=(module,))
        child.start()
        child.join()
        if child.exitcode != 0:
            failed.append(module)
    if failed:
        print(f"these modules do not import on their own: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
