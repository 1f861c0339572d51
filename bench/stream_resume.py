"""What a mid-epoch resume costs the training stream: skipping k batches vs reading them.

    python bench/stream_resume.py                       # demo shards, batch 16, 256x256 crops
    python bench/stream_resume.py --skip 40 --repeats 5 --shards data/real/roadscene

A resumed epoch skips the batches already trained on by drawing their random numbers (shard and
source choices, shuffle buffer, crop windows from the PNG headers, flips) without decoding a pixel
(see "Resuming mid-epoch" in :mod:`datamodules.mixture`). This prints, for one process (no
workers, so the process's CPU time is all the work):

* ``read``: producing the first k batches of an epoch, as the interrupted run did;
* ``skip``: what a resume at batch k costs before its first batch, beyond a fresh epoch's first batch;

both as medians of ``--repeats`` interleaved runs, in CPU seconds (and wall seconds, which depend
on the machine's other load). It also checks that the resumed pass's first batch is the
uninterrupted pass's batch k.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("XDG_CACHE_HOME", str(PROJECT_ROOT / ".cache"))

import torch  # noqa: E402

from datamodules import demo  # noqa: E402
from datamodules.mixture import MixtureStream, ShardSource, StreamLoader, demo_sources  # noqa: E402


def first_batches(stream: MixtureStream, count: int, resume_at: int = 0) -> tuple[list[dict], float, float]:
    """The first ``count`` batches of epoch 1 (resumed after ``resume_at``), CPU and wall seconds spent."""
    loader = StreamLoader(stream)
    loader.load_state_dict({"epoch": 1, "batches": resume_at})
    cpu, wall = time.process_time(), time.perf_counter()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: the demo's training set)")
    parser.add_argument("--skip", type=int, default=20, help="batches into the epoch to resume at")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    torch.set_num_threads(1)
    if options.shards is None:
        demo.ensure_demo()
        sources = demo_sources()
    else:
        sources = [ShardSource(urls=str(options.shards))]

    def stream() -> MixtureStream:
        return MixtureStream(
            sources, batch_size=options.batch_size, crop_size=options.crop, batches_per_epoch=options.skip + 1
        )

    read, skip, read_wall, skip_wall = [], [], [], []
    for _ in range(options.repeats):
        one, cpu_one, wall_one = first_batches(stream(), 1)
        whole, cpu_whole, wall_whole = first_batches(stream(), options.skip + 1)
        resumed, cpu_resumed, wall_resumed = first_batches(stream(), 1, resume_at=options.skip)
        assert resumed[0]["key"] == whole[-1]["key"] and torch.equal(resumed[0]["a"], whole[-1]["a"])
        read.append(cpu_whole - cpu_one)
        skip.append(cpu_resumed - cpu_one)
        read_wall.append(wall_whole - wall_one)
        skip_wall.append(wall_resumed - wall_one)
    samples = options.skip * options.batch_size
    print(
        f"{options.skip} batches x {options.batch_size} samples ({samples}), {options.crop}px crops, "
        f"{options.repeats} runs, load average {os.getloadavg()[0]:.1f}"
    )
    for name, cpu, wall in (("read", read, read_wall), ("skip", skip, skip_wall)):
        median = statistics.median(cpu)
        print(
            f"{name}: {median:.3f} CPU s ({1000 * median / samples:.2f} ms/sample), "
            f"{statistics.median(wall):.3f} wall s; runs {', '.join(f'{value:.3f}' for value in cpu)}"
        )
    print(f"skip / read: {statistics.median(skip) / statistics.median(read):.3f} (CPU)")


if __name__ == "__main__":
    main()
