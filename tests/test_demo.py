"""`scripts/run` without a GPU: the demo, started the way the script starts it, runs every op through the
reference and the Triton interpreter and finds them correct."""

import os
import subprocess
import sys


def test_demo_runs_every_op_on_the_cpu():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ATTNKIT_DEMO_REEXEC")}
    done = subprocess.run([sys.executable, "-m", "attnkit.demo"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if "triton (CPU interpreter)" in line]
    assert len(rows) == 3 and all(line.rstrip().endswith("ok") for line in rows), done.stdout
