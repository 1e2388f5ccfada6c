#!/usr/bin/env bash
# The one call for a lent GPU, from the repo root (see ../shared/device/README.md):
#   bash .device/gpu.sh bash scripts/gpu_check.sh
# 1. versions and the CuTe precompile on every core; 2. smoke: each kernel group (scripts/gpu_smoke.py) on small
# shapes in its own process under a timeout, all at once, so a hanging kernel costs one timeout and is left out of
# what follows;
# 3. the GPU tests (pytest -m "gpu or sm90", three processes at once); 4. compute-sanitizer memcheck on small
# shapes of every attnkit backend, racecheck on the CuTe kernels; 5. the quick benchmark against the peers
# (bench/run.py --quick), its time budget being what is left of GPU_CHECK_TOTAL_S. A failing stage does not stop
# the later ones; the exit status is 1 if any stage failed. Logs, summary.md and the plot go to $OUT when set (else bench/results/gpu_check); the
# stage summary and the benchmark tables print last. About 8 to 9 minutes on an H100: give the call 590 s (the
# stage limits add up to more in the worst case; the benchmark's budget is what is left of GPU_CHECK_TOTAL_S).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=$(command -v python3 || command -v python)
out=${OUT:-$root/bench/results/gpu_check}
mkdir -p "$out"
smoke_s=${GPU_CHECK_SMOKE_S:-120}
test_s=${GPU_CHECK_TEST_S:-180}
sanitizer_s=${GPU_CHECK_SANITIZER_S:-75}
racecheck_s=${GPU_CHECK_RACECHECK_S:-60}
total_s=${GPU_CHECK_TOTAL_S:-470}
export PYTHONUNBUFFERED=1
summary=()
failed=0

record() {
  # record STAGE RC [DETAIL]: 0 is ok, 124 a timeout, anything else a failure
  local stage=$1 rc=$2 detail=${3:-}
  if [ "$rc" -eq 0 ]; then
    summary+=("$stage: ok${detail:+ ($detail)}")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    summary+=("$stage: TIMED OUT${detail:+ ($detail)}")
    failed=1
  else
    summary+=("$stage: FAILED, exit $rc${detail:+ ($detail)}")
    failed=1
  fi
}

{
  nvidia-smi || true
  "$py" -c 'import sys; sys.path.insert(0, "bench"); import common; print(common.environment())'
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
} >"$out/versions.log" 2>&1
cat "$out/versions.log"

# Compile the shipped CuTe configs, the benchmark variants and the GPU tests' configs on all cores first: serial
# compiles inside the tests would eat device time.
echo "gpu_check: precompile (CuTe, $(nproc) processes)"
timeout -k 10 150 "$py" -m attnkit.precompile --arch sm_90a --variants --cases tests/cute_gpu_cases.py \
  --jobs "$(nproc)" >"$out/precompile.log" 2>&1
record precompile $? "$(tail -n 2 "$out/precompile.log" | tr '\n' ' ')"

# A group that hangs or is wrong here is left out of the tests (its files ignored), the sanitizers and the benchmark.
# The groups run at once, each in its own process under its own timeout (small shapes: the GPU has room for all,
# and a hung kernel only slows the others down); their logs are then read in this order.
groups=(cute-fwd cute-fwd-wide cute-fwd-192 cute-fwd-split cute-fwd-bias-slice cute-fwd-176 cute-fwd-dynamic cute-bwd-reduce cute-bwd cute-bwd-80 cute-bwd-reduce-warp cute-bwd-3-stages cute-bwd-rotate cute-bwd-early-stats cute-bwd-wide cute-bwd-bias-tc cute-bwd-bias-stmatrix cute-bwd-bias-slice cute-tvm-ffi triton)
pytest_ignore=()
skip_backends=()
sanitizer_flags=()
: >"$out/smoke.log"
echo "gpu_check: smoke, ${#groups[@]} groups at once (limit ${smoke_s} s each)"
declare -A smoke_pid
for group in "${groups[@]}"; do
  timeout -k 5 "$smoke_s" "$py" scripts/gpu_smoke.py "$group" >"$out/smoke-$group.log" 2>&1 &
  smoke_pid[$group]=$!
