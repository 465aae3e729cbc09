#!/usr/bin/env bash
# The GPU check in one command: build the CUDA extension for the GPU present, run the
# CUDA/Triton tests, then the GPU benchmarks at the README's GPU shapes, writing one
# Markdown report and the raw logs into REPORT_DIR. Every step is time-boxed; a failed
# step is recorded and the next one still runs. Exit status: the number of failed steps.
#
#   bash benchmarks/gpu_check.sh [REPORT_DIR]                 # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --cpu-dry-run [REPORT_DIR]   # same steps, CPU, tiny shapes (CI)
#
# Uses the python on PATH (its torch: CUDA for the real run). Total budget ~8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--cpu-dry-run" ]; then dry=1; shift; fi
report_dir=${1:-gpu-check-report}
mkdir -p "$report_dir"
report="$report_dir/REPORT.md"
py=${PYTHON:-python}
failed=0

{
  echo "# vqfast GPU check"
  echo
  echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- mode: $([ $dry = 1 ] && echo 'CPU dry run (tiny shapes)' || echo 'GPU')"
  $py - <<'PY' 2>&1 | sed 's/^/- /'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
print("device: " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"))
PY
  echo
  echo "| step | status | seconds | log |"
  echo "| --- | --- | --- | --- |"
} >"$report"

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local log="$report_dir/$name.log" t0=$SECONDS rc
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local status="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMED OUT"; elif [ $rc -ne 0 ]; then status="FAILED (rc $rc)"; fi
  [ "$status" = ok ] || failed=$((failed + 1))
  echo "| $name | $status | $((SECONDS - t0)) | $name.log |" >>"$report"
  echo "   $status in $((SECONDS - t0)) s; tail of $log:"
  tail -n 5 "$log" | sed 's/^/   | /'
}

if [ $dry = 1 ]; then
  step build 600 $py -m pip install -q --no-build-isolation --no-deps -e .
  step tests 900 $py -m pytest -q -x -m "cuda or triton" tests/test_omp.py tests/test_restore_step.py
  bench=(--device cpu --quick --repeats 2 --max-time 1)
else
  arch=$($py -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
  step build 150 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
    $py -m pip install -q --no-build-isolation --no-deps -e .
  step extension 20 $py -c "import vqfast, vqfast._C as C; assert C.with_cuda, 'built without CUDA'; print('CUDA extension loaded')"
  step tests 120 $py -m pytest -q -m "cuda or triton" -p no:cacheprovider
  bench=(--device cuda --repeats 5 --max-time 3)
fi
step bench_nearest_code 50 $py -m vqfast.cli bench "${bench[@]}" --only nearest_code
step bench_omp 50 $py -m vqfast.cli bench "${bench[@]}" --only omp
step bench_restoration 80 $py -m vqfast.cli bench "${bench[@]}" --only restoration
step bench_scorers 80 $py -m vqfast.cli bench "${bench[@]}" --only scorers

{
  echo
  echo "Failed steps: $failed"
  for f in "$report_dir"/bench_*.log; do
    echo
    echo "## $(basename "$f" .log)"
    echo
    echo '```'
    cat "$f"
    echo '```'
  done
} >>"$report"
echo "== report: $report ($failed failed steps)"
exit "$failed"
