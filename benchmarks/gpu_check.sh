#!/usr/bin/env bash
# The search supernet on a CUDA GPU at the paper's setting (2x3x321x321, F=8, L=12, B=5, 19 classes), in one
# command that stays within 8 minutes (each part has its own time limit):
#
#   bash benchmarks/gpu_check.sh
#
# - times a full search iteration (weight step + architecture step; 1 warm-up + REPEATS timed) for fp32
#   exact, bf16, fp16 (gradient scaler) and bf16 + activation checkpointing (all levels, and levels 0-1),
#   each in a fresh process, recording torch.cuda.max_memory_allocated (the process's peak) and the
#   projected wall time of the paper's full search (40 epochs x 744 weight steps, architecture steps from
#   epoch 20; steps only) in each record's "projected_paper_search";
# - counts the activations saved for backward directly at 321x321 on the GPU (saved_tensors_hooks);
# - appends every record (with the GPU's name) to benchmarks/results_search.jsonl and, when $OUT is set
#   (the device tool), also copies the new records to $OUT/results_search_gpu.jsonl so that they come back;
# - counts the operator dispatches of the exact steps on the GPU and calibrates the launch model there
#   (benchmarks/bench_dispatch.py --calibrate; records in $OUT or benchmarks/results_dispatch_gpu.jsonl);
# - prints the records against the issue's GPU targets (bf16: <= 6 GPU-hours projected, <= 8 GiB peak);
# - first, checks the fast path against the reference on the GPU in float64 (benchmarks/gpu_exactness.py).
#
# Installs nothing: it needs torch with CUDA plus the package's own dependencies (numpy, pyyaml, pillow,
# safetensors, matplotlib) and runs the package from src/ when it is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS="${REPEATS:-3}"
RESULTS=benchmarks/results_search.jsonl
NOTE="${NOTE:-benchmarks/gpu_check.sh: paper setting on a CUDA GPU}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

python - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device; nothing measured")
print("device:", torch.cuda.get_device_name(0))
import autodeeplab  # noqa: F401,E402  (fails here, not mid-run, if a dependency is missing)
EOF

# Issue 16: the fast path equal to the reference on this GPU's kernels (float64, seconds)
timeout 60 python benchmarks/gpu_exactness.py --device cuda \
  || echo "gpu_check: the fast path DIFFERS from the reference on this GPU, or the check stopped (rc $?)"

before=$( [ -f "$RESULTS" ] && wc -l < "$RESULTS" || echo 0 )
# each variant is one subprocess: CUDA start-up (~10-20 s) + 1 + REPEATS iterations
timeout 240 python benchmarks/bench_search.py time --device cuda --size 321 --repeats "$REPEATS" \
  --variants exact bf16 fp16 bf16_checkpoint bf16_checkpoint_levels01 --note "$NOTE" \
  || echo "gpu_check: time runs stopped early (rc $?); the records written so far are kept"
timeout 90 python benchmarks/bench_search.py memory --device cuda --size 321 \
  --variants exact bf16 bf16_checkpoint_levels01 --note "$NOTE (direct count at 321)" \
  || echo "gpu_check: memory counts stopped early (rc $?); the records written so far are kept"

# Issue 16: the same iteration replayed from CUDA graphs (execution.capture_steps), fp32 and bf16
timeout 90 python benchmarks/bench_search.py time --device cuda --size 321 --repeats "$REPEATS" \
  --variants exact_captured bf16_captured --note "$NOTE (captured steps)" \
  || echo "gpu_check: captured runs stopped early (rc $?); the records written so far are kept"
# Issue 16: operator counts on the GPU and the launch model calibrated there (about a minute)
timeout 60 python benchmarks/bench_dispatch.py --device cuda --calibrate --size 129 --variants exact \
  --note "$NOTE (dispatch counts)" --output "${OUT:-benchmarks}/results_dispatch_gpu.jsonl" \
  || echo "gpu_check: dispatch counts stopped early (rc $?)"

new=$(mktemp)
tail -n +"$((before + 1))" "$RESULTS" > "$new"
if [ -n "${OUT:-}" ]; then
  cp "$new" "$OUT/results_search_gpu.jsonl"
  echo "new records copied to $OUT/results_search_gpu.jsonl"
fi

python - "$new" <<'EOF'
import json
import sys

GIB = 2**30
r = {"machine": {}}  # nothing measured: the last line still prints
print("\nvariant                    iteration s   peak GiB   projected paper search   (targets for bf16: <= 6 h, <= 8 GiB)")
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    if r["benchmark"] == "search_time":
        peak = r["cuda_max_memory_allocated_bytes"] / GIB
        hours = r.get("projected_paper_search", {}).get("hours")
        verdict = ""
        if r["variant"].startswith("bf16"):
            verdict = "meets" if hours is not None and hours <= 6 and peak <= 8 else "MISSES"
        projected = "-" if hours is None else f"{hours:.2f} h"
        print(f"{r['variant']:<26} {r['iteration_s']:>11.3f} {peak:>10.2f} {projected:>17}        {verdict}")
    elif r["benchmark"] == "search_memory":
        print(f"{r['variant']:<26} saved for backward at 321: {r['saved_gib_max']:.3f} GiB (larger step)")
print(f"\nappended to benchmarks/results_search.jsonl (GPU: {r['machine'].get('gpu', '?')})")
EOF
rm -f "$new"
