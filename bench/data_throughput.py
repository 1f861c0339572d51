"""Training-data throughput: shards vs. a plain folder-of-PNG Dataset, same pipeline, same run.

    python bench/data_throughput.py                 # demo data, 2 workers, 256x256 crops, batch 16
    python bench/data_throughput.py --batches 80 --repeats 5 --json bench/last.json

Both loaders deliver the same batches: random 256x256 crops of a, b and gt (one window per
sample), the same random flips, BT.601 luminance, collated by ``datamodules.schema.collate``, in
the same task mix (equal weights for the demo's four tasks), with 2 DataLoader workers.

* ``shards``: :class:`datamodules.mixture.FusionDataModule` streaming the shards that
  ``python -m datamodules.shards build`` writes (default ``--level 0``): window decoding, batches
  built inside the workers.
* ``folder``: a map-style ``Dataset`` over ``task/{a,b,gt}/<stem>.png`` folders and a
  ``DataLoader`` with a task-balanced random sampler, as most fusion repositories load data: each
  item decodes its PNG files whole (OpenCV, the fastest common decoder here) and crops them.

The folders hold the demo's training samples as ordinary PNG files (Pillow's defaults), and the
shards are built from those folders with the real ``build`` command. Two ablations separate the
effects: ``shards --level 1`` (compressed shards), and ``folder, shard PNGs`` (the folder loader
reading level-0 PNGs written by the shard encoder, with window decoding: the codec without the
container).

Each configuration runs ``--repeats`` times, interleaved with the others; the median counts. Every
run skips its first ``--warmup`` batches (worker start-up, shuffle-buffer fill). Figures depend on
what else the machine is doing, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("XDG_CACHE_HOME", str(PROJECT_ROOT / ".cache"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler  # noqa: E402

from datamodules import demo, images  # noqa: E402
from datamodules.mixture import FusionDataModule, ShardSource, array_to_tensor  # noqa: E402
from datamodules.schema import SampleMeta, collate, degradation_vector, task_id  # noqa: E402
from datamodules.shards.build import build_from_folders  # noqa: E402
from datamodules.shards.stream import StreamStats  # noqa: E402
from datamodules.shards.tar import iter_shard, parse_sample  # noqa: E402

TASKS = demo.DEMO_TASKS


# --------------------------------------------------------------------------------------------
# The data, on disk both ways


def export_folders(demo_root: Path, out: Path, encoder: Callable[[np.ndarray], bytes] | None = None) -> dict[str, Any]:
    """The demo's training samples as ``out/<task>/{a,b,gt}/<stem>.png`` (+ one meta.json per task)."""
    tags: dict[str, dict[str, list[str]]] = {task: {} for task in TASKS}
    for url in sorted((demo_root / "train").glob("*.tar")):
        for raw in iter_shard(str(url), StreamStats()):
            meta, members = parse_sample(raw)
            stem = raw["__key__"]
            for role, data in members.items():
                path = out / meta.task / role / f"{stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                array = images.decode_png(data)
                if encoder is None:
                    Image.fromarray(array).save(path)  # Pillow's defaults: what a downloaded dataset holds
                else:
                    path.write_bytes(encoder(array))
            tags[meta.task][stem] = meta.degradations
    for task in TASKS:
        (out / task / "meta.json").write_text(json.dumps(tags[task]))
    return tags


def build_shards(folders: Path, out: Path, level: int) -> float:
    started = time.perf_counter()
    for task in TASKS:
        roles = {role: folders / task / role for role in ("a", "b", "gt") if (folders / task / role).is_dir()}
        # the per-sample degradation tags differ, so build one shard set per tag for restore
        tags = json.loads((folders / task / "meta.json").read_text())
        groups: dict[str, list[str]] = {}
        for stem, stem_tags in tags.items():
            groups.setdefault(",".join(stem_tags), []).append(stem)
        for number, (tag_text, stems) in enumerate(sorted(groups.items())):
            staging = out.parent / f".stage-{task}-{number}"
            for role, folder in roles.items():
                (staging / role).mkdir(parents=True, exist_ok=True)
                for stem in stems:
                    os.link(folder / f"{stem}.png", staging / role / f"{stem}.png")
            build_from_folders(
                out,
                task=task,
                a=staging / "a",
                b=staging / "b" if "b" in roles else None,
                gt=staging / "gt" if "gt" in roles else None,
                degradations=tag_text.split(",") if tag_text else [],
                prefix=f"{task}{number}",
                maxcount=64,
                level=level,
                workers=2,
                progress=False,
            )
            shutil.rmtree(staging)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The folder loader


