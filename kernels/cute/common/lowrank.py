"""The float32 low-rank bias in FMAs (its product added to a wgmma score accumulator), the float32 atomic add its
gradients and dQ use, and the three 16-bit pieces the bias slices split a factor into.

Position-like factors (ALiBi, distances) must keep float32 arithmetic: their product is exact to well under one
unit at 16k tokens only in float32, which the tensor cores (bf16/tf32 operands) do not give.
"""

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from .layouts import acc_view_mn

LOG2_E = math.log2(math.e)


@cute.jit
def split_in_three(x: Float32, dtype: type[cutlass.Numeric]) -> tuple:
    """(hi, mid, lo) in ``dtype`` (16-bit) of float32 ``x``: hi = x rounded, mid = (x - hi) rounded, lo = (x - hi -
    mid) rounded. Their sum is x to 2^-24 relative in bf16 (two pieces leave 2^-18, too coarse for the float32 lse):
    the bias slices' K-slice pieces of a factor divided by the scale (tests/test_cute_bias_slice.py)."""
    hi = x.to(dtype)
    rest = x - hi.to(Float32)
    mid = rest.to(dtype)
    return hi, mid, (rest - mid.to(Float32)).to(dtype)


@cute.jit
def add_lowrank_fma(
    acc_S: cute.Tensor,  # wgmma accumulator, float32 registers
    tScS: cute.Tensor,  # (row, col) in the tile of each acc_S element
    sRowF: cute.Tensor,  # (tile rows, r) float32: the factor indexed by the accumulator's rows
    sColF: cute.Tensor,  # (tile cols, r) float32: the factor indexed by its columns
    scale_log2: Float32,
    rank: cutlass.Constexpr[int],
) -> None:
    """acc_S <- acc_S * scale_log2 + log2(e) * (row_f . col_f): scores in log2 units.

    Each thread owns 2 rows x (cols / 4) columns; the quad lanes share rows and read different columns, so every
    smem read is a broadcast or a 4-way distinct access. The rank loop stays a runtime loop over chunks of 4:
    a rank-64 unroll costs seconds of compile time. `rank` is a multiple of 4 (the launchers pad it).
    """
    s_mn = acc_view_mn(acc_S)
    c_mn = acc_view_mn(tScS)
    num_rows = cute.size(s_mn, mode=[0])
    num_cols = cute.size(s_mn, mode=[1])
    acc_S.store(acc_S.load() * scale_log2)
    for k in cutlass.range(rank // 4, unroll=1):
        row_vals = cute.make_rmem_tensor((num_rows, 4), Float32)
        for r in cutlass.range_constexpr(num_rows):
            row = c_mn[r, 0][0]
            for j in cutlass.range_constexpr(4):
                row_vals[r, j] = sRowF[row, 4 * k + j] * LOG2_E
        for c in cutlass.range_constexpr(num_cols):
            col = c_mn[0, c][1]
            col_vals = cute.make_rmem_tensor(4, Float32)
            for j in cutlass.range_constexpr(4):
                col_vals[j] = sColF[col, 4 * k + j]
            for r in cutlass.range_constexpr(num_rows):
                acc = s_mn[r, c]
                for j in cutlass.range_constexpr(4):
                    acc = acc + row_vals[r, j] * col_vals[j]
                s_mn[r, c] = acc


@cute.jit
def red_add_f32(t: cute.Tensor, crd, val) -> None:
    """Atomic float32 add of ``val`` into element ``crd`` (index or coordinate) of the global tensor ``t``. ``val``
    may also be a 2- or 4-element register vector (``TensorSSA``) added to the consecutive elements from ``crd`` on
    by one red.global.add.v2 / v4.f32: that address must then be 8- / 16-byte aligned."""
    ptr = t.iterator + cute.crd2idx(crd, t.layout)
    cute.arch.red(ptr, val, op="add", dtype=Float32, sem="relaxed", scope="gpu")


@cute.jit
def red_add_acc_f32(
    tCgC: cute.Tensor,  # a wgmma C partition of a global float32 tensor whose columns are contiguous
    acc: cute.Tensor,  # the matching float32 accumulator fragment
    scale: Float32 | None = None,
    tCcC: cute.Tensor | None = None,  # the C partition of an identity tensor: (row, col) of each element
    num_rows: Int32 | None = None,  # with tCcC: elements of rows >= num_rows are not added
) -> None:
    """tCgC += [scale *] acc with float32 atomics, the two adjacent columns of each accumulator pair (the fragment's
    innermost mode, contiguous in gmem, starting at an even column) in one red.global.add.v2.f32."""
    assert const_expr(acc.layout.shape[0][0] == 2 and tCgC.layout.stride[0][0] == 1), "pairs must be contiguous"
    pair = cute.make_rmem_tensor((2,), Float32)
    for k in cutlass.range(cute.size(acc) // 2, unroll_full=True):
        for j in cutlass.range_constexpr(2):
            pair[j] = acc[2 * k + j] if const_expr(scale is None) else acc[2 * k + j] * scale
        if const_expr(tCcC is None):
            red_add_f32(tCgC, 2 * k, pair.load())
        else:
            if tCcC[2 * k][0] < num_rows:
                red_add_f32(tCgC, 2 * k, pair.load())
