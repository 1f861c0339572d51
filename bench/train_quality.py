"""Quality at a fixed training budget: train each config for the same CPU time, then score it on fusion-bench.

    python bench/train_quality.py                              # 20 CPU-min per config, every family with a CPU config
    python bench/train_quality.py --minutes 10 --jobs 2        # two fits at a time (one thread each) on 2 cores
    python bench/train_quality.py --minutes 10 --jobs 2 --reuse   # again: keeps runs that spent the budget
    python bench/train_quality.py --minutes 8 --clock wall --configs gifnet gifnet-fast
    python bench/train_quality.py --data demo                  # the built-in demo set instead of ../shared/datasets
    python bench/train_quality.py --configs tiny=gifnet:tests/configs/gifnet-tiny.yaml --minutes 0.3 --pairs DIR
    python bench/train_quality.py --minutes 8 --trainer.log_every_n_steps 5   # unknown options go to every fit

Per named config (``--configs``; by default ``gifnet`` and ``gifnet-fast``, plus ``lure-real``,
``upfusion`` and ``cmifusion`` when their configs exist):

1. Training data (cached): ``--data real`` (the default when the real-data configs exist) builds the
   training shards from ``../shared/datasets`` once with the documented command and trains on the
   ``data.sources`` of ``gifnet-real.yaml`` (``lure-real.yaml`` for LURE); ``--data demo`` trains on
   the built-in demo set. The model, batch and crop come from the family's CPU config, so every
   family sees the same data at the same budget.
2. ``python -m recipes.<family> fit`` in a fresh run directory for a budget of ``--minutes``: by
   default CPU minutes of the fit's process and data workers (``recipes.compute_budget.CPUTimeBudget``),
   each fit at ``--train-threads`` threads, so a busy machine slows the bench but does not change what
   each config gets, and ``--jobs`` fits can run side by side; ``--clock wall`` counts wall-clock time
   instead (``trainer.max_time``). A step limit far beyond reach keeps the learning rate at its peak
   after warm-up, the same for every config; in-training validation is off (step 3 replaces it). LURE spends the first
   ``--lure-stage1`` of its budget in stage 1 (unified space) and the rest in stage 2 (fusion rules),
   resuming the same run. Steps reached and the training loss come from the run's CSV log.
3. ``predict`` on every pair of ``--pairs`` (fusion-bench) at full resolution, then
   ``recipes.evaluate`` scores all configs in one run next to the classical baselines (avg, max,
   lap) and the official GIFNet's published outputs, and draws a contact sheet per task.
4. LURE only: its restoration table (PSNR/SSIM against the clean image, per degradation, LURE
   against the degraded input) on held-out real photographs degraded at severity 2: the visible
   images of fusion-bench's colour IVIF and NIR pairs, which no training set contains.

Prints the per-task table (12 metrics), the steps reached, the goal check (per task, SF, AG, Qabf
and VIF above the pixel average's with Nabf at most 0.05) and where the files are: ``<out>/loss.png``,
``<out>/evaluation/summary.md``, ``<out>/evaluation/sheets/<TASK>.png``. fusion-bench is for
evaluation only: nothing here trains or tunes on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from quality import FUSION_BENCH, PROJECT_ROOT, predict_pairs

from datamodules import synthesis
from datamodules.demo import ensure_demo
from datamodules.images import encode_png, read_image, resize_to
from datamodules.schema import SampleMeta
from datamodules.synthesis import PHOTO_DEGRADATIONS
from recipes import evaluate

CONFIG_DIR = PROJECT_ROOT / "recipes" / "configs"
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
GOAL_TASKS = ("ivif", "mfif", "meif", "med")
GOAL_ABOVE_AVERAGE = ("SF", "AG", "Qabf", "VIF")
GOAL_NABF_MAX = 0.05
RESTORE_SEVERITY = 2
SCHEDULE_HORIZON = 1_000_000
"""``trainer.max_steps`` of a budgeted fit: never reached, so the cosine schedule stays at its peak after warm-up."""


@dataclass(frozen=True)
class BenchConfig:
    """A config the bench trains: its recipe, the family's CPU config and the real-data config it takes sources from."""

    name: str
    recipe: str
    config: Path
    data_config: Path | None = None

    @property
    def available(self) -> bool:
        return self.config.is_file() and (PROJECT_ROOT / "recipes" / f"{self.recipe}.py").is_file()


