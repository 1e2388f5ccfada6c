"""Online softmax in base 2 over wgmma accumulators.

Scores arrive in accumulator units and are scaled by ``scale_log2`` inside the exp2 argument (one
FFMA per element). Row statistics live in registers; a row is shared by the four lanes of a quad,
so maxima are quad-reduced each tile and sums only once, in ``finalize``.

Two switches, both compile-time:

* ``rescale_threshold`` (log2 units, 0 = off): keep the stale row max until the new one exceeds it
  by more than the threshold. P then stays below ``2**threshold`` (256 for 8.0: exact in fp16,
  bf16 and fp32), and O is only rescaled when some row of the warp really moved.
* ``poly_exp2_per_8``: of every 8 columns a thread holds, this many use the FMA-pipe polynomial
  exp2 instead of MUFU.EX2.

A row that never saw a visible key keeps ``row_max == -inf``; it finalizes to O = 0 and
lse = -inf without ever forming inf - inf.
"""

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, const_expr

from .dynamic import RuntimeFields
from .fast_exp2 import exp2_poly
from .layouts import acc_view_mn

LN2 = math.log(2.0)


@cute.jit
def _quad_allreduce_max(x: Float32) -> Float32:
    x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=2))
    return cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=1))


@cute.jit
def _quad_allreduce_sum(x: Float32) -> Float32:
    x = x + cute.arch.shuffle_sync_bfly(x, offset=2)
    return x + cute.arch.shuffle_sync_bfly(x, offset=1)


def _tree_reduce(values: list, op):
    """Pairwise reduction: depth log2(n) instead of a dependent chain of n - 1 operations."""
    while len(values) > 1:
        paired = [op(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        values = paired + ([values[-1]] if len(values) % 2 else [])
    return values[0]


class OnlineSoftmax(RuntimeFields):
    # device primitives, as seams: the CPU tests run the same code with plain arithmetic
    fmax = staticmethod(cute.arch.fmax)
    quad_max = staticmethod(_quad_allreduce_max)
    quad_sum = staticmethod(_quad_allreduce_sum)
    rcp = staticmethod(cute.arch.rcp_approx)
    vote_any = staticmethod(cute.arch.vote_any_sync)

    def __init__(
        self,
        scale_log2: Float32,
        num_rows: int,
        rescale_threshold: float = 0.0,
        poly_exp2_per_8: int = 0,
        poly_degree: int = 3,
    ):
        self.scale_log2 = scale_log2
        self.num_rows = num_rows
        self.rescale_threshold = rescale_threshold
        self.poly_exp2_per_8 = poly_exp2_per_8
        self.poly_degree = poly_degree
        self.row_max = cute.make_rmem_tensor(num_rows, Float32)
        self.row_sum = cute.make_rmem_tensor(num_rows, Float32)

    @cute.jit
    def reset(self) -> None:
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)

    @cute.jit
    def _exp2(self, x: Float32, col: cutlass.Constexpr[int]) -> Float32:
        out = x
        if const_expr(col % 8 < self.poly_exp2_per_8):
            out = exp2_poly(x, self.poly_degree)
        else:
            out = cute.math.exp2(x, fastmath=True)
        return out

    @cute.jit
    def step(self, acc_S: cute.Tensor, is_first: cutlass.Constexpr[bool]) -> cute.Tensor:
        """Overwrite acc_S with P = 2^(S*scale - max) and return the per-row factor for O."""
        s_mn = acc_view_mn(acc_S)
        row_scale = cute.make_rmem_tensor(self.num_rows, Float32)
        assert cute.size(s_mn, mode=[0]) == self.num_rows
        num_cols = cute.size(s_mn, mode=[1])
        for r in cutlass.range_constexpr(self.num_rows):
            tile_max = _tree_reduce([s_mn[r, c] for c in range(num_cols)], self.fmax)
            tile_max = self.quad_max(tile_max)
            old_max = self.row_max[r]
            new_max = self.fmax(old_max, tile_max)
            if const_expr(self.rescale_threshold > 0.0 and not is_first):
                # -inf old max: the difference is +inf, so the first visible tile always updates
                grown = (new_max - old_max) * self.scale_log2
                new_max = new_max if grown > self.rescale_threshold else old_max
            self.row_max[r] = new_max
            safe_max = new_max if new_max != -Float32.inf else Float32(0.0)
            max_scaled = safe_max * self.scale_log2
            if const_expr(is_first):
                row_scale[r] = 1.0
            else:
                # finite old max implies finite new max, so this is never inf - inf
                row_scale[r] = cute.math.exp2((old_max - safe_max) * self.scale_log2, fastmath=True)
            # P goes back into acc_S as one row store: element-wise stores into the accumulator made the
            # compiler evaluate every exp2 twice per tile in most configs (once for the row sum, once for
            # the conversion of P), 130 MUFU.EX2 per d=128 tile instead of 66 (a SASS test counts them)
            p_row = cute.make_rmem_tensor(num_cols, Float32)
            for c in cutlass.range_constexpr(num_cols):
                p_row[c] = self._exp2(s_mn[r, c] * self.scale_log2 - max_scaled, c)
            s_mn[r, None].store(p_row.load())
            partial_sum = _tree_reduce([p_row[c] for c in range(num_cols)], lambda a, b: a + b)
            if const_expr(is_first):
                self.row_sum[r] = partial_sum
            else:
                self.row_sum[r] = self.row_sum[r] * row_scale[r] + partial_sum
        return row_scale

    @cute.jit
    def rescale_o(self, acc_O: cute.Tensor, row_scale: cute.Tensor) -> None:
        o_mn = acc_view_mn(acc_O)
        if const_expr(self.rescale_threshold > 0.0):
            moved = row_scale[0] != 1.0
            for r in cutlass.range_constexpr(1, self.num_rows):
                moved = moved or row_scale[r] != 1.0
            # warp-uniform branch: most tiles leave every row max in place
            if self.vote_any(moved):
                for r in cutlass.range_constexpr(self.num_rows):
                    o_mn[r, None].store(o_mn[r, None].load() * row_scale[r])
        else:
            for r in cutlass.range_constexpr(self.num_rows):
                o_mn[r, None].store(o_mn[r, None].load() * row_scale[r])

    @cute.jit
    def finalize(self) -> tuple[cute.Tensor, cute.Tensor]:
        """Return (factor for O, natural-log lse) per row; empty rows get (0, -inf)."""
        out_scale = cute.make_rmem_tensor(self.num_rows, Float32)
        lse = cute.make_rmem_tensor(self.num_rows, Float32)
        for r in cutlass.range_constexpr(self.num_rows):
            total = self.quad_sum(self.row_sum[r])
            row_max = self.row_max[r]
            empty = row_max == -Float32.inf or total == 0.0
            safe_total = Float32(1.0) if empty else total
            out_scale[r] = Float32(0.0) if empty else self.rcp(safe_total)
            log2_sum = cute.math.log2(safe_total, fastmath=True)
            lse_finite = (row_max * self.scale_log2 + log2_sum) * LN2
            lse[r] = -Float32.inf if empty else lse_finite
        return out_scale, lse
