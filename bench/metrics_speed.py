"""Speed of our metric suite against a straightforward NumPy/SciPy one, measured in the same run.

    python bench/metrics_speed.py                       # CPU, torch's default threads
    python bench/metrics_speed.py --threads 1 --repeats 7
    python bench/metrics_speed.py --backend torch       # batched torch only (what runs on a GPU)
    python bench/metrics_speed.py --device cuda

For one 640 x 480 pair and for a batch of 16, prints per metric and in total the median time of
``--repeats`` runs of ``lightning_modules.metrics.compute_metrics`` next to the NumPy/SciPy
reference below, and their ratio. The pair is a crop of a real fusion-bench pair with its
published GIFNet fusion (synthetic smooth images when the shared folder is absent). On CPU the
default backend runs VIF, SSIM, Qabf and Nabf through the fused loops of
``lightning_modules.metrics.kernels``; the batch is then also timed with the batched-torch backend.

The reference implements the same formulas and conventions (``../shared/fusion-bench/README.md``)
the way the widely used Python evaluator does: one image at a time, 2-D ``convolve2d`` windows
for VIF, scikit-image-style SSIM in float32. It is also the independent cross-check that
``tests/test_metrics.py`` compares the torch suite with. NumPy has no batching: its batch time is
16 x its single-pair time, which is what an evaluator looping over 16 pairs spends.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import convolve2d, correlate2d

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FUSION_BENCH = PROJECT_ROOT.parent / "shared" / "fusion-bench"


# ----------------------------------------------------------------- the NumPy/SciPy reference
def reference_grey(rgb: np.ndarray) -> np.ndarray:
    """Grey levels of an (H, W) or (H, W, 3) uint8 RGB image as the common evaluator gets them."""
    import cv2

    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1]).astype(np.float32)
    return np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).astype(np.float64)


def ref_en(f: np.ndarray) -> float:
    p = np.bincount(f.astype(np.int64).ravel(), minlength=256) / f.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def ref_sd(f: np.ndarray) -> float:
    return float(np.std(f))


def ref_sf(f: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def ref_ag(f: np.ndarray) -> float:
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def _mi(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.zeros((256, 256))
    np.add.at(joint, (x.astype(np.int64).ravel(), y.astype(np.int64).ravel()), 1)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / outer[nz])))


def ref_mi(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return _mi(f, a) + _mi(f, b)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def ref_scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return _corr(f - b, a) + _corr(f - a, b)


def ref_cc(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return (_corr(a, f) + _corr(b, f)) / 2


def ref_mse(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((np.mean((f - a) ** 2) + np.mean((f - b) ** 2)) / 2)


def ref_psnr(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    mse = ref_mse(f, a, b)
    return math.nan if mse == 0 or f.max() == 0 else float(10 * np.log10(f.max() ** 2 / mse))


def _vif_one(ref: np.ndarray, dist: np.ndarray) -> float:
    eps, num, den = 1e-10, 0.0, 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        r = np.arange(n) - (n - 1) / 2
        window = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 5.0) ** 2))
        window /= window.sum()
        if scale > 1:
            ref = convolve2d(ref, window, mode="valid")[::2, ::2]
            dist = convolve2d(dist, window, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, window, mode="valid"), convolve2d(dist, window, mode="valid")
        s1 = convolve2d(ref * ref, window, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, window, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, window, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + 2.0)))
        den += np.sum(np.log10(1 + s1 / 2.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        score = num / den
    return 1.0 if np.isnan(score) else float(score)


def ref_vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return _vif_one(a, f) + _vif_one(b, f)


def _qabf_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = image.astype(np.float32)
    sx = convolve2d(image, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32), mode="same")
    sy = convolve2d(image, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32), mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    angle = np.full_like(image, np.float32(math.pi / 2))
    nonzero = sx != 0
    angle[nonzero] = np.arctan(sy[nonzero] / sx[nonzero])
    return g, angle


def _qabf_kept(g: np.ndarray, angle: np.ndarray, g_f: np.ndarray, angle_f: np.ndarray) -> np.ndarray:
    ratio = np.zeros_like(g)
    above, equal, below = g > g_f, g == g_f, g < g_f
    ratio[above] = g_f[above] / g[above]
    ratio[equal] = g_f[equal]  # the common implementation's quirk
    ratio[below] = g[below] / g_f[below]
    alignment = 1 - np.abs(angle - angle_f) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (alignment - 0.8)))


def ref_qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    (ga, aa), (gb, ab), (gf, af) = _qabf_edges(a), _qabf_edges(b), _qabf_edges(f)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(_qabf_kept(ga, aa, gf, af) * ga + _qabf_kept(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def _nabf_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(image, 1, mode="reflect")
    gv = correlate2d(padded, np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8, mode="valid")
    gh = correlate2d(padded, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
    return np.sqrt(gv**2 + gh**2), angle


def ref_nabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    (ga, aa), (gb, ab), (gf, af) = _nabf_edges(a), _nabf_edges(b), _nabf_edges(f)

    def kept(g: np.ndarray, angle: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where((g == 0) | (gf == 0), 0.0, np.where(g > gf, gf / g, g / gf))
        alignment = np.abs(np.abs(angle - af) - math.pi / 2) * 2 / math.pi
        return np.sqrt(0.9999 / (1 + np.exp(-19 * (ratio - 0.5))) * 0.9995 / (1 + np.exp(-22 * (alignment - 0.5))))

    weight_a = np.where(ga >= 2, ga**1.5, 0.001)
    weight_b = np.where(gb >= 2, gb**1.5, 0.001)
    artifacts = (gf > ga) & (gf > gb)
    lost = artifacts * ((1 - kept(ga, aa)) * weight_a + (1 - kept(gb, ab)) * weight_b)
    return float(np.sum(lost) / np.sum(weight_a + weight_b))


def _ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """scikit-image's structural_similarity defaults (7 x 7 uniform window, sample covariance) in float32."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
    uxx, uyy, uxy = uniform_filter(x * x, 7), uniform_filter(y * y, 7), uniform_filter(x * y, 7)
    norm = 49 / 48
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean(dtype=np.float64))