KNOWN_CONFIGS = {
    config.name: config
    for config in (
        BenchConfig("gifnet", "gifnet", CONFIG_DIR / "gifnet.yaml", CONFIG_DIR / "gifnet-real.yaml"),
        BenchConfig("gifnet-fast", "gifnet", CONFIG_DIR / "gifnet-fast.yaml", CONFIG_DIR / "gifnet-real.yaml"),
        BenchConfig("lure-real", "lure", CONFIG_DIR / "lure-cpu.yaml", CONFIG_DIR / "lure-real.yaml"),
        BenchConfig("upfusion", "upfusion", CONFIG_DIR / "upfusion-cpu.yaml", CONFIG_DIR / "gifnet-real.yaml"),
        BenchConfig("cmifusion", "cmifusion", CONFIG_DIR / "cmifusion-cpu.yaml", CONFIG_DIR / "gifnet-real.yaml"),
    )
}
DEFAULT_CONFIGS = ("gifnet", "gifnet-fast")
"""Always run; the other known configs join when their config files exist."""

REAL_SHARDS_COMMAND = [
    sys.executable,
    "-m",
    "datamodules.shards",
    "build-all",
    str(DATASETS),
    "data/real",
    "--holdout",
    "10",
]
"""Builds every training shard set from ../shared/datasets where the real-data configs read them."""


# ------------------------------------------------------------------------------------ arguments
def parse_config(entry: str) -> BenchConfig:
    """A known config name, or ``NAME=RECIPE:CONFIG.yaml`` (trained on the config's own data)."""
    if entry in KNOWN_CONFIGS:
        config = KNOWN_CONFIGS[entry]
        if not config.available:
            raise ValueError(f"--configs {entry}: {config.config} or recipes/{config.recipe}.py does not exist yet")
        return config
    name, sep, rest = entry.partition("=")
    recipe, colon, path = rest.partition(":")
    if not (sep and colon and name and recipe and path):
        raise ValueError(f"--configs {entry!r}: expected one of {', '.join(KNOWN_CONFIGS)} or NAME=RECIPE:CONFIG.yaml")
    config = BenchConfig(name, recipe, Path(path))
    if not config.available:
        raise ValueError(f"--configs {entry!r}: {path} or recipes/{recipe}.py not found")
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/train_quality.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = list(DEFAULT_CONFIGS) + [n for n, c in KNOWN_CONFIGS.items() if n not in DEFAULT_CONFIGS and c.available]
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per config, in --clock minutes")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: CPU time of each fit's process and data workers (fair on a shared machine); wall: wall-clock time",
    )
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads of each fit (OMP_NUM_THREADS)")
    parser.add_argument("--jobs", type=int, default=1, help="fits run at the same time (e.g. cores / train threads)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep a config's earlier run in --out when its last.ckpt spent this CPU budget (--clock cpu): "
        "only the others train",
    )
    parser.add_argument(
        "--configs", nargs="+", default=defaults, help=f"configs to train (default: {' '.join(defaults)})"
    )
    real_ready = all(c.data_config.is_file() for c in KNOWN_CONFIGS.values() if c.available and c.data_config)
    parser.add_argument(
        "--data",
        choices=("real", "demo"),
        default="real" if real_ready else "demo",
        help="training data: shards built from ../shared/datasets, or the built-in demo set",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "runs" / "train-quality", help="output folder")
    parser.add_argument("--pairs", type=Path, default=FUSION_BENCH / "pairs", help="evaluation pairs (fusion-bench)")
    parser.add_argument(
        "--published",
        type=Path,
        default=FUSION_BENCH / "published",
        help="published GIFNet outputs (fusion-bench layout); a missing folder is left out",
    )
    parser.add_argument("--sheet-pairs", type=int, default=3, help="pairs per task on each contact sheet")
    parser.add_argument("--lure-stage1", type=float, default=0.75, help="share of LURE's budget spent in stage 1")
    parser.add_argument(
        "--predict-precision",
        default="32-true",
        help="trainer.precision of predict (bf16-mixed fuses about 2x faster on CPUs with bf16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads for predict and scoring")
    return parser


# --------------------------------------------------------------------------------- training data
def real_sources_overlay(config: BenchConfig, folder: Path) -> Path:
    """A YAML holding only the real-data config's ``data.sources``, layered over the family's CPU config."""
    assert config.data_config is not None
    real = yaml.safe_load(config.data_config.read_text())
    sources = (real.get("data") or {}).get("sources")
    if not sources:
        raise SystemExit(f"{config.data_config} has no data.sources to train on")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config.data_config.stem}-sources.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": sources}}))
    return path


