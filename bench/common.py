"""What the benchmarks share: timing, the measured ceilings, the environment string, tables and the plot.

Timing is the median of `triton.testing.do_bench` after one explicit first call (compile, autotune) and
do_bench's own warm-up; do_bench zeroes a 256 MB buffer before every run, so L2 starts cold each time, and
`rotation` adds copies of inputs that are smaller than L2 so that no set is re-read warm. Inputs are random,
never zeros. Every figure names its card: `environment()` goes on top of each results file.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from attnkit import perf

PACKAGES = (
    "attnkit",
    "torch",
    "triton",
    "nvidia-cutlass-dsl",
    "flash-attn-4",
    "fla-core",
    "lightning-attn",
    "quack-kernels",
    "matplotlib",
)
ERROR_CHARS = 90


def cuda_or_exit(script: str) -> None:
    """Exit cleanly (status 0) with a message when there is no CUDA GPU: nothing here runs on the CPU."""
    if not torch.cuda.is_available():
        print(
            f"{script}: needs a CUDA GPU and torch {torch.__version__} sees none; nothing was measured. "
            "(On the CPU, `scripts/run` runs the demo instead.)"
        )
        sys.exit(0)


def our_backends(names: tuple[str, ...]) -> tuple[str, ...]:
    """The attnkit backends to time: ``names`` less those in $ATTNKIT_BENCH_SKIP (comma-separated), which
    scripts/gpu_check.sh sets for a backend whose kernels hung or were wrong in its smoke test."""
    skip = {s.strip() for s in os.environ.get("ATTNKIT_BENCH_SKIP", "").split(",") if s.strip()}
    if skip & set(names):
        print(f"benchmark: not timing attnkit {', '.join(sorted(skip & set(names)))} ($ATTNKIT_BENCH_SKIP)")
    return tuple(n for n in names if n not in skip)


def backward_skipped(backend: str) -> bool:
    """Whether $ATTNKIT_BENCH_SKIP names ``<backend>-bwd``: scripts/gpu_check.sh found only that backend's backward
    hanging or wrong, so its forward is still timed."""
    return f"{backend}-bwd" in {s.strip() for s in os.environ.get("ATTNKIT_BENCH_SKIP", "").split(",")}


BACKWARD_SKIPPED = "skipped: its backward failed the smoke test"


def short_error(e: BaseException) -> str:
    """One line for a table cell: the exception type and the start of its first line."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "OOM"
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


class Budget:
    """A wall-clock deadline; measurements started after it are recorded as skipped."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def share(self, fraction: float) -> Budget:
        """A sub-budget ending after `fraction` of what is left now (never after this one)."""
        sub = Budget(None)
        if self.deadline is not None:
            sub.deadline = time.monotonic() + max(self.left(), 0.0) * fraction
        return sub


@dataclass
class Result:
    """A median time in ms, or why there is none ('n/a: …', 'error: …', 'skipped …')."""

    ms: float | None = None
    note: str = ""
    derived: bool = False  # a difference of two timings (e.g. (fwd+bwd) − fwd), marked * in tables

    @property
    def ok(self) -> bool:
        return self.ms is not None


def do_bench(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median ms of `fn` after one explicit first call (compile, autotune) and do_bench's warm-up."""
    from triton.testing import do_bench as triton_do_bench

    fn()
    torch.cuda.synchronize()
    return float(triton_do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def measure(fn: Callable[[], object] | None, budget: Budget, *, error_prefix: str = "error") -> Result:
    """Time `fn`, turning any failure into a table note instead of an exception."""
    if fn is None:
        return Result(note="n/a")
    if budget.expired():
        return Result(note="skipped (time budget)")
    try:
        return Result(ms=do_bench(fn))
    except Exception as e:  # a failing method must not stop the others
        return Result(note=f"{error_prefix}: {short_error(e)}")
    finally:
        release()


def release() -> None:
    try:
        torch.cuda.synchronize()
    except Exception:  # a faulted context keeps failing; the next measurement records it
        pass
    torch.cuda.empty_cache()


def peak_extra_mib(run: Callable[[], object]) -> str:
    """Peak memory allocated by `run()` above what was allocated before it, in MiB (text for a table)."""
    release()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        run()
        torch.cuda.synchronize()
    except Exception as e:
        return short_error(e)
    finally:
        torch.cuda.empty_cache()
    return f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"


@functools.cache
def compiled_flex():
    """torch.compile'd flex_attention, shared by the benchmarks. Each shape, mask and score_mod is one more
    compiled graph: the recompile limit is raised so that no shape silently falls back to eager."""
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))
    return torch.compile(flex_attention, dynamic=False)


