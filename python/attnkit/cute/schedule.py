"""Host side of the causal tile order (kernels/cute/common/tile_scheduler.py): how many heads one section holds.

A section's tiles run together, so the data its heads share across tiles (K/V in the forward, Q/dO in the
backward) should fit in L2 together. An H100 has 50 MB of L2; the rest of the budget is left to the streams
each tile reads once. On the H100 (2026-11-27, bench/RESULTS.md) one section of every head took 1.14x the time of
the default in the causal forward; bench_variants also times half and twice this budget.
"""

from __future__ import annotations

import contextlib

L2_SECTION_BYTES = 32 * 1024 * 1024


@contextlib.contextmanager
def section_bytes(nbytes: int | None):
    """Launches inside use ``nbytes`` as the section budget (None: unchanged): for tests and benchmarks."""
    global L2_SECTION_BYTES
    saved = L2_SECTION_BYTES
    if nbytes is not None:
        L2_SECTION_BYTES = nbytes
    try:
        yield
    finally:
        L2_SECTION_BYTES = saved


def section_heads(bytes_per_unit: int, num_units: int, heads_per_unit: int = 1) -> int:
    """Heads per section: whole units (a K/V head and its ``heads_per_unit`` query heads) whose shared bytes
    fit ``L2_SECTION_BYTES``, at least one unit and at most ``num_units``, counted in heads."""
    units = max(min(L2_SECTION_BYTES // max(bytes_per_unit, 1), num_units), 1)
    return units * heads_per_unit
