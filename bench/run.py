"""Runs the benchmarks on one CUDA GPU in one process (same card, same clocks for every peer): softmax attention,
the CuTe kernels' switches, attention with a bias, CuTe against Triton per class of call (what backend="auto" should
pick), Lightning attention. Writes one Markdown file per benchmark
and summary.md (card, versions, ceilings, every table) under --out, a PNG plot when matplotlib is importable,
and prints the tables last. Peers that are missing read 'n/a'; an attnkit backend that fails has its error in its cell.

    python bench/run.py [--quick] [--only attention variants bias dispatch lightning] [--budget-s S] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import bench_attention
import bench_bias
import bench_dispatch
import bench_lightning
import bench_variants
import common

BENCHES = {
    "attention": bench_attention,
    "variants": bench_variants,
    "bias": bench_bias,
    "dispatch": bench_dispatch,
    "lightning": bench_lightning,
}
# Share of the time budget left when each starts: attention 45 %, the variants 30 % of the rest, bias half of what
# then remains, the dispatch classes 80 % of the rest (each new class compiles Triton kernels), lightning what is
# left (issue 4's targets are attention's).
SHARES = {"attention": 0.45, "variants": 0.3, "bias": 0.5, "dispatch": 0.8, "lightning": 1.0}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer shapes (each benchmark's --quick)")
    p.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--budget-s", type=float, help="measurements that would start after this many seconds are skipped")
    p.add_argument("--no-plot", action="store_true")
    return p


def main() -> int:
    args = parser().parse_args()
    common.cuda_or_exit("bench/run.py")
    os.makedirs(args.out, exist_ok=True)
    budget = common.Budget(args.budget_s)
    env = common.environment()
    print(env, file=sys.stderr, flush=True)
    ceilings = common.measure_ceilings()
    common.release()
    print(ceilings.text(), file=sys.stderr, flush=True)
    sections: list[str] = []
    all_tables: list[common.Table] = []
    crashed = []
    for name, module in BENCHES.items():
        if name not in args.only:
            continue
        start = time.monotonic()
        bench_args = module.parser().parse_args(["--quick"] if args.quick else [])
        try:
            tables = module.run(bench_args, ceilings, budget.share(SHARES[name]))
            failure = ""
        except Exception:  # one broken benchmark must not hide the others
            tables, failure = [], traceback.format_exc()
            crashed.append(name)
        text = common.render(name, env, ceilings, tables)
        if failure:
            text += f"\nthe {name} benchmark stopped:\n\n```\n{failure}```\n"
        with open(os.path.join(args.out, f"{name}.md"), "w") as f:
            f.write(text)
        sections.append("\n\n".join(t.markdown() for t in tables) + (f"\n{name} stopped: {failure}" if failure else ""))
        all_tables += tables
        print(f"{name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    summary = "\n\n".join(["# attnkit benchmark", f"```\n{env}\n```", ceilings.text(), *sections]) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    written = None if args.no_plot else common.plot(all_tables, os.path.join(args.out, "bench.png"))
    plot_line = f"plot: {written}" if written else "plot: skipped (matplotlib not importable or --no-plot)"
    print(f"results: {args.out}; {plot_line}", file=sys.stderr, flush=True)
    print(summary)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