def ensure_real_shards(configs: list[BenchConfig]) -> None:
    """Build the shards the real-data configs read, unless every one of them is there already (the cache)."""
    from datamodules.shards.stream import expand_urls

    missing = []
    for config in configs:
        if config.data_config is None:
            continue
        for source in yaml.safe_load(config.data_config.read_text())["data"]["sources"]:
            urls = source["urls"]  # relative to the project, where the fits run
            spec = [str(PROJECT_ROOT / url) for url in urls] if isinstance(urls, list) else str(PROJECT_ROOT / urls)
            if not all(Path(url).is_file() for url in expand_urls(spec)):
                missing.append(str(urls))
    if missing:
        print(f"building the real training shards ({', '.join(sorted(set(missing)))} missing)", file=sys.stderr)
        subprocess.run(REAL_SHARDS_COMMAND, cwd=PROJECT_ROOT, check=True)


# -------------------------------------------------------------------------------------- training
def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a number of seconds (at least one)."""
    seconds = max(1, round(seconds))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def budget_options(clock: str, seconds: float) -> list[str]:
    """The fit options that end training after ``seconds`` of CPU time (``clock`` cpu) or of wall-clock time."""
    if clock == "cpu":
        return [
            "--trainer.callbacks+=recipes.compute_budget.CPUTimeBudget",
            f"--trainer.callbacks.minutes={seconds / 60}",
        ]
    return ["--trainer.max_time", max_time(seconds)]


def fit_command(
    config: BenchConfig, overlay: Path | None, runs_dir: Path, budget: list[str], extra: list[str]
) -> list[str]:
    command = [sys.executable, "-m", f"recipes.{config.recipe}", "fit", "--config", str(config.config)]
    if overlay is not None:
        command += ["--config", str(overlay)]
    return command + [
        "--run_name",
        config.name,
        "--runs_dir",
        str(runs_dir),
        *budget,
        "--trainer.max_steps",
        str(SCHEDULE_HORIZON),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(runs_dir / config.name),
        "--trainer.logger.name",
        "csv",
        *extra,
    ]


@dataclass(frozen=True)
class Budget:
    """What every config gets: ``minutes`` of ``clock`` time, each fit at ``threads`` torch threads."""

    minutes: float
    clock: str
    threads: int
    lure_stage1: float


def run_fit(command: list[str], threads: int, log: Path) -> None:
    """One fit, its output appended to ``log`` (fits may run side by side); a failure names the log."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("a") as handle:
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"fit failed (exit {done.returncode}); its output is in {log}:\n{tail}")


def spent_the_budget(checkpoint: Path, budget: Budget) -> bool:
    """Whether an earlier run's checkpoint ended on this CPU budget (what ``--reuse`` keeps)."""
    if budget.clock != "cpu" or not checkpoint.is_file():
        return False
    _, spent = steps_and_cpu_seconds(checkpoint)
    return spent is not None and spent >= 60.0 * budget.minutes


def train(
    config: BenchConfig,
    overlay: Path | None,
    runs_dir: Path,
    budget: Budget,
    extra: list[str],
    log: Path,
    reuse: bool = False,
) -> tuple[Path, float | None]:
    """Train in a fresh run directory for the budget; returns the last checkpoint and the wall seconds.

    With ``reuse``, a run that already spent the budget is kept (its wall seconds are unknown: None).
    """
    checkpoint = runs_dir / config.name / "checkpoints" / "last.ckpt"
    if reuse and spent_the_budget(checkpoint, budget):
        print(f"{config.name}: reusing {checkpoint}", flush=True)
        return checkpoint, None
    shutil.rmtree(runs_dir / config.name, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    seconds = 60.0 * budget.minutes
    started = time.perf_counter()
    if config.recipe == "lure":  # stage 1 for its share of the budget, then stage 2 resumes the same run
        stage1 = budget_options(budget.clock, budget.lure_stage1 * seconds)
        run_fit(fit_command(config, overlay, runs_dir, stage1, extra) + ["--model.stage", "1"], budget.threads, log)
        # the budget's time spent is restored from the checkpoint: stage 2 gets what stage 1 left
        stage2 = fit_command(config, overlay, runs_dir, budget_options(budget.clock, seconds), extra)
        run_fit(stage2 + ["--model.stage", "2", "--ckpt_path", "last"], budget.threads, log)
    else:
        command = fit_command(config, overlay, runs_dir, budget_options(budget.clock, seconds), extra)
        run_fit(command, budget.threads, log)
    if not checkpoint.is_file():
        raise SystemExit(f"{config.name}: training wrote no {checkpoint} (see {log})")
    return checkpoint, time.perf_counter() - started


def loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, train/loss) from the run's CSV logs, in step order (a resumed run adds a second version)."""
    points: dict[int, float] = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    points[int(row["step"])] = float(row["train/loss"])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_losses(
    curves: dict[str, tuple[list[int], list[float]]], steps_done: dict[str, int], budget: str, path: Path
) -> Path:
    """One panel per config (losses of different families are not on one scale): training loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.0 * len(curves), 3.2), squeeze=False)
    for axis, (name, (steps, losses)) in zip(axes[0], curves.items()):
        axis.plot(steps, losses, marker="." if len(steps) < 30 else None)
        axis.set_title(f"{name}: {steps_done[name]} steps in {budget}")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def steps_and_cpu_seconds(checkpoint: Path) -> tuple[int, float | None]:
    """The steps a run reached and the CPU seconds its budget counted (None: a wall-clock budget)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    spent = saved.get("callbacks", {}).get("CPUTimeBudget", {}).get("spent_seconds")
    return int(saved["global_step"]), spent


