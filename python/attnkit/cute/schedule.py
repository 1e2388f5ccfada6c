"""Host side of the tile order (kernels/cute/common/tile_scheduler.py): how many CTAs the forward launches, and
how many heads one section of the causal order holds.

A section's tiles run together, so the data its heads share across tiles (K/V in the forward, Q/dO in the
backward) should fit in L2 together. An H100 has 50 MB of L2; the rest of the budget is left to the streams
each tile reads once. On the H100 (2026-11-27, bench/RESULTS.md) one section of every head took 1.14x the time of
the default in the causal forward; bench_variants also times half and twice this budget.

CTAs: the forward is persistent (one CTA per SM, CTA c of G taking tiles c, c + G, ...) where every tile costs the
same. Where the tiles' work differs (causal and right-windowed attention, in their longest-first order) it launches
one CTA per tile in that order, so the hardware hands the next tile to whichever SM frees first: FA4's choice on
sm90, and this backward's. The static assignment is unbalanced there: with a tile's time proportional to its key
blocks, CTA c's share at B2 H16 N8192 D128 causal (128-row tiles, 8-head sections, 132 SMs) ends at 1.16x the
ideal makespan, greedy dispatch at 1.00x (a model). The H100 measured it (2026-11-27 16:39 UTC, bench/RESULTS.md):
one CTA per tile 0.879 ms, the static persistent schedule 1.003 ms (1.14x slower), FA3's dynamic one 0.906 ms.
bench_variants keeps timing both ("persistent (static)", "persistent (dynamic)"), also at N = 1024 and 2048, where
one CTA per tile pays its prologue and epilogue on tiles of a few key blocks (the dynamic one was 1.10x faster at
N = 2048 and 0.88x at 1024 in that run: one sample each, left as a variant).
"""

from __future__ import annotations

import contextlib

L2_SECTION_BYTES = 32 * 1024 * 1024

# the forward kernel's max_ctas that launches one CTA per tile (its grid is min(tiles, max_ctas))
ONE_TILE_PER_CTA = 2**31 - 1

# None: forward_ctas decides; True / False: every forward persistent / one CTA per tile (tests and benchmarks)
_PERSISTENT: bool | None = None


@contextlib.contextmanager
def persistent(flag: bool | None):
    """Forwards launched inside are persistent (True), one CTA per tile (False) or as forward_ctas picks (None)."""
    global _PERSISTENT
    saved = _PERSISTENT
    _PERSISTENT = flag
    try:
        yield
    finally:
        _PERSISTENT = saved


def forward_ctas(sm_count: int, longest_first: bool, dynamic: bool = False) -> int:
    """The forward's ``max_ctas``: the SM count (persistent) where every tile costs the same, one CTA per tile where
    the tiles run longest first (causal or a right window bound). ``dynamic`` (FwdConfig.dynamic_schedule): always
    persistent, its CTAs take their tiles from a counter."""
    persist = not longest_first if _PERSISTENT is None else _PERSISTENT
    return sm_count if persist or dynamic else ONE_TILE_PER_CTA


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
