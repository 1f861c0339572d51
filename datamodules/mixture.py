"""The multi-task streaming LightningDataModule: a weighted mixture of shard sources.

Training streams samples from several shard sources (each: shard URLs or brace patterns, a
weight, optionally the task it must hold) and mixes them by weight, so one batch mixes tasks and
carries per-sample task ids, ``has_b`` / ``has_gt`` flags and degradation severities (the batch
contract is in :mod:`datamodules.schema`). Every sample gets one random crop shared by ``a``,
``b`` and ``gt`` (decoded by window, see :mod:`datamodules.images`), the same random flips, and
luminance (BT.601 Y) unless ``luminance=False``.

Splitting is explicit. Each rank and each DataLoader worker of a rank is one *partition*
(``rank * num_workers + worker``) with its own random stream.

* ``resampled=True`` (training default): every partition draws shards at random, with
  replacement, from each source; sources never run dry and the task mix follows the weights.
* ``resampled=False``: each source's shards are dealt out to the partitions once (a fixed
  assignment), so within an epoch no sample is read twice; a partition draws from its sources by
  weight until each runs dry. The default epoch is one pass, as long as the smallest partition
  allows, from the sample counts in the shards' ``index.json``; asking for more batches than that
  starts a new pass and repeats samples.

Either way every rank yields exactly ``batches_per_epoch`` batches (each worker its fixed share),
so DDP never waits on a rank that ran dry. Batches are built inside the workers.

Resuming mid-epoch. A pass over the stream is a function of (seed, epoch, partition) alone, so a
fit resumed in the middle of epoch ``e`` after ``k`` batches continues it exactly: the pass of epoch
``e`` skips its first ``k`` batches and yields the rest, the same samples, crops, flips and order as
the uninterrupted run (and so the same batch at the same global step, which per-step random draws
such as LURE's rely on). Under a Trainer, ``k`` is the fit loop's count of batches done in the
epoch, which Lightning restores from the checkpoint and continues the batch index and global step
from; the loader is also a resumable loader for Lightning (:meth:`StreamLoader.state_dict`, saved
in every checkpoint), whose state carries the stream's layout so that a resume with a changed
batch size, worker count, world size, seed or sources warns that the rest of the epoch will differ.
Each rank skips its own ``k`` batches. The loader takes batch ``i`` of a pass from worker
``i mod workers``; after ``k`` batches, worker ``w`` therefore plays the part of worker
``(w + k) mod workers``, whose first batches are gone. Skipping is cheap: a worker still reads its
shards and draws every random number the skipped samples would have drawn (source choices, shuffle
buffer, crop windows from the PNG headers, flips), but decodes no pixel of a PNG member (a member in
another format is decoded for its size); skipped samples count as read in :attr:`FusionDataModule.stream_stats`
(bench/RESULTS.md has the cost: a fifth to a third of reading them). A sample whose header reads
but whose pixels do not decode counts as good while skipping (the interrupted run skipped it), so
each such sample among the first ``k`` batches shifts the resumed epoch by one sample.

A truncated shard or a corrupt member is skipped and counted, never fatal: the loader strips the
per-worker counters that ride along with each batch, adds them up, logs a warning at the end of an
epoch that skipped anything, and keeps them in :attr:`FusionDataModule.stream_stats`. Only a
source with nothing readable at all stops the run, with a message that names it.

Validation, test and predict read paired folders at full resolution (:mod:`datamodules.pairs`).
With no ``sources`` the module uses the built-in demo set (:mod:`datamodules.demo`), building it on
first use.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset, Subset, get_worker_info

from datamodules import demo, images
from datamodules.pairs import PairFolderDataset
from datamodules.schema import BT601, TASKS, SampleMeta, collate, degradation_vector, task_id, unit_scale
from datamodules.shards.stream import StreamStats, expand_urls, shard_counts
from datamodules.shards.tar import iter_shard, parse_sample
from datamodules.shards.writer import read_index

log = logging.getLogger(__name__)

_STATS_KEY = "stream_stats"
_WORKER_KEY = "stream_partition"


@dataclasses.dataclass
class ShardSource:
    """One source of the training mixture.

    Args:
        urls: shard URLs: a brace pattern (``"data/ivif-{000000..000011}.tar"``), a list of them, a
            shard folder or its ``index.json``.
        weight: relative share of the samples drawn from this source.
        task: if set, every sample must be of this task (checked against the index before
            training and again per sample).
        name: label used in logs and errors (default: the task or the first URL).
    """

    urls: str | list[str]
    weight: float = 1.0
    task: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"source {self.label}: weight must be positive, got {self.weight}")
        if self.task is not None:
            task_id(self.task)

    @property
    def label(self) -> str:
        return self.name or self.task or (self.urls if isinstance(self.urls, str) else self.urls[0])


# --------------------------------------------------------------------------------------------
# Per-sample work


_BT601 = np.array(BT601, dtype=np.float32)


def array_to_tensor(image: np.ndarray, luminance_only: bool, bit_depth: int | None = None) -> torch.Tensor:
    """A (H, W[, 3]) uint8/uint16 array (any strides) as a (C, H, W) float32 tensor in [0, 1].

    16-bit images are scaled by their effective ``bit_depth`` (:func:`datamodules.schema.unit_scale`).
    Luminance is computed in one pass from the integers (same BT.601 weights as
    :func:`datamodules.schema.luminance`).
    """
    scale = np.float32(1.0 / unit_scale(image, bit_depth))
    if image.ndim == 2:
        grey = torch.from_numpy(np.multiply(image, scale, dtype=np.float32))[None]
        return grey if luminance_only else grey.expand(3, -1, -1).contiguous()
    if luminance_only:
        red, green, blue = _BT601 * scale
        return torch.from_numpy(image[..., 0] * red + image[..., 1] * green + image[..., 2] * blue)[None]
    return torch.from_numpy(np.multiply(image, scale, dtype=np.float32).transpose(2, 0, 1).copy())


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """Where one sample's random crop lies and how it is flipped (shared by a, b and gt)."""

    horizontal: bool
    vertical: bool
    top: int
    left: int
    enlarge_to: tuple[int, int] | None  # (height, width) to resize to first, for images smaller than the crop