# ------------------------------------------------------------------------------------ evaluation
def goal_check(summary: dict[tuple[str, str, str], evaluate.Summary], methods: list[str]) -> list[str]:
    """Per method and goal task: which of SF, AG, Qabf, VIF beat the pixel average's, and Nabf <= 0.05."""
    lines = [f"Goal: per task, {', '.join(GOAL_ABOVE_AVERAGE)} above the pixel average's and Nabf <= {GOAL_NABF_MAX}"]
    for method in methods:
        for task in GOAL_TASKS:
            if (task, "avg", "SF") not in summary or (task, method, "SF") not in summary:
                continue
            short = [
                m for m in GOAL_ABOVE_AVERAGE if not summary[(task, method, m)].mean > summary[(task, "avg", m)].mean
            ]
            nabf = summary[(task, method, "Nabf")].mean
            if nabf > GOAL_NABF_MAX or math.isnan(nabf):
                short.append(f"Nabf {nabf:.3f}")
            verdict = "met" if not short else "short on " + ", ".join(short)
            lines.append(f"- {method} {task.upper()}: {verdict}")
    return lines


def score(fused: dict[str, Path], options: argparse.Namespace, out: Path) -> tuple[dict, list[Path]]:
    """Score the fused folders with the baselines (and published GIFNet), write reports and contact sheets."""
    arguments = ["--pairs", str(options.pairs), "--baselines", "--out", str(out), "--sheet", str(options.sheet_pairs)]
    for name, folder in fused.items():
        arguments += ["--fused", f"{name}={folder}"]
    if options.published.is_dir():
        arguments += ["--fused", f"GIFNet={options.published}"]
    args = evaluate.build_parser().parse_args(arguments)
    result = evaluate.evaluate(args)
    summary = evaluate.write_reports(result, out)
    sheets = evaluate.write_sheets(args, out / "sheets")
    return summary, sheets


# ------------------------------------------------------------------------- LURE on real photographs
def held_out_photographs(pairs: Path) -> list[tuple[str, np.ndarray]]:
    """Colour visible images of the evaluation IVIF and NIR pairs, long side at most 512: never in a training set."""
    photos = []
    for task in ("IVIF", "NIR"):
        for pair in sorted((pairs / task).glob("*/b.*")):
            image = read_image(pair)
            if image.ndim != 3:  # grey visible images (TNO) say little about colour restoration
                continue
            height, width = image.shape[:2]
            scale = min(1.0, 512 / max(height, width))
            if scale < 1.0:
                image = resize_to(image, round(height * scale), round(width * scale))
            photos.append((f"{task.lower()}-{pair.parent.name}", image))
    return photos


def write_restoration_pairs(photos: list[tuple[str, np.ndarray]], folder: Path, seed: int = 0) -> Path:
    """Each photograph degraded by each kind at severity 2 (deterministic per photo and kind), as pair folders."""
    for name, image in photos:
        clean = synthesis.to_unit_float(image)
        for kind in PHOTO_DEGRADATIONS:
            rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{kind}".encode())])
            degraded = synthesis.degrade_photo(clean, kind, RESTORE_SEVERITY, rng)
            pair = folder / "RESTORE" / f"{name}-{kind}{RESTORE_SEVERITY}"
            pair.mkdir(parents=True, exist_ok=True)
            (pair / "a.png").write_bytes(encode_png(synthesis.to_uint8(degraded)))
            (pair / "gt.png").write_bytes(encode_png(synthesis.to_uint8(clean)))
            meta = SampleMeta(
                task="restore",
                degradations=[f"{kind}:{RESTORE_SEVERITY}"],
                source=f"held-out/{name}",
                prompt=f"remove the {kind} from the image",
                synthetic=True,
            )
            (pair / "meta.json").write_text(json.dumps(meta.to_json()) + "\n")
    return folder


