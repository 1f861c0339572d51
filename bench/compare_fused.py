"""How far two folders of fused images are apart, pixel by pixel (e.g. bf16 against fp32 predict).

    python bench/compare_fused.py runs/demo/quality/fused runs/demo/quality-bf16/fused

Pairs the PNGs by their path under each folder (``<TASK>/<pair_id>.png`` as predict writes them)
and prints, per task and overall, the largest and mean absolute difference in 8-bit levels (every
channel) and the share of values that differ. Images missing on one side are listed.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.images import read_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="folder of fused images (e.g. fp32 predict)")
    parser.add_argument("other", type=Path, help="folder of fused images to compare with it (e.g. bf16 predict)")
    args = parser.parse_args()
    names = {path.relative_to(args.reference) for path in args.reference.rglob("*.png")}
    others = {path.relative_to(args.other) for path in args.other.rglob("*.png")}
    for missing in sorted(names ^ others):
        print(f"only in {'reference' if missing in names else 'other'}: {missing}")
    # per task: [largest difference, sum of differences, values that differ, values]
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for name in sorted(names & others):
        reference, other = read_image(args.reference / name), read_image(args.other / name)
        if reference.shape != other.shape:
            raise SystemExit(f"{name}: {reference.shape} in {args.reference} but {other.shape} in {args.other}")
        difference = np.abs(reference.astype(np.int64) - other.astype(np.int64))
        if reference.dtype == np.uint16:
            difference = difference / 257.0  # in 8-bit levels
        for key in (name.parts[0] if len(name.parts) > 1 else "-", "all"):
            total = totals[key]
            total[0] = max(total[0], float(difference.max()))
            total[1] += float(difference.sum())
            total[2] += float(np.count_nonzero(difference))
            total[3] += difference.size
    print(f"{'task':<6}{'max':>8}{'mean':>8}{'changed':>10}   (absolute difference, 8-bit levels)")
    for key, (largest, total, changed, count) in sorted(totals.items(), key=lambda item: item[0] == "all"):
        print(f"{key:<6}{largest:>8.2f}{total / count:>8.3f}{changed / count:>9.1%}")


if __name__ == "__main__":
    main()
