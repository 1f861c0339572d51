"""bench/train_quality.py end to end on a tiny budget: it trains, fuses, scores, plots and draws sheets.

No quality is asserted (a CI-sized budget trains nothing worth judging); the test checks that the
script produces its table, loss plot, contact sheets and goal check from a real run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.images import encode_png, read_image

from conftest import PROJECT_ROOT

TINY = PROJECT_ROOT / "tests" / "configs" / "gifnet-tiny.yaml"
sys.path.insert(0, str(PROJECT_ROOT / "bench"))


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))


def tiny_bench(root: Path) -> tuple[Path, Path]:
    """Pairs in the fusion-bench layout (two tasks, two pairs each, 48 x 64) and published outputs for one task."""
    rng = np.random.default_rng(0)
    pairs, published = root / "pairs", root / "published"
    for task in ("IVIF", "MFIF"):
        for index in range(2):
            a = rng.integers(0, 256, (48, 64), dtype=np.uint8)
            b = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            write_image(pairs / task / f"p{index}" / "a.png", a)
            write_image(pairs / task / f"p{index}" / "b.png", b)
            if task == "IVIF":
                write_image(
                    published / task / "GIFNet" / f"p{index}.png", a // 2 + b.mean(axis=2).astype(np.uint8) // 2
                )
    return pairs, published


def test_tiny_budget_produces_table_plot_and_sheets(tmp_path: Path) -> None:
    pairs, published = tiny_bench(tmp_path)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "bench/train_quality.py",
        "--configs",
        f"tiny=gifnet:{TINY}",
        "--minutes",
        "0.15",
        "--data",
        "demo",
        "--pairs",
        str(pairs),
        "--published",
        str(published),
        "--out",
        str(out),
        "--sheet-pairs",
        "1",
        "--threads",
        "1",
        "--trainer.log_every_n_steps",
        "1",
    ]
    environment = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, check=False, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"train_quality failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    printed = result.stdout

    for task in ("IVIF", "MFIF"):  # the per-task tables, the trained config next to the baselines
        section = printed.split(f"## {task}")[1].split("## ")[0]
        rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
        assert {"tiny", "avg", "max", "lap"} <= rows, section
        assert "SF ↑" in section and "Nabf ↓" in section
    assert "| GIFNet |" in printed.split("## IVIF")[1].split("## ")[0], "published outputs scored where they exist"

    [steps_row] = [line for line in printed.splitlines() if line.startswith("| tiny | gifnet |")]
    assert int(steps_row.split("|")[3]) >= 1
    assert float(steps_row.split("|")[4]) >= 0.15 * 60  # the CPU time the budget let the fit spend
    assert "- tiny IVIF:" in printed and "- tiny MFIF:" in printed  # the goal check, per task

    with Image.open(out / "loss.png") as plot:
        assert plot.format == "PNG" and plot.width > 100
    for task in ("IVIF", "MFIF"):
        sheet = read_image(out / "evaluation" / "sheets" / f"{task}.png")
        # one row per pair at the sheet height: a, b, tiny, GIFNet (IVIF only), avg, max, lap side by side
        assert sheet.shape[1] > 6 * sheet.shape[0] // 2
    assert (out / "evaluation" / "summary.md").is_file()


def test_held_out_restoration_pairs_are_degraded_copies_of_colour_visible_images(tmp_path: Path) -> None:
    from train_quality import (
        RESTORE_SEVERITY,
        held_out_photographs,
        write_restoration_pairs,
    )

    from datamodules.pairs import PairFolderDataset
    from datamodules.synthesis import PHOTO_DEGRADATIONS

    pairs, _ = tiny_bench(tmp_path)
    write_image(pairs / "NIR" / "grey" / "a.png", np.zeros((40, 40), np.uint8))
    write_image(pairs / "NIR" / "grey" / "b.png", np.zeros((40, 40), np.uint8))  # grey visible: left out
    photos = held_out_photographs(pairs)
    assert [name for name, _ in photos] == ["ivif-p0", "ivif-p1"]
    folder = write_restoration_pairs(photos, tmp_path / "restore")
    dataset = PairFolderDataset(folder / "RESTORE")
    assert len(dataset) == len(photos) * len(PHOTO_DEGRADATIONS)
    for item, path in zip(dataset, dataset.pairs):
        clean = read_image(path["paths"]["gt"])
        np.testing.assert_array_equal(clean, read_image(pairs / "IVIF" / path["key"].split("-")[1] / "b.png"))
        assert item["degradation"].count_nonzero() == 1 and int(item["degradation"].max()) == RESTORE_SEVERITY
        assert not np.array_equal(read_image(path["paths"]["a"]), clean)
