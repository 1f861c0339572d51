"""Fusion quality of a trained checkpoint on every fusion-bench pair, next to the baselines.

    python bench/quality.py --ckpt runs/demo/checkpoints/last.ckpt
    python bench/quality.py --recipe gifnet --ckpt runs/fast/checkpoints/last.ckpt \
        --config recipes/configs/gifnet-fast.yaml --out runs/fast/quality
    python bench/quality.py --ckpt runs/demo/checkpoints/last.ckpt --out runs/demo/quality-bf16 \
        --trainer.precision bf16-mixed          # options it does not know go to the recipe's predict
    python -m recipes.gifnet import-official ../shared/anchors/gifnet/Final.model runs/official/official.ckpt
    python bench/quality.py --ckpt runs/official/official.ckpt --out runs/official/quality \
        --model.predict_tile_size null          # the published model, whole images (its norm is image-wide)

Fuses every pair of ``../shared/fusion-bench/pairs`` with the recipe's own ``predict`` (full
resolution, the config's tiling), then scores the fused images with ``recipes.evaluate`` under the
fusion-bench reference conventions, in the same run as the classical baselines (average,
choose-max, Laplacian pyramid) and the official GIFNet checkpoint's published outputs. Prints the
per-task Markdown table (mean, std, best in bold) that ``recipes.evaluate`` writes to
``<out>/summary.md``, then the checkpoint against the published GIFNet outputs: every metric mean
of both side by side with their relative difference, and per task how far the fused images are
from the published ones (mean absolute difference of luminance, grey levels). For the imported
published checkpoint the two rows should agree. fusion-bench is for evaluation only: nothing here
trains on it.
"""

from __future__ import annotations

import argparse
import csv
import importlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from datamodules.images import read_image
from datamodules.schema import luminance
from recipes import evaluate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FUSION_BENCH = PROJECT_ROOT.parent / "shared" / "fusion-bench"


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt", type=Path, required=True, help="checkpoint to evaluate (e.g. runs/demo/checkpoints/last.ckpt)"
    )
    parser.add_argument(
        "--recipe", default="gifnet", help="recipe module under recipes/ that trained it (default gifnet)"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="recipe config to predict with (default: the recipe's default)"
    )
    parser.add_argument("--pairs", type=Path, default=FUSION_BENCH / "pairs", help="paired folders to fuse")
    parser.add_argument(
        "--published", type=Path, default=FUSION_BENCH / "published", help="published outputs (fusion-bench layout)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run directory>/quality)")
    parser.add_argument(
        "--no-predict",
        action="store_true",
        help="score the images already in <out>/fused instead of fusing again (e.g. after an interrupted run)",
    )
    # the rest (e.g. --trainer.precision bf16-mixed, --model.predict_tile_size 256) is for predict
    return parser.parse_known_args()


def predict_pairs(
    recipe: str, ckpt: Path, config: Path | None, pairs: Path, fused: Path, runs_dir: Path, predict_options: list[str]
) -> None:
    """Fuse every pair under ``pairs`` into ``fused`` with the recipe's own ``predict`` (in this process)."""
    predict_args = [
        "predict",
        "--ckpt_path",
        str(ckpt),
        "--data.predict_pairs",
        f"[{pairs}]",
        "--output_dir",
        str(fused),
    ]
    predict_args += ["--trainer.logger", "false", "--runs_dir", str(runs_dir)]
    if config is not None:
        predict_args[1:1] = ["--config", str(config)]
    importlib.import_module(f"recipes.{recipe}").main(predict_args + predict_options)


def metric_means_against_published(summary_csv: Path, ours: str = "ours", published: str = "GIFNet") -> str:
    """Markdown: per task, each metric's mean for ``ours`` and ``published`` and their relative difference."""
    means: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    with summary_csv.open() as table:
        for row in csv.DictReader(table):
            if row["method"] in (ours, published):
                means[row["task"], row["metric"]][row["method"]] = float(row["mean"])
    lines = ["| task | metric | ours | published | difference |", "|---|---|---:|---:|---:|"]
    for (task, metric), pair in means.items():
        if len(pair) == 2:
            ours_mean, published_mean = pair[ours], pair[published]
            relative = (ours_mean - published_mean) / abs(published_mean) if published_mean else float("nan")
            lines.append(f"| {task} | {metric} | {ours_mean:.3f} | {published_mean:.3f} | {100 * relative:+.2f}% |")
    return "\n".join(lines)


def grey_levels(path: Path) -> np.ndarray:
    """An 8-bit image as BT.601 luminance in grey levels (colour outputs are compared by their luminance)."""
    image = torch.from_numpy(read_image(path).astype(np.float32))
    return image.numpy() if image.dim() == 2 else luminance(image.permute(2, 0, 1))[0].numpy()


def pixel_differences_from_published(fused: Path, published: Path, method: str = "GIFNet") -> str:
    """Markdown: per task, mean and largest per-image mean |luminance difference| from ``method``'s outputs."""
    per_task: dict[str, list[float]] = defaultdict(list)
    for reference in sorted(published.glob(f"*/{method}/*.png")):
        task = reference.parent.parent.name
        ours = fused / task / reference.name
        if ours.is_file():
            per_task[task].append(float(np.abs(grey_levels(ours) - grey_levels(reference)).mean()))
    lines = ["| task | pairs | mean abs difference | largest (one image) |", "|---|---:|---:|---:|"]
    for task, values in per_task.items():
        lines.append(f"| {task} | {len(values)} | {np.mean(values):.3f} | {max(values):.3f} |")
    every = [value for values in per_task.values() for value in values]
    if every:
        lines.append(f"| all | {len(every)} | {np.mean(every):.3f} | {max(every):.3f} |")
    return "\n".join(lines)


def main() -> None:
    options, predict_options = parse_args()
    if not options.ckpt.is_file():
        raise SystemExit(
            f"checkpoint {options.ckpt} not found: train one first (make demo writes runs/demo/checkpoints/last.ckpt)"
        )
    if not options.pairs.is_dir():
        raise SystemExit(
            f"pair folder {options.pairs} not found: fusion-bench lives in ../shared/fusion-bench beside the project"
        )
    out = options.out or options.ckpt.resolve().parent.parent / "quality"
    fused = out / "fused"
    if not options.no_predict:
        predict_pairs(options.recipe, options.ckpt, options.config, options.pairs, fused, out / "runs", predict_options)
    evaluate.main(
        [
            "--pairs",
            str(options.pairs),
            "--fused",
            f"ours={fused}",
            "--fused",
            f"GIFNet={options.published}",
            "--baselines",
            "--out",
            str(out),
        ]
    )
    print((out / "summary.md").read_text())
    print("\n## Against the published GIFNet outputs\n")
    print(metric_means_against_published(out / "summary.csv"))
    print("\nLuminance of the fused images minus the published outputs, grey levels:\n")
    print(pixel_differences_from_published(fused, options.published))


if __name__ == "__main__":
    main()
