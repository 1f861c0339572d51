"""Evaluate folders of fused images with the standard fusion metrics: CSV, Markdown tables, plots.

    python -m recipes.evaluate --pairs ../shared/fusion-bench/pairs \\
        --fused GIFNet=runs/demo/predictions --fused SDNet=../shared/fusion-bench/published \\
        --baselines --out evaluation
    python -m recipes.evaluate --pairs data/roadscene --a-dir ir --b-dir vi --task ivif \\
        --fused mine=out --metrics EN SD MI VIF Qabf SSIM

Supports:

- Pairs in any layout ``datamodules.pairs`` reads: ``ROOT/<TASK>/<pair>/a.png,b.png[,gt.png]``
  (fusion-bench), ``ROOT/<pair>/...`` with ``meta.json`` or ``--task``, or two folders matched by
  file stem (``--a-dir``, ``--b-dir``, ``--task``).
- One or more fused folders, each named as a method (``NAME=DIR``). The fused image of pair
  ``TASK/pair`` is looked up as ``DIR/TASK/pair.*`` (what ``predict`` writes),
  ``DIR/TASK/NAME/pair.*`` (fusion-bench's ``published`` layout), then ``DIR/pair.*``.
- ``--baselines``: pixel average, choose-max and 4-level Laplacian-pyramid fusion
  (``lightning_modules.metrics.baselines``) computed on the same pairs in the same run.
- The metrics of ``lightning_modules.metrics`` under the fusion-bench reference conventions
  (every image read as 8 bits, BT.601 grey, rounded), batched per pair over all methods, on GPU
  when there is one. Pairs with a target (``gt``) add PSNR_gt and SSIM_gt; restoration pairs
  (no ``b``) get the metrics of F alone (EN, SD, SF, AG) and the target metrics.

Writes to ``--out``:

- ``metrics.csv``: one row per pair, method and metric, with the reason where a value is NaN;
- ``summary.csv`` and ``summary.md``: per task and method, mean and standard deviation over the
  pairs (NaN values left out and counted), the best mean of each metric in bold, an arrow for the
  better direction; missing fused images listed and counted per method;
- ``plots/<metric>.png``: one figure per metric comparing the methods per task;
- with ``--sheet [N]``: ``sheets/<TASK>.png``, a contact sheet per task: N pairs (default 3) spread
  evenly over the task's pairs (by position, never by score), each row the sources, the target where
  there is one, every method's fused image and the baselines (grey, as scored), all at one height.

A fused image missing for a pair is listed and counted, never silently skipped; a fused image
whose size differs from its pair stops the run with both file names; an unknown metric name
lists the known ones.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datamodules.images import IMAGE_SUFFIXES, ImageError, read_image
from datamodules.pairs import PairFolderDataset
from datamodules.schema import TASKS, to_float
from lightning_modules.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    NAN_REASONS,
    SOURCE_METRICS,
    TARGET_METRICS,
    check_metric_names,
    compute_metrics,
    to_grey_levels,
)
from lightning_modules.metrics.baselines import BASELINES
from recipes.contact_sheet import SheetRow, evenly_spaced, write_sheet

FUSED_ONLY_METRICS = ("EN", "SD", "SF", "AG")
"""Metrics of the fused image alone: the ones restoration pairs (no second source) get."""


@dataclass
class Evaluation:
    """Everything the reports are made of."""

    rows: list[dict[str, object]] = field(default_factory=list)  # task, pair, method, metric, value, note
    missing: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # method -> pair keys
    methods: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- arguments
def parse_fused(entries: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` entries as {name: folder}; errors name the bad entry."""
    folders: dict[str, Path] = {}
    for entry in entries:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--fused {entry!r}: expected NAME=DIR, e.g. GIFNet=runs/demo/predictions")
        if name in folders:
            raise ValueError(f"--fused: method {name!r} given twice")
        if not Path(folder).is_dir():
            raise ValueError(f"--fused {entry!r}: {folder} is not a folder")
        folders[name] = Path(folder)
    return folders


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.evaluate",
        description="Score folders of fused images with the standard fusion metrics (fusion-bench conventions); "
        "write metrics.csv, summary tables and plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pairs",
        required=True,
        type=Path,
        help="folder of source pairs (fusion-bench layout, pair folders, or with --a-dir/--b-dir)",
    )
    parser.add_argument(
        "--fused",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=DIR",
        help="a method's fused images; repeat for several methods",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also score pixel average, choose-max and Laplacian-pyramid fusion of the pairs",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"metrics to compute (default: {' '.join(SOURCE_METRICS)}, plus {' '.join(TARGET_METRICS)} "
        f"where a pair has gt); known: {' '.join(METRICS)}",
    )
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the metrics run",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's); on a busy shared machine 1 avoids waiting for "
        "descheduled threads",
    )
    parser.add_argument("--task", default=None, help=f"task of pairs whose layout does not say it ({', '.join(TASKS)})")
    parser.add_argument(
        "--a-dir",
        default=None,
        help="with --b-dir: folder (under --pairs) of first sources matched to second ones by file stem",
    )
    parser.add_argument("--b-dir", default=None, help="folder (under --pairs) of second sources")
    parser.add_argument("--gt-dir", default=None, help="folder (under --pairs) of targets, matched by stem")
    parser.add_argument(
        "--sheet",
        type=int,
        nargs="?",
        const=3,
        default=None,
        metavar="N",
        help="also draw a contact sheet per task with N pairs (3 if N is left out) in OUT/sheets",
    )
    parser.add_argument("--sheet-height", type=int, default=160, help="pixel height of every image on a contact sheet")
    return parser


