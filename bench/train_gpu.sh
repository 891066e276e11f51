#!/usr/bin/env bash
# Training throughput at the paper's sizes on whatever GPUs are present, and the projected hours of
# the paper's schedule (VQ-VAE 300K iterations at batch 256; LM 260K iterations at batch 8). One
# short run on 1 GPU, then, when there are more, one on all of them (torchrun, same global batch).
# Results (JSON + log) under bench/results/ (or $OUT). A few minutes in all.
#   bash bench/train_gpu.sh                 # GPUs
#   bash bench/train_gpu.sh --cpu-smoke     # dry path on CPU: tiny sizes, 1 and 2 gloo processes
#   STEPS=50 PRECISION=fp16 bash bench/train_gpu.sh
#   VARIANTS=1 bash bench/train_gpu.sh      # + 1-process runs with --compile and --grad-checkpointing
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
RES="${OUT:-bench/results}"
STEPS="${STEPS:-20}"
PRECISION="${PRECISION:-bf16}"
mkdir -p "$RES"
stamp=$(date -u +%Y%m%d-%H%M%S)
status=0
trap 'echo "=== train_gpu done: status $status ($(date -u +%H:%M:%S)) ==="; exit $status' EXIT

if [ "${1:-}" = "--cpu-smoke" ]; then
  export OMP_NUM_THREADS=1 MINILISTEN_KERNELS=torch TRITON_INTERPRET=1
  tag="cpu_smoke"; counts="1 2"; extra=(--cpu-smoke)
else
  unset TRITON_INTERPRET MINILISTEN_KERNELS
  n=$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  if [ "$n" -lt 1 ]; then echo "no CUDA GPU visible (use --cpu-smoke for the dry path)"; status=1; exit 1; fi
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$RES/train_gpu_${stamp}_nvidia-smi.txt"
  tag="gpu"; counts="1"; [ "$n" -gt 1 ] && counts="1 $n"; extra=(--precision "$PRECISION")
fi

for k in $counts; do
  out="$RES/train_${tag}_${stamp}_${k}proc.json"
  echo "=== $k process(es) -> $out ($(date -u +%H:%M:%S)) ==="
  if [ "$k" -eq 1 ]; then
    cmd=(python3 bench/train_gpu.py)
  else
    cmd=(torchrun --standalone --nproc_per_node "$k" bench/train_gpu.py)
  fi
  timeout 900 "${cmd[@]}" --steps "$STEPS" "${extra[@]}" --out "$out" 2>&1 \
    | grep -v '^\[transformers\]' | tee "$RES/train_${tag}_${stamp}_${k}proc.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "RUN FAILED ($k processes)"; status=1; }
done

# VARIANTS=1: one process again with --compile, then the LM with --grad-checkpointing (step time and
# peak memory side by side with the plain 1-process run above)
if [ -n "${VARIANTS:-}" ]; then
  for v in "--compile" "--grad-checkpointing --what lm"; do
    name=$(echo "$v" | tr -d '-' | tr ' ' '_')
    out="$RES/train_${tag}_${stamp}_1proc_${name}.json"
    echo "=== 1 process $v -> $out ($(date -u +%H:%M:%S)) ==="
    # shellcheck disable=SC2086
    timeout 900 python3 bench/train_gpu.py --steps "$STEPS" "${extra[@]}" $v --out "$out" 2>&1 \
      | grep -v '^\[transformers\]' | tee "$RES/train_${tag}_${stamp}_1proc_${name}.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "RUN FAILED ($v)"; status=1; }
  done
fi
