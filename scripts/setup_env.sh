#!/usr/bin/env bash
# Creates or reuses .venv and installs attnkit with what it needs. Sourced by scripts/run and scripts/test.
# A machine whose python3 already has a CUDA build of torch (the GPU machine) shares it through
# --system-site-packages; elsewhere the CPU build of torch 2.13.0 comes from the local wheel via pip.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.attnkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup_env.sh -nt "$stamp" ]; then
  pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
  if ! python -c "import torch" 2>/dev/null; then
    pip_q torch==2.13.0
  fi
  if ! python -c "import triton" 2>/dev/null; then
    pip_q triton==3.9.0
  fi
  pip_q nvidia-cutlass-dsl==4.8.1 apache-tvm-ffi==0.1.15.post2 pytest==9.2.0 ruff==0.17.6 tqdm==4.70.1 numpy
  pip_q --no-build-isolation --no-deps -e .
  python -c "import torch, triton, cutlass, attnkit" || { echo "setup failed: a dependency does not import" >&2; exit 1; }
  touch "$stamp"
fi