class FolderPairs(Dataset):
    """Task folders of ``{a,b,gt}/<stem>.png``; each item decodes its files and crops them."""

    def __init__(self, root: Path, crop_size: int, window_decoding: bool = False):
        self.items: list[tuple[str, str, dict[str, Path], list[str]]] = []
        for task in TASKS:
            tags = json.loads((root / task / "meta.json").read_text())
            for path in sorted((root / task / "a").glob("*.png")):
                paths = {
                    role: root / task / role / path.name
                    for role in ("a", "b", "gt")
                    if (root / task / role / path.name).exists()
                }
                self.items.append((task, path.stem, paths, tags[path.stem]))
        self.crop_size = crop_size
        self.window_decoding = window_decoding

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        task, stem, paths, tags = self.items[index]
        rng = np.random.default_rng()
        size = self.crop_size
        if self.window_decoding:
            data = {role: path.read_bytes() for role, path in paths.items()}
            height, width = images.png_size(data["a"])
        else:
            arrays = {role: images.read_image(path) for role, path in paths.items()}
            height, width = arrays["a"].shape[:2]
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        horizontal, vertical = rng.random() < 0.5, rng.random() < 0.5
        out: dict[str, Any] = {}
        for role in paths:
            if self.window_decoding:
                array = images.decode_png(data[role], (top, left, size, size))
            else:
                array = arrays[role][top : top + size, left : left + size]
            if horizontal:
                array = array[:, ::-1]
            if vertical:
                array = array[::-1]
            out[role] = array_to_tensor(array, luminance_only=True)
        meta = SampleMeta(task=task, degradations=tags)
        return {
            "a": out["a"],
            "b": out.get("b"),
            "gt": out.get("gt"),
            "task": task_id(task),
            "degradation": degradation_vector(meta.degradations),
            "prompt": "",
            "key": stem,
        }


