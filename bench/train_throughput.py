"""Training throughput per model family, where training happens: CPU or GPU, fp32 or bf16, eager or compiled.

    python bench/train_throughput.py --configs gifnet gifnet-fast --precision bf16-mixed --public-gifnet ../GIFNet
    python bench/train_throughput.py --device cuda --precision bf16-mixed --public-gifnet ../GIFNet   # a GPU node
    python bench/train_throughput.py --configs gifnet --crops 128 --compile --profile 15

For each config in recipes/configs (its ``model`` section builds the family's module, CLIP towers with random
weights as in bench/family_speed.py; its ``data`` section builds the data plane) and each crop size:

- train samples/s: the whole training step (forward, every loss, backward, gradient clipping when the config's
  trainer clips, AdamW step) on batches the config's data plane produced at that crop (its batch size and task
  mix), held on the device so that the figure is compute only. Steady state: after ``--warmup`` steps, the median
  of ``--windows`` timed windows of ``--steps`` steps. ``--compile`` runs the module's ``compile`` switch; the
  first step's extra time over a steady one is reported as compile time.
- peak memory: on CUDA the allocator's peak over the steps; on CPU the peak resident memory (VmHWM) of the
  process that measured (Python, torch and the model included). Every cell runs in a fresh process.
- syncs/step: operations in one step that would make the host wait for a GPU (value reads such as ``.item()``
  and ``if tensor``, outputs sized by the data such as ``nonzero``, ``unique`` and boolean-mask indexing, copies
  of device tensors to the host and blocking copies of Python data to the device), counted on any device by
  bench/host_syncs.py; "+ N opt" counts those inside the optimizer step. On CUDA, ``torch.cuda``'s sync debug
  mode also counts the synchronisations CUDA reports (``cuda_syncs_per_step`` in the JSON).
- CPU s/step: process CPU time per step, all threads summed: on a shared machine, wall time includes waiting
  for the cores; CPU time hardly depends on the other load (the public rows' CPU-time ratio likewise).
- data samples/s: the data plane alone (the config's FusionDataModule loader, same crop and mix) with
  ``--workers`` DataLoader workers (a GPU node gives a GPU about 8 CPU cores); "bound" names what limits the
  step when both run side by side on their own resources (on a small CPU they share the cores).

The public GIFNet (``--public-gifnet PATH``: a checkout of the authors' repository, imported from that path
only; without it those rows are skipped with a message): its train.py iteration, step for step (an
infrared-visible step, then a multi-focus step, each with its own optimizer step; DenseNet-121 features with
random weights, which the timing does not depend on), on the same 4 samples as ours (2 infrared-visible +
2 multi-focus, bench/gifnet_speed.py's batch) at each crop, same device and precision (autocast around it). Ours
runs one step on those 4 samples. Ratios print ours / public samples per second.

Prints the tables and writes every figure as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from data_throughput import measure as measure_loader  # noqa: E402
from family_speed import build_module  # noqa: E402
from gifnet_speed import autocast, median_seconds, resident_peak_gb, training_batch  # noqa: E402
from host_syncs import HostSyncCounter  # noqa: E402
from lightning_fabric.utilities.apply_func import move_data_to_device  # noqa: E402

import lightning_modules  # noqa: E402,F401  (torchvision compat first)
from datamodules.mixture import FusionDataModule  # noqa: E402
from recipes.cli import CONFIG_DIR  # noqa: E402

DEFAULT_CONFIGS = (
    "gifnet",
    "gifnet-fast",
    "lure-cpu",
    "lure",
    "upfusion-cpu",
    "upfusion",
    "cmifusion-cpu",
    "cmifusion",
)
PEER_CONFIGS = ("gifnet", "gifnet-fast")
DISTINCT_BATCHES = 4


# --------------------------------------------------------------------------------------------- set-up


def config_section(config: str, section: str) -> dict[str, Any]:
    """One section of ``recipes/configs/<config>.yaml`` (flat or ``init_args`` form)."""
    path = CONFIG_DIR / f"{config}.yaml"
    if not path.is_file():
        raise SystemExit(f"no config {path}; choose from {sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))}")
    value = (yaml.safe_load(path.read_text()) or {}).get(section, {}) or {}
    return dict(value.get("init_args", value))


def family_of(config: str) -> str:
    """``gifnet-fast`` -> ``gifnet``: configs are named ``<family>[-variant]``."""
    return config.split("-")[0]


def data_module(config: str, crop: int, workers: int, batches: int) -> FusionDataModule:
    module = FusionDataModule(
        **{**config_section(config, "data"), "crop_size": crop, "num_workers": workers, "batches_per_epoch": batches}
    )
    module.prepare_data()
    module.setup("fit")
    return module


def data_plane_batches(config: str, crop: int, count: int) -> list[dict[str, Any]]:
    """``count`` training batches of the config's data plane at ``crop`` (no workers: only their content matters)."""
    iterator = iter(data_module(config, crop, workers=0, batches=count).train_dataloader())
    return [next(iterator) for _ in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ measuring


def steady_state(step: Callable[[], Any], device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """First step (compilation included), warm-up, then the median of timed windows of steps."""
    started = time.perf_counter()
    step()
    synchronize(device)
    first_step_s = time.perf_counter() - started
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def window() -> None:
        for _ in range(args.steps):
            step()
        synchronize(device)

    median, runs = median_seconds(window, args.windows)
    step_s = median / args.steps
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else resident_peak_gb()
    return {
        "step_s": step_s,
        "window_step_s": [wall / args.steps for wall, _ in runs],
        "window_cpu_s": [cpu / args.steps for _, cpu in runs],
        "first_step_s": first_step_s,
        "compile_s": max(first_step_s - step_s, 0.0) if args.compile else None,
        "peak_gb": peak_gb,
    }


def profiled(step: Callable[[], Any], device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        step()
        synchronize(device)
    return profile


def host_syncs(step: Callable[[], Any], device_tensors: list[torch.Tensor]) -> dict[str, int]:
    """Synchronising operations of one step by reason, those of the optimizer step as ``optimizer: <reason>``."""
    counter = HostSyncCounter(device_tensors)
    with counter:
        step()
    return dict(counter.counts)


def cuda_syncs(step: Callable[[], Any], device: torch.device) -> int | None:
    """Synchronisations that CUDA itself reports in one step (sync debug mode warnings); None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
            synchronize(device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def top_ops(profile: torch.profiler.profile, device: torch.device, rows: int) -> str:
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profile.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=48)


def measure_step(
    step: Callable[[], Any],
    device_tensors: list[torch.Tensor],
    device: torch.device,
    args: argparse.Namespace,
    samples: int,
) -> dict:
    """Timing of the steady state, then the synchronisations of one more step (and its profile with --profile)."""
    figures = steady_state(step, device, args)
    figures["sync_ops"] = host_syncs(step, device_tensors)
    optimizer_syncs = [count for name, count in figures["sync_ops"].items() if name.startswith("optimizer: ")]
    figures["optimizer_syncs_per_step"] = sum(optimizer_syncs)
    figures["syncs_per_step"] = sum(figures["sync_ops"].values()) - figures["optimizer_syncs_per_step"]
    figures["cuda_syncs_per_step"] = cuda_syncs(step, device)
    figures["samples"] = samples
    figures["samples_per_s"] = samples / figures["step_s"]
    if args.profile:
        figures["profile"] = top_ops(profiled(step, device), device, args.profile)
    return figures


# ------------------------------------------------------------------------------------------------ ours


def our_step(config: str, batches: list[dict[str, Any]], device: torch.device, args: argparse.Namespace) -> tuple:
    """The family's training step on ``batches`` in turn, and its trainable parameter count."""
    module = build_module(family_of(config), config).train().to(device)
    module.compile_steps = args.compile  # the --model.compile switch
    module.setup("fit")  # families with text towers load them and cache prompts here
    optimizer = module.build_optimizer()
    clip = config_section(config, "trainer").get("gradient_clip_val")
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    losses = module.compiled("training_losses")
    if args.compile and args.compile_backend != "inductor":  # a quicker backend only checks the compiled path
        losses = torch.compile(module.training_losses, backend=args.compile_backend)
    # as Lightning does: the host's copy of the metadata first (module.on_before_batch_transfer), then the move
    batches = [move_data_to_device(module.on_before_batch_transfer(batch, 0), device) for batch in batches]
    position = iter(range(sys.maxsize))

    def step() -> None:
        batch = batches[next(position) % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.precision, device.type):
            loss = losses(batch)["loss"]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(trainable, clip, foreach=True)
        optimizer.step()

    inputs = [*module.parameters(), *module.buffers(), *(value for batch in batches for value in tensors_of(batch))]
    return step, sum(parameter.numel() for parameter in trainable), inputs


def tensors_of(batch: dict[str, Any]) -> list[torch.Tensor]:
    return [value for value in batch.values() if isinstance(value, torch.Tensor)]


def ours_cell(config: str, crop: int, peer: bool, device: torch.device, args: argparse.Namespace) -> dict:
    batches = [training_batch(crop)] if peer else data_plane_batches(config, crop, DISTINCT_BATCHES)
    step, parameters, inputs = our_step(config, batches, device, args)
    figures = measure_step(step, inputs, device, args, samples=batches[0]["a"].shape[0])
    return {"config": config, "crop": crop, "peer": peer, "parameters": parameters, **figures}


# ---------------------------------------------------------------------------------------------- public


@contextlib.contextmanager
def public_imports(path: Path) -> Iterator[None]:
    """Import the public checkout's top-level modules (``args``, ``utils``, ``GIFNet_model``...) from ``path``.

    Its utils.py imports seaborn for a plotting helper that training never calls; a stand-in module is
    provided when seaborn is not installed.
    """
    sys.path.insert(0, str(path))
    if importlib.util.find_spec("seaborn") is None:
        sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))
    try:
        yield
    finally:
        sys.path.remove(str(path))


def public_iteration(path: Path, crop: int, device: torch.device, precision: str) -> tuple[Callable[[], None], list]:
    """One iteration of the public train.py (both steps) on bench/gifnet_speed.py's 4 samples."""
    with public_imports(path):
        from args import Args  # the public configuration class

        Args.cuda, Args.device = int(device.type == "cuda"), device.index or 0  # its utils move tensors by this
        import pytorch_msssim
        import torchvision
        from GIFNet_model import TwoBranchesFusionNet
        from utils import gradient

    torch.manual_seed(0)
    model = TwoBranchesFusionNet(Args.s, Args.n, Args.channel, Args.stride).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), Args.lr)
    densenet = torchvision.models.densenet121(weights=None).to(device).eval()
    layers = list(densenet.features.children())
    stages = [torch.nn.Sequential(*layers[start:stop]) for start, stop in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 11))]
    batch = move_data_to_device(training_batch(crop), device)
    ir, vi, near, far = batch["a"][:2], batch["b"][:2], batch["a"][2:], batch["b"][2:]

    def feature_energy(image: torch.Tensor) -> torch.Tensor:
        features, energy = image.repeat(1, 3, 1, 1), 0.0
        for stage in stages:
            features = stage(features)
            energy = energy + torch.mean(gradient(features) ** 2)
        return energy / len(stages)

    def common_loss(reconstruction: torch.Tensor) -> torch.Tensor:
        ssim = pytorch_msssim.msssim(reconstruction, vi, normalize=True)
        return 1 - ssim + torch.nn.functional.mse_loss(reconstruction, vi)

    def forward(sources: tuple[torch.Tensor, ...], helper_sources: tuple[torch.Tensor, ...], tag: int) -> tuple:
        """Reconstruction and fusion of ``sources``; tag 1 trains the IVIF branch, 2 the MFIF branch."""
        features = model.forward_encoder(*sources)
        with torch.no_grad():
            helper = model.forward_encoder(*helper_sources)
        ivif_features, mfif_features = (features, helper) if tag == 1 else (helper, features)
        fused = model.forward_mixed_decoder(features, model.forward_MultiTask_branch(ivif_features, mfif_features, tag))
        return model.forward_rec_decoder(features), fused

    def ivif_loss() -> torch.Tensor:
        reconstruction, fused = forward((ir, vi), (near, far), 1)
        with torch.no_grad():
            energy_ir, energy_vi = feature_energy(ir), feature_energy(vi)
            weight_ir = torch.exp(energy_ir) / (torch.exp(energy_ir) + torch.exp(energy_vi))
        mse = torch.nn.functional.mse_loss
        return weight_ir * mse(fused, ir) + (1 - weight_ir) * mse(fused, vi) + common_loss(reconstruction)

    def mfif_loss() -> torch.Tensor:
        reconstruction, fused = forward((near, far), (ir, vi), 2)
        return torch.nn.functional.mse_loss(fused, vi) + common_loss(reconstruction)

    def iteration() -> None:
        for loss_of_step in (ivif_loss, mfif_loss):
            optimizer.zero_grad()
            with autocast(precision, device.type):
                loss = loss_of_step()
            loss.backward()
            optimizer.step()

    inputs = [*model.parameters(), *model.buffers(), *densenet.parameters(), *densenet.buffers(), *tensors_of(batch)]
    return iteration, inputs