done
for group in "${groups[@]}"; do
  wait "${smoke_pid[$group]}"
  rc=$?
  log=$out/smoke-$group.log
  tee -a "$out/smoke.log" <"$log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "smoke $group" "$rc" "hung in: $(grep "^start $group" "$log" | tail -n 1 | cut -d: -f2-)"
  else
    record "smoke $group" "$rc" "$(grep "^$group: " "$log" | tail -n 1)"
  fi
  if [ "$rc" -ne 0 ]; then
    case $group in
      cute-fwd) pytest_ignore+=(--ignore tests/test_cute_sm90_fwd_compile.py) ;;
      cute-bwd) pytest_ignore+=(--ignore tests/test_cute_sm90_bwd_compile.py) ;;
      cute-bwd-wide) pytest_ignore+=(--ignore tests/test_cute_sm90_bwd_wide.py) ;;
      cute-tvm-ffi) pytest_ignore+=(--ignore tests/test_cute_tvm_ffi.py) ;;
    esac
    # a wrong or hanging CuTe kernel: no timing of it, no sanitizer run through it (the wide heads are not
    # benchmarked: only their sanitizer cases go; a failing backward leaves the forward timed; without the 192-row
    # forward tiles, the dQ reduce-add or the tensor-core factor gradients the rest runs on 128-row tiles, dQ
    # atomics and float32 factor gradients)
    case $group in
      triton) skip_backends+=(triton) ;;
      cute-bwd-wide | cute-fwd-wide) sanitizer_flags+=(--no-wide) ;;
      cute-fwd-192) export ATTNKIT_SM90_FWD_192_ROWS=0 ;;
      cute-bwd-reduce) export ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0 ;;
      cute-bwd-bias-tc) export ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0 ;;
      cute-bwd-bias-stmatrix) export ATTNKIT_SM90_BWD_BIAS_STMATRIX=0 ;;
      # the backward's S^T bias as a K-slice of its wgmma group: the bias wgmma waited for alone again
      cute-bwd-bias-slice) export ATTNKIT_SM90_BWD_BIAS_SLICE=0 ;;
      # benchmark variants: their failure leaves only them out of the tests and the timing
      cute-bwd-80) export ATTNKIT_SM90_BWD_80_ROWS=0 ;;
      cute-bwd-3-stages) export ATTNKIT_SM90_BWD_3_STAGES=0 ;;
      cute-bwd-rotate) export ATTNKIT_SM90_BWD_ROTATE=0 ;;
      cute-bwd-early-stats) export ATTNKIT_SM90_BWD_EARLY_STATS=0 ;;
      cute-fwd-split) export ATTNKIT_SM90_FWD_SPLIT_LOOPS=0 ;;
      # the launcher's bias as a K-slice of S: the bias wgmma waited for alone again
      cute-fwd-bias-slice) export ATTNKIT_SM90_FWD_BIAS_SLICE=0 ;;
      cute-fwd-176) export ATTNKIT_SM90_FWD_176_KEYS=0 ;;
      cute-fwd-dynamic) export ATTNKIT_SM90_FWD_DYNAMIC=0 ;;
      cute-bwd-reduce-warp) export ATTNKIT_SM90_BWD_DQ_REDUCE_WARP=0 ;;
      # the opt-in TVM-FFI host path: only its row of the benchmark's host table goes
      cute-tvm-ffi) skip_backends+=(cute-tvm-ffi) ;;
      cute-bwd)
        skip_backends+=(cute-bwd)
        sanitizer_flags+=(--no-cute-bwd)
        ;;
      *) skip_backends+=(cute) ;;
    esac
  fi
done
skip=$(printf '%s\n' "${skip_backends[@]}" | sort -u | paste -sd, -)
export ATTNKIT_BENCH_SKIP=$skip

echo "gpu_check: tests, 3 shards at once (limit ${test_s} s${pytest_ignore[*]:+; ${pytest_ignore[*]}})"
timeout_plugin=()
if "$py" -c "import pytest_timeout" >/dev/null 2>&1; then
  timeout_plugin=(--timeout 120)
fi
# Three pytest processes at once (the 2026-11-27 16:33 run of all files in one process reached 94 % in 180 s, most
# of it compiling Triton kernels on one core): the CuTe forward, the CuTe backward, the rest (Triton, Lightning,
# the API). A file of a failed smoke group is left out.
declare -A shard_pid
# start_shard NAME FILE...: one pytest process in the background over the files no failed smoke group left out
start_shard() {
  local name=$1 f
  shift
  local files=()
  for f in "$@"; do
    [[ " ${pytest_ignore[*]} " == *" $f "* ]] || files+=("$f")
  done
  if [ "${#files[@]}" -eq 0 ]; then
    echo "no tests left (every file of this shard belongs to a failed smoke group)" >"$out/tests-$name.log"
    return
  fi
  timeout -k 10 "$test_s" "$py" -m pytest -m "gpu or sm90" -q --maxfail 20 -ra -p no:cacheprovider \
    "${timeout_plugin[@]}" "${files[@]}" >"$out/tests-$name.log" 2>&1 &
  shard_pid[$name]=$!
}
start_shard fwd tests/test_cute_sm90_fwd_compile.py
start_shard bwd tests/test_cute_sm90_bwd_compile.py tests/test_cute_sm90_bwd_wide.py
start_shard rest $(ls tests/test_*.py | grep -v -e test_cute_sm90_fwd_compile -e test_cute_sm90_bwd_compile \
  -e test_cute_sm90_bwd_wide)
