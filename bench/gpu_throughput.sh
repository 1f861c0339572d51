#!/usr/bin/env bash
# The GPU table of bench/RESULTS.md ("Training throughput") in one run, sized for one GPU in under 9 minutes:
#
#   bench/gpu_throughput.sh --public-gifnet PATH        # on a GPU node, in the project's environment
#   bench/gpu_throughput.sh --public-gifnet PATH --dry-run   # anywhere: CPU, two families at 96 px, one timed
#                                                            # step per cell, a quick compile backend
#
# Three runs of bench/train_throughput.py, most important first, each cut at the time the budget has left
# (the bench writes its JSON after every cell, so a cut run keeps what it measured):
#   1. bf16-mixed, every family's published config at 128 and 256 px, the data plane with 8 workers, and the
#      public GIFNet (PATH: a checkout of the authors' repository) against gifnet and gifnet-fast;
#   2. fp32, the same cells without the data plane (its rate does not depend on the precision);
#   3. bf16-mixed with --compile (inductor): gifnet and gifnet-fast, and their public ratios.
# Each cell also reports the synchronisations CUDA itself counts (sync debug mode) next to the bench's own count.
# Figures go to $OUT/train_throughput/ when OUT is set, else runs/bench/train_throughput/ (JSON and the log).
# Environment: PYTHON (default python), BUDGET_S (default 530: seconds for the three runs together).
set -euo pipefail
cd "$(dirname "$0")/.."

public=()
dry_run=0
while (($#)); do
    case "$1" in
        --public-gifnet) public=(--public-gifnet "$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        *) echo "usage: $0 [--public-gifnet PATH] [--dry-run]" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python}
out=${OUT:-runs/bench}/train_throughput
mkdir -p "$out"
budget=${BUDGET_S:-530}
deadline=$((SECONDS + budget))

if ((dry_run)); then
    # checks that every command runs end to end; the figures mean nothing
    device=(--device cpu --threads 2)
    configs=(gifnet-fast cmifusion-cpu)
    compiled_configs=(gifnet-fast)
    crops=(96)
    public_later=()  # the public rows once
    timing=(--warmup 0 --steps 1 --windows 1 --data-batches 2 --data-warmup 1 --workers 2)
    backend=(--compile-backend aot_eager)
    peers=(--peer-configs gifnet-fast)
else
    device=(--device cuda)
    configs=(gifnet gifnet-fast lure upfusion cmifusion)
    compiled_configs=(gifnet gifnet-fast)
    crops=(128 256)
    public_later=("${public[@]}")
    timing=(--warmup 2 --steps 5 --windows 3 --data-batches 32 --data-warmup 8 --workers 8)
    backend=()
    peers=(--peer-configs gifnet gifnet-fast)
fi

run() {  # run NAME ARGS...: one bench run, cut when the budget is spent
    local name=$1 left=$((deadline - SECONDS))
    shift
    if ((left < 30)); then
        echo "$name: skipped, the ${budget} s budget is spent" | tee -a "$out/summary.txt"
        return
    fi
    local started=$SECONDS status=0
    timeout --signal INT --kill-after 10 "$left" \
        "$python" bench/train_throughput.py "${device[@]}" "${timing[@]}" "$@" --json "$out/$name.json" \
        >"$out/$name.log" 2>&1 || status=$?
    echo "$name: exit $status after $((SECONDS - started)) s ($out/$name.json, $out/$name.log)" | tee -a "$out/summary.txt"
    tail -n 40 "$out/$name.log"
}

: >"$out/summary.txt"
run bf16 --precision bf16-mixed --configs "${configs[@]}" --crops "${crops[@]}" "${public[@]}" "${peers[@]}"
run fp32 --precision fp32 --no-data --configs "${configs[@]}" --crops "${crops[@]}" "${public_later[@]}" "${peers[@]}"
run bf16-compiled --precision bf16-mixed --compile "${backend[@]}" --no-data --configs "${compiled_configs[@]}" \
    --crops "${crops[@]}" "${public_later[@]}" "${peers[@]}"
echo "total $SECONDS s" | tee -a "$out/summary.txt"
