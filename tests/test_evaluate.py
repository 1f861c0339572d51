"""python -m recipes.evaluate on tiny pair folders: CSV, tables, plots, baselines and bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from test_metrics_published import one_thread  # noqa: F401  (autouse: one torch thread)

from lightning_modules.metrics import NAN_REASONS, SOURCE_METRICS, compute_metrics
from recipes.evaluate import main

from data_helpers import save_png

SIZE = (44, 48)  # VIF needs 41 px


def image(seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = SIZE if channels == 1 else (*SIZE, channels)
    return rng.integers(0, 256, shape).astype(np.uint8)


@pytest.fixture()
def bench(tmp_path):
    """fusion-bench layout: IVIF/p1, IVIF/p2 (grey), MFIF/q1 (RGB); method M1 complete, M2 lacks IVIF/p2."""
    pairs = tmp_path / "pairs"
    for index, (task, pair, channels) in enumerate((("IVIF", "p1", 1), ("IVIF", "p2", 1), ("MFIF", "q1", 3))):
        save_png(pairs / task / pair / "a.png", image(10 * index, channels))
        save_png(pairs / task / pair / "b.png", image(10 * index + 1, channels))
        save_png(tmp_path / "M1" / task / f"{pair}.png", image(10 * index + 2))
        if pair != "p2":
            save_png(tmp_path / "M2" / task / f"{pair}.png", image(10 * index + 3))
    return tmp_path


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_evaluates_methods_and_baselines_into_csv_tables_and_plots(bench, capsys):
    out = bench / "out"
    assert (
        main(
            [
                "--pairs",
                str(bench / "pairs"),
                "--fused",
                f"M1={bench / 'M1'}",
                f"M2={bench / 'M2'}",
                "--baselines",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = read_rows(out / "metrics.csv")
    # 3 pairs x (M1 + 3 baselines) + 2 pairs of M2, 12 metrics each
    assert len(rows) == (3 * 4 + 2) * len(SOURCE_METRICS)
    assert {row["method"] for row in rows} == {"M1", "M2", "avg", "max", "lap"}
    one = next(row for row in rows if row["pair"] == "IVIF/p1" and row["method"] == "M1" and row["metric"] == "VIF")
    fused, a, b = (torch.from_numpy(image(seed))[None, None] for seed in (2, 0, 1))
    assert float(one["value"]) == pytest.approx(compute_metrics(fused, a, b, ["VIF"])["VIF"].item(), rel=1e-12)
    summary = (out / "summary.md").read_text()
    assert "## IVIF" in summary and "## MFIF" in summary
    assert "| method | n | EN ↑ |" in summary and "Nabf ↓" in summary
    assert summary.count("**") >= 2 * 2 * len(SOURCE_METRICS)  # one best per metric and task
    assert "- M2: 1 missing: IVIF/p2" in summary
    assert "| M2 | 1 |" in summary.split("## MFIF")[0]
    assert {path.stem for path in (out / "plots").glob("*.png")} == set(SOURCE_METRICS)
    stats = read_rows(out / "summary.csv")
    m1_en = [
        float(r["value"]) for r in rows if r["method"] == "M1" and r["metric"] == "EN" and r["pair"].startswith("IVIF")
    ]
    entry = next(r for r in stats if r["task"] == "ivif" and r["method"] == "M1" and r["metric"] == "EN")
    assert float(entry["mean"]) == pytest.approx(np.mean(m1_en)) and float(entry["std"]) == pytest.approx(np.std(m1_en))
    assert "1 fused image(s) missing" in capsys.readouterr().err


def test_published_layout_stem_matched_pairs_and_chosen_metrics(tmp_path):
    for stem, seed in (("x1", 0), ("x2", 5)):
        save_png(tmp_path / "src" / "ir" / f"{stem}.png", image(seed))
        save_png(tmp_path / "src" / "vi" / f"{stem}.png", image(seed + 1, 3))
        save_png(tmp_path / "fused" / f"{stem}.png", image(seed + 2))
    out = tmp_path / "out"
    args = ["--pairs", str(tmp_path / "src"), "--a-dir", "ir", "--b-dir", "vi", "--task", "ivif"]
    assert main(args + ["--fused", f"mine={tmp_path / 'fused'}", "--metrics", "EN", "MI", "--out", str(out)]) == 0
    rows = read_rows(out / "metrics.csv")
    assert sorted((row["pair"], row["metric"]) for row in rows) == [
        ("x1", "EN"),
        ("x1", "MI"),
        ("x2", "EN"),
        ("x2", "MI"),
    ]
    # fusion-bench's published layout: DIR/<TASK>/<METHOD>/<pair>.png
    save_png(tmp_path / "published" / "IVIF" / "GIFNet" / "p.png", image(9))
    for role, seed in (("a", 7), ("b", 8)):
        save_png(tmp_path / "bench" / "IVIF" / "p" / f"{role}.png", image(seed))
    assert (
        main(
            [
                "--pairs",
                str(tmp_path / "bench"),
                "--fused",
                f"GIFNet={tmp_path / 'published'}",
                "--metrics",
                "SD",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [row["method"] for row in read_rows(out / "metrics.csv")] == ["GIFNet"]


def test_restoration_pairs_get_metrics_of_the_fused_image_and_the_target(tmp_path):
    pair = tmp_path / "pairs" / "RESTORE" / "r1"
    save_png(pair / "a.png", image(0))
    save_png(pair / "gt.png", image(1))
    save_png(tmp_path / "M" / "RESTORE" / "r1.png", image(1))  # a perfect restoration
    out = tmp_path / "out"
    assert main(["--pairs", str(tmp_path / "pairs"), "--fused", f"M={tmp_path / 'M'}", "--out", str(out)]) == 0
    rows = {row["metric"]: row for row in read_rows(out / "metrics.csv")}
    assert set(rows) == {"EN", "SD", "SF", "AG", "PSNR_gt", "SSIM_gt"}
    assert math.isnan(float(rows["PSNR_gt"]["value"])) and rows["PSNR_gt"]["note"] == NAN_REASONS["PSNR_gt"]
    assert float(rows["SSIM_gt"]["value"]) == pytest.approx(1.0)
    assert "NaN" in (out / "summary.md").read_text()


def test_bad_input_is_named(bench, capsys):
    save_png(bench / "M1" / "IVIF" / "p2.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["--pairs", str(bench / "pairs"), "--fused", f"M1={bench / 'M1'}", "--out", str(bench / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert (
        str(bench / "M1" / "IVIF" / "p2.png") in message and str(bench / "pairs" / "IVIF" / "p2" / "a.png") in message
    )
    with pytest.raises(SystemExit):
        main(["--pairs", str(bench / "pairs"), "--fused", f"M2={bench / 'M2'}", "--metrics", "EN", "VIFF"])
    assert "known metrics: EN, SD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pairs", str(bench / "pairs"), "--fused", "M2"])
    assert "expected NAME=DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pairs", str(bench / "pairs"), "--fused", f"avg={bench / 'M2'}", "--baselines"])
    assert "clash with the baselines" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--fused NAME=DIR" in text and "--baselines" in text and "known: EN SD SF" in text