def folder_loader(
    root: Path, batch_size: int, workers: int, batches: int, crop_size: int, window_decoding: bool
) -> DataLoader:
    dataset = FolderPairs(root, crop_size, window_decoding)
    per_task = {task: sum(1 for item in dataset.items if item[0] == task) for task in TASKS}
    weights = [1.0 / per_task[item[0]] for item in dataset.items]  # equal task mix, like the shard mixture
    sampler = WeightedRandomSampler(weights, num_samples=batches * batch_size, replacement=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


def shard_loader(root: Path, batch_size: int, workers: int, batches: int, crop_size: int) -> Iterable:
    sources = [
        ShardSource(urls=sorted(str(p) for p in root.glob(f"{task}[0-9]*-*.tar")), weight=1.0, task=task, name=task)
        for task in TASKS
    ]
    module = FusionDataModule(
        sources=sources,
        batch_size=batch_size,
        crop_size=crop_size,
        batches_per_epoch=batches,
        num_workers=workers,
        shuffle_buffer=16,
    )
    module.setup("fit")
    return module.train_dataloader()


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its live children (the DataLoader workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def measure(loader: Any, warmup: int) -> tuple[float, float, int]:
    """(samples per second, CPU milliseconds per sample) over the batches after the first ``warmup``.

    The CPU figure adds up the main process and the workers over the timed batches, so it hardly
    depends on what else the machine runs: ``1000 * CPUs / ms`` is about what idle CPUs deliver.
    Worker CPU is read right after the last batch, while the workers still exist.
    """
    count = 0
    started = cpu_started = 0.0
    iterator = iter(loader)
    for number in range(len(loader)):
        if number == warmup:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
        batch = next(iterator)
        if number >= warmup:
            assert batch["a"].shape[-1] == batch["a"].shape[-2] and batch["a"].shape[1] == 1
            count += batch["a"].shape[0]
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_started
    del iterator
    return count / elapsed, 1000 * cpu / count, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=48, help="batches per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ablations", action="store_true", help="only the two headline loaders")
    parser.add_argument("--work", default=str(PROJECT_ROOT / ".cache" / "bench-data"), help="scratch folder (reused)")
    parser.add_argument("--rebuild", action="store_true", help="re-export the folders and rebuild the shards")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    work = Path(args.work)
    demo_root = demo.ensure_demo()
    stamp = f"demo-v{demo.DEMO_VERSION}"
    if args.rebuild or not (work / f"{stamp}.ready").exists():
        shutil.rmtree(work, ignore_errors=True)
        print("preparing: demo samples -> PNG folders -> shards (once)", file=sys.stderr)
        export_folders(demo_root, work / "folders")
        export_folders(demo_root, work / "folders-shardpng", encoder=lambda array: images.encode_png(array, level=0))
        build_seconds = {
            level: build_shards(work / "folders", work / f"shards-level{level}", level) for level in (0, 1)
        }
        (work / "build.json").write_text(json.dumps(build_seconds))
        (work / f"{stamp}.ready").write_text("")
    build_seconds = json.loads((work / "build.json").read_text())
    sizes = {
        name: sum(p.stat().st_size for p in (work / name).rglob("*") if p.is_file()) / 2**20
        for name in ("folders", "folders-shardpng", "shards-level0", "shards-level1")
    }

    common = dict(batch_size=args.batch_size, workers=args.workers, batches=args.batches, crop_size=args.crop)
    configs: dict[str, Callable[[], Iterable]] = {
        "shards (level 0, default)": lambda: shard_loader(work / "shards-level0", **common),
        "folder of PNG, DataLoader": lambda: folder_loader(work / "folders", window_decoding=False, **common),
    }
    if not args.no_ablations:
        configs["shards (level 1)"] = lambda: shard_loader(work / "shards-level1", **common)
        configs["folder of shard PNGs, window decoding"] = lambda: folder_loader(
            work / "folders-shardpng", window_decoding=True, **common
        )

    load_before = os.getloadavg()
    results: dict[str, list[float]] = {name: [] for name in configs}
    cpu_costs: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for name, make in configs.items():
            rate, cpu_ms, _ = measure(make(), args.warmup)
            results[name].append(rate)
            cpu_costs[name].append(cpu_ms)
            print(
                f"  run {repeat + 1}/{args.repeats}  {name:<40} {rate:7.1f} samples/s  {cpu_ms:5.2f} CPU ms/sample",
                file=sys.stderr,
            )
    load_after = os.getloadavg()

    medians = {name: statistics.median(rates) for name, rates in results.items()}
    cpu_medians = {name: statistics.median(costs) for name, costs in cpu_costs.items()}
    baseline = medians["folder of PNG, DataLoader"]
    cpu_baseline = cpu_medians["folder of PNG, DataLoader"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n{args.crop}x{args.crop} crops of a, b, gt; batch {args.batch_size}; {args.workers} workers; "
        f"{args.batches - args.warmup} timed batches x {args.repeats} runs; {os.cpu_count()} CPUs; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"{'loader':<40} {'samples/s':>9} {'vs folder':>9} {'CPU ms/sample':>13} {'vs folder':>9} "
        f"{'idle-CPU samples/s':>18}   runs (samples/s)"
    )
    for name, median in medians.items():
        runs = ", ".join(f"{rate:.0f}" for rate in results[name])
        cpu_ms = cpu_medians[name]
        print(
            f"{name:<40} {median:>9.1f} {median / baseline:>8.2f}x {cpu_ms:>13.2f} {cpu_baseline / cpu_ms:>8.2f}x "
            f"{1000 * cpus / cpu_ms:>18.0f}   {runs}"
        )
    print(
        f"\non disk: folders {sizes['folders']:.0f} MiB, shards level 0 {sizes['shards-level0']:.0f} MiB, "
        f"level 1 {sizes['shards-level1']:.0f} MiB; shard build {build_seconds['0']:.1f} s (level 0), "
        f"{build_seconds['1']:.1f} s (level 1)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "medians": medians,
                    "runs": results,
                    "cpu_ms_per_sample": cpu_costs,
                    "sizes_mib": sizes,
                    "build_seconds": build_seconds,
                    "load": [load_before, load_after],
                    "args": vars(args),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
