#!/usr/bin/env bash
# The documented CamVid result (benchmarks/camvid_result.md): the paper's genotype at a small filter multiplier,
# trained from scratch on CamVid train with the 'cpu' preset and evaluated on CamVid test (single scale).
# Run from the repository root. Settings come from the environment:
#   CAMVID_ROOT (default ../shared/data/camvid), OUT (run directory), ITERATIONS (default 800),
#   OMP_NUM_THREADS (default 1: on a shared 2-core machine one thread per process is several times faster).
set -euo pipefail
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
OUT=${OUT:-runs/camvid-cpu-$(date +%Y%m%d-%H%M%S)}
ITERATIONS=${ITERATIONS:-800}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

start=$(date +%s)
autodeeplab train --genotype paper --preset cpu --data-root "$ROOT" --set iterations="$ITERATIONS" -o "$OUT" -q
trained=$(date +%s)
autodeeplab eval "$OUT/model.pt" --dataset camvid --data-root "$ROOT" --split test --json "$OUT/test.json" -q
done_at=$(date +%s)
echo "wall time: train $((trained - start)) s, eval on test $((done_at - trained)) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
echo "run directory: $OUT"
