#!/usr/bin/env bash
# The GPU check (make gpu-check): everything pixelfly needs to know from a machine with an
# NVIDIA GPU, in one command that fits 8 minutes, from a fresh copy of the working tree.
#
#   1. build the extensions in place against this machine's own python and torch, for the
#      local GPU architecture only (no venv, no downloads, no build isolation: the lent
#      machines have no internet);
#   2. tests/test_cuda.py on the native kernels and on the composite (pure-PyTorch) ops;
#   3. compute-sanitizer --tool memcheck on a small subset of the native tests;
#   4. the GPU benchmark: bf16, 4096x4096 and 4096x16384, T = 8192, densities 1/4, 1/8, 1/16;
#      native, composite, cuBLAS dense and PyTorch BSR forward.
#
# Output goes to $OUT when set, else bench-results/: gpu_check.log (everything),
# gpu_check_summary.json (machine, steps, status, seconds), tests_native.xml,
# tests_composite.xml (JUnit), cuda_bench.json. Each step runs under a timeout taken from
# what is left of the overall budget (GPU_CHECK_BUDGET seconds, default 470). Exit status 0
# only when every step passed. Environment: PYTHON (default python3), GPU_CHECK_BUDGET,
# GPU_CHECK_SKIP (space-separated step names to skip: build tests_native tests_composite
# memcheck bench).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-bench-results}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-470}
SKIP=" ${GPU_CHECK_SKIP:-} "
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
START=$SECONDS
STEPS=()

say() { echo "$*" | tee -a "$LOG"; }

# run_step NAME MAX_SECONDS CMD...: runs CMD under min(MAX_SECONDS, budget left), logs it,
# records "name status seconds". A step with under 20 s of budget left is not started.
run_step() {
  local name=$1 max=$2; shift 2
  if [[ "$SKIP" == *" $name "* ]]; then
    STEPS+=("$name skipped 0"); say "== $name: skipped (GPU_CHECK_SKIP)"; return 0
  fi
  local left=$((BUDGET - (SECONDS - START)))
  local t=$((max < left ? max : left))
  if ((t < 20)); then
    STEPS+=("$name no-time 0"); say "== $name: NOT RUN (only ${left}s of the budget left)"; return 1
  fi
  say "== $name (timeout ${t}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
  rc=$?
  local dt=$((SECONDS - t0)) status=passed
  if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status="failed($rc)"; fi
  STEPS+=("$name $status $dt")
  say "== $name: $status in ${dt}s"
  return $rc
}

# ---------------------------------------------------------------- 0. the machine
say "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(pwd), output in $OUT_DIR"
GPU=none ARCH=- HAVE_GPU=0
TORCH=$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>>"$LOG")
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >>"$LOG" 2>&1; then
  STEPS+=("machine no-gpu 0"); say "no NVIDIA GPU here (nvidia-smi missing or failing): nothing to check"
elif ! ARCH=$("$PY" -c 'import torch; ma, mi = torch.cuda.get_device_capability(); print(f"{ma}.{mi}")' 2>>"$LOG"); then
  ARCH=-; STEPS+=("machine no-cuda-torch 0"); say "this python ($PY) has no CUDA torch that sees the GPU"
else
  HAVE_GPU=1
  GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
  say "GPU: $GPU (compute capability $ARCH); torch $TORCH; $(nvcc --version 2>/dev/null | tail -1)"
fi

if ((HAVE_GPU)); then

# ---------------------------------------------------------------- 1. build
# setup.py builds against the imported torch; TORCH_CUDA_ARCH_LIST = the local GPU only.
run_step build 300 env PIXELFLY_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
  "$PY" setup.py -q build_clib build_ext --inplace
BUILT=$?
if ((BUILT == 0)); then
  "$PY" -c 'import pixelfly.ops, pixelfly._ops_cuda' >>"$LOG" 2>&1 ||
    { say "build finished but pixelfly._ops_cuda does not import (traceback in the log)"; BUILT=1; }
fi

# ---------------------------------------------------------------- 2. tests, both paths
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_cuda.py)
if ((BUILT == 0)); then
  run_step tests_native 90 "${PYTEST[@]}" -k native --junitxml="$OUT_DIR/tests_native.xml"
else
  STEPS+=("tests_native not-built 0"); say "== tests_native: NOT RUN (build failed)"
fi
# The composite path needs only pixelfly._ops (CPU) and torch: it runs even if the CUDA
# build failed, as long as the CPU extension was built.
run_step tests_composite 90 "${PYTEST[@]}" -k composite --junitxml="$OUT_DIR/tests_composite.xml"

# ---------------------------------------------------------------- 3. memcheck subset
# One shape per kernel family (tiled fwd/bwd_x/bwd_w at b = 32 and 64, split-T bwd_w, the
# generic kernel, an empty layout), bf16 and fp32, native path only.
MEMCHECK_K='native and (R5C7b32x32T257 or R3C4b64x64T130 or R3C5b16x32T77 or split_over_t or empty_layout) and (bf16 or fp32)'
if ((BUILT != 0)); then
  STEPS+=("memcheck not-built 0"); say "== memcheck: NOT RUN (build failed)"
elif ! command -v compute-sanitizer >/dev/null 2>&1; then
  STEPS+=("memcheck no-tool 0"); say "== memcheck: NOT RUN (compute-sanitizer not found)"
else
  run_step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "${PYTEST[@]}" -x -k "$MEMCHECK_K"
  if grep -q "Device not supported" "$LOG"; then
    say "   (compute-sanitizer does not support this device/runtime: memcheck result void)"
  fi
fi

# ---------------------------------------------------------------- 4. benchmark
run_step bench 150 "$PY" -m benchmarks.bench_cuda --json "$OUT_DIR/cuda_bench.json" \
  --warmup 3 --iters 10 $( ((BUILT == 0)) || echo --impls composite)

fi  # HAVE_GPU

# ---------------------------------------------------------------- summary
TOTAL=$((SECONDS - START))
"$PY" - "$OUT_DIR/gpu_check_summary.json" "$GPU" "$ARCH" "$TORCH" "$TOTAL" "${STEPS[@]}" <<'EOF' | tee -a "$LOG"
import json, sys, datetime
path, gpu, arch, torch_v, total, *steps = sys.argv[1:]
rows = [dict(zip(("step", "status", "seconds"), s.split())) for s in steps]
summary = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               gpu=gpu, compute_capability=arch, torch=torch_v, total_seconds=int(total),
               command="make gpu-check (bash benchmarks/gpu_check.sh)", steps=rows,
               passed=all(r["status"] in ("passed", "skipped") for r in rows))
json.dump(summary, open(path, "w"), indent=1)
print(f"gpu_check: {gpu} (sm {arch}), torch {torch_v}, {total} s in all")
for r in rows:
    print(f"  {r['step']:<16} {r['status']:<12} {r['seconds']:>4} s")
print("gpu_check:", "PASSED" if summary["passed"] else "FAILED", "->", path)
EOF
((HAVE_GPU)) || exit 2
for s in "${STEPS[@]}"; do
  read -r _ st _ <<<"$s"
  [[ $st == passed || $st == skipped ]] || exit 1
done
exit 0