def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20))


def rotation(make: Callable[[], tuple], nbytes_per_set: int, max_sets: int = 8) -> Callable[[], tuple]:
    """A callable returning input sets in turn; enough sets that together they exceed twice L2."""
    count = 1 if nbytes_per_set >= 2 * l2_bytes() else min(max_sets, -(-2 * l2_bytes() // max(nbytes_per_set, 1)))
    sets = [make() for _ in range(count)]
    cycle = itertools.cycle(sets)
    return lambda: next(cycle)


@dataclass(frozen=True)
class Ceilings:
    matmul_tflops: float  # bf16 8192³ torch.matmul (cuBLAS)
    copy_tbps: float  # device-to-device copy, bytes read + written

    def text(self) -> str:
        return (
            f"ceilings on this card: bf16 matmul 8192³ {self.matmul_tflops:.0f} TFLOP/s (torch.matmul), "
            f"device-to-device copy {self.copy_tbps:.2f} TB/s (read + write)"
        )


def measure_ceilings() -> Ceilings:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    mm_ms = do_bench(lambda: torch.matmul(a, b))
    elements = 1 << 29  # 1 GiB of bf16, far beyond L2
    src = torch.randn(elements, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src))
    nbytes = src.numel() * src.element_size()
    return Ceilings(
        matmul_tflops=perf.tflops(perf.matmul_flops(n, n, n), mm_ms),
        copy_tbps=perf.tbps(perf.copy_bytes(nbytes), copy_ms),
    )


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def environment() -> str:
    """Card, driver, versions, commit and date: the header of every results file."""
    lines = [f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        driver = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        lines.append(
            f"card: {p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}, "
            f"{p.total_memory / 2**30:.0f} GiB, L2 {l2_bytes() / 2**20:.0f} MiB, "
            f"driver {driver.splitlines()[0] if driver else 'unknown'}"
        )
    else:
        lines.append("card: none (no CUDA GPU visible)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    python = sys.version.split()[0]
    lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn}), python {python}")
    lines.append("packages: " + ", ".join(f"{name} {_package_version(name)}" for name in PACKAGES))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = _command_output(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    if commit:
        lines.append(f"attnkit commit {commit}{' with local changes' if dirty else ''}")
    elif os.environ.get("ATTNKIT_COMMIT"):  # a copy of the tree without .git (the lent GPU machine)
        lines.append(f"attnkit commit {os.environ['ATTNKIT_COMMIT']} (from ATTNKIT_COMMIT)")
    lines.append("command: " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    return "\n".join(lines)


@dataclass
class Entry:
    """One row: a method on one shape. `rate` and `pct` come from the bench's formulas for that shape."""

    shape: str
    method: str
    ours: bool
    result: Result
    rate: float | None = None
    pct: float | None = None
    extras: dict[str, str] = field(default_factory=dict)


@dataclass
class Table:
    """Rows of one workload and direction. `unit` names `rate`; `pct_of` names the ceiling `pct` refers to."""

    title: str
    unit: str
    pct_of: str
    entries: list[Entry] = field(default_factory=list)
    extra_columns: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        shape: str,
        method: str,
        ours: bool,
        result: Result,
        rate: Callable[[float], float] | None = None,
        pct: Callable[[float], float] | None = None,
        **extras: str,
    ) -> Entry:
        entry = Entry(shape, method, ours, result, extras=dict(extras))
        if result.ok and rate is not None:
            entry.rate = rate(result.ms)
        if result.ok and pct is not None:
            entry.pct = pct(result.ms)
        self.entries.append(entry)
        shown = f"{result.ms:.3f} ms" if result.ok else result.note
        print(f"{self.title} | {shape} | {method}: {shown}", file=sys.stderr, flush=True)
        return entry

    def peers(self) -> list[str]:
        """Methods that are not ours and have at least one time: each gets a ratio column."""
        seen: dict[str, None] = {}
        for e in self.entries:
            if not e.ours and e.result.ok:
                seen[e.method] = None
        return list(seen)

    def markdown(self) -> str:
        peers = self.peers()
        pct_column = [f"% of {self.pct_of}"] if self.pct_of else []  # "": no ceiling to compare with
        head = ["shape", "method", "ms", self.unit, *pct_column, *self.extra_columns]
        head += [f"vs {p}" for p in peers]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        by_shape: dict[str, dict[str, Entry]] = {}
        for e in self.entries:
            by_shape.setdefault(e.shape, {})[e.method] = e
        for e in self.entries:
            r = e.result
            cells = [
                e.shape,
                f"**{e.method}**" if e.ours else e.method,
                (f"{r.ms:.3f}" + ("*" if r.derived else "")) if r.ok else r.note or "n/a",
                _fmt(e.rate),
                *([_fmt(e.pct, ".0f")] if self.pct_of else []),
                *(e.extras.get(c, "") for c in self.extra_columns),
            ]
            for p in peers:
                peer = by_shape[e.shape].get(p)
                if not e.ours:
                    cells.append("")
                elif r.ok and peer is not None and peer.result.ok:
                    cells.append(f"{peer.result.ms / r.ms:.2f}×")
                else:
                    cells.append("n/a")
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
        if peers:
            lines.append("vs X = X's time / ours: above 1 means attnkit is faster.")
        if any(e.result.derived for e in self.entries):
            lines.append("\\* (forward+backward) − forward: the backward alone could not be repeated (retain_graph).")
        for note in self.notes:
            lines.append(f"- {note}")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return ""
    if spec == ".3g" and value >= 100:
        return f"{value:.0f}"
    return format(value, spec)


def render(title: str, env: str, ceilings: Ceilings | None, tables: list[Table]) -> str:
    parts = [f"## {title}", "", "```", env, "```", ""]
    if ceilings is not None:
        parts += [ceilings.text(), ""]
    for t in tables:
        parts += [t.markdown(), ""]
    return "\n".join(parts)


def plot(tables: list[Table], path: str) -> str | None:
    """A bar chart per table (rate per shape and method) into `path`; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tables = [t for t in tables if any(e.rate is not None for e in t.entries)]
    if not tables:
        return None
    fig, axes = plt.subplots(len(tables), 1, figsize=(11, 3.2 * len(tables)), squeeze=False)
    for ax, t in zip(axes[:, 0], tables, strict=True):
        shapes = list(dict.fromkeys(e.shape for e in t.entries))
        methods = list(dict.fromkeys(e.method for e in t.entries))
        width = 0.8 / max(len(methods), 1)
        for m_index, method in enumerate(methods):
            values = []
            for shape in shapes:
                rates = [e.rate for e in t.entries if e.shape == shape and e.method == method]
                values.append(rates[0] if rates and rates[0] is not None else 0.0)
            xs = [s_index + m_index * width for s_index in range(len(shapes))]
            ax.bar(xs, values, width=width, label=method)
        ax.set_xticks([s_index + 0.4 - width / 2 for s_index in range(len(shapes))])
        ax.set_xticklabels(shapes, fontsize=7)
        ax.set_ylabel(t.unit)
        ax.set_title(t.title, fontsize=9)
        ax.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def standalone(name: str, run: Callable[..., list[Table]], args) -> None:
    """`python bench/bench_X.py`: measure the ceilings, run one bench, print its table."""
    cuda_or_exit(name)
    env = environment()
    ceilings = measure_ceilings()
    budget = Budget(getattr(args, "budget_s", None))
    tables = run(args, ceilings, budget)
    print(render(name, env, ceilings, tables))
