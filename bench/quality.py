"""Fusion quality of a trained checkpoint on every fusion-bench pair, next to the baselines.

    python bench/quality.py --ckpt runs/demo/checkpoints/last.ckpt
    python bench/quality.py --recipe gifnet --ckpt runs/fast/checkpoints/last.ckpt \
        --config recipes/configs/gifnet-fast.yaml --out runs/fast/quality
    python bench/quality.py --ckpt runs/demo/checkpoints/last.ckpt --out runs/demo/quality-bf16 \
        --trainer.precision bf16-mixed          # options it does not know go to the recipe's predict

Fuses every pair of ``../shared/fusion-bench/pairs`` with the recipe's own ``predict`` (full
resolution, the config's tiling), then scores the fused images with ``recipes.evaluate`` under the
fusion-bench reference conventions, in the same run as the classical baselines (average,
choose-max, Laplacian pyramid) and the official GIFNet checkpoint's published outputs. Prints the
per-task Markdown table (mean, std, best in bold) that ``recipes.evaluate`` writes to
``<out>/summary.md``. fusion-bench is for evaluation only: nothing here trains on it.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

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


if __name__ == "__main__":
    main()