test_detail=()
test_rc=0
for shard in fwd bwd rest; do
  rc=0
  if [ -n "${shard_pid[$shard]:-}" ]; then
    wait "${shard_pid[$shard]}"
    rc=$?
  fi
  log=$out/tests-$shard.log
  { echo "=== tests, shard $shard (exit $rc)"; cat "$log"; } | tee -a "$out/tests.log"
  last=$(grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran|no tests left" "$log" | tail -n 1)
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    test_detail+=("$shard: TIMED OUT after ${test_s} s")
    test_rc=124
  elif [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    test_detail+=("$shard: ${last:-exit $rc}")
    [ "$test_rc" -eq 0 ] && test_rc=$rc
  else
    test_detail+=("$shard: ${last:-none selected}")
  fi
done
record tests "$test_rc" "$(IFS=';'; echo "${test_detail[*]}")"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
sanitize_backends=$(printf '%s\n' triton cute | grep -vxF -f <(printf '%s\n' "${skip_backends[@]}" "") | paste -sd, -)
if [ -z "$sanitizer" ]; then
  summary+=("sanitizers: skipped, compute-sanitizer not found")
elif [ -z "$sanitize_backends" ]; then
  summary+=("sanitizers: skipped, every backend failed its smoke test")
else
  # NAME TOOL LIMIT ARGS...: one sanitizer run over scripts/sanitizer_cases.py, recorded as stage NAME (log NAME.log)
  sanitize() {
    local name=$1 tool=$2 limit=$3
    shift 3
    local log=$out/$name.log
    echo "gpu_check: compute-sanitizer $tool, $name (limit ${limit} s)"
    # --report-api-errors no: the kernels' accesses are what is checked. The 2026-11-27 16:33 run's 34 memcheck
    # "errors" were all CUDA_ERROR_INVALID_VALUE returns of cuGetProcAddress_v2 (host libraries probing driver
    # entry points), with every case run and no kernel access reported.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$limit" "$sanitizer" --tool "$tool" --error-exitcode 3 \
      --report-api-errors no --target-processes all "$py" scripts/sanitizer_cases.py "$@" >"$log" 2>&1
    local rc=$?
    tail -n 30 "$log"
    local found
    found=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1 | sed 's/^=* *//')
    local detail
    case $rc in
      3) detail="$tool reported errors: $found" ;;
      0) detail=$found ;;
      124 | 137) detail="after ${limit} s: no verdict" ;;
      *) detail="a case raised (see $name.log); ${found:-no summary}" ;;
    esac
    record "$name" "$rc" "$detail"
  }
  sanitize memcheck memcheck "$sanitizer_s" --backends "$sanitize_backends" "${sanitizer_flags[@]}"
  if [[ ",$sanitize_backends," == *,cute,* ]]; then
    # shared-memory hazards between the warp roles of the CuTe kernels (TMA, mbarriers, named barriers)
    sanitize racecheck racecheck "$racecheck_s" --backends cute --tiny --variants without "${sanitizer_flags[@]}"
    # the backward variants in a run of their own, so that a slow one cannot cost the defaults their verdict; only
    # while it leaves the benchmark 150 s
    if [[ " ${sanitizer_flags[*]} " == *" --no-cute-bwd "* ]]; then
      :
    elif ((SECONDS + racecheck_s + 150 < total_s)); then
      sanitize racecheck-variants racecheck "$racecheck_s" --backends cute --variants only
    else
      summary+=("racecheck-variants: skipped at ${SECONDS} s, to leave the benchmark its time")
    fi
  fi
fi

left=$((total_s - SECONDS - 30))
budget=$((left > 60 ? left : 60))
echo "gpu_check: benchmark (budget ${budget} s)"
results=$root/bench/results
rm -f "$results"/summary.md "$results"/{attention,variants,bias,dispatch,lightning}.md "$results"/bench.png
timeout -k 10 $((budget + 90)) "$py" bench/run.py --quick --budget-s "$budget" --out "$results" \
  >"$out/bench.log" 2>&1
rc=$?
record benchmark "$rc" "budget ${budget} s"
cp "$results"/summary.md "$results"/bench.png "$out"/ 2>/dev/null || true

echo
if [ -f "$results/summary.md" ]; then
  cat "$results/summary.md"
else
  echo "no summary.md (the benchmark did not finish, or found no GPU); the end of its log:"
  tail -n 40 "$out/bench.log"
  cat "$results"/{attention,variants,bias,dispatch,lightning}.md 2>/dev/null
fi
# the logs as one archive (the device tool returns a limited number of files), the stage summary and the failed
# tests last, where a truncated output still shows them
failed_tests=$(grep -E "^(FAILED|ERROR) " "$out/tests.log" 2>/dev/null | cut -c1-240 | head -n 25)
tar -czf "$out/logs.tar.gz" -C "$out" --remove-files $(cd "$out" && ls -- *.log) 2>/dev/null || true
echo
[ -n "$failed_tests" ] && printf 'failed GPU tests (first 25):\n%s\n' "$failed_tests"
echo "gpu_check, ${SECONDS} s:"
printf '  %s\n' "${summary[@]}"
exit "$failed"