def ref_ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return _ssim(f, a, 2.0) + _ssim(f, b, 2.0)


def ref_ssim_std(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return _ssim(f, a, 255.0) + _ssim(f, b, 255.0)


REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "EN": lambda f, a, b: ref_en(f),
    "SD": lambda f, a, b: ref_sd(f),
    "SF": lambda f, a, b: ref_sf(f),
    "AG": lambda f, a, b: ref_ag(f),
    "MI": ref_mi,
    "SCD": ref_scd,
    "VIF": ref_vif,
    "Qabf": ref_qabf,
    "Nabf": ref_nabf,
    "SSIM": ref_ssim,
    "CC": ref_cc,
    "PSNR": ref_psnr,
    "SSIM_std": ref_ssim_std,
    "MSE": ref_mse,
}
"""Reference metric functions of (F, A, B) grey-level (H, W) float64 arrays, by metric name."""


# ---------------------------------------------------------------------------------- the bench
def bench_pair(height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F, A, B) uint8 grey images of ``height`` x ``width``: a real fusion-bench crop when available."""
    pair, fused = (
        FUSION_BENCH / "pairs" / "IVIF" / "tno_01",
        FUSION_BENCH / "published" / "IVIF" / "GIFNet" / "tno_01.png",
    )
    if fused.is_file():
        from datamodules.images import read_image

        images = [read_image(path) for path in (fused, pair / "a.png", pair / "b.png")]
        images = [reference_grey(image).astype(np.uint8) for image in images]
        if min(image.shape[0] for image in images) >= height and min(image.shape[1] for image in images) >= width:
            return tuple(image[:height, :width] for image in images)  # type: ignore[return-value]
    rng = np.random.default_rng(0)
    smooth = [uniform_filter(rng.random((height, width)) * 255, 9) for _ in range(3)]
    return tuple(np.round(image).astype(np.uint8) for image in smooth)  # type: ignore[return-value]


def median_seconds(run: Callable[[], object], repeats: int, synchronize: Callable[[], None]) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds (all threads) of ``repeats`` runs."""
    run()  # warm-up: allocator, lazy initialisation, CUDA kernels
    synchronize()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device for the torch suite")
    parser.add_argument(
        "--backend", default="auto", help="compute_metrics backend: auto (kernels on CPU), kernels or torch"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(PROJECT_ROOT))
    import torch

    from lightning_modules.metrics import EXTRA_METRICS, SOURCE_METRICS
    from lightning_modules.metrics import compute_metrics as compute_with_backend

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def compute_metrics(*arguments, backend: str = args.backend):
        return compute_with_backend(*arguments, backend=backend)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(SOURCE_METRICS) + list(EXTRA_METRICS)
    f, a, b = bench_pair()
    levels = [image.astype(np.float64) for image in (f, a, b)]
    one = [torch.from_numpy(image)[None, None].to(device) for image in (f, a, b)]
    batch = [image.expand(args.batch, -1, -1, -1).contiguous() for image in one]

    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} CPU threads), numpy {np.__version__}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; 640 x 480, median of {args.repeats} runs; "
        f"backend {args.backend}"
    )
    print(f"{'metric':<10}{'torch ms':>10}{'numpy ms':>11}{'ratio':>8}      (wall clock)")
    numpy_total = numpy_total_cpu = 0.0
    for name in names:
        torch_seconds, _ = median_seconds(lambda name=name: compute_metrics(*one, [name]), args.repeats, synchronize)
        numpy_seconds, numpy_cpu = median_seconds(
            lambda name=name: REFERENCE[name](*levels), args.repeats, lambda: None
        )
        numpy_total += numpy_seconds
        numpy_total_cpu += numpy_cpu
        print(
            f"{name:<10}{torch_seconds * 1e3:>10.1f}{numpy_seconds * 1e3:>11.1f}{numpy_seconds / torch_seconds:>7.1f}x"
        )
    suite, suite_cpu = median_seconds(lambda: compute_metrics(*one, names), args.repeats, synchronize)
    batched, batched_cpu = median_seconds(lambda: compute_metrics(*batch, names), args.repeats, synchronize)
    print(f"full suite (numpy: sum of the per-metric medians; its batch: {args.batch} x one pair)")
    print(
        f"{'':<10}{'torch ms':>10}{'numpy ms':>11}{'ratio':>8}{'torch CPU ms':>14}{'numpy CPU ms':>14}{'CPU ratio':>10}"
    )
    for label, count, wall, cpu in (
        ("1 pair", 1, suite, suite_cpu),
        (f"{args.batch} pairs", args.batch, batched, batched_cpu),
    ):
        print(
            f"{label:<10}{wall * 1e3:>10.1f}{numpy_total * count * 1e3:>11.1f}{numpy_total * count / wall:>7.1f}x"
            f"{cpu * 1e3:>14.1f}{numpy_total_cpu * count * 1e3:>14.1f}{numpy_total_cpu * count / cpu:>9.1f}x"
        )
    print(
        f"per pair in the batch: {batched / args.batch * 1e3:.1f} ms wall, {batched_cpu / args.batch * 1e3:.1f} ms CPU "
        f"(goal: at most 40 ms per pair on CPU)"
    )
    if device.type == "cpu" and args.backend != "torch":
        # the same batch through the batched-torch implementation, for the kernels' share of the speed
        plain, plain_cpu = median_seconds(
            lambda: compute_metrics(*batch, names, backend="torch"), args.repeats, synchronize
        )
        print(
            f"backend torch, per pair in the batch: {plain / args.batch * 1e3:.1f} ms wall, "
            f"{plain_cpu / args.batch * 1e3:.1f} ms CPU "
            f"({plain / batched:.1f}x the {args.backend} backend's wall time)"
        )
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