def public_cell(path: Path, crop: int, device: torch.device, args: argparse.Namespace) -> dict:
    iteration, inputs = public_iteration(path, crop, device, args.precision)
    return {"config": "public GIFNet", "crop": crop, **measure_step(iteration, inputs, device, args, samples=4)}


def interleaved_cell(config: str, public_path: Path, crop: int, device: torch.device, args: argparse.Namespace) -> dict:
    """Ours and the public iteration in one process, one step of each in turn: each pair sees the same load."""
    ours, _, _ = our_step(config, [training_batch(crop)], device, args)
    public, _ = public_iteration(public_path, crop, device, args.precision)
    ours(), public()  # first steps (one-time set-up) untimed
    pairs = []
    for _ in range(args.interleaved):
        pair = []
        for step in (ours, public):
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            synchronize(device)
            pair.append([time.perf_counter() - wall, time.process_time() - cpu])
        pairs.append(pair)
    return {"config": config, "crop": crop, "pairs": pairs}


# ------------------------------------------------------------------------------------------- the parent


def run_child(cell: list[str], args: argparse.Namespace) -> dict[str, Any] | None:
    """Measure one cell in a fresh process; its JSON, or None (with the error printed) when it failed."""
    forwarded = ["--device", args.device, "--precision", args.precision, "--warmup", str(args.warmup)]
    forwarded += ["--steps", str(args.steps), "--windows", str(args.windows), "--profile", str(args.profile)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.compile:
        forwarded += ["--compile", "--compile-backend", args.compile_backend]
    if args.interleaved:
        forwarded += ["--interleaved", str(args.interleaved)]
    command = [sys.executable, __file__, *forwarded, "--cell", *cell]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if result.returncode != 0:
        print(f"  {' '.join(cell)}: failed\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def data_rate(config: str, crop: int, args: argparse.Namespace) -> float:
    """Samples per second of the config's data plane alone, median of ``--windows`` runs."""
    rates = []
    for _ in range(args.windows):
        loader = data_module(config, crop, args.workers, args.data_batches + args.data_warmup).train_dataloader()
        rate, _, _ = measure_loader(loader, args.data_warmup)
        rates.append(rate)
    return statistics.median(rates)


def print_interleaved(row: dict) -> None:
    """Per pair of steps (ours, then the public iteration): seconds and the public/ours ratio, wall and CPU."""
    print(f"\n{row['config']} and the public iteration in turn, {row['crop']} px (wall s / CPU s)")
    wall, cpu = [], []
    for (ours_wall, ours_cpu), (public_wall, public_cpu) in row["pairs"]:
        wall.append(public_wall / ours_wall)
        cpu.append(public_cpu / ours_cpu)
        print(
            f"  ours {ours_wall:.2f} / {ours_cpu:.2f}  public {public_wall:.2f} / {public_cpu:.2f}  "
            f"ratio {wall[-1]:.2f}x / {cpu[-1]:.2f}x"
        )
    print(f"  median ratio {statistics.median(wall):.2f}x wall, {statistics.median(cpu):.2f}x CPU")


def print_peer_ratios(peers: list[dict]) -> None:
    """Ours against the public iteration per crop: medians over the repeats of each pair's ratio."""
    print("\nsame 4 samples (2 infrared-visible + 2 multi-focus) as the public GIFNet's iteration, same device")
    print(
        f"{'config':<14} {'crop':>4} {'samples/s':>9} {'step s':>7} {'CPU s':>6} {'public samples/s':>16} "
        f"{'ratio':>6} {'CPU-time ratio':>14} {'repeats':>7}  per-repeat ratios"
    )
    public = {(row["crop"], row["repeat"]): row for row in peers if row["config"] == "public GIFNet"}
    for config in dict.fromkeys(row["config"] for row in peers if row["config"] != "public GIFNet"):
        for crop in sorted({row["crop"] for row in peers}):
            pairs = [
                (row, public[crop, row["repeat"]])
                for row in peers
                if row["config"] == config and row["crop"] == crop and (crop, row["repeat"]) in public
            ]
            ours_rows = [row for row in peers if row["config"] == config and row["crop"] == crop]
            if not ours_rows:
                continue
            step = statistics.median(row["step_s"] for row in ours_rows)
            head = f"{config:<14} {crop:>4} {ours_rows[0]['samples'] / step:>9.2f} {step:>7.3f}"
            cpu = statistics.median(statistics.median(row["window_cpu_s"]) for row in ours_rows)
            if not pairs:
                print(f"{head} {cpu:>6.2f} {'skipped':>16}")
                continue
            ratios = [row["samples_per_s"] / reference["samples_per_s"] for row, reference in pairs]
            cpu_ratios = [
                statistics.median(reference["window_cpu_s"]) / statistics.median(row["window_cpu_s"])
                for row, reference in pairs
            ]
            public_rate = statistics.median(reference["samples_per_s"] for _, reference in pairs)
            print(
                f"{head} {cpu:>6.2f} {public_rate:>16.3f} "
                f"{statistics.median(ratios):>5.2f}x {statistics.median(cpu_ratios):>13.2f}x {len(pairs):>7}  "
                + ", ".join(f"{ratio:.2f}" for ratio in ratios)
            )
    for crop in sorted({crop for crop, _ in public}):
        steps = [row["step_s"] for (row_crop, _), row in public.items() if row_crop == crop]
        print(f"public GIFNet at {crop}: {statistics.median(steps):.3f} s per iteration (two optimizer steps)")


def print_tables(rows: list[dict], peers: list[dict], args: argparse.Namespace) -> None:
    compile_column = f"{'compile s':>9} " if args.compile else ""
    print(
        f"\n{'config':<14} {'crop':>4} {'batch':>5} {'M params':>8} {'train samples/s':>15} {'step ms':>8} "
        f"{'CPU s/step':>10} "
        f"{compile_column}{'peak GB':>7} {'syncs/step':>12} {f'data samples/s ({args.workers} w)':>22} {'bound':>7}"
    )
    for row in rows:
        compile_value = f"{row['compile_s']:>9.1f} " if args.compile else ""
        data = row.get("data_samples_per_s")
        bound = "" if data is None else ("data" if data < row["samples_per_s"] else "compute")
        data_text = "-" if data is None else f"{data:.1f}"
        syncs = f"{row['syncs_per_step']} + {row['optimizer_syncs_per_step']} opt"
        cpu = statistics.median(row["window_cpu_s"])
        print(
            f"{row['config']:<14} {row['crop']:>4} {row['samples']:>5} {row['parameters'] / 1e6:>8.3f} "
            f"{row['samples_per_s']:>15.2f} {1000 * row['step_s']:>8.0f} {cpu:>10.2f} "
            f"{compile_value}{row['peak_gb']:>7.2f} "
            f"{syncs:>12} {data_text:>22} {bound:>7}"
        )
    if peers:
        print_peer_ratios(peers)
    for row in [*rows, *peers]:
        if "profile" in row:
            peer = " (4-sample batch)" if row.get("peer") else ""
            print(f"\ntop operations: {row['config']}{peer} at {row['crop']} px, one step\n{row['profile']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        nargs="*",
        help=f"configs in recipes/configs (default: those of {DEFAULT_CONFIGS}; none: peers only)",
    )
    parser.add_argument("--crops", nargs="+", type=int, default=[128, 256], help="training crop sides")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="the modules' compile switch (torch.compile)")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend with --compile: inductor (measured) or e.g. aot_eager (a quick check)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="ours/public pairs of cells, alternated; ratios are their median"
    )
    parser.add_argument(
        "--interleaved",
        type=int,
        default=0,
        help="instead of separate cells: N steps of ours and of the public iteration in turn, in one process",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (and one window)")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, help="data plane DataLoader workers (default: 8 on cuda, 2 on cpu)")
    parser.add_argument("--data-batches", type=int, default=24, help="timed batches per data plane run")
    parser.add_argument("--data-warmup", type=int, default=4, help="untimed first batches per data plane run")
    parser.add_argument("--no-data", action="store_true", help="skip the data plane figures")
    parser.add_argument("--public-gifnet", type=Path, help="checkout of the public GIFNet repository")
    parser.add_argument("--peer-configs", nargs="*", default=list(PEER_CONFIGS), help="configs timed on its batch")
    parser.add_argument("--profile", type=int, default=0, help="print the N most expensive operations of one step")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch has no CUDA device (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cell:  # in a fresh process: one measurement, printed as JSON
        kind, name, crop = args.cell[0], args.cell[1], int(args.cell[2])
        if kind == "public":
            figures = public_cell(Path(name), crop, device, args)
        elif kind == "pair":
            figures = interleaved_cell(name, Path(args.cell[3]), crop, device, args)
        else:
            figures = ours_cell(name, crop, kind == "peer", device, args)
        print(json.dumps(figures))
        return

    args.workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 2)
    configs = (
        args.configs
        if args.configs is not None
        else [name for name in DEFAULT_CONFIGS if (CONFIG_DIR / f"{name}.yaml").is_file()]
    )
    load_before = os.getloadavg()
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"torch {torch.__version__}, {hardware}, {torch.get_num_threads()} threads, {args.precision}, "
        f"{'compiled' if args.compile else 'eager'}; median of {args.windows} windows of {args.steps} steps "
        f"after {args.warmup + 1}; load average {load_before[0]:.1f}"
    )
    rows: list[dict] = []
    peers: list[dict] = []
    interleaved: list[dict] = []

    def save() -> None:  # after every cell, so that a run cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
            report = {"settings": settings, "torch": torch.__version__, "hardware": hardware, "rows": rows}
            report |= {"peers": peers, "interleaved": interleaved, "load": [load_before, os.getloadavg()]}
            args.json.write_text(json.dumps(report, indent=1))

    for config in configs:
        for crop in args.crops:
            row = run_child(["ours", config, str(crop)], args)
            if row is None:
                continue
            if not args.no_data:
                row["data_samples_per_s"] = data_rate(config, crop, args)
            rows.append(row)
            save()
            print(f"  {config} {crop}: {row['samples_per_s']:.2f} samples/s", file=sys.stderr)
    public = args.public_gifnet
    if public is not None and not (public / "GIFNet_model.py").is_file():
        print(f"--public-gifnet {public}: no GIFNet_model.py there; the public rows are skipped", file=sys.stderr)
        public = None
    elif public is None:
        print("no --public-gifnet PATH (a checkout of the public GIFNet repository): public rows skipped")
    for crop in args.crops if public is not None and args.interleaved else []:
        for config in args.peer_configs:
            row = run_child(["pair", config, str(crop), str(public.resolve())], args)
            if row is not None:
                interleaved.append(row)
                save()
                print_interleaved(row)
    for crop in args.crops if public is not None and not args.interleaved else []:
        for repeat in range(args.repeats):  # ours and public alternated: each pair sees about the same load
            cells = [["peer", config, str(crop)] for config in args.peer_configs]
            for cell in [*cells, ["public", str(public.resolve()), str(crop)]]:
                row = run_child(cell, args)
                if row is not None:
                    peers.append({**row, "repeat": repeat, "load": os.getloadavg()[0]})
                    save()
    load_after = os.getloadavg()
    print_tables(rows, peers, args)
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if args.json:
        save()
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
