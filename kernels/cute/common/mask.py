"""Causal (bottom-right aligned) and sliding-window visibility, plus the key-length tail.

Query row i sees key j iff ``j < seqlen_k`` and
``(not has_left or j >= i + offset - window_left)`` and ``(not has_right or j <= i + offset +
window_right)`` with ``offset = seqlen_k - seqlen_q``; causal is ``has_right`` with
``window_right = 0``. ``has_left``/``has_right`` are compile-time, the window sizes runtime.

Only boundary tiles are masked: the kernel asks ``tile_needs_mask`` per (rows, key block) and calls
``apply`` under that runtime branch; interior tiles pay one comparison per tile, or none where the kernel
loops over the interior blocks (``boundary_blocks``) separately.

Rows are tile rows; with ``rows_per_position`` = G > 1 (the query heads of a GQA group packed into one
tile, head fastest) tile row r is query position r // G.
"""

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from .dynamic import RuntimeFields
from .layouts import acc_view_mn


class AttentionMask(RuntimeFields):
    def __init__(
        self,
        seqlen_q: Int32,
        seqlen_k: Int32,
        window_left: Int32,
        window_right: Int32,
        has_left: bool,
        has_right: bool,
        tile_n: int,
        rows_per_position: int = 1,
    ):
        self.seqlen_q = seqlen_q
        self.seqlen_k = seqlen_k
        self.window_left = window_left
        self.window_right = window_right
        self.has_left = has_left
        self.has_right = has_right
        self.tile_n = tile_n
        self.rows_per_position = rows_per_position
        self.offset = seqlen_k - seqlen_q

    def position(self, row: Int32) -> Int32:
        """The query position of tile row ``row``."""
        return row if const_expr(self.rows_per_position == 1) else row // self.rows_per_position

    def position_end(self, row_end: Int32) -> Int32:
        """One past the position of the last row before ``row_end``."""
        if const_expr(self.rows_per_position == 1):
            return row_end
        return cute.ceil_div(row_end, self.rows_per_position)

    @cute.jit
    def n_block_range(self, row_start: Int32, row_end: Int32) -> tuple[Int32, Int32]:
        """Key blocks [n_min, n_max) that any row in [row_start, row_end) can see (maybe empty)."""
        row_start, row_end = self.position(row_start), self.position_end(row_end)
        n_max = cute.ceil_div(self.seqlen_k, self.tile_n)
        if const_expr(self.has_right):
            last_row = cutlass.min(row_end, self.seqlen_q) - 1
            # one past the rightmost visible key of the last row; <= 0 means nothing is visible
            key_end = cutlass.min(last_row + self.offset + self.window_right + 1, self.seqlen_k)
            n_max = cutlass.max(cute.ceil_div(cutlass.max(key_end, 0), self.tile_n), 0)
        n_min = Int32(0)
        if const_expr(self.has_left):
            key_start = cutlass.max(row_start + self.offset - self.window_left, 0)
            n_min = key_start // self.tile_n
        return n_min, n_max

    @cute.jit
    def tile_needs_mask(self, row_start: Int32, row_end: Int32, n_block: Int32) -> cutlass.Boolean:
        """Whether any (row, key) of the tile is invisible. Rows at or past seqlen_q are ignored."""
        row_start, row_end = self.position(row_start), self.position_end(row_end)
        key_start = n_block * self.tile_n
        key_end = key_start + self.tile_n
        need = key_end > self.seqlen_k
        if const_expr(self.has_right):
            need = need or key_end - 1 > row_start + self.offset + self.window_right
        if const_expr(self.has_left):
            last_row = cutlass.min(row_end, self.seqlen_q) - 1
            need = need or key_start < last_row + self.offset - self.window_left
        return need

    @cute.jit
    def boundary_blocks(self, row_start: Int32, row_end: Int32, n_min: Int32, n_max: Int32) -> tuple[Int32, Int32]:
        """(right, left): of the key blocks [n_min, n_max), the ``right`` last and the ``left`` first are the only
        ones ``tile_needs_mask`` can find boundary tiles in for rows [row_start, row_end): the key-length tail and
        the right window bound at the right end, the left bound at the left end (they may overlap). Every block
        between needs no mask, so a loop over them can leave the mask out."""
        row_start, row_end = self.position(row_start), self.position_end(row_end)
        # block n ends past the keys iff (n + 1) * tile_n > seqlen_k, iff n >= seqlen_k // tile_n
        first_right = self.seqlen_k // self.tile_n
        if const_expr(self.has_right):
            # ... and past the first row's last visible key k iff (n + 1) * tile_n - 1 > k, iff n >= (k + 1) // tile_n
            last_key = row_start + self.offset + self.window_right
            first_right = cutlass.min(first_right, cutlass.max(last_key + 1, 0) // self.tile_n)
        right = cutlass.max(n_max - cutlass.max(first_right, n_min), 0)
        left = Int32(0)
        if const_expr(self.has_left):
            # block n starts before the last row's first visible key k iff n * tile_n < k, iff n < ceil(k / tile_n)
            last_row = cutlass.min(row_end, self.seqlen_q) - 1
            first_key = last_row + self.offset - self.window_left
            left_end = cute.ceil_div(cutlass.max(first_key, 0), self.tile_n)
            left = cutlass.max(cutlass.min(left_end, n_max) - n_min, 0)
        return right, left

    @cute.jit
    def apply(self, acc_S: cute.Tensor, tScS: cute.Tensor, row_base: Int32, n_block: Int32) -> None:
        """Set invisible scores to -inf. ``tScS``: (row, col) coordinates of acc_S within the tile."""
        s_mn = acc_view_mn(acc_S)
        c_mn = acc_view_mn(tScS)
        key_base = n_block * self.tile_n
        for r in cutlass.range_constexpr(cute.size(s_mn, mode=[0])):
            row = self.position(row_base + c_mn[r, 0][0])
            key_hi = self.seqlen_k
            if const_expr(self.has_right):
                key_hi = cutlass.min(key_hi, row + self.offset + self.window_right + 1)
            key_lo = Int32(0)
            if const_expr(self.has_left):
                key_lo = row + self.offset - self.window_left
            # columns relative to the tile: one subtraction per row instead of one add per element
            col_hi = key_hi - key_base
            col_lo = key_lo - key_base
            for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                col = c_mn[0, c][1]
                invisible = col >= col_hi
                if const_expr(self.has_left):
                    invisible = invisible or col < col_lo
                s_mn[r, c] = -Float32.inf if invisible else s_mn[r, c]
