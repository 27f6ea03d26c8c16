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
# Exits 1 when any part failed (the others still run).
#
# GPU_PROFILE_SMOKE=1 runs the same commands on the CPU, each with its work shrunk by flags appended
# after the real ones (argparse keeps the last value), so that the script a GPU session gets one chance
# to run is known to work (tests/test_gpu_profile_smoke.py); its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-gpu_profile_out}
SMOKE=${GPU_PROFILE_SMOKE:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "$SMOKE" = 1 ]; then
  echo "gpu_profile: smoke run on the CPU, shrunk work (figures meaningless)"
else
  "$PY" - <<'PYEOF' || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_profile: torch {torch.__version__} sees no CUDA device; run this where a GPU is (and a CUDA torch)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
PYEOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia_smi.txt"
fi
T=8  # CPU threads for the host-side work
FAILED=""
run() {  # name, time limit (s), smoke flags (appended in a smoke run), command...
  local name=$1 limit=$2 smoke=$3; shift 3
  local extra=()
  [ "$SMOKE" = 1 ] && read -r -a extra <<< "--device cpu $smoke"
  echo; echo "=== $name ($(date -u +%T))"
  if ! timeout "$limit" "$@" "${extra[@]}" 2>&1 | tee "$OUT/$name.txt"; then
    echo "gpu_profile: $name failed or ran past ${limit}s (see $OUT/$name.txt)"
    FAILED="$FAILED $name"
  fi
}
run train_step 90 "--threads 1 --widths 16 --batch 4 --rounds 1 --size 32" \
  "$PY" benchmarks/train_speed.py --compare --device cuda --threads $T --widths 16 64 --batch 32 64 --rounds 10 --bf16
run augment 75 "--subjects 2 --samples 8 --batch-size 4 --workers 0 --train-batch 4 --rounds 1" \
  "$PY" benchmarks/augment_speed.py --device cuda --subjects 8 --samples 1024 --batch-size 64 --workers 4 \
  --train-width 16 --train-batch 64 --rounds 10
run attacks 60 "--threads 1 --size 32 --batch 2 --steps 2 --train-steps 2 --train-iterations 2 --rounds 1 --train-rounds 1" \
  "$PY" benchmarks/attack_speed.py --device cuda --threads $T --width 16 --batch 32 --steps 20 \
  --train-steps 20 --train-iterations 5 --rounds 10 --train-rounds 3
run attack_layout 45 "--threads 1 --size 32 --batch 4 --steps 1 --chunks 2 --rounds 1" \
  "$PY" benchmarks/attack_chunking.py --device cuda --threads $T --width 16 --batch 64 --steps 10 \
  --chunks 8 16 32 --rounds 5
run precision 60 "--threads 1 --size 32 --batch 4 --steps 3 --seeds 0 --test 8 --pgd-steps 2" \
  "$PY" benchmarks/precision_effect.py --device cuda --threads $T --size 128 --width 16 --batch 32 \
  --steps 300 --seeds 0 1 2 --test 256 --pgd-steps 20
echo
if [ -n "$FAILED" ]; then
  echo "gpu_profile: FAILED:$FAILED ($(date -u +%T)); outputs in $OUT/"
  exit 1
fi
echo "gpu_profile: done $(date -u +%T); outputs in $OUT/"