def plan_crop(
    members: dict[str, bytes], rng: np.random.Generator, crop_size: int, flips: bool = True, where: str = "sample"
) -> CropPlan:
    """Draw one sample's flips and crop window from ``rng``, reading only the image headers.

    Images smaller than the crop are to be enlarged (bilinear) so that their short side fits it.
    Raises :class:`~datamodules.images.ImageError` when the members differ in size or a header is broken.
    """
    sizes = {role: images.png_size(data, f"{where}.{role}.png") for role, data in members.items()}
    if len(set(sizes.values())) > 1:
        raise images.ImageError(f"{where}: members differ in size {sizes}")
    height, width = sizes["a"]
    horizontal = flips and rng.random() < 0.5
    vertical = flips and rng.random() < 0.5
    enlarge_to = None
    if height < crop_size or width < crop_size:
        scale = crop_size / min(height, width)
        height, width = max(crop_size, math.ceil(height * scale)), max(crop_size, math.ceil(width * scale))
        enlarge_to = (height, width)
    top = int(rng.integers(0, height - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    return CropPlan(horizontal, vertical, top, left, enlarge_to)


def crop_sample(
    meta: SampleMeta,
    members: dict[str, bytes],
    rng: np.random.Generator,
    crop_size: int,
    flips: bool = True,
    luminance_only: bool = True,
    where: str = "sample",
) -> dict[str, Any]:
    """Decode one random ``crop_size`` window (:func:`plan_crop`), shared by a, b and gt, with shared flips.

    Raises :class:`ValueError` / :class:`~datamodules.images.ImageError` for a broken sample.
    """
    plan = plan_crop(members, rng, crop_size, flips, where)
    top, left = plan.top, plan.left
    tensors: dict[str, torch.Tensor] = {}
    if plan.enlarge_to is None:
        window = (top, left, crop_size, crop_size)
        for role, data in members.items():
            what = f"{where}.{role}.png"
            if data[:8] == images.PNG_SIGNATURE:
                array = images.decode_png(data, window, what=what)
            else:
                array = images.decode_image(data, what)[top : top + crop_size, left : left + crop_size]
            if plan.horizontal:
                array = array[:, ::-1]
            if plan.vertical:
                array = array[::-1]
            tensors[role] = array_to_tensor(array, luminance_only, meta.bit_depth)
    else:
        dims = [d for d, flag in ((-1, plan.horizontal), (-2, plan.vertical)) if flag]
        for role, data in members.items():
            array = images.decode_image(data, f"{where}.{role}.png")
            tensor = array_to_tensor(array, luminance_only, meta.bit_depth)
            tensor = F.interpolate(tensor[None], size=plan.enlarge_to, mode="bilinear", align_corners=False)[0]
            tensor = tensor.clamp_(0, 1)[:, top : top + crop_size, left : left + crop_size]
            tensors[role] = (tensor.flip(dims) if dims else tensor).contiguous()
    return {
        "a": tensors["a"],
        "b": tensors.get("b"),
        "gt": tensors.get("gt"),
        "task": task_id(meta.task),
        "degradation": degradation_vector(meta.degradations),
        "prompt": meta.prompt or "",
    }


# --------------------------------------------------------------------------------------------
# The stream


def split_by_partition(urls: Sequence[str], partition: int, partitions: int, seed: int) -> list[str]:
    """The shards of ``partition`` out of ``partitions``: a fixed, seeded deal, disjoint and complete."""
    order = np.random.default_rng([seed, 7919]).permutation(len(urls))
    return [urls[i] for i in order[partition::partitions]]


class MixtureStream(IterableDataset):
    """Yields ready batches (dicts, see :mod:`datamodules.schema`) from a weighted mixture of sources.

    Built by :class:`FusionDataModule`; usable alone with a :class:`StreamLoader`. ``rank`` /
    ``world_size`` split across processes, ``num_workers`` must equal the loader's.
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        batch_size: int,
        crop_size: int,
        batches_per_epoch: int | None = None,
        resampled: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        flips: bool = True,
        luminance: bool = True,
        shuffle_buffer: int = 32,
        max_consecutive_failures: int = 200,
    ):
        super().__init__()
        if not sources:
            raise ValueError("the mixture needs at least one source")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sources = list(sources)
        self.urls = [expand_urls(source.urls) for source in self.sources]
        for source, urls in zip(self.sources, self.urls):
            if not urls:
                raise ValueError(f"source {source.label}: no shards in {source.urls!r}")
        self.weights = np.array([source.weight for source in self.sources], dtype=np.float64)
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.resampled = resampled
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.seed = seed
        self.flips = flips
        self.luminance = luminance
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.max_consecutive_failures = max_consecutive_failures
        self.epoch = 0
        self.consumed = 0  # batches of the next pass already trained on (a resumed epoch): skipped
        self.partitions = world_size * max(1, num_workers)
        self.batches_per_epoch = self._epoch_length(batches_per_epoch)

    # -- sizing -------------------------------------------------------------------------------

    def _partition_samples(self, partition: int, counts: dict[str, int]) -> int:
        return sum(
            counts[url] for urls in self.urls for url in split_by_partition(urls, partition, self.partitions, self.seed)
        )

    def one_pass_batches(self) -> int | None:
        """Batches per rank in one non-resampled pass (the smallest partition decides); None without an index."""
        counts = shard_counts([url for urls in self.urls for url in urls])
        if counts is None:
            return None
        per_worker = min(self._partition_samples(p, counts) for p in range(self.partitions)) // self.batch_size
        return per_worker * max(1, self.num_workers)

    def _epoch_length(self, requested: int | None) -> int:
        workers = max(1, self.num_workers)
        if requested is not None:
            if requested < workers:
                raise ValueError(f"batches_per_epoch={requested} must be at least num_workers={workers}")
            return requested
        if not self.resampled:
            one_pass = self.one_pass_batches()
            if one_pass is None:
                raise ValueError("without an index.json beside the shards, set batches_per_epoch")
            if one_pass < workers:
                raise ValueError(
                    f"the shards cannot be split over {self.world_size} rank(s) x {workers} worker(s) without "
                    f"resampling: the smallest share holds fewer than {self.batch_size} samples. Build more, smaller "
                    f"shards (--maxcount), use fewer workers, or set resampled=True"
                )
            return one_pass
        counts = shard_counts([url for urls in self.urls for url in urls])
        if counts is None:
            raise ValueError("without an index.json beside the shards, set batches_per_epoch")
        total = sum(counts.values())
        return max(workers, total // (self.batch_size * self.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def layout(self) -> dict[str, Any]:
        """Everything besides the epoch that decides which samples this rank's batches hold, in which order."""
        return {
            "sources": [[source.label, source.weight, len(urls)] for source, urls in zip(self.sources, self.urls)],
            "batch_size": self.batch_size,
            "crop_size": self.crop_size,
            "batches_per_epoch": self.batches_per_epoch,
            "resampled": self.resampled,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "flips": self.flips,
            "luminance": self.luminance,
            "shuffle_buffer": self.shuffle_buffer,
        }

    def worker_batches(self, worker: int) -> int:
        workers = max(1, self.num_workers)
        share, extra = divmod(self.batches_per_epoch, workers)
        return share + (1 if worker < extra else 0)

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(1, self.num_workers):
            raise RuntimeError(f"MixtureStream was built for {self.num_workers} workers but runs in {workers}")
        epoch, consumed = self.epoch, self.consumed
        self.epoch += 1  # a persistent worker's copy keeps counting by itself,
        self.consumed = 0  # and continues a resumed epoch only in its first pass
        # The loader takes the workers' batches in turn, so batch i of a pass is worker (i mod workers)'s
        # share. A pass resumed after `consumed` batches must start with the share that batch `consumed`
        # belongs to: this worker plays `share`, whose first `len(range(share, consumed, workers))` are done.
        share = (worker + consumed) % workers
        return self._batches(epoch, share, len(range(share, consumed, workers)))

    def _batches(self, epoch: int, share: int, done: int) -> Iterator[dict[str, Any]]:
        """The batches of one worker's ``share`` of an epoch, after the first ``done`` (drawn, not decoded)."""
        partition = self.rank * max(1, self.num_workers) + share
        rng = np.random.default_rng([self.seed, epoch, partition])
        stats = StreamStats()
        streams = [self._source_samples(index, partition, epoch, rng, stats) for index in range(len(self.sources))]
        active = list(range(len(streams)))
        failures = 0
        batch: list[dict[str, Any]] = []
        remaining = self.worker_batches(share) - done
        fast_forward = done * self.batch_size  # samples of the batches already done
        passes = 0
        read_before_pass = 0
        while remaining > 0:
            if not active:  # every source ran dry (non-resampled): next pass
                if stats.samples == read_before_pass:
                    mine = [
                        url
                        for urls in self.urls
                        for url in split_by_partition(urls, partition, self.partitions, self.seed)
                    ]
                    raise RuntimeError(
                        f"rank {self.rank} worker {share}: nothing readable in its share of the shards "
                        f"({len(mine)} of "
                        f"{sum(len(urls) for urls in self.urls)}: {', '.join(mine[:4]) or 'none'}); build more shards "
                        f"(--maxcount), use fewer workers, or set resampled=True. {stats.summary()}"
                    )
                read_before_pass = stats.samples
                passes += 1
                streams = [
                    self._source_samples(i, partition, epoch + 1000 * passes, rng, stats) for i in range(len(streams))
                ]
                active = list(range(len(streams)))
                stats.note(
                    f"partition {partition}: data ran out before the epoch's end; pass {passes + 1} repeats samples"
                )
            weights = self.weights[active] / self.weights[active].sum()
            chosen = active[int(rng.choice(len(active), p=weights))] if len(active) > 1 else active[0]
            try:
                meta, members, where = next(streams[chosen])
            except StopIteration:
                active.remove(chosen)
                continue
            try:
                if fast_forward:  # the same random draws as crop_sample, without decoding a pixel
                    plan_crop(members, rng, self.crop_size, self.flips, where)
                else:
                    sample = crop_sample(meta, members, rng, self.crop_size, self.flips, self.luminance, where)
            except (ValueError, images.ImageError) as error:
                stats.skip(str(error))
                failures += 1
                if failures > self.max_consecutive_failures:
                    raise RuntimeError(
                        f"{failures} corrupt samples in a row, nothing readable: {stats.summary()}"
                    ) from None
                continue
            failures = 0
            stats.samples += 1
            if fast_forward:
                fast_forward -= 1
                continue
            sample["key"] = where
            batch.append(sample)
            if len(batch) == self.batch_size:
                out = collate(batch)
                out[_STATS_KEY] = stats.to_dict()
                out[_WORKER_KEY] = partition
                batch = []
                remaining -= 1
                yield out

    def _source_samples(
        self, index: int, partition: int, epoch: int, rng: np.random.Generator, stats: StreamStats
    ) -> Iterator[tuple[SampleMeta, dict[str, bytes], str]]:
        """Parsed samples of one source through a shuffle buffer; infinite when resampled."""
        source = self.sources[index]
        urls = self.urls[index]
        if self.resampled:
            shards: Iterator[str] = (urls[int(rng.integers(len(urls)))] for _ in iter(int, 1))
        else:
            mine = split_by_partition(urls, partition, self.partitions, self.seed)
            order = np.random.default_rng([self.seed, epoch, partition, index]).permutation(len(mine))
            shards = iter([mine[i] for i in order])
        buffer: list[tuple[SampleMeta, dict[str, bytes], str]] = []
        empty_in_a_row = 0
        limit = max(10, 3 * len(urls))
        for url in shards:
            good = 0
            for raw in iter_shard(url, stats):
                where = f"{url}#{raw['__key__']}"
                try:
                    meta, members = parse_sample(raw)
                except ValueError as error:
                    stats.skip(str(error))
                    continue
                if source.task is not None and meta.task != source.task:
                    raise ValueError(
                        f"source {source.label} is declared as task {source.task}, but {where} is {meta.task}"
                    )
                good += 1
                if len(buffer) < self.shuffle_buffer:
                    buffer.append((meta, members, where))
                    continue
                slot = int(rng.integers(len(buffer)))
                buffer[slot], item = (meta, members, where), buffer[slot]
                yield item
            empty_in_a_row = 0 if good else empty_in_a_row + 1
            if self.resampled and empty_in_a_row >= limit:
                raise RuntimeError(
                    f"source {source.label}: no readable sample in {limit} shards in a row; {stats.summary()}"
                )
        order = rng.permutation(len(buffer))
        for i in order:
            yield buffer[i]


# --------------------------------------------------------------------------------------------
# The loader


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`MixtureStream` that collects the skip counters from its workers.

    Counters are folded in with every batch, so they are current even when the trainer stops at
    ``len(loader)`` batches without exhausting the iterator. New problems are logged as warnings
    when their batch arrives (the first 20 times an epoch), and each epoch that had any is summed
    up once, at its end or when the next epoch starts.

    Each pass is one epoch of the stream. ``position_fn`` says, as a pass starts, which epoch it is
    (the seed of its random streams) and how many of that epoch's batches were already trained on;
    the pass skips those and yields the rest (see "Resuming mid-epoch" in the module docstring).
    :class:`FusionDataModule` passes the trainer's epoch and its count of batches done in it. Without
    ``position_fn`` the loader counts its own passes from 0, each from its first batch, except the
    first pass after :meth:`load_state_dict`, which continues where the saved loader stood.
    """

    max_warnings_per_epoch = 20

    def __init__(self, dataset: MixtureStream, position_fn: Callable[[], tuple[int, int]] | None = None, **kwargs: Any):
        kwargs.setdefault("num_workers", dataset.num_workers)
        if kwargs["num_workers"] != dataset.num_workers:
            raise ValueError("StreamLoader num_workers must match the MixtureStream's")
        if kwargs["num_workers"] > 0:
            kwargs.setdefault("worker_init_fn", _init_worker)
        super().__init__(dataset, batch_size=None, **kwargs)
        self.position_fn = position_fn
        self.passes = 0
        self._position = 0  # batches of the current pass handed out, counting those skipped on a resume
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from load_state_dict
        self._finished = StreamStats()  # epochs already summed up
        self._latest: dict[int, dict[str, Any]] = {}  # this epoch: the newest counters of each partition
        self._epoch = 0
        self._reported = 0
        self._warnings = 0
        self._summarised = True

    @property
    def epoch_stats(self) -> StreamStats:
        """What the current (or last) epoch read and skipped, over all workers of this rank."""
        stats = StreamStats()
        for record in self._latest.values():
            stats.add(StreamStats.from_dict(record))
        return stats

    @property
    def total_stats(self) -> StreamStats:
        """Everything this rank's loader read and skipped so far."""
        stats = StreamStats(max_messages=self._finished.max_messages)
        stats.add(self._finished)
        stats.add(self.epoch_stats)
        return stats

    def _absorb(self, partition: int, record: dict[str, Any]) -> None:
        self._latest[partition] = record
        problems = sum(r["skipped_samples"] + r["broken_shards"] for r in self._latest.values())
        if problems > self._reported:
            self._reported = problems
            self._summarised = False
            if self._warnings < self.max_warnings_per_epoch:
                self._warnings += 1
                latest = record["messages"][-1] if record["messages"] else ""
                log.warning(
                    "rank %d, epoch %d: %d corrupt sample(s) skipped and %d broken shard(s) so far; latest: %s",
                    self.dataset.rank,
                    self._epoch,
                    *_counts(self._latest),
                    latest,
                )

    def _close_epoch(self) -> None:
        stats = self.epoch_stats
        if not self._summarised and (stats.skipped_samples or stats.broken_shards):
            log.warning("rank %d, epoch %d: %s", self.dataset.rank, self._epoch, stats.summary())
        self._summarised = True
        self._finished.add(stats)
        self._latest = {}
        self._reported = 0
        self._warnings = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the current pass's epoch and its batches handed out, and the stream's layout.

        Lightning saves it in every checkpoint (a resumable loader) and hands it back to
        :meth:`load_state_dict` when a fit resumes in the middle of an epoch.
        """
        epoch, batches = self._epoch, self._position
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches, "layout": self.dataset.layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict`; warns when the stream's layout has changed since."""
        saved = state.get("layout", {})
        changed = [name for name, value in self.dataset.layout().items() if saved.get(name, value) != value]
        if changed:
            log.warning(
                "the training stream's %s changed since the checkpoint was saved: the resumed epoch still skips the "
                "batches already trained on, but the rest are not those the interrupted run would have read",
                ", ".join(changed),
            )
        self._resume = int(state["epoch"]), int(state["batches"])

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        self._close_epoch()  # the previous epoch, if the trainer left its iterator unfinished
        if self.position_fn is not None:
            epoch, done = self.position_fn()
        else:
            epoch, done = self._resume or (self.passes, 0)
        self._resume = None
        self.passes = epoch + 1
        self._epoch = epoch
        self._position = done
        if done and self.persistent_workers and self._iterator is not None:
            raise RuntimeError(
                "cannot resume a pass of a StreamLoader whose persistent workers already run: load the state "
                "into a fresh loader, before its first pass"
            )
        self.dataset.epoch, self.dataset.consumed = epoch, done
        batches = super().__iter__()  # the workers (or this process) take the epoch and the skip from here
        self.dataset.consumed = 0
        for batch in batches:
            self._absorb(int(batch.pop(_WORKER_KEY)), batch.pop(_STATS_KEY))
            self._position += 1
            yield batch
        stats = self.epoch_stats
        if not self._summarised and (stats.skipped_samples or stats.broken_shards):
            log.warning("rank %d, epoch %d: %s", self.dataset.rank, epoch, stats.summary())
            self._summarised = True


def _counts(latest: dict[int, dict[str, Any]]) -> tuple[int, int]:
    return sum(r["skipped_samples"] for r in latest.values()), sum(r["broken_shards"] for r in latest.values())


def _init_worker(worker: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# The LightningDataModule


def _distributed_position() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def demo_sources(root: str | Path | None = None) -> list[ShardSource]:
    """One mixture source per demo task, equally weighted."""
    root = demo.demo_root(root)
    shards = read_index(root / "train")["shards"]
    return [
        ShardSource(
            urls=[str(root / "train" / s["name"]) for s in shards if s["name"].startswith(f"{task}-")],
            weight=1.0,
            task=task,
            name=task,
        )
        for task in demo.DEMO_TASKS
    ]


class FusionDataModule(pl.LightningDataModule):
    """Weighted multi-task shard streaming for training; paired folders for validation, test, predict.

    Args:
        sources: the training mixture; ``None`` uses the built-in demo set (built on first use).
        batch_size: samples per training batch (per rank).
        crop_size: side of the square random crop shared by a, b and gt.
        batches_per_epoch: batches every rank yields per epoch; ``None``: one pass over the data
            (from the shard index: all samples / (batch_size x ranks) when resampled, the smallest
            partition's share when not).
        resampled: draw shards with replacement (training default); ``False`` reads each sample
            at most once per epoch.
        num_workers: DataLoader worker processes per rank.
        shuffle_buffer: samples per source held (encoded) for shuffling in each worker; memory is
            about buffer x sources x workers x the encoded size of a sample.
        flips: random horizontal and vertical flips.
        luminance: train on BT.601 luminance (1 channel); ``False`` keeps RGB (grey repeated).
        seed: seed of every random choice (shards, mixing, crops, flips).
        val_pairs: paired folders for validation (``None`` with the demo: its held-out split; with
            explicit sources: no validation). Layouts in :mod:`datamodules.pairs`, e.g.
            ``../shared/fusion-bench/pairs``.
        val_pairs_per_task: validate on at most this many pairs of each task, spread evenly over
            that task's pairs in key order (so a capped set still covers every task, and every
            dataset of a task folder); ``None``: every pair.
        test_pairs: paired folders for test.
        predict_pairs: paired folders for predict.
        pair_task: task of the pairs when a folder's layout does not say it (see :mod:`datamodules.pairs`).
        eval_batch_size: pairs per validation/test/predict batch (1 unless all pairs share a size).
        eval_workers: DataLoader workers for validation, test and predict.
        demo_dir: where the demo set lives (default: ``data/demo`` in the project).
        rank: this process's rank; ``None`` takes it from the trainer or torch.distributed.
        world_size: number of ranks; ``None`` takes it from the trainer or torch.distributed.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        sources: list[ShardSource] | None = None,
        batch_size: int = 8,
        crop_size: int = 256,
        batches_per_epoch: int | None = None,
        resampled: bool = True,
        num_workers: int = 2,
        shuffle_buffer: int = 32,
        flips: bool = True,
        luminance: bool = True,
        seed: int = 0,
        val_pairs: list[str] | None = None,
        val_pairs_per_task: int | None = None,
        test_pairs: list[str] | None = None,
        predict_pairs: list[str] | None = None,
        pair_task: str | None = None,
        eval_batch_size: int = 1,
        eval_workers: int = 1,
        demo_dir: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        if sources is not None and len(sources) == 0:
            raise ValueError(
                "data.sources is an empty list: name at least one shard source, or leave data.sources unset "
                "(null) to train on the built-in demo set"
            )
        self.sources = (
            [source if isinstance(source, ShardSource) else ShardSource(**source) for source in sources]
            if sources
            else None
        )
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.batches_per_epoch = batches_per_epoch
        self.resampled = resampled
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.flips = flips
        self.luminance = luminance
        self.seed = seed
        self.val_pairs = _as_list(val_pairs)
        if val_pairs_per_task is not None and val_pairs_per_task < 1:
            raise ValueError(
                f"data.val_pairs_per_task must be at least 1 (or null for every pair), got {val_pairs_per_task}"
            )
        self.val_pairs_per_task = val_pairs_per_task
        self.test_pairs = _as_list(test_pairs)
        self.predict_pairs = _as_list(predict_pairs)
        self.pair_task = pair_task
        self.eval_batch_size = eval_batch_size
        self.eval_workers = eval_workers
        self.demo_dir = demo_dir
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.train_stream: MixtureStream | None = None
        self._train_loader: StreamLoader | None = None

    # -- set-up -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.sources is None:
            demo.ensure_demo(self.demo_dir)

    def _position(self) -> tuple[int, int]:
        rank, world = _distributed_position()
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        return (self.rank if self.rank is not None else rank), (
            self.world_size if self.world_size is not None else world
        )

    def setup(self, stage: str | None = None) -> None:
        if self.sources is None:
            root = demo.demo_root(self.demo_dir)
            self.sources = demo_sources(root)
            if self.val_pairs is None:
                self.val_pairs = [str(root / "val")]
        if stage in (None, "fit") and self.train_stream is None:
            if not self.val_pairs:
                log.warning(
                    "data.val_pairs is not set, so this fit runs no validation (no val metrics; a checkpoint "
                    "monitor on them never saves a best checkpoint). Set data.val_pairs to paired folders, "
                    "e.g. '[../shared/fusion-bench/pairs]', to validate"
                )
            self._check_tasks()
            rank, world = self._position()
            self.train_stream = MixtureStream(
                self.sources,
                batch_size=self.batch_size,
                crop_size=self.crop_size,
                batches_per_epoch=self.batches_per_epoch,
                resampled=self.resampled,
                rank=rank,
                world_size=world,
                num_workers=self.num_workers,
                seed=self.seed,
                flips=self.flips,
                luminance=self.luminance,
                shuffle_buffer=self.shuffle_buffer,
            )

    def _check_tasks(self) -> None:
        """A source declared as one task whose index lists others is a configuration error."""
        for source in self.sources or []:
            if source.task is None:
                continue
            folders = {
                Path(url).parent for url in expand_urls(source.urls) if "://" not in url and not url.startswith("pipe:")
            }
            for folder in folders:
                try:
                    index = read_index(folder)  # an index that exists but cannot be read stops the run
                except FileNotFoundError:
                    log.warning(
                        "source %s: no index.json in %s, so its declared task %s is checked per sample only; "
                        "build the shards with `python -m datamodules.shards build` to get an index",
                        source.label, folder, source.task,
                    )  # fmt: skip
                    continue
                names = {Path(url).name for url in expand_urls(source.urls)}
                tasks = {task for shard in index["shards"] if shard["name"] in names for task in shard["tasks"]}
                if tasks - {source.task}:
                    raise ValueError(
                        f"source {source.label} is declared as task {source.task}, but its shards in {folder} hold "
                        f"{', '.join(sorted(tasks))}; fix the task or the URLs"
                    )

    # -- loaders ------------------------------------------------------------------------------

    def _train_position(self) -> tuple[int, int]:
        """The trainer's epoch and its batches done so far: 0 as an epoch starts, where it stopped on a resume."""
        # The fit loop restores this count from the checkpoint and continues the batch index from it.
        # Not the loader's own count: a save made inside a step (as the SLURM requeue signal may) has
        # handed out that step's batch, which the resumed fit trains on again.
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> StreamLoader:
        if self.train_stream is None:
            self.setup("fit")
        assert self.train_stream is not None
        self._train_loader = StreamLoader(
            self.train_stream,
            position_fn=self._train_position if getattr(self, "trainer", None) is not None else None,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        return self._train_loader

    def _pairs_loader(self, roots: list[str] | None, what: str, per_task: int | None = None) -> DataLoader:
        if not roots:
            raise ValueError(
                f"no {what} data: set data.{what}_pairs to paired folders (layouts in datamodules/pairs.py)"
            )
        datasets = [
            PairFolderDataset(root, task=self.pair_task, key_prefix=Path(root).name if len(roots) > 1 else None)
            for root in roots
        ]
        dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        if per_task is not None:
            tasks = [pair["meta"]["task"] for pairs in datasets for pair in pairs.pairs]
            dataset = Subset(dataset, evenly_per_task(tasks, per_task))
        rank, world = self._position()
        # Under DDP each pair goes to exactly one rank: Lightning's own sampler for validation and
        # test pads the last ranks with repeated pairs, which would count twice in the metric means.
        # (Lightning keeps a DistributedSampler it is given; predict gets an unpadded one anyway.)
        sampler = UnrepeatedDistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.eval_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pairs:
            return []
        return self._pairs_loader(self.val_pairs, "val", self.val_pairs_per_task)

    def test_dataloader(self) -> DataLoader:
        return self._pairs_loader(self.test_pairs, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._pairs_loader(self.predict_pairs, "predict")

    # -- reporting ----------------------------------------------------------------------------

    @property
    def stream_stats(self) -> StreamStats:
        """Samples read and skipped (corrupt members, broken shards) by this rank's training stream so far."""
        return self._train_loader.total_stats if self._train_loader is not None else StreamStats()

    @property
    def task_names(self) -> tuple[str, ...]:
        return TASKS


def evenly_per_task(tasks: Sequence[str], cap: int) -> list[int]:
    """Indices of at most ``cap`` items of each task, evenly spaced over that task's items, in index order."""
    members_of: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        members_of.setdefault(task, []).append(index)
    chosen = []
    for members in members_of.values():
        count = min(cap, len(members))
        chosen += [members[step * len(members) // count] for step in range(count)]
    return sorted(chosen)


def _as_list(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, (str, Path)) else [str(item) for item in value]