def lure_restoration_table(checkpoint: Path, pairs: Path, folder: Path) -> str:
    from lure_quality import evaluate as evaluate_restoration
    from lure_quality import report

    from lightning_modules.lure import LUREModule

    photos = held_out_photographs(pairs)
    if not photos:
        return f"(no colour IVIF/NIR visible images under {pairs}: LURE's restoration table skipped)"
    restore_pairs = write_restoration_pairs(photos, folder)
    model = LUREModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    kinds = len(PHOTO_DEGRADATIONS)
    header = f"{len(photos)} held-out photographs x {kinds} degradations at severity {RESTORE_SEVERITY}"
    return header + "\n\n" + report(evaluate_restoration(model, restore_pairs / "RESTORE"))


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options, fit_extra = parser.parse_known_args(argv)
    try:
        configs = [parse_config(entry) for entry in options.configs]
    except ValueError as error:
        parser.error(str(error))
    if not options.pairs.is_dir():
        parser.error(
            f"--pairs {options.pairs} not found: fusion-bench lives in ../shared/fusion-bench beside the project"
        )
    if options.jobs > 1 and options.clock == "wall":
        parser.error("--jobs > 1 needs --clock cpu: side-by-side fits share the machine's wall-clock time")
    os.environ.setdefault("WANDB_MODE", "offline")
    out: Path = options.out
    runs_dir = out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    real = options.data == "real"
    if real:
        ensure_real_shards(configs)
    else:
        ensure_demo()  # built before the clock starts, not inside the first fit's budget

    # every config's training sources read once, before the first fit: all configs train on the same data
    overlays = {c.name: real_sources_overlay(c, out / "overlays") if real and c.data_config else None for c in configs}
    budget = Budget(options.minutes, options.clock, options.train_threads, options.lure_stage1)
    logs = out / "logs"
    print(f"training {len(configs)} configs, {options.jobs} at a time; their output: {logs}/<config>.log", flush=True)
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = {
            c.name: pool.submit(
                train, c, overlays[c.name], runs_dir, budget, fit_extra, logs / f"{c.name}.log", options.reuse
            )
            for c in configs
        }
        trained = {c.name: (c, *futures[c.name].result()) for c in configs}

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    fused: dict[str, Path] = {}
    predict_seconds: dict[str, float] = {}
    for name, (config, checkpoint, _) in trained.items():
        fused[name] = out / "fused" / name
        started = time.perf_counter()
        predict_pairs(
            config.recipe,
            checkpoint,
            config.config,
            options.pairs,
            fused[name],
            out / "predict-runs",
            ["--trainer.precision", options.predict_precision],
        )
        predict_seconds[name] = time.perf_counter() - started
    summary, sheets = score(fused, options, out / "evaluation")

    curves = {name: loss_curve(runs_dir / name) for name in trained}
    records = {name: steps_and_cpu_seconds(checkpoint) for name, (_, checkpoint, _) in trained.items()}
    steps_done = {name: steps for name, (steps, _) in records.items()}
    plot = plot_losses(curves, steps_done, f"{options.minutes:g} {options.clock} min", out / "loss.png")
    print((out / "evaluation" / "summary.md").read_text())
    print(
        f"## Training budget: {options.minutes:g} {options.clock}-clock min per config "
        f"({options.train_threads} thread(s) per fit, {options.jobs} fit(s) at a time), {options.data} data\n"
    )
    columns = ["config", "recipe", "steps reached", "training CPU s", "training wall s", "final loss (last 5 logged)"]
    print("| " + " | ".join([*columns, "predict wall s"]) + " |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (config, _, seconds) in trained.items():
        losses = curves[name][1]
        final = f"{np.mean(losses[-5:]):.4f}" if losses else "—"
        cpu = records[name][1]
        wall = "—" if seconds is None else f"{seconds:.0f}"
        row = [name, config.recipe, steps_done[name], "—" if cpu is None else f"{cpu:.0f}", wall, final]
        row.append(f"{predict_seconds[name]:.0f}")
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()
    print("\n".join(goal_check(summary, list(trained))))
    for name, (config, checkpoint, _) in trained.items():
        if config.recipe == "lure":
            print(f"\n## {name}: restoration on held-out real photographs\n")
            print(lure_restoration_table(checkpoint, options.pairs, out / "restoration-pairs"))
    print(f"\nloss curves: {plot}\ncontact sheets: {', '.join(str(s) for s in sheets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
