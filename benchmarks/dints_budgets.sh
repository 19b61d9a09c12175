#!/usr/bin/env bash
# DiNTS memory budgets on MSD Hippocampus (../shared/data/hippocampus): three searches of the `hippocampus`
# search preset with --space dints at dints.memory_budget 0.2, 0.5 and 0.8 (10 epochs, architecture steps
# from epoch 2, arch_lr 0.01: a CPU-sized search needs larger architecture steps than DiNTS's 20k-step one),
# each decoded network retrained with the `hippocampus` training preset at the search's width
# (dints.channels=16) and scored on the 52 test volumes. Then the table (benchmarks/dints_budgets_report.py).
# Resumable: run it again with the same folder; finished parts are skipped, interrupted ones continue.
# FROM_SAVED=1 retrains the architectures of the recorded searches (benchmarks/dints_budgets/) without
# searching again (a search re-run on other hardware or thread counts can decode slightly differently).
#   bash benchmarks/dints_budgets.sh [OUT]          (default runs/bench/dints-budgets)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-runs/bench/dints-budgets}
BUDGETS=${BUDGETS:-"0.2 0.5 0.8"}
SAVED=benchmarks/dints_budgets  # the searched architectures of the recorded runs (see benchmarks/README.md)
for B in $BUDGETS; do
  S="$OUT/search-$B"
  if [ ! -e "$S" ] && [ -n "${FROM_SAVED:-}" ] && [ -f "$SAVED/dints_arch-$B.json" ]; then
    # FROM_SAVED=1: retrain the recorded searches' architectures instead of searching again
    mkdir -p "$S" && cp "$SAVED/dints_arch-$B.json" "$S/dints_arch.json"
    cp "$SAVED/arch_params-$B.json" "$S/arch_params.json"
    continue
  fi
  if [ -f "$S/dints_arch.json" ] && [ ! -f "$S/config.yaml" ]; then
    continue  # restored from $SAVED
  elif [ -f "$S/config.yaml" ]; then
    autodeeplab search --resume "$S" -q
  else
    autodeeplab search --space dints --preset hippocampus --set dints.memory_budget="$B" \
      --set epochs=10 --set arch_start_epoch=2 --set arch_lr=0.01 -o "$S" -q
  fi
done
for B in $BUDGETS; do
  T="$OUT/train-$B"
  if [ -f "$T/config.yaml" ]; then
    autodeeplab train --resume "$T" -q
  else
    autodeeplab train --preset hippocampus --arch "$OUT/search-$B/dints_arch.json" --set dints.channels=16 \
      -o "$T" -q
  fi
  [ -f "$T/eval-test.json" ] || autodeeplab eval "$T" --split test --json "$T/eval-test.json" -q
done
python benchmarks/dints_budgets_report.py "$OUT"