# --------------------------------------------------------------------------------- fused images
def find_fused(folder: Path, method: str, key: str) -> Path | None:
    """The fused image of pair ``key`` ("TASK/pair" or "pair") in ``folder``, or None."""
    task_dir, _, pair = key.rpartition("/")
    stems = [folder / key]
    if task_dir:
        stems += [folder / task_dir / method / pair, folder / pair]
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            for path in (stem.with_name(stem.name + suffix), stem.with_name(stem.name + suffix.upper())):
                if path.is_file():
                    return path
    return None


def read_grey_levels(path: Path) -> torch.Tensor:
    """(1, 1, H, W) float64 grey levels of an image file under the metric conventions."""
    return to_grey_levels(to_float(read_image(path))[None])


# ------------------------------------------------------------------------------------ the run
def evaluate(args: argparse.Namespace) -> Evaluation:
    fused_folders = parse_fused(args.fused)
    if not fused_folders and not args.baselines:
        raise ValueError("nothing to evaluate: give --fused NAME=DIR and/or --baselines")
    clash = sorted(set(fused_folders) & set(BASELINES)) if args.baselines else []
    if clash:
        raise ValueError(
            f"--fused method name(s) {', '.join(clash)} clash with the baselines; rename them or drop --baselines"
        )
    requested = check_metric_names(args.metrics) if args.metrics else None
    dataset = PairFolderDataset(args.pairs, task=args.task, a_dir=args.a_dir, b_dir=args.b_dir, gt_dir=args.gt_dir)
    device = torch.device(args.device)
    result = Evaluation(methods=list(fused_folders) + (list(BASELINES) if args.baselines else []))
    result.metrics = requested or list(SOURCE_METRICS) + list(TARGET_METRICS)
    for index in tqdm(range(len(dataset)), desc="pairs", unit="pair", file=sys.stderr):
        item = dataset[index]
        key, task = item["key"], TASKS[item["task"]]
        a = to_grey_levels(item["a_color"][None])
        b = to_grey_levels(item["b_color"][None]) if item["b_color"] is not None else None
        paths = dataset.pairs[index]["paths"]
        gt = read_grey_levels(paths["gt"]) if "gt" in paths else None  # the item's gt is luminance, not 8-bit grey
        a_path = paths["a"]
        names, fused = [], []
        for method, folder in fused_folders.items():
            path = find_fused(folder, method, key)
            if path is None:
                result.missing[method].append(key)
                continue
            levels = read_grey_levels(path)
            if levels.shape[-2:] != a.shape[-2:]:
                (height, width), (pair_height, pair_width) = levels.shape[-2:], a.shape[-2:]
                raise ImageError(
                    f"size mismatch: {path} is {height}x{width} but {a_path} is {pair_height}x{pair_width} (H x W)"
                )
            names.append(method)
            fused.append(levels)
        if args.baselines and b is not None:
            for method, fuse in BASELINES.items():
                names.append(method)
                fused.append(torch.round(fuse(a, b).clamp(0, 255)))  # written as 8 bits
        if not names:
            continue
        metrics = [
            m
            for m in result.metrics
            if (m in TARGET_METRICS and gt is not None)
            or (m not in TARGET_METRICS and (b is not None or m in FUSED_ONLY_METRICS))
        ]
        if not metrics:
            continue
        batch = torch.cat(fused).to(device=device, dtype=torch.uint8)
        count = batch.shape[0]

        def expand(levels: torch.Tensor, count: int = count) -> torch.Tensor:
            return levels.to(device=device, dtype=torch.uint8).expand(count, -1, -1, -1)

        second = expand(b if b is not None else a)  # restoration pairs only get metrics of F alone
        values = compute_metrics(batch, expand(a), second, metrics, gt=expand(gt) if gt is not None else None)
        for metric in metrics:
            for method, value in zip(names, values[metric].tolist()):
                note = NAN_REASONS.get(metric, "undefined") if math.isnan(value) else ""
                result.rows.append(
                    {"task": task, "pair": key, "method": method, "metric": metric, "value": value, "note": note}
                )
    return result


