#!/usr/bin/env bash
# Issue 19 on CamVid (../shared/data/camvid): does the search beat random architectures?
# 3 searches (seeds 0-2) with the `cpu` search preset on CamVid train (L=4, B=3, F=4, 64x64 crops, 8 epochs;
# 32 validation images), 3 architectures drawn uniformly from the same space and the paper genotype; each
# retrained with the `cpu` training preset (F=8, 64-channel heads, 192x192 crops, batch 4) at two budgets,
# 250 and 750 steps (x1, x3), training seed 0, and scored on the 233 CamVid test images. About two hours on
# 2 CPU cores. Resumable: run it again with the same folder. Copies the report next to this script.
#   bash benchmarks/camvid_study.sh [OUT]          (default runs/bench/camvid-study)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-runs/bench/camvid-study}
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
if [ -f "$OUT/study.yaml" ]; then
  autodeeplab study --resume "$OUT" -q
else
  autodeeplab study --dataset camvid --data-root "$ROOT" --seeds 3 --random 3 --budgets 1 3 \
    --search-preset cpu --train-preset cpu --search-set data.max_val_images=32 --train-set iterations=250 \
    -o "$OUT" -q
fi
cp "$OUT/report.md" benchmarks/camvid_study.md
cp "$OUT/report.json" benchmarks/camvid_study.json
[ -f "$OUT/search_curves.png" ] && cp "$OUT/search_curves.png" benchmarks/camvid_study_curves.png
echo "report: benchmarks/camvid_study.md"
