"""LURE restoration quality on the held-out demo pairs: model vs degraded input, right vs wrong prompt.

    python bench/lure_quality.py                      # train with lure-cpu.yaml (minutes), then evaluate
    python bench/lure_quality.py --checkpoint runs/lure-quality/checkpoints/last.ckpt   # evaluate only
    python bench/lure_quality.py --json OUT.json      # also write the figures as JSON

Training runs the real recipe (``python -m recipes.lure fit --config recipes/configs/lure-cpu.yaml``)
on the demo set; evaluation reads the demo's held-out restoration pairs (photographs the training
set never sees, severity 2 of each degradation) at full resolution and scores luminance against
the clean target with PSNR (peak 1) and SSIM (scikit-image, Gaussian window, data range 1):

- ``input``: the degraded image itself;
- ``LURE``: the model with the prompt evaluation uses (the pair's own prompt);
- ``right`` / ``wrong``: the model with the prompt table's prompt for the pair's degradation, and
  the mean over the table's prompts naming each other demo degradation at the same severity.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from datamodules.demo import demo_root, ensure_demo  # noqa: E402
from datamodules.pairs import PairFolderDataset  # noqa: E402
from datamodules.schema import DEGRADATIONS, collate  # noqa: E402
from datamodules.synthesis import PHOTO_DEGRADATIONS  # noqa: E402
from lightning_modules.lure import LUREModule  # noqa: E402


def train(config: Path, run_name: str, runs_dir: Path, demo_dir: Path | None) -> tuple[Path, float]:
    """Run the recipe's ``fit``; returns the last checkpoint and the wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        "recipes.lure",
        "fit",
        "--config",
        str(config),
        "--run_name",
        run_name,
        "--runs_dir",
        str(runs_dir),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "0",
    ]  # the evaluation below replaces validation
    if demo_dir is not None:
        command += ["--data.demo_dir", str(demo_dir)]
    started = time.perf_counter()
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)
    return runs_dir / run_name / "checkpoints" / "last.ckpt", time.perf_counter() - started


def scores(image: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """(PSNR, SSIM) of a (1, 1, H, W) luminance image against the clean one."""
    estimate = image.clamp(0.0, 1.0)[0, 0].double().numpy()
    target = clean[0, 0].double().numpy()
    psnr = peak_signal_noise_ratio(target, estimate, data_range=1.0)
    ssim = structural_similarity(
        target, estimate, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(psnr), float(ssim)


def table_prompt(model: LUREModule, kind: str, severity: int) -> str:
    severities = [0.0] * len(DEGRADATIONS)
    severities[DEGRADATIONS.index(kind)] = float(severity)
    return model.prompt_table.prompt("restore", severities)


@torch.no_grad()
def evaluate(model: LUREModule, pairs_dir: Path) -> dict[str, dict[str, float]]:
    """Per degradation kind: mean PSNR/SSIM of input, model (evaluation prompt), right and wrong table prompts."""
    dataset = PairFolderDataset(pairs_dir)
    rows: dict[str, list[dict[str, float]]] = {}
    for index in range(len(dataset)):
        batch = collate([dataset[index]])
        (kind_index,) = batch["degradation"][0].nonzero()[0].tolist()
        kind, severity = DEGRADATIONS[kind_index], int(batch["degradation"][0, kind_index])
        clean = batch["gt"]
        row: dict[str, float] = {}
        row["input_psnr"], row["input_ssim"] = scores(batch["a"], clean)
        row["lure_psnr"], row["lure_ssim"] = scores(model.fuse_full_resolution(batch), clean)
        with model.prompted([table_prompt(model, kind, severity)]):
            row["right_psnr"], row["right_ssim"] = scores(model.fuse_full_resolution(batch), clean)
        wrong = []
        for other in PHOTO_DEGRADATIONS:
            if other != kind:
                with model.prompted([table_prompt(model, other, severity)]):
                    wrong.append(scores(model.fuse_full_resolution(batch), clean))
        row["wrong_psnr"], row["wrong_ssim"] = mean(p for p, _ in wrong), mean(s for _, s in wrong)
        rows.setdefault(kind, []).append(row)
    return {
        kind: {**{key: mean(row[key] for row in kind_rows) for key in kind_rows[0]}, "n": len(kind_rows)}
        for kind, kind_rows in sorted(rows.items())
    }


def report(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| degradation | n | PSNR input | PSNR LURE | SSIM input | SSIM LURE | PSNR right prompt | PSNR "
        "wrong prompt | SSIM right | SSIM wrong |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in results.items():
        lines.append(
            f"| {kind} | {row['n']} | {row['input_psnr']:.2f} | {row['lure_psnr']:.2f} | {row['input_ssim']:.4f} | "
            f"{row['lure_ssim']:.4f} | {row['right_psnr']:.2f} | {row['wrong_psnr']:.2f} | {row['right_ssim']:.4f} | "
            f"{row['wrong_ssim']:.4f} |"
        )
    beats_input = [
        k for k, r in results.items() if r["lure_psnr"] > r["input_psnr"] and r["lure_ssim"] > r["input_ssim"]
    ]
    right_wins = [k for k, r in results.items() if r["right_psnr"] > r["wrong_psnr"]]
    lines.append("")
    lines.append(
        f"LURE beats the input in both PSNR and SSIM on {len(beats_input)}/{len(results)} degradations: "
        f"{', '.join(beats_input) or 'none'}"
    )
    lines.append(
        f"right prompt beats the wrong ones in PSNR on {len(right_wins)}/{len(results)} degradations: "
        f"{', '.join(right_wins) or 'none'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/lure_quality.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "recipes" / "configs" / "lure-cpu.yaml")
    parser.add_argument("--run_name", default="lure-quality")
    parser.add_argument("--runs_dir", type=Path, default=PROJECT_ROOT / "runs")
    parser.add_argument("--demo_dir", type=Path, default=None, help="demo set folder (default: the project's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint instead of training")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "offline")
    demo = ensure_demo(args.demo_dir)
    checkpoint, seconds = (
        (args.checkpoint, None) if args.checkpoint else train(args.config, args.run_name, args.runs_dir, args.demo_dir)
    )
    model = LUREModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    results = evaluate(model, demo_root(demo) / "val" / "RESTORE")
    steps = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    header = f"checkpoint {checkpoint} ({steps} steps" + (f", trained in {seconds:.0f} s)" if seconds else ")")
    print(header)
    print(report(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"checkpoint": str(checkpoint), "steps": steps, "train_seconds": seconds, "results": results}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
