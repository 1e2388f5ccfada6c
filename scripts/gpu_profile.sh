#!/usr/bin/env bash
# Nsight Compute on one launch each of attnkit's CuTe sm90 attention and FA4's, B2 H16 N8192 D128 bf16: the forward
# non-causal and causal, the backward non-causal. A second call on a lent GPU, after scripts/gpu_check.sh, where the
# session has 3 minutes of device time left (about 2 minutes on an H100, most of it imports and compiles):
#   bash .device/gpu.sh bash scripts/gpu_profile.sh
# Per case: <case>.ncu-rep (the report), <case>.txt (its details page) and <case>.csv (every raw metric) under $OUT
# (else bench/results/gpu_profile), packed into profiles.tar.gz; the backward cases also sample warp stalls per SASS
# instruction (<case>-source.csv, and <case>-hot.txt: each kernel's hottest instructions). The headline metrics of
# every case and the hottest instructions print last.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=$(command -v python3 || command -v python)
out=${OUT:-$root/bench/results/gpu_profile}
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
if [ -z "$ncu" ]; then
  echo "gpu_profile: ncu not found"
  exit 2
fi
case_s=${GPU_PROFILE_CASE_S:-75}
# sections every ncu since 2022 has; stall reasons come with WarpStateStats (in the raw page)
sections=(SpeedOfLight ComputeWorkloadAnalysis MemoryWorkloadAnalysis Occupancy LaunchStats SchedulerStats
  WarpStateStats InstructionStats)
# and where this ncu lists it (an unknown section would fail every case): the memory tables, whose shared-memory rows
# (wavefronts, bank conflicts) and L2 rows (reductions: dQ's adds) say whether the backward waits on shared memory or
# on L2's atomics
available=$("$ncu" --list-sections 2>/dev/null || true)
for s in MemoryWorkloadAnalysis_Tables; do
  if grep -qw "$s" <<<"$available"; then
    sections+=("$s")
  else
    echo "gpu_profile: this ncu lists no section $s; left out"
  fi
done
section_args=()
for s in "${sections[@]}"; do section_args+=(--section "$s"); done

# NAME [--source] ARGS...: one case of scripts/gpu_profile.py under ncu; --source also samples warp stalls per SASS
# instruction (SourceCounters) and writes the hottest instructions of each kernel to NAME-hot.txt (scripts/ncu_hot.py)
profile() {
  local name=$1
  shift
  local extra=()
  if [ "${1:-}" = "--source" ]; then
    extra=(--section SourceCounters)
    shift
  fi
  echo "gpu_profile: $name (limit ${case_s} s)"
  timeout -k 5 "$case_s" "$ncu" --clock-control none --profile-from-start off "${section_args[@]}" "${extra[@]}" \
    --export "$out/$name" --force-overwrite "$py" scripts/gpu_profile.py "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if [ -f "$out/$name.ncu-rep" ]; then
    "$ncu" --import "$out/$name.ncu-rep" --page details >"$out/$name.txt" 2>&1
    "$ncu" --import "$out/$name.ncu-rep" --page raw --csv >"$out/$name.csv" 2>&1
    if [ "${#extra[@]}" -gt 0 ]; then
      "$ncu" --import "$out/$name.ncu-rep" --page source --csv --print-source sass >"$out/$name-source.csv" 2>&1
      "$py" scripts/ncu_hot.py "$out/$name-source.csv" --top 20 >"$out/$name-hot.txt" 2>&1
    fi
  fi
  echo "  $name: exit $rc"
}

# the backward first: its gap to FA4 is the largest (B2 H16 N8192 D128: 0.82x on 2026-11-27), and where each
# kernel's warps wait, instruction by instruction, is what the next change needs
profile bwd-cute --source cute --backward
profile bwd-fa4 --source fa4 --backward
profile fwd-cute cute
profile fwd-fa4 fa4
profile fwd-causal-cute cute --causal
profile fwd-causal-fa4 fa4 --causal

echo
echo "gpu_profile: headline metrics (per kernel: name, then duration, SM and memory throughput, issue slots, warp"
echo "cycles per issued instruction)"
for f in "$out"/*.txt; do
  [ -f "$f" ] || continue
  case $f in *-hot.txt) continue ;; esac
  echo "== $(basename "$f" .txt)"
  grep -E "^  [A-Za-z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Warp Cycles Per Issued" \
    "$f" | grep -v "^    Section" | head -n 40
done
for f in "$out"/*-hot.txt; do
  [ -f "$f" ] || continue
  echo "== $(basename "$f" .txt): the most warp-stall samples per SASS instruction"
  head -n 70 "$f"
done
tar -czf "$out/profiles.tar.gz" -C "$out" --remove-files $(cd "$out" && ls -- *.ncu-rep *.log *.csv 2>/dev/null) \
  2>/dev/null || true
