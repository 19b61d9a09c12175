#!/usr/bin/env bash
# The multiply-add budget of the Auto-DeepLab search on CamVid (../shared/data/camvid): searches with the `cpu`
# preset's supernet on CamVid train, without a budget and with each target of TARGETS (billions of multiply-adds
# of the decoded network as the `cpu` training preset builds it, F=8 with 64-channel heads, counted at 360x480
# like `autodeeplab info --filter-multiplier 8 --num-classes 11 --input-size 360 480`); each found network
# retrained with the `cpu` training preset and scored on CamVid test. Then the table: target, the decoded
# network's count and its error, test mIoU.
# For the `cpu` supernet's shape (L=4, B=3) random genotypes count 3.72-4.66 B at that size (10th / 90th
# percentiles 3.82 / 4.46; the stem alone is 2.46 B), hence the default targets.
# Resumable: finished runs are skipped, interrupted ones continue.
#   bash benchmarks/camvid_budgets.sh [OUT]          (default runs/bench/camvid-budgets)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-runs/bench/camvid-budgets}
ROOT=${CAMVID_ROOT:-../shared/data/camvid}
TARGETS=${TARGETS:-"3.85 4.45"}
BUDGET_NET=(--set budget.image_size=[360,480] --set budget.network.filter_multiplier=8
  --set budget.network.aspp_channels=64 --set budget.network.decoder_channels=64)
search() {  # NAME [settings...]
  local dir="$OUT/search-$1"
  shift
  if [ -f "$dir/config.yaml" ]; then
    autodeeplab search --resume "$dir" -q
  else
    autodeeplab search --preset cpu --dataset camvid --data-root "$ROOT" --set data.max_val_images=32 "$@" -o "$dir" -q
  fi
}
train() {  # NAME
  local dir="$OUT/train-$1"
  if [ -f "$dir/config.yaml" ]; then
    autodeeplab train --resume "$dir" -q
  else
    autodeeplab train --preset cpu --data-root "$ROOT" --arch "$OUT/search-$1" -o "$dir" -q
  fi
  [ -f "$dir/eval-test.json" ] || autodeeplab eval "$dir" --split test --json "$dir/eval-test.json" -q
}
search none
for T in $TARGETS; do search "$T" --set budget.multiply_adds="$T" "${BUDGET_NET[@]}"; done
for NAME in none $TARGETS; do train "$NAME"; done
for NAME in none $TARGETS; do
  python - "$OUT" "$NAME" <<'PY'
import json, sys
from pathlib import Path
from autodeeplab.nets.complexity import count_multiply_adds
from autodeeplab.nets.model_file import load_model
out, name = Path(sys.argv[1]), sys.argv[2]
model, _ = load_model(out / f"train-{name}")
macs = count_multiply_adds(model, (1, 3, 360, 480)) / 1e9
miou = json.loads((out / f"train-{name}" / "eval-test.json").read_text())["miou"]
error = "" if name == "none" else f", {100 * (macs / float(name) - 1):+.1f}% from the target"
print(f"target {name}: decoded network {macs:.3f} B multiply-adds at 360x480{error}; test mIoU {100 * miou:.2f}%")
PY
done
