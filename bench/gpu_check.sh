#!/usr/bin/env bash
# One-shot GPU check for a bare CUDA machine (no network needed when torch/triton are preinstalled):
# install minilisten, run the kernel tests on the real compiled Triton kernels (no interpreter), then the
# kernel, decode and ARIG benchmarks, the ARIG GPU checks and a short training-throughput run (15-30 minutes).
#   bash bench/gpu_check.sh            # results JSON and log go to $OUT if set, else bench/results
#   FULL=1 bash bench/gpu_check.sh     # full benchmark sizes instead of --quick
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MINILISTEN_GPU_TESTS=1
unset TRITON_INTERPRET MINILISTEN_KERNELS
RES="${OUT:-bench/results}"
mkdir -p "$RES"
status=0  # later sections set status=1 on failure; the exit trap reports it
trap 'echo; echo "=== gpu_check done: status $status ($(date -u +%H:%M:%S)) ==="; exit $status' EXIT
step() { echo; echo "=== $* ($(date -u +%H:%M:%S)) ==="; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi unavailable"
python3 --version
if ! python3 -c 'import torch' 2>/dev/null; then
  echo "torch missing: pip install torch triton"
  python3 -m pip install -q torch triton || { echo "FATAL: cannot install torch"; status=1; exit 1; }
fi
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "| gpu:", torch.cuda.is_available() and torch.cuda.get_device_name())'

step "install minilisten (editable, no deps: the machine may be offline)"
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 \
   || ! (cd /tmp && python3 -c 'import minilisten.kernels.dispatch'); then
  echo "pip install -e . failed: falling back to a copied package on PYTHONPATH"
  site=$(mktemp -d); mkdir -p "$site/minilisten"
  cp -r minilisten/. "$site/minilisten/"; cp -r kernels "$site/minilisten/kernels"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c 'from minilisten.kernels import dispatch as K; import torch; x = torch.zeros(1, device="cuda"); print("minilisten.kernels from", K.__file__, "| triton path on cuda:", K.triton_available(x))' || status=1
python3 -m pip list 2>/dev/null | grep -iE '^(pytest|hypothesis) ' || echo "pytest/hypothesis missing: tests may not run"

step "kernel tests on the compiled Triton kernels (no TRITON_INTERPRET)"
timeout 300 python3 -m pytest tests/test_kernels.py -q -rs --durations=8 -p no:cacheprovider 2>&1 | tee "$RES/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "KERNEL TESTS FAILED"; status=1; }

step "kernel benchmark (python -m minilisten.bench's kernel part, then the nearest-code variants)"
bench_args=--quick; [ -n "${FULL:-}" ] && bench_args=
timeout 360 python3 -m minilisten.bench --device cuda $bench_args --skip decode,streaming,arig --out "$RES" 2>&1 \
  | tee "$RES/bench_kernels.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "KERNEL BENCHMARK FAILED"; status=1; }
full_arg=; [ -n "${FULL:-}" ] && full_arg=--full
timeout 240 python3 bench/kernel_variants.py $full_arg --out "$RES" 2>&1 | tee "$RES/kernel_variants.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "KERNEL VARIANTS FAILED"; status=1; }

# --- decode benchmark (issue 6) ---
# Fast decoding + streaming (minilisten/generate.py, streaming.py, bench.py). Budget: ~6 min.
step "decode: CUDA-graph generator equals the reference decoder (fp32, tiny GPT-2 / LLaMA)"
timeout 240 python3 -m pytest tests/test_generate.py -k cuda -q -rs -p no:cacheprovider 2>&1 | tee "$RES/gpu_decode_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "DECODE TESTS FAILED"; status=1; }

step "decode benchmark: GPT-2 Medium shape + ARIG paper size, random weights, bf16, batch 1 and 64 (python -m minilisten.bench)"
decode_args=--quick; [ -n "${FULL:-}" ] && decode_args=
timeout 480 python3 -m minilisten.bench --device cuda $decode_args --skip kernels --out "$RES" 2>&1 | tee "$RES/bench_decode.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "DECODE BENCHMARK FAILED"; status=1; }

# --- ARIG-style continuous listener (issue 17) ---
# Speed: the decode benchmark above already ran minilisten.bench's ARIG part (rows "ARIG cached step" /
# "ARIG cached, compiled" (torch.compile, no CUDA graphs; batch 1 with --quick) / "ARIG recompute window":
# appendix sizes, bf16 autocast, batch 1 and 64, 4 and 8 Euler steps, FPS
# as ratios of the LR-token decoders' in the same run; JSON key "arig" in $RES/bench_*.json). This
# section only checks correctness on the GPU: a tiny model's cached step on cuda vs cpu, and the server's
# batched multi-stream path (StreamingARIG with n_streams=3: one ARIG.step per frame) vs solo streams. ~1 min.
step "ARIG: cuda vs cpu step, batched multi-stream vs solo streams (tiny model)"
timeout 120 python3 - <<'PY' 2>&1 | tee "$RES/arig_gpu.log"
import copy, numpy as np, torch
from minilisten.arig import ARIG, ARIGConfig
from minilisten.streaming import StreamingARIG
torch.manual_seed(0)
cpu = ARIG(ARIGConfig(d_model=32, n_head=4, d_ff=64, window=8, diff_width=32, n_sa=64)).eval()
with torch.no_grad():
    for p in cpu.parameters():
        p.add_(0.1 * torch.randn_like(p))
gpu = copy.deepcopy(cpu).to("cuda")
K = cpu.config.sa_slots
x = {"spk": torch.randn(2, 56), "sa": torch.randint(0, 64, (2, K)), "emo": torch.full((2, 8), 1 / 8),
     "word": torch.randint(0, 4096, (2,)), "since": torch.randint(0, 17, (2,)), "beta": torch.randn(2, 100)}
with torch.no_grad():
    zc, _ = cpu.step(cpu.init_state(x), x)
    xg = {k: v.cuda() for k, v in x.items()}
    zg, _ = gpu.step(gpu.init_state(xg), xg)
d = float((zg.cpu() - zc).abs().max())
print(f"tiny model: max |z_cuda - z_cpu| = {d:.2e}")
rng = np.random.default_rng(0)
T = 60
push = [dict(motion=rng.normal(0, .5, (T, 56)).astype(np.float32), sa_tokens=rng.integers(0, 64, 100),
             emotion=np.full((T, 8), 1 / 8, np.float32)) for _ in range(3)]
ms = StreamingARIG(gpu, np.zeros(100), n_streams=3)
for b in range(3):
    ms.reset(stream=b, seed=b)
out = ms.push_many(dict(enumerate(push)))
assert not any(isinstance(o, Exception) for o in out.values()), out
worst = max(float(np.abs(out[b] - StreamingARIG(gpu, np.zeros(100), seed=b).push(**push[b])).max()) for b in range(3))
print(f"StreamingARIG(n_streams=3) on cuda: max |batched - solo| over {T} frames = {worst:.2e}")
assert d < 1e-3 and worst < 1e-3, (d, worst)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "ARIG GPU CHECK FAILED"; status=1; }

# --- training throughput (bench/train_gpu.sh: VQ-VAE and LM training steps at the paper's sizes) ---
step "training throughput: 10 steps each on 1 GPU (and all GPUs when there are more)"
STEPS=10 OUT="$RES" timeout 600 bash bench/train_gpu.sh 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "TRAINING THROUGHPUT FAILED"; status=1; }
