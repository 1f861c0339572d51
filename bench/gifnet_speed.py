"""GIFNet speed and memory on CPU, next to the public implementation's figures (issue 3).

    python bench/gifnet_speed.py                          # gifnet and gifnet-fast, 2 threads, median of 5
    python bench/gifnet_speed.py --configs gifnet --only inference --precision bf16

For each config in recipes/configs (its ``model`` section builds the GIFNetModule):

- inference: fusing one 640x480 pair (random sources, the MFIF branch as at predict), the median
  wall time of ``--repeats`` runs after one warm-up, and the peak resident memory (VmHWM) of a
  fresh process that builds the model and fuses one pair (Python and torch included);
- training: one optimizer step on 4 samples of 128x128 (2 infrared-visible + 2 multi-focus, the
  public code's iteration): encoder, both branches, reconstruction, every loss, backward, AdamW.

The public implementation, measured on a 2-core machine like this one (median of 5): 3.57 s per
training iteration (two optimizer steps), 13.4 s and 5.3 GB to fuse a 640x480 pair. Speed ratios
print public / ours (how many times faster); the memory ratio prints ours / public.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

import lightning_modules  # noqa: E402,F401  (torchvision compat first)
from datamodules.schema import DEGRADATIONS, TASK_IDS  # noqa: E402
from lightning_modules.gifnet import GIFNetModule  # noqa: E402
from lightning_modules.networks.gifnet import MFIF_BRANCH  # noqa: E402
from recipes.cli import CONFIG_DIR  # noqa: E402

PUBLIC_TRAIN_STEP_S = 3.57
PUBLIC_INFERENCE_S = 13.4
PUBLIC_INFERENCE_PEAK_GB = 5.3
GOALS = {  # from the issue, for the faithful config (gifnet) unless named
    "train_step_s": 1.2,
    "inference_s": 4.5,
    "inference_peak_gb": 2.0,
    "fast_inference_speedup": 10.0,
}
INFERENCE_SIZE = (480, 640)
TRAIN_SIZE = 128


def model_arguments(config: str) -> dict[str, Any]:
    """The ``model`` section of ``recipes/configs/<config>.yaml`` (flat or ``init_args`` form)."""
    path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        raise SystemExit(f"no config {path}; choose from {sorted(p.stem for p in CONFIG_DIR.glob('gifnet*.yaml'))}")
    model = (yaml.safe_load(path.read_text()) or {}).get("model", {}) or {}
    return dict(model.get("init_args", model))


def build_module(config: str) -> GIFNetModule:
    torch.manual_seed(0)
    return GIFNetModule(**model_arguments(config))


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` runs after a warm-up, and every run's (wall, process CPU) seconds.

    CPU time is summed over threads: with T threads and a quiet machine it is close to T x wall;
    much less than that means other processes took the cores (the wall figure is then inflated).
    """
    run()  # warm-up: oneDNN primitive creation, allocator
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return statistics.median(wall for wall, _ in times), times


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """bfloat16 autocast for ``bf16`` (``bf16-mixed``, as Lightning names it), none for ``fp32``."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision in ("bf16", "bf16-mixed"))


def inference_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(1, 1, *INFERENCE_SIZE, generator=generator) for _ in range(2))  # type: ignore[return-value]


def time_inference(config: str, repeats: int, precision: str) -> tuple[float, list[tuple[float, float]]]:
    network = build_module(config).network.eval()
    a, b = inference_pair()

    def fuse() -> torch.Tensor:
        with torch.inference_mode(), autocast(precision):
            return network(a, b, MFIF_BRANCH)

    return median_seconds(fuse, repeats)


def resident_peak_gb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GB
    raise RuntimeError("/proc/self/status has no VmHWM line; peak memory needs Linux")


def peak_memory_child(config: str, precision: str) -> None:
    """Run in a fresh process: build, fuse one pair, print resident-memory figures as JSON."""
    network = build_module(config).network.eval()
    a, b = inference_pair()
    before = resident_peak_gb()
    with torch.inference_mode(), autocast(precision):
        network(a, b, MFIF_BRANCH)
    print(json.dumps({"peak_gb": resident_peak_gb(), "before_gb": before}))


def measure_peak_memory(config: str, threads: int, precision: str) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--peak-memory-child",
        config,
        "--threads",
        str(threads),
        "--precision",
        precision,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def training_batch(size: int = TRAIN_SIZE) -> dict[str, Any]:
    """The public code's iteration as one batch: 2 infrared-visible + 2 multi-focus samples of size x size."""
    generator = torch.Generator().manual_seed(0)
    batch_size = 4
    images = {name: torch.rand(batch_size, 1, size, size, generator=generator) for name in ("a", "b", "gt")}
    return {
        **images,
        "has_b": torch.ones(batch_size, dtype=torch.bool),
        "has_gt": torch.tensor([False, False, True, True]),
        "task": torch.tensor([TASK_IDS["ivif"], TASK_IDS["ivif"], TASK_IDS["mfif"], TASK_IDS["mfif"]]),
        "degradation": torch.zeros(batch_size, len(DEGRADATIONS)),
    }


