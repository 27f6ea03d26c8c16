#!/usr/bin/env bash
# The GPU checks of docs/performance.md in one short run (< 5 min on one H200): training step
# (today's vs the autotuned TrainingStep, fp32 and bf16, with the measured cuDNN conv peak), the
# batched GPU augmentation vs training throughput, PGD and adversarial-training cost, PGD's layout
# and chunks (channels_last vs NCHW), and what bf16 changes (clean error, attack strength). Prints Markdown; paste the figures into
# docs/performance.md ("GPU") with the machine line.
#
#     PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_profile.sh [out_dir]
#
# Needs a CUDA build of torch and the project importable (pip install -e . or PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-gpu_profile_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_profile: torch {torch.__version__} sees no CUDA device; run this where a GPU is (and a CUDA torch)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia_smi.txt"
T=8  # CPU threads for the host-side work
run() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name ($(date -u +%T))"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" || echo "gpu_profile: $name failed or ran past ${limit}s (see $OUT/$name.txt)"
}
run train_step 90 "$PY" benchmarks/train_speed.py --compare --device cuda --threads $T --widths 16 64 --batch 32 64 --rounds 10 --bf16
run augment 75 "$PY" benchmarks/augment_speed.py --device cuda --subjects 8 --samples 1024 --batch-size 64 --workers 4 \
  --train-width 16 --train-batch 64 --rounds 10
run attacks 60 "$PY" benchmarks/attack_speed.py --device cuda --threads $T --width 16 --batch 32 --steps 20 \
  --train-steps 20 --train-iterations 5 --rounds 10 --train-rounds 3
run attack_layout 45 "$PY" benchmarks/attack_chunking.py --device cuda --threads $T --width 16 --batch 64 --steps 10 \
  --chunks 8 16 32 --rounds 5
run precision 60 "$PY" benchmarks/precision_effect.py --device cuda --threads $T --size 128 --width 16 --batch 32 \
  --steps 300 --seeds 0 1 2 --test 256 --pgd-steps 20
echo; echo "gpu_profile: done $(date -u +%T); outputs in $OUT/"