# ------------------------------------------------------------------------------------ reports
@dataclass
class Summary:
    n: int
    mean: float
    std: float
    nan_count: int


def summarise(result: Evaluation) -> dict[tuple[str, str, str], Summary]:
    """(task, method, metric) -> mean and standard deviation over pairs (NaN left out and counted)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in result.rows:
        values[(row["task"], row["method"], row["metric"])].append(float(row["value"]))  # type: ignore[arg-type]
    summary = {}
    for group, numbers in values.items():
        finite = np.array([v for v in numbers if not math.isnan(v)])
        mean = float(finite.mean()) if finite.size else math.nan
        std = float(finite.std()) if finite.size else math.nan  # ddof 0, as numpy.std
        summary[group] = Summary(n=len(numbers), mean=mean, std=std, nan_count=len(numbers) - finite.size)
    return summary


def write_csv(path: Path, rows: list[dict[str, object]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def markdown_report(result: Evaluation, summary: dict[tuple[str, str, str], Summary]) -> str:
    tasks = [task for task in TASKS if any(key[0] == task for key in summary)]
    lines = [
        "# Fusion metrics",
        "",
        "Mean ± standard deviation over pairs; the best mean per metric in bold; "
        "↑ higher is better, ↓ lower is better. Metrics follow the fusion-bench reference conventions.",
        "",
    ]
    for task in tasks:
        metrics = [m for m in result.metrics if any((task, method, m) in summary for method in result.methods)]
        methods = [method for method in result.methods if any((task, method, m) in summary for m in metrics)]
        best: dict[str, float] = {}
        for metric in metrics:
            means = [summary[(task, method, metric)].mean for method in methods if (task, method, metric) in summary]
            finite = [m for m in means if not math.isnan(m)]
            if finite:
                best[metric] = max(finite) if HIGHER_IS_BETTER[metric] else min(finite)
        lines += [f"## {task.upper()}", ""]
        lines.append(
            "| method | n | " + " | ".join(f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics) + " |"
        )
        lines.append("|---" * (len(metrics) + 2) + "|")
        for method in methods:
            n = max((summary[(task, method, m)].n for m in metrics if (task, method, m) in summary), default=0)
            cells = []
            for metric in metrics:
                entry = summary.get((task, method, metric))
                if entry is None or math.isnan(entry.mean):
                    cells.append("—" if entry is None else f"NaN ({entry.nan_count} NaN)")
                    continue
                mean = f"{entry.mean:.3f}"
                cell = (f"**{mean}**" if entry.mean == best.get(metric) else mean) + f" ± {entry.std:.3f}"
                cells.append(cell + (f" ({entry.nan_count} NaN)" if entry.nan_count else ""))
            lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    nan_notes = sorted({(row["metric"], row["note"]) for row in result.rows if row["note"]})
    if nan_notes:
        lines += ["## NaN values", "", "Left out of the means above:", ""]
        lines += [f"- {metric}: {note}" for metric, note in nan_notes]
        lines.append("")
    lines += ["## Missing fused images", ""]
    if any(result.missing.values()):
        for method, keys in result.missing.items():
            lines.append(f"- {method}: {len(keys)} missing: " + ", ".join(keys))
    else:
        lines.append("None: every method has a fused image for every pair.")
    return "\n".join(lines) + "\n"


def plot_metrics(result: Evaluation, summary: dict[tuple[str, str, str], Summary], folder: Path) -> list[Path]:
    """One bar chart per metric: the methods' means (± std) side by side for each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    tasks = [task for task in TASKS if any(key[0] == task for key in summary)]
    for metric in result.metrics:
        methods = [m for m in result.methods if any((task, m, metric) in summary for task in tasks)]
        metric_tasks = [task for task in tasks if any((task, m, metric) in summary for m in methods)]
        if not methods:
            continue
        figure, axes = plt.subplots(figsize=(2.0 + max(3.0, 0.35 * len(metric_tasks) * len(methods)), 3.5))
        width = 0.8 / len(methods)
        for offset, method in enumerate(methods):
            entries = [summary.get((task, method, metric)) for task in metric_tasks]
            means = [e.mean if e else np.nan for e in entries]
            stds = [e.std if e else np.nan for e in entries]
            positions = np.arange(len(metric_tasks)) + (offset - (len(methods) - 1) / 2) * width
            axes.bar(positions, means, width, yerr=stds, capsize=2, label=method)
        axes.set_xticks(np.arange(len(metric_tasks)), [task.upper() for task in metric_tasks])
        axes.set_title(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)")
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        figure.tight_layout()
        path = folder / f"{metric}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def write_reports(result: Evaluation, out: Path) -> dict[tuple[str, str, str], Summary]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "metrics.csv", result.rows, ("task", "pair", "method", "metric", "value", "note"))
    summary = summarise(result)
    rows = [
        {"task": t, "method": m, "metric": k, "n": s.n, "mean": s.mean, "std": s.std, "nan_count": s.nan_count}
        for (t, m, k), s in sorted(summary.items())
    ]
    write_csv(out / "summary.csv", rows, ("task", "method", "metric", "n", "mean", "std", "nan_count"))
    (out / "summary.md").write_text(markdown_report(result, summary))
    plot_metrics(result, summary, out / "plots")
    return summary


