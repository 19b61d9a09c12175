#!/usr/bin/env bash
# The paper genotype's 3D found network on MSD Hippocampus (../shared/data/hippocampus): train with the
# `hippocampus` preset (182 training volumes, 3500 steps of two 40x56x40 patches), then score the 52 test
# volumes (the last 52 sorted ids) by sliding window: Dice per class, HD95, one row per volume.
# Resumable: run it again with the same folder and the training continues from its last checkpoint.
# GENOTYPE: the architecture to train (default paper; a search run directory retrains what it found).
#   bash benchmarks/hippocampus.sh [RUN_DIR [GENOTYPE]]      (default runs/bench/hippocampus-paper paper)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-runs/bench/hippocampus-paper}
GENOTYPE=${2:-paper}
if [ -f "$OUT/config.yaml" ]; then
  autodeeplab train --resume "$OUT"
else
  autodeeplab train --preset hippocampus --genotype "$GENOTYPE" -o "$OUT"
fi
autodeeplab eval "$OUT" --split test --json "$OUT/eval-test.json"
