"""Views of wgmma accumulators: by (row, column), and as the A operand of a following wgmma.

An sm90 wgmma accumulator fragment has layout ((2, 2, N/8), MMA_M, MMA_N): two adjacent columns,
two rows eight apart, N/8 column groups. Each thread therefore owns ``2 * MMA_M`` rows, shared with
the three other lanes of its quad.
"""

import re

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr


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


def swizzle_params(swizzle) -> tuple[int, int, int]:
    """(bits, base, shift) of a static ``cute.Swizzle`` S<bits, base, shift>, as it prints."""
    bits, base, shift = (int(x) for x in re.findall(r"-?\d+", str(swizzle)))
    return bits, base, shift


@cute.jit
def swizzled_address(
    addr: Int32, bits: cutlass.Constexpr[int], base: cutlass.Constexpr[int], shift: cutlass.Constexpr[int]
) -> Int32:
    """The shared-memory byte address that S<bits, base, shift> (on byte addresses, as TMA and wgmma swizzle a
    buffer aligned to the swizzle's period) maps ``addr`` to: the ``bits`` bits at ``base + shift`` XORed into those
    at ``base``."""
    mask = ((1 << bits) - 1) << (base + shift)
    return addr ^ ((addr & mask) >> shift)


@cute.jit
def store_acc_pairs_swizzled(
    acc: cute.Tensor,  # a float32 wgmma accumulator fragment ((2, 2, N / 8), MMA_M, MMA_N)
    tCsC: cute.Tensor,  # its C partition of an unswizzled view of the smem buffer (addresses before the swizzle)
    swizzle: tuple,  # (bits, base, shift) of the buffer's byte-address swizzle
) -> None:
    """acc -> a swizzled smem buffer, the two adjacent columns of each accumulator pair in one 8-byte st.shared
    (the DSL stores to a swizzled tensor one element at a time). A pair never straddles a 16-byte swizzle chunk:
    it starts at an even column of an 8-byte aligned row."""
    assert const_expr(acc.layout.shape[0][0] == 2 and tCsC.layout.stride[0][0] == 1), "pairs must be contiguous"
    pair = cute.make_rmem_tensor((2,), Float32)
    for k in cutlass.range_constexpr(cute.size(acc) // 2):
        pair[0] = acc[2 * k]
        pair[1] = acc[2 * k + 1]
        dst = cute.make_ptr(Float32, pair_address(tCsC, k, swizzle), cute.AddressSpace.smem, assumed_align=8)
        cute.autovec_copy(pair, cute.make_tensor(dst, cute.make_layout(2)))


@cute.jit
def pair_address(tCsC: cute.Tensor, k: cutlass.Constexpr[int], swizzle: tuple) -> Int32:
    """The swizzled smem byte address of accumulator pair ``k`` (elements 2k, 2k + 1) of the C partition ``tCsC``."""
    bits, base, shift = swizzle
    return swizzled_address((tCsC.iterator + cute.crd2idx(2 * k, tCsC.layout)).toint(), bits, base, shift)


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
