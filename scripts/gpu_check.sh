#!/usr/bin/env bash
# The one call for a lent GPU, from the repo root (see ../shared/device/README.md):
#   bash .device/gpu.sh bash scripts/gpu_check.sh
# 1. versions; 2. the GPU tests (pytest -m "gpu or sm90"); 3. compute-sanitizer memcheck on small shapes of
# every attnkit backend; 4. the quick benchmark against the peers (bench/run.py --quick), its time budget being
# what is left of GPU_CHECK_TOTAL_S. A failing stage does not stop the later ones; the exit status is 1 if any
# stage failed. Logs, summary.md and the plot go to $OUT when set (else bench/results/gpu_check); the stage
# summary and the benchmark tables print last. About 7 minutes on an H100, 8 at worst: give the call 540 s.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=$(command -v python3 || command -v python)
out=${OUT:-$root/bench/results/gpu_check}
mkdir -p "$out"
test_s=${GPU_CHECK_TEST_S:-210}
sanitizer_s=${GPU_CHECK_SANITIZER_S:-90}
total_s=${GPU_CHECK_TOTAL_S:-400}
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

# Compile the shipped CuTe configs on all cores first: serial compiles inside the tests would eat device time.
echo "gpu_check: precompile (CuTe, $(nproc) processes)"
timeout -k 10 120 "$py" -m attnkit.precompile --arch sm_90a --jobs "$(nproc)" >"$out/precompile.log" 2>&1
record precompile $? "$(tail -n 2 "$out/precompile.log" | tr '\n' ' ')"

echo "gpu_check: tests (limit ${test_s} s)"
timeout_plugin=()
if "$py" -c "import pytest_timeout" >/dev/null 2>&1; then
  timeout_plugin=(--timeout 120)
fi
timeout -k 10 "$test_s" "$py" -m pytest -m "gpu or sm90" -q -x -ra -p no:cacheprovider "${timeout_plugin[@]}" 2>&1 |
  tee "$out/tests.log"
rc=${PIPESTATUS[0]}
last=$(grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran" "$out/tests.log" | tail -n 1)
if [ "$rc" -eq 5 ]; then
  summary+=("tests: none selected by -m \"gpu or sm90\"")
else
  record tests "$rc" "$last"
fi

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -z "$sanitizer" ]; then
  summary+=("memcheck: skipped, compute-sanitizer not found")
else
  echo "gpu_check: compute-sanitizer memcheck (limit ${sanitizer_s} s)"
  case_dir=$(mktemp -d)
  cat >"$case_dir/sanitizer_case.py" <<'EOF'
"""Small shapes through every attnkit backend, forward and backward, for compute-sanitizer."""
import sys

import attnkit
import torch

failures = []


def case(name, fn):
    try:
        fn()
        torch.cuda.synchronize()
        print(f"{name}: ran")
    except attnkit.BackendUnavailableError as e:
        print(f"{name}: unavailable ({e})")
    except Exception as e:
        print(f"{name}: raised {type(e).__name__}: {e}")
        failures.append(name)


def attention(backend, sq, sk, h, hkv, d, causal, window, rank):
    def run():
        def leaf(*shape):
            return torch.randn(*shape, device="cuda", dtype=torch.bfloat16).requires_grad_()

        q, k, v = leaf(2, sq, h, d), leaf(2, sk, hkv, d), leaf(2, sk, hkv, d)
        bias = attnkit.LowRankBias(leaf(2, sq, h, rank), leaf(2, sk, h, rank)) if rank else None
        out = attnkit.attention(q, k, v, causal=causal, window=window, bias=bias, backend=backend)
        out.backward(torch.randn_like(out))

    return run


def lightning(backend):
    def run():
        def leaf(*shape):
            return (0.3 * torch.randn(*shape, device="cuda", dtype=torch.bfloat16)).requires_grad_()

        slopes = attnkit.lightning.slopes(2, device="cuda")
        state = torch.randn(2, 2, 64, 64, device="cuda").requires_grad_()
        q, k, v = leaf(2, 77, 2, 64), leaf(2, 77, 2, 64), leaf(2, 77, 2, 64)
        o, final = attnkit.lightning_attention(
            q, k, v, slopes, initial_state=state, output_final_state=True, backend=backend
        )
        (o.float().sum() + final.sum()).backward()
        with torch.no_grad():
            attnkit.lightning_attention_step(q[:, :1], k[:, :1], v[:, :1], slopes, state.detach(), backend=backend)

    return run


shapes = [
    (77, 77, 2, 2, 64, True, (-1, -1), 0),
    (33, 100, 4, 2, 128, True, (-1, -1), 4),
    (65, 65, 2, 1, 64, False, (16, 0), 0),
    (100, 100, 2, 2, 128, False, (-1, -1), 8),
]
for backend in ("triton", "cute"):
    for s in shapes:
        case(f"attention {backend} {s}", attention(backend, *s))
case("lightning triton", lightning("triton"))
sys.exit(1 if failures else 0)
EOF
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$sanitizer_s" "$sanitizer" --tool memcheck --error-exitcode 3 \
    --target-processes all "$py" "$case_dir/sanitizer_case.py" 2>&1 | tee "$out/sanitizer.log"
  rc=${PIPESTATUS[0]}
  found=$(grep -E "ERROR SUMMARY" "$out/sanitizer.log" | tail -n 1 | sed 's/^=* *//')
  case $rc in
    3) detail="memcheck reported errors: $found" ;;
    0) detail=$found ;;
    124 | 137) detail="after ${sanitizer_s} s: no verdict" ;;
    *) detail="a case raised (see above); ${found:-no memcheck summary}" ;;
  esac
  record memcheck "$rc" "$detail"
  rm -rf "$case_dir"
fi

left=$((total_s - SECONDS - 30))
budget=$((left > 60 ? left : 60))
echo "gpu_check: benchmark (budget ${budget} s)"
results=$root/bench/results
rm -f "$results"/summary.md "$results"/attention.md "$results"/bias.md "$results"/lightning.md "$results"/bench.png
timeout -k 10 $((budget + 90)) "$py" bench/run.py --quick --budget-s "$budget" --out "$results" \
  >"$out/bench.log" 2>&1
rc=$?
record benchmark "$rc" "budget ${budget} s"
cp "$results"/summary.md "$results"/bench.png "$out"/ 2>/dev/null || true

echo
echo "gpu_check, ${SECONDS} s:"
printf '  %s\n' "${summary[@]}"
echo
if [ -f "$results/summary.md" ]; then
  cat "$results/summary.md"
else
  echo "no summary.md (the benchmark did not finish, or found no GPU); the end of its log:"
  tail -n 40 "$out/bench.log"
  cat "$results"/attention.md "$results"/bias.md "$results"/lightning.md 2>/dev/null
fi
exit "$failed"