def time_training_step(config: str, repeats: int, precision: str) -> tuple[float, list[tuple[float, float]]]:
    module = build_module(config).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=module.learning_rate)
    batch = training_batch()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision):
            loss = module.training_losses(batch)["loss"]
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def report(
    name: str,
    ours: float,
    public: float,
    unit: str,
    faster_is_ratio: bool,
    runs_seconds: list[tuple[float, float]] | None = None,
) -> str:
    ratio = public / ours if faster_is_ratio else ours / public
    relation = "x faster than public" if faster_is_ratio else "x public"
    runs = (
        f"  runs (wall/cpu s): {', '.join(f'{wall:.2f}/{cpu:.2f}' for wall, cpu in runs_seconds)}"
        if runs_seconds
        else ""
    )
    return f"{name:<42} ours {ours:7.2f} {unit:<3} public {public:6.2f} {unit:<3} ratio {ratio:5.2f}{relation}{runs}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["gifnet", "gifnet-fast"], help="configs in recipes/configs")
    parser.add_argument(
        "--only", choices=["inference", "training", "memory"], nargs="+", default=["inference", "memory", "training"]
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (the reference machine has 2 cores)"
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast (AMX/AVX-512 bf16)"
    )
    parser.add_argument("--peak-memory-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak_memory_child:
        peak_memory_child(args.peak_memory_child, args.precision)
        return

    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.precision}, median of {args.repeats}; "
        f"load average before: {os.getloadavg()[0]:.1f} (other processes on the cores inflate wall times)"
    )
    inference_medians: dict[str, float] = {}
    for config in args.configs:
        parameters = sum(parameter.numel() for parameter in build_module(config).network.parameters())
        print(f"\n[{config}] {parameters / 1e6:.3f} M parameters")
        if "inference" in args.only:
            median, runs = time_inference(config, args.repeats, args.precision)
            inference_medians[config] = median
            print(report("fuse one 640x480 pair", median, PUBLIC_INFERENCE_S, "s", True, runs))
        if "memory" in args.only:
            memory = measure_peak_memory(config, args.threads, args.precision)
            print(
                report("peak resident memory, fusing 640x480", memory["peak_gb"], PUBLIC_INFERENCE_PEAK_GB, "GB", False)
            )
            print(f"{'':<42} (of which {memory['before_gb']:.2f} GB before fusing: Python, torch, model)")
        if "training" in args.only:
            median, runs = time_training_step(config, args.repeats, args.precision)
            print(report("train step, 2 IVIF + 2 MFIF at 128x128", median, PUBLIC_TRAIN_STEP_S, "s", True, runs))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    print(
        f"goals (issue 3, faithful config): train step <= {GOALS['train_step_s']} s, fuse 640x480 <= "
        f"{GOALS['inference_s']} s "
        f"and <= {GOALS['inference_peak_gb']} GB; gifnet-fast >= {GOALS['fast_inference_speedup']:.0f}x "
        "faster than public at 640x480"
    )


if __name__ == "__main__":
    main()
