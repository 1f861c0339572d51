"""Reading speed of WebDataset tars with ordinary PNG members: our stream against webdataset's own.

    python bench/webdataset_read.py                       # 32 RoadScene photographs, 256x256 crops
    python bench/webdataset_read.py --samples 64 --repeats 7

The same samples (a: the photograph's BT.601 grey, b: the RGB photograph, real RoadScene visible
images at about 1400 x 1000) are written three ways and read into the same training crops
(random 256 x 256 window of a and b, BT.601 luminance, batches of 8), one process, one thread:

* ``ours, our shards``: :class:`datamodules.mixture.MixtureStream` over shards from the shard
  writer (window-indexed level-0 PNG): the fast path, for reference;
* ``ours, ShardWriter tar``: the same stream over a tar that ``webdataset.ShardWriter`` wrote with
  ordinary PNG members (Pillow's defaults, no window index): whole-image decode, then crop;
* ``webdataset, ShardWriter tar``: ``webdataset.WebDataset(...).decode("rgb8")`` over that tar,
  then the same crop and luminance in NumPy: the peer.

Each configuration runs ``--repeats`` times, interleaved; the median counts. The load average is
printed with the figures, since other work on the machine changes them.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from datamodules import images  # noqa: E402
from datamodules.mixture import MixtureStream, ShardSource  # noqa: E402
from datamodules.schema import BT601, SampleMeta  # noqa: E402
from datamodules.shards.writer import ShardSetWriter, encode_sample  # noqa: E402

LUMA = np.array(BT601, np.float32)


def photographs(folder: Path, count: int) -> list[np.ndarray]:
    files = sorted(images.list_images(folder).values())[:count]
    if len(files) < count:
        raise SystemExit(f"{folder}: {len(files)} images, --samples asks for {count}")
    return [images.read_image(path) for path in files]


def write_sets(photos: list[np.ndarray], root: Path) -> tuple[list[str], list[str]]:
    """(our shard URLs, ShardWriter tar URLs) holding the same samples."""
    meta = SampleMeta(task="ivif", source="bench")
    with ShardSetWriter(root / "ours", "ivif", maxcount=16) as writer:
        for number, photo in enumerate(photos):
            grey = np.rint(photo @ LUMA).astype(np.uint8)
            writer.write(encode_sample(f"ivif-{number:04d}", {"a": grey, "b": photo}, meta))
    (root / "plain").mkdir()
    with wds.ShardWriter(str(root / "plain" / "ivif-%06d.tar"), maxcount=16, verbose=0) as sink:
        for number, photo in enumerate(photos):
            grey = np.rint(photo @ LUMA).astype(np.uint8)
            record = {"__key__": f"ivif-{number:04d}", "json": meta.to_json()}
            for role, array in (("a", grey), ("b", photo)):
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                record[f"{role}.png"] = buffer.getvalue()
            sink.write(record)
    ours = sorted(str(path) for path in (root / "ours").glob("*.tar"))
    plain = sorted(str(path) for path in (root / "plain").glob("*.tar"))
    return ours, plain


def read_ours(urls: list[str], samples: int, crop: int, batch: int) -> int:
    stream = MixtureStream(
        [ShardSource(urls=urls, task="ivif")],
        batch_size=batch,
        crop_size=crop,
        batches_per_epoch=samples // batch,
        resampled=False,
        seed=0,
    )
    return sum(len(out["key"]) for out in stream)


def read_webdataset(urls: list[str], samples: int, crop: int, batch: int) -> int:
    rng = np.random.default_rng(0)
    done = 0
    pending: list[dict[str, torch.Tensor]] = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
        height, width = sample["a.png"].shape[:2]
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        crops = {}
        for role in ("a", "b"):
            window = sample[f"{role}.png"][top : top + crop, left : left + crop].astype(np.float32) / 255.0
            crops[role] = torch.from_numpy(window @ LUMA)[None]
        pending.append(crops)
        if len(pending) == batch:
            _ = {role: torch.stack([item[role] for item in pending]) for role in ("a", "b")}
            done += batch
            pending = []
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--src", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "roadscene" / "crop_HR_visible"
    )
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = photographs(args.src, args.samples)
    with tempfile.TemporaryDirectory(prefix="wds-read-") as temporary:
        ours, plain = write_sets(photos, Path(temporary))
        configs = {
            "ours, our shards": lambda: read_ours(ours, args.samples, args.crop, args.batch),
            "ours, ShardWriter tar": lambda: read_ours(plain, args.samples, args.crop, args.batch),
            "webdataset, ShardWriter tar": lambda: read_webdataset(plain, args.samples, args.crop, args.batch),
        }
        rates: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, run in configs.items():
                started = time.perf_counter()
                count = run()
                rates[name].append(count / (time.perf_counter() - started))
                assert count == args.samples // args.batch * args.batch, (name, count)
    print(
        f"{args.samples} samples ({photos[0].shape[1]}x{photos[0].shape[0]} photographs), {args.crop}px crops, "
        f"batch {args.batch}, 1 process; load average {os.getloadavg()[0]:.2f}"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    peer = medians["webdataset, ShardWriter tar"]
    for name, median in medians.items():
        print(f"  {name:<30} {median:7.1f} samples/s  ({median / peer:.2f}x webdataset's own)")


if __name__ == "__main__":
    main()
