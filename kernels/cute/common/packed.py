"""Float32 accumulator tiles kept in the accumulators' own register order ("packed"), as FA3 keeps dQ.

A tile written by ``num_warpgroups`` warpgroups of 128 threads, each thread holding ``4 * groups`` float32
accumulator elements, is stored as (4, 128, groups, num_warpgroups) with strides (1, 4, 512, 512 * groups):
thread ``lane`` of warpgroup ``wg`` keeps its fragment's elements 4g .. 4g + 3 (in the fragment's flat order)
at float offset ``packed_offset(wg, g, lane, groups)``. Every group is then one 16-byte store or vector atomic
at an address without any arithmetic on rows or columns, and a warp's 32 groups are 512 contiguous bytes
(shared memory: no bank conflicts; global: whole 32-byte sectors). Whoever reads the tile back takes the same
MMA's C partition to learn which (row, column) element ``4g + j`` of thread ``128 wg + lane`` is.
"""

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

from .barriers import WARPGROUP_THREADS
from .lowrank import red_add_f32

GROUP = 4  # float32 elements per 16-byte group


def packed_offset(wg, group, lane, groups: int):
    """Float offset of group ``group`` of thread ``lane`` of warpgroup ``wg`` in a packed tile."""
    return ((wg * groups + group) * WARPGROUP_THREADS + lane) * GROUP


def packed_groups(acc: cute.Tensor) -> int:
    """Groups of 4 elements of an accumulator fragment (every sm90 float32 fragment has a multiple of 4)."""
    size = cute.size(acc)
    assert size % GROUP == 0, f"a fragment of {size} elements does not pack in groups of {GROUP}"
    return size // GROUP


@cute.jit
def _group_ptr(tile: cute.Pointer, offset: Int32, space: cutlass.Constexpr) -> cute.Tensor:
    """The 4 floats at ``tile + offset``, 16-byte aligned (the tile is; offsets are multiples of 4)."""
    addr = (tile + offset).toint()
    return cute.make_tensor(cute.make_ptr(Float32, addr, space, assumed_align=16), cute.make_layout(GROUP))


@cute.jit
def _group_of(acc: cute.Tensor, g: cutlass.Constexpr[int]):
    quad = cute.make_rmem_tensor((GROUP,), Float32)
    for j in cutlass.range_constexpr(GROUP):
        quad[j] = acc[GROUP * g + j]
    return quad


@cute.jit
def red_add_packed(tile: cute.Pointer, acc: cute.Tensor, wg: Int32, lane: Int32) -> None:
    """Global packed tile at ``tile`` (16-byte aligned) += acc: one red.global.add.v4.f32 per group."""
    groups = packed_groups(acc)
    for g in cutlass.range_constexpr(groups):
        dst = _group_ptr(tile, packed_offset(wg, g, lane, groups), cute.AddressSpace.gmem)
        red_add_f32(dst, 0, _group_of(acc, g).load())


@cute.jit
def store_packed(tile: cute.Pointer, acc: cute.Tensor, wg: Int32, lane: Int32) -> None:
    """Shared-memory packed tile at ``tile`` (16-byte aligned) <- acc: one 16-byte st.shared per group."""
    groups = packed_groups(acc)
    for g in cutlass.range_constexpr(groups):
        dst = _group_ptr(tile, packed_offset(wg, g, lane, groups), cute.AddressSpace.smem)
        cute.autovec_copy(_group_of(acc, g), dst)


@cute.jit
def load_packed(tile: cute.Pointer, acc: cute.Tensor, wg: Int32, lane: Int32) -> None:
    """acc <- global packed tile at ``tile`` (16-byte aligned): one 16-byte load per group."""
    groups = packed_groups(acc)
    quad = cute.make_rmem_tensor((GROUP,), Float32)
    for g in cutlass.range_constexpr(groups):
        cute.autovec_copy(_group_ptr(tile, packed_offset(wg, g, lane, groups), cute.AddressSpace.gmem), quad)
        for j in cutlass.range_constexpr(GROUP):
            acc[GROUP * g + j] = quad[j]