def write_sheets(args: argparse.Namespace, folder: Path) -> list[Path]:
    """Contact sheets ``folder/<TASK>.png`` of ``args.sheet`` pairs per task (see the module docstring)."""
    fused_folders = parse_fused(args.fused)
    dataset = PairFolderDataset(args.pairs, task=args.task, a_dir=args.a_dir, b_dir=args.b_dir, gt_dir=args.gt_dir)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for pair in dataset.pairs:
        by_task[str(pair["meta"]["task"]).lower()].append(pair)
    written = []
    for task in (task for task in TASKS if task in by_task):
        rows = []
        for pair in evenly_spaced(by_task[task], args.sheet):
            paths = pair["paths"]
            tiles = [(role, read_image(paths[role])) for role in ("a", "b", "gt") if role in paths]
            for method, fused_folder in fused_folders.items():
                path = find_fused(fused_folder, method, pair["key"])
                missing = (f"{method} (missing)", np.full((8, 8), 128, np.uint8))
                tiles.append((method, read_image(path)) if path else missing)
            if args.baselines and "b" in paths:
                a, b = read_grey_levels(paths["a"]), read_grey_levels(paths["b"])
                for method, fuse in BASELINES.items():
                    tiles.append((method, torch.round(fuse(a, b).clamp(0, 255))[0, 0].numpy().astype(np.uint8)))
            rows.append(SheetRow(pair["key"], tiles))
        written.append(write_sheet(rows, folder / f"{task.upper()}.png", args.sheet_height, title=task.upper()))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate(args)
    except (ValueError, ImageError) as error:  # bad input: the message names the file or the fix
        parser.error(str(error))
    write_reports(result, args.out)
    if args.sheet:
        write_sheets(args, args.out / "sheets")
    missing = sum(len(keys) for keys in result.missing.values())
    if missing:
        print(f"{missing} fused image(s) missing; listed in {args.out / 'summary.md'}:", file=sys.stderr)
        for method, keys in result.missing.items():
            print(
                f"  {method}: {len(keys)} missing ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})",
                file=sys.stderr,
            )
    print(f"wrote {args.out / 'metrics.csv'}, {args.out / 'summary.md'}, {args.out / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
