"""Hopper wgmma helpers: tiled MMAs, fragment partitioning and the fence/commit/wait discipline."""

from typing import NamedTuple

import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import warpgroup
from cutlass.cutlass_dsl import dsl_user_op
from cutlass.tensor_utils import LayoutEnum


class WarpRoles(NamedTuple):
    """Warp ids per role in the warp-specialized kernels; the producer's first warp issues the loads."""

    load: tuple = (0, 1, 2, 3)
    mma_wg1: tuple = (4, 5, 6, 7)
    mma_wg2: tuple = (8, 9, 10, 11)
    mma_wg3: tuple = (12, 13, 14, 15)  # the forward's third consumer (192-row tiles)


WARP_ROLES = WarpRoles()
NUM_MMA_WARPGROUPS = 2
# setmaxnreg budgets (producer, consumer) per number of consumer warpgroups, multiples of 8 within the
# 65536 registers of an SM: 128 * 24 + 256 * 240 = 64512; 128 * 32 + 384 * 160 = 65536
REGISTER_BUDGETS = {2: (24, 240), 3: (32, 160)}
PRODUCER_REGS, MMA_REGS = REGISTER_BUDGETS[NUM_MMA_WARPGROUPS]


def make_tiled_mma(
    dtype,
    a_major: str,
    b_major: str,
    tile_n: int,
    a_in_regs: bool = False,
    num_warpgroups: int = 1,
    warpgroups_along_n: bool = False,
) -> cute.TiledMma:
    """64 x ``tile_n`` wgmma atoms, one per warpgroup, stacked along M (or side by side along N with
    ``warpgroups_along_n``: each warpgroup owns ``tile_n`` columns of the same 64 rows); majors are "K" or "MN"."""
    mode = {"K": cute.nvgpu.OperandMajorMode.K, "MN": cute.nvgpu.OperandMajorMode.MN}
    return sm90_utils.make_trivial_tiled_mma(
        dtype,
        dtype,
        mode[a_major],
        mode[b_major],
        Float32,
        atom_layout_mnk=(1, num_warpgroups, 1) if warpgroups_along_n else (num_warpgroups, 1, 1),
        tiler_mn=(64, tile_n),
        a_source=warpgroup.OperandSource.RMEM if a_in_regs else warpgroup.OperandSource.SMEM,
    )


def make_smem_layout(dtype, rows: int, cols: int, stages: int | None = None):
    """Swizzled K-major (``cols`` contiguous) smem layout for a (rows, cols[, stages]) tile."""
    atom = warpgroup.make_smem_layout_atom(sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, cols), dtype)
    shape = (rows, cols) if stages is None else (rows, cols, stages)
    return cute.tile_to_shape(atom, shape, order=(0, 1) if stages is None else (0, 1, 2))


@cute.jit
def in_first_warp(tidx: Int32, group_threads: cutlass.Constexpr[int]) -> cutlass.Boolean:
    """Whether thread ``tidx`` is in the first warp of its group of ``group_threads`` threads: the guard of a TMA
    store or reduce-add. ``cute.copy`` elects the issuing lane itself (elect.sync), which needs every lane of the
    warp; a guard that lets one thread through (``tidx == 0``) leaves that election short."""
    return tidx % group_threads < 32


@cute.jit
def gemm(
    tiled_mma: cute.TiledMma,
    acc: cute.Tensor,
    tCrA: cute.Tensor,
    tCrB: cute.Tensor,
    zero_init: cutlass.Constexpr[bool] = False,
    wg_wait: cutlass.Constexpr[int] = 0,
    then: tuple | None = None,
) -> None:
    """acc (+)= A·B over all k blocks as one wgmma group; ``wg_wait < 0`` leaves it in flight. ``then``: a second
    (A, B) pair whose k blocks continue the same accumulation in the same group (a K-slice of other operands)."""
    warpgroup.fence()
    # a fresh atom: ACCUMULATE is mutated per k block
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in cutlass.range_constexpr(cute.size(tCrA.shape[2])):
        cute.gemm(atom, acc, tCrA[None, None, k], tCrB[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    if const_expr(then is not None):
        tCrA2, tCrB2 = then
        for k in cutlass.range_constexpr(cute.size(tCrA2.shape[2])):
            cute.gemm(atom, acc, tCrA2[None, None, k], tCrB2[None, None, k], acc)
    warpgroup.commit_group()
    if const_expr(wg_wait >= 0):
        warpgroup.wait_group(wg_wait)


@dsl_user_op
def bulk_reduce_add_f32(gmem: cute.Pointer, smem: cute.Pointer, num_bytes: int, *, loc=None, ip=None) -> None:
    """gmem[0 : num_bytes] += smem[0 : num_bytes] (float32, both 16-byte aligned, a multiple of 16 bytes) by one
    bulk (not tensor) reduce-add of the issuing thread, in its bulk group: commit and wait as for TMA stores.
    The DSL has the tensor-map form only; this one needs no descriptor and no swizzle."""
    llvm.inline_asm(
        None,
        [gmem.llvm_ptr, smem.toint(loc=loc, ip=ip).ir_value(), Int32(num_bytes).ir_value()],
        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [$0], [$1], $2;",
        "l,r,r",
        has_side_effects=True,
        is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT,
    )
