#!/usr/bin/env bash
# The GPU check in one command, at most 9 minutes (the step limits below add up to 535 s),
# so that a 15-minute lease has room to rerun it:
#
#   bash benchmarks/gpu_check.sh OUT                 # on the GPU machine (python3 = its CUDA torch)
#   bash benchmarks/gpu_check.sh --cpu-dry-run OUT   # the same steps on the CPU, tiny shapes (CI)
#
# Steps: the build for the present arch only (--no-build-isolation --no-deps --no-index;
# a failed build stops here with one clear line), the ahead-of-time compile of every
# Triton kernel variant, the correctness pass (benchmarks/gpu_check.py correctness),
# `pytest -m cuda` on the kernel tests, compute-sanitizer memcheck and racecheck on tiny
# shapes, then the timings (benchmarks/gpu_check.py timings). Every line is printed as
# it comes (PYTHONUNBUFFERED) and kept in one log per step; the logs go into
# OUT/gpu_check_logs.tar.gz and the summary table into OUT/SUMMARY.md, printed last.
# Exit status: the number of failed steps.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--cpu-dry-run" ]; then dry=1; shift; fi
out=${1:?usage: bash benchmarks/gpu_check.sh [--cpu-dry-run] OUT}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
logs=$(mktemp -d)/gpu_check_logs
mkdir -p "$logs"
py=${PYTHON:-python3}
failed=0
rows=()

step() {  # step NAME LIMIT_S COMMAND...: output to the terminal and to NAME.log
  local name=$1 limit=$2 t0=$SECONDS rc status
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  rc=${PIPESTATUS[0]}
  status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMED OUT"; elif [ "$rc" -ne 0 ]; then status="FAILED (rc $rc)"; fi
  [ "$status" = ok ] || failed=$((failed + 1))
  rows+=("| $name | $status | $((SECONDS - t0)) |")
  echo "== $name: $status in $((SECONDS - t0)) s"
  [ "$status" = ok ]
}

finish() {
  {
    echo "# vqfast GPU check"
    echo
    echo "- $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
    echo "- mode: $([ $dry = 1 ] && echo 'CPU dry run (tiny shapes)' || echo GPU)"
    sed 's/^/- /' "$logs/env.log" 2>/dev/null
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Failed steps: $failed. Logs: gpu_check_logs.tar.gz (one per step)."
    for part in correctness timings; do
      [ -f "$logs/$part.log" ] || continue
      echo
      echo "## $part"
      echo
      grep -E '^\||failed' "$logs/$part.log"
    done
  } >"$out/SUMMARY.md"
  tar -czf "$out/gpu_check_logs.tar.gz" -C "$(dirname "$logs")" gpu_check_logs
  echo
  cat "$out/SUMMARY.md"
  exit "$failed"
}

step env 15 "$py" -c "
import platform, torch
print(f'python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}')
try:
    import triton; print(f'triton {triton.__version__}')
except ImportError: print('triton: not installed')
print('device: ' + (f'{torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, '
                    f'{torch.cuda.get_device_properties(0).multi_processor_count} SMs' if torch.cuda.is_available() else 'none (CPU)'))
"

if [ $dry = 1 ]; then
  # CI has just built the extension; the dry run checks it loads rather than building twice.
  step build 60 "$py" -c "import vqfast; assert vqfast.HAS_EXT, 'the C++ extension did not load'; print('extension loaded')" || finish
  step aot 120 env -u TRITON_INTERPRET "$py" -m vqfast.kernels.aot --arch 90 --only "M=1 "
  step correctness 300 "$py" benchmarks/gpu_check.py correctness --dry-run
  step pytest 300 env TRITON_INTERPRET=1 "$py" -m pytest -q -x -p no:cacheprovider -m "cuda or triton" \
    tests/test_restore_step.py tests/test_decode_attention.py
  rows+=("| sanitizer | skipped (no GPU) | 0 |")
  step timings 300 "$py" benchmarks/gpu_check.py timings --dry-run
else
  arch=$("$py" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')") || exit 2
  if ! step build 150 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
      "$py" -m pip install -q --no-build-isolation --no-deps --no-index -e .; then
    echo "BUILD FAILED: nothing else runs; the compiler's output is in build.log (in the archive) and above"
    finish
  fi
  step extension 15 "$py" -c "import vqfast, vqfast._C as C; assert C.with_cuda, 'built without CUDA'; print('CUDA extension loaded')" || finish
  step aot 40 env -u TRITON_INTERPRET "$py" -m vqfast.kernels.aot --arch "${arch/./}"
  step correctness 80 "$py" benchmarks/gpu_check.py correctness
  step pytest 55 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda_edges.py tests/test_nearest_code.py \
    tests/test_omp.py tests/test_restore_step.py tests/test_decode_attention.py
  if command -v compute-sanitizer >/dev/null 2>&1; then
    step memcheck 30 compute-sanitizer --tool memcheck --error-exitcode 9 "$py" benchmarks/gpu_sanitize.py --triton
    step racecheck 20 compute-sanitizer --tool racecheck --error-exitcode 9 "$py" benchmarks/gpu_sanitize.py
  else
    rows+=("| sanitizer | skipped (no compute-sanitizer on PATH) | 0 |")
  fi
  step timings 130 "$py" benchmarks/gpu_check.py timings
fi
finish
