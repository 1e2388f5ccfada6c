"""Views of wgmma accumulators: by (row, column), and as the A operand of a following wgmma.

An sm90 wgmma accumulator fragment has layout ((2, 2, N/8), MMA_M, MMA_N): two adjacent columns,
two rows eight apart, N/8 column groups. Each thread therefore owns ``2 * MMA_M`` rows, shared with
the three other lanes of its quad.
"""

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr


def acc_layout_mn(acc_layout: cute.Layout) -> cute.Layout:
    """((2, 2, V), MMA_M, MMA_N) -> ((2, MMA_M), (2, V, MMA_N)): rows first, then columns."""
    col_major = cute.make_layout(acc_layout.shape)
    shape = (
        (col_major.shape[0][1], col_major.shape[1]),
        (col_major.shape[0][0], *col_major.shape[0][2:], col_major.shape[2]),
    )
    stride = (
        (col_major.stride[0][1], col_major.stride[1]),
        (col_major.stride[0][0], *col_major.stride[0][2:], col_major.stride[2]),
    )
    return cute.composition(acc_layout, cute.make_layout(shape, stride=stride))


def acc_view_mn(acc: cute.Tensor) -> cute.Tensor:
    return cute.make_tensor(acc.iterator, acc_layout_mn(acc.layout))


def acc_layout_as_operand_a(acc_layout: cute.Layout) -> cute.Layout:
    """((2, 2, N/8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, (N/16, MMA_N)) for 16-bit A operands.

    The C fragment of one k16 slice of a 16-bit wgmma equals its A fragment, so P can feed the
    P·V wgmma from registers after an element-wise conversion, without any shuffle.
    """
    assert const_expr(acc_layout.shape[0][2] % 2 == 0)
    divided = cute.logical_divide(acc_layout, ((None, None, 2), None, None))
    return cute.make_layout(
        (
            (divided.shape[0][0], divided.shape[0][1], divided.shape[0][2][0]),
            divided.shape[1],
            (divided.shape[0][2][1], divided.shape[2]),
        ),
        stride=(
            (divided.stride[0][0], divided.stride[0][1], divided.stride[0][2][0]),
            divided.stride[1],
            (divided.stride[0][2][1], divided.stride[2]),
        ),
    )


def acc_view_as_operand_a(acc: cute.Tensor) -> cute.Tensor:
    return cute.make_tensor(acc.iterator, acc_layout_as_operand_a(acc.layout))


@cute.jit
def store_acc_pairs(
    frag: cute.Tensor,  # a 16-bit register fragment with an accumulator's layout ((2, 2, N / 8), MMA_M, MMA_N)
    tCgC: cute.Tensor,  # its C partition of a global tensor whose columns are contiguous, rows 4-byte aligned
    tCcC: cute.Tensor,  # the C partition of an identity tensor: (row, col) of each element
    num_rows: Int32,  # elements of rows >= num_rows are not stored
) -> None:
    """frag -> gmem, the two adjacent columns of each accumulator pair (from an even column) in one 4-byte store
    instead of two 2-byte ones."""
    assert const_expr(frag.layout.shape[0][0] == 2 and tCgC.layout.stride[0][0] == 1), "pairs must be contiguous"
    for k in cutlass.range_constexpr(cute.size(frag) // 2):
        if tCcC[2 * k][0] < num_rows:
            src = cute.make_tensor(frag.iterator + 2 * k, cute.make_layout(2))
            addr = (tCgC.iterator + cute.crd2idx(2 * k, tCgC.layout)).toint()
            pair_bytes = frag.element_type.width // 4
            dst = cute.make_ptr(frag.element_type, addr, cute.AddressSpace.gmem, assumed_align=pair_bytes)
            cute.autovec_copy(src, cute.make_tensor(dst, cute.make_layout(2)))
