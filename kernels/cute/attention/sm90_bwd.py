"""Attention backward for Hopper (sm90): preprocess, main kernel per key tile, postprocess.

Supported: fp16/bf16; head dims 64, 96, 128, 192 and 256 (q/k and v may differ); any sequence lengths (TMA
zero-fills the tails, stores are predicated); causal (bottom-right) and sliding windows, masked only on boundary
tiles; GQA/MQA (one CTA walks every query head of its K/V head, so dK/dV stay in registers; with
``split_heads``, for grids smaller than the GPU, several CTAs share a group and add float32 dK/dV); the
low-rank logit bias ``qf @ kf.T`` (float32 factors in float32 FMAs; factors in the input dtype as
extra wgmma k16 slices of S^T, issued first so that dP^T still runs under the exp2). The factor gradients
are added with atomics: float32 factors' computed in float32 from a float32 copy of dS in smem by every
consumer thread while the dQ and dK wgmmas run; 16-bit factors' on the tensor cores from the dS that dQ
and dK take (``make_factor_mmas``), issued between the dQ and dK wgmmas and added with dQ while dK runs
(``factor_grads_under_dk``), dKf summed over a query head's blocks in smem first where registers allow
(``dkf_summed_in_smem``).
dQ reaches its float32 buffer by one bulk reduce-add (TMA, no tensor map) per warpgroup from smem (the
launcher's default where the staging buffer costs no pipeline stage), or per tile from a producer warp that the
consumers hand the buffer to by named barriers (``dq_reduce_warp``, FA3's way), by vector atomics, or in a
deterministic mode where key blocks add their dQ and query-factor partials in a fixed order. Either way
dQaccum's (tile_m, d) tiles keep the dQ accumulators in register order, as FA3's do (common/packed.py):
16-byte stores and atomics at fixed offsets, no address arithmetic on rows and columns.
Not supported: varlen, dropout, a gradient for lse.

Kernels (the tensors are the forward's (b, s, h, d) ones; see ``AttentionBwdSm90.__call__``):
    preprocess   D = rowsum(dO * O) in float32 and lse in log2 units; rows without a visible key
                 (lse = -inf) and padding rows get lse2 = +inf so that P = exp2(s - lse2) = 0.
    main         one CTA per (key block, K/V head, batch), causal ones first key block first in
                 sections of K/V heads whose Q and dO share L2. With S^T = K Q^T and dP^T = V dO^T,
                 P^T and dS^T come out of wgmma in the A-operand register layout, so
                 dV += P^T dO and dK += dS^T Q take A from registers. dS^T is also written to
                 smem (query-contiguous: an MN-major A operand) for dQ = dS K, which the two
                 consumer warpgroups split along d (128-row steps: 64 query rows each; 80-row steps:
                 dS, key-contiguous, the K-major B operand of dQ^T = K^T dS^T, the warpgroups stacked
                 along d); dQ is added to a float32 buffer. Each CTA walks its query blocks in
                 order, or with ``rotate_query_blocks`` (a benchmark variant) from a start of its own,
                 around, so that key blocks running side by side add dQ to different query blocks.
    postprocess  dq = dQaccum * softmax_scale, converted to the input dtype, each packed element put
                 back at the (row, column) of the dQ MMA's C partition.

CTA layout of the main kernel (3 warpgroups):
    WG0      producer: warp 0 issues the TMA loads of K, V (once), the key bias factors (once
             per query head) and Q, dO, lse2, D (+ query bias factors) per query block into a
             ``num_stages`` pipeline; with ``dq_reduce_warp`` warp 1 issues dQ's reduce-adds; with
             ``bias_slice`` warp 2 splits each query head's key factors into the slice's pieces
             (``split_key_factors``); the warpgroup gives registers back.
    WG1, WG2 consumers: 64 key rows each of the 128-row key block, 64 query rows per step (128 for bf16 at
             d <= 64 without a bias, as FA3 does: S^T / dP^T of 64 x 128 still fit in registers there;
             80 at d = 128 without a bias, FA4's non-causal tile, where dQ = dS K, whose 80 rows are no
             wgmma M, is computed as dQ^T = K^T dS^T with the warpgroups on d's two 64-row halves).

Wide heads (max(d, dv) > 128; ``tile_n = 64``): a warpgroup cannot hold dK and dV of 64 key rows in
registers, so both consumer warpgroups share one 64-row key block. S^T and dP^T are split along the
queries (32 columns each); P^T and dS^T go to smem, and each warpgroup computes its d / 2 columns of dK,
dV (and dQ) from the whole of them, A from smem.
"""

import enum
import math

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import cpasync, warp, warpgroup
from cutlass.tensor_utils import LayoutEnum

from ..common import sm90
from ..common.barriers import WARPGROUP_THREADS, NamedBarrierBwd, barrier_arrive, barrier_sync
from ..common.layouts import (
    acc_view_as_operand_a,
    acc_view_mn,
    store_acc_pairs,
)
from ..common.lowrank import LOG2_E, add_lowrank_fma, red_add_acc_f32, red_add_f32, split_in_three
from ..common.packed import load_packed, red_add_packed, store_packed
from ..common.pipeline import consumer_state, make_tma_pipeline, producer_state
from ..common.sm90 import MMA_REGS, NUM_MMA_WARPGROUPS, PRODUCER_REGS, WARP_ROLES
from ..common.tile_scheduler import PersistentTileScheduler
from .base import SUPPORTED_HEAD_DIMS

# the widest head whose dK and dV (64 key rows per warpgroup) fit in a consumer's registers
NARROW_HEAD_DIM = 128


def key_tile(head_dim: int, head_dim_v: int) -> int:
    """Key rows per CTA of the main kernel: two warpgroups of 64 rows, or one 64-row block both share."""
    return 64 * NUM_MMA_WARPGROUPS if max(head_dim, head_dim_v) <= NARROW_HEAD_DIM else 64


class BwdBarrier(enum.IntEnum):
    """Named barriers of the main kernel (ids from the shared backward table where one exists)."""

    PdS = NamedBarrierBwd.PdS  # dS of both warpgroups in smem -> dQ wgmma
    BiasGradsDone = max(NamedBarrierBwd) + 1  # fp32 dS and query factors read -> reusable
    DqTurn = max(NamedBarrierBwd) + 2  # deterministic dQ: this CTA's turn to add (or its adds are done)
    PdSEmpty = max(NamedBarrierBwd) + 3  # one P^T / dS^T buffer: both warpgroups' wgmmas done reading it
    KfSplit = max(NamedBarrierBwd) + 4  # bias_slice: the query head's key factors split into sKs -> S^T
    KsEmpty = max(NamedBarrierBwd) + 5  # bias_slice: the query head's last S^T done reading sKs -> the next split


def _transpose_view(t: cute.Tensor) -> cute.Tensor:
    """(rows, cols[, stages]) smem tensor -> (cols, rows[, stages]) view of the same bytes."""
    shape = (t.shape[1], t.shape[0], *t.shape[2:])
    order = (1, 0, *range(2, cute.rank(t)))
    return cute.composition(t, cute.make_ordered_layout(shape, order=order))


def _smem_layout(dtype, rows: int, cols: int, stages: int | None, major_size: int):
    """Swizzled (rows, cols[, stages]) layout, cols contiguous, swizzle atom ``major_size`` wide.

    A narrower atom than ``cols`` lets the tile also serve as an MN-major operand that each
    warpgroup slices into ``major_size``-wide pieces along cols.
    """
    atom = warpgroup.make_smem_layout_atom(
        sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, major_size), dtype
    )
    shape = (rows, cols) if stages is None else (rows, cols, stages)
    return cute.tile_to_shape(atom, shape, order=(0, 1) if stages is None else (0, 1, 2))


# factor columns per tensor-core factor-gradient wgmma (AttentionBwdSm90.make_factor_mmas): one 32-byte swizzle atom
FACTOR_CHUNK = 16
# bias_slice: S^T's bias as two k16 steps of its own wgmma group, [K | Kf'] [Q | Qf']^T. Kf' holds three 16-bit pieces
# of Kf / softmax_scale, each SLICE_MAX_RANK wide, at these columns (zeros in [8, 16)), Qf' the query factors at each
# of them: Qf's own 16-column chunk (factors in [0, 8), zeros after) stays what the factor gradients read
SLICE_WIDTH = 32
SLICE_MAX_RANK = 8
SLICE_PIECE_COLS = (0, 16, 24)


class AttentionBwdBase:
    """Static configuration and validation shared by the backward kernels."""

    def __init__(self, dtype: type[cutlass.Numeric], head_dim: int, head_dim_v: int):
        if dtype not in (cutlass.Float16, cutlass.BFloat16):
            raise TypeError(f"attention backward supports fp16/bf16 inputs, got {dtype}")
        if head_dim not in SUPPORTED_HEAD_DIMS or head_dim_v not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"backward head dims must be in {SUPPORTED_HEAD_DIMS}, got {head_dim}, {head_dim_v}")
        self.dtype = dtype
        self.head_dim = head_dim
        self.head_dim_v = head_dim_v

    @staticmethod
    def to_sdhb(t: cute.Tensor) -> cute.Tensor:
        """(b, s, h, d) -> (s, d, h, b): the (s, d) tile is what TMA and the MMAs consume."""
        return cute.make_tensor(t.iterator, cute.select(t.layout, mode=[1, 3, 2, 0]))


class AttentionBwdPreprocessSm90(AttentionBwdBase):
    """dpsum = rowsum(dO * O) and lse2 = lse * log2(e) over (b, h, s_q_pad); 128 threads per 64 rows."""

    tile_m = 64
    num_threads = 128

    def __init__(self, dtype: type[cutlass.Numeric], head_dim_v: int):
        super().__init__(dtype, head_dim_v, head_dim_v)
        # threads per row: a power of two dividing the 8-element (16-byte) chunks of a row
        chunks = head_dim_v // 8
        self.threads_per_row = math.gcd(chunks, 32) if chunks & (chunks - 1) else min(chunks, 32)
        self.elems_per_thread = head_dim_v // self.threads_per_row

    @cute.jit
    def __call__(
        self,
        mO: cute.Tensor,  # (b, s_q, h, dv)
        mdO: cute.Tensor,  # (b, s_q, h, dv)
        mLSE: cute.Tensor,  # (b, h, s_q) float32, natural log
        mLSE2: cute.Tensor,  # (b, h, s_q_pad) float32, out
        mDpsum: cute.Tensor,  # (b, h, s_q_pad) float32, out
        stream: cuda.CUstream,
    ):
        grid = (cute.ceil_div(mLSE2.shape[2], self.tile_m), mO.shape[2], mO.shape[0])
        self.kernel(mO, mdO, mLSE, mLSE2, mDpsum).launch(grid=grid, block=[self.num_threads, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mO: cute.Tensor, mdO: cute.Tensor, mLSE: cute.Tensor, mLSE2: cute.Tensor, mDpsum: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        m_block, head, batch = cute.arch.block_idx()
        seqlen_q = mO.shape[1]
        tpr = self.threads_per_row
        rows_per_pass = self.num_threads // tpr
        lane_in_row = tidx % tpr
        for p in cutlass.range_constexpr(self.tile_m // rows_per_pass):
            row = m_block * self.tile_m + p * rows_per_pass + tidx // tpr
            acc = Float32(0.0)
            if row < seqlen_q:
                gO = cute.local_tile(mO[batch, row, head, None], (self.elems_per_thread,), (lane_in_row,))
                gdO = cute.local_tile(mdO[batch, row, head, None], (self.elems_per_thread,), (lane_in_row,))
                prod = gO.load().to(Float32) * gdO.load().to(Float32)
                acc = prod.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
            # rows are groups of tpr adjacent lanes: a butterfly over them sums the row
            for k in cutlass.range_constexpr(tpr.bit_length() - 1):
                acc = acc + cute.arch.shuffle_sync_bfly(acc, offset=tpr >> (k + 1))
            if lane_in_row == 0:
                lse2 = Float32.inf
                if row < seqlen_q:
                    lse = mLSE[batch, head, row]
                    if lse != -Float32.inf:
                        lse2 = lse * LOG2_E
                mLSE2[batch, head, row] = lse2
                mDpsum[batch, head, row] = acc


# query rows per step of the main kernel: 64; 128 (d <= 64, FA3's tile there); 80 (d = 128, FA4's non-causal tile:
# a quarter fewer steps than 64, and the registers still hold S^T, dP^T, dK and dV)
TILE_M_CHOICES = (64, 80, 128)


def dq_swaps_ab(tile_m: int) -> bool:
    """dQ computed transposed, dQ^T = K^T dS^T, where tile_m is no multiple of wgmma's 64 rows (80): d takes M."""
    return tile_m % 64 != 0


def dq_rows_per_warpgroup(tile_m: int) -> bool:
    """dQ = dS K with each warpgroup on 64 query rows and every column of d (128-row steps, FA3 / FA4's layout):
    64 x d wgmmas, each dS tile read once, instead of two 64 x d / 2 ones per warpgroup."""
    return tile_m == 64 * NUM_MMA_WARPGROUPS


def dq_tiled_mma(dtype: type[cutlass.Numeric], head_dim: int, tile_m: int = 64) -> cute.TiledMma:
    """dQ = dS K: the warpgroups side by side along d (d / 2 columns each), or stacked along the queries where the
    tile has a 64-row block for each (``dq_rows_per_warpgroup``); dS read query-contiguous (MN-major A), K^T MN-major.
    With ``dq_swaps_ab(tile_m)`` dQ^T = K^T dS^T instead: the warpgroups stacked along d (64 rows each, so d = 128),
    every query of the tile on N, K^T (d-contiguous) MN-major and dS (key-contiguous) K-major.
    Its C partition is also how the postprocess reads dQaccum's packed tiles back."""
    if dq_swaps_ab(tile_m):
        assert head_dim == 64 * NUM_MMA_WARPGROUPS, f"dQ^T takes d = {64 * NUM_MMA_WARPGROUPS}, got {head_dim}"
        return sm90.make_tiled_mma(dtype, "MN", "K", tile_m, num_warpgroups=NUM_MMA_WARPGROUPS)
    if dq_rows_per_warpgroup(tile_m):
        return sm90.make_tiled_mma(dtype, "MN", "MN", head_dim, num_warpgroups=NUM_MMA_WARPGROUPS)
    return sm90.make_tiled_mma(
        dtype, "MN", "MN", head_dim // NUM_MMA_WARPGROUPS, num_warpgroups=NUM_MMA_WARPGROUPS, warpgroups_along_n=True
    )


class AttentionBwdPostprocessSm90(AttentionBwdBase):
    """dq = dQaccum * softmax_scale in the input dtype. dQaccum's (tile_m, d) tiles are packed in the register
    order of the main kernel's dQ accumulators (common/packed.py): each of the 256 threads here loads what the
    thread of the same index there added (16-byte loads, a warp's 512 bytes contiguous) and stores it at the
    (row, column) the dQ MMA's C partition gives, two columns per 4-byte store (dQ^T of 80-row steps: its
    accumulator pairs are two rows of one column, one 2-byte store each)."""

    num_threads = WARPGROUP_THREADS * NUM_MMA_WARPGROUPS

    def __init__(self, dtype: type[cutlass.Numeric], head_dim: int, tile_m: int = 64, packed: bool = True):
        super().__init__(dtype, head_dim, head_dim)
        if tile_m not in TILE_M_CHOICES:
            raise ValueError(f"tile_m must be one of {TILE_M_CHOICES}, got {tile_m}")
        if dq_swaps_ab(tile_m) and (head_dim != 64 * NUM_MMA_WARPGROUPS or not packed):
            raise ValueError(f"tile_m = {tile_m} (dQ^T) takes d = {64 * NUM_MMA_WARPGROUPS} and packed tiles")
        self.tile_m = tile_m
        # False: dQaccum by (row, column) (AttentionBwdSm90.packs_dq), read 8 contiguous floats at a time
        self.packed = packed

    @cute.jit
    def __call__(
        self,
        mdQaccum: cute.Tensor,  # (b, h, s_q_pad, d) float32, contiguous; (tile_m, d) tiles packed
        mdQ: cute.Tensor,  # (b, s_q, h, d)
        softmax_scale: Float32,
        stream: cuda.CUstream,
    ):
        grid = (cute.ceil_div(mdQ.shape[1], self.tile_m), mdQ.shape[2], mdQ.shape[0])
        self.kernel(mdQaccum, mdQ, softmax_scale).launch(grid=grid, block=[self.num_threads, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mdQaccum: cute.Tensor, mdQ: cute.Tensor, softmax_scale: Float32):
        tidx, _, _ = cute.arch.thread_idx()
        m_block, head, batch = cute.arch.block_idx()
        if const_expr(self.packed):
            self.convert_packed(mdQaccum, mdQ, softmax_scale, tidx, m_block, head, batch)
        else:
            seqlen_q = mdQ.shape[1]
            chunk = 8
            chunks_per_row = self.head_dim // chunk
            for p in cutlass.range_constexpr(self.tile_m * chunks_per_row // self.num_threads):
                idx = tidx + p * self.num_threads
                row = m_block * self.tile_m + idx // chunks_per_row
                if row < seqlen_q:
                    src = cute.local_tile(mdQaccum[batch, head, row, None], (chunk,), (idx % chunks_per_row,))
                    dst = cute.local_tile(mdQ[batch, row, head, None], (chunk,), (idx % chunks_per_row,))
                    dst.store((src.load() * softmax_scale).to(self.dtype))

    @cute.jit
    def convert_packed(
        self, mdQaccum: cute.Tensor, mdQ: cute.Tensor, softmax_scale: Float32, tidx: Int32, m_block, head, batch
    ) -> None:
        shape = (self.tile_m, self.head_dim)
        thr_mma = self.thr_mma(tidx)
        # the main kernel's dQ accumulator: (tile_m, d), or (d, tile_m) for dQ^T
        acc_shape = (self.head_dim, self.tile_m) if const_expr(dq_swaps_ab(self.tile_m)) else shape
        acc = cute.make_rmem_tensor(thr_mma.partition_shape_C(acc_shape), Float32)
        tile = cute.local_tile(mdQaccum[batch, head, None, None], shape, (m_block, 0)).iterator
        load_packed(tile, acc, tidx // WARPGROUP_THREADS, tidx % WARPGROUP_THREADS)
        rdQ = cute.make_rmem_tensor_like(acc, self.dtype)
        rdQ.store((acc.load() * softmax_scale).to(self.dtype))
        gdQ = cute.local_tile(mdQ[batch, None, head, None], shape, (m_block, 0))
        num_rows = mdQ.shape[1] - m_block * self.tile_m
        if const_expr(dq_swaps_ab(self.tile_m)):
            # an accumulator pair is two queries of one column: 2-byte stores (dQ^T's rows are dQ's columns)
            gdQt = cute.make_tensor(gdQ.iterator, cute.select(gdQ.layout, mode=[1, 0]))
            tdQgdQ = thr_mma.partition_C(gdQt)
            tdQcdQ = thr_mma.partition_C(cute.make_identity_tensor(acc_shape))
            for i in cutlass.range_constexpr(cute.size(rdQ)):
                if tdQcdQ[i][1] < num_rows:
                    tdQgdQ[i] = rdQ[i]
        else:
            tdQcdQ = thr_mma.partition_C(cute.make_identity_tensor(shape))
            store_acc_pairs(rdQ, thr_mma.partition_C(gdQ), tdQcdQ, num_rows)

    def thr_mma(self, tidx):
        """The main kernel's dQ MMA as thread ``tidx`` of its consumer warpgroups holds it."""
        return dq_tiled_mma(self.dtype, self.head_dim, self.tile_m).get_slice(tidx)


class AttentionBwdSm90(AttentionBwdBase):
    """Main backward kernel: dK, dV of a key block in registers; dQ and the bias factor grads added to float32."""

    def __init__(
        self,
        dtype: type[cutlass.Numeric],
        head_dim: int,
        head_dim_v: int,
        num_stages: int,
        has_window_left: bool,
        has_window_right: bool,
        bias_rank: int = 0,
        dq_tma_reduce: bool = False,
        deterministic: bool = False,
        split_heads: bool = False,
        bias_mma: bool = False,
        tile_n: int | None = None,
        ds_stages: int = 2,
        tile_m: int = 64,
        tc_factor_grads: bool = True,
        dq_reduce_warp: bool = False,
        dq_under_dk: bool = True,
        bias_stmatrix: bool = True,
        bias_slice: bool = False,
        early_stats: bool = False,
        rotate_query_blocks: bool = False,
    ):
        super().__init__(dtype, head_dim, head_dim_v)
        # query rows per step (TILE_M_CHOICES): 64; 128 for d <= 64 (FA3's tile there: wgmmas twice as wide, half
        # the steps); 80 at d = 128 (FA4's non-causal tile), with dQ computed transposed (dq_swaps_ab)
        self.tile_m = tile_m
        if tile_m not in TILE_M_CHOICES:
            raise ValueError(f"tile_m must be one of {TILE_M_CHOICES}, got {tile_m}")
        # key rows per CTA: 128 (a warpgroup per 64 rows) up to d = 128; 64 (shared, dK / dV split along d) above
        self.tile_n = key_tile(head_dim, head_dim_v) if tile_n is None else tile_n
        if self.tile_n not in (64, 64 * NUM_MMA_WARPGROUPS):
            raise ValueError(f"tile_n must be 64 or {64 * NUM_MMA_WARPGROUPS}, got {self.tile_n}")
        if self.tile_n > 64 and max(head_dim, head_dim_v) > NARROW_HEAD_DIM:
            raise ValueError(f"dK and dV of d > {NARROW_HEAD_DIM} need tile_n = 64 (they do not fit in registers)")
        if tile_m == 128 and (self.tile_n == 64 or max(head_dim, head_dim_v) > 64):
            raise ValueError("tile_m = 128 takes tile_n = 128 and head dims <= 64 (S^T, dP^T, dK, dV in registers)")
        narrow = self.tile_n == 64 * NUM_MMA_WARPGROUPS and head_dim_v <= head_dim
        if dq_swaps_ab(tile_m) and (head_dim != 64 * NUM_MMA_WARPGROUPS or not narrow or bias_rank):
            # dQ^T's warpgroups take 64 rows of d each; the factor-gradient code assumes tile_n / tile_m whole
            raise ValueError(f"tile_m = {tile_m} takes head_dim 128, head_dim_v <= 128, tile_n = 128 and no bias")
        # P^T / dS^T smem buffers: two let a warpgroup write the next ones while the other still reads these
        if ds_stages not in (1, 2):
            raise ValueError(f"ds_stages must be 1 or 2, got {ds_stages}")
        self.ds_stages = ds_stages
        # False: the 16-bit factors' gradients in float32 FMAs as well (``tc_factor_grads``)
        self.allow_tc_factor_grads = tc_factor_grads
        if deterministic and dq_tma_reduce:
            raise ValueError("the deterministic mode orders the dQ atomics; it excludes dq_tma_reduce")
        if deterministic and split_heads:
            raise ValueError("split_heads adds dK/dV partials with atomics; the deterministic mode excludes it")
        # fp32 factors: float4 smem reads; 16-bit factors: whole wgmma k16 slices
        rank_step = 16 if bias_mma else 4
        if bias_rank % rank_step != 0 or not 0 <= bias_rank <= 64:
            raise ValueError(f"bias rank is padded to a multiple of {rank_step} in [0, 64], got {bias_rank}")
        self.num_stages = num_stages
        self.has_window_left = has_window_left
        self.has_window_right = has_window_right
        self.bias_rank = bias_rank
        # factors in the input dtype: S^T's bias term as wgmma k16 slices (the factor gradients still take
        # float32 FMAs, reading the 16-bit factors exactly); otherwise float32 factors and FMAs
        self.bias_mma = bias_mma and bias_rank > 0
        # dQ partial -> smem -> one bulk reduce-add per warpgroup, instead of vector atomics
        self.dq_tma_reduce = dq_tma_reduce
        # the bulk reduce-add issued by a producer warp (one for the whole tile) instead of each consumer warpgroup:
        # the consumers store their dQ and go on (``store_dq_for_reduce_warp``, ``reduce_dq``)
        if dq_reduce_warp and not dq_tma_reduce:
            raise ValueError("dq_reduce_warp issues the dQ bulk reduce-add: it needs dq_tma_reduce")
        self.dq_reduce_warp = dq_reduce_warp
        self.allow_dq_under_dk = dq_under_dk
        # False: dS^T by 4-byte stores in every bias config above d = 64 (``ds_stmatrix``)
        self.allow_bias_stmatrix = bias_stmatrix
        # True: lse2 and D loaded while S^T's and dP^T's wgmmas run, where the audit found room (``early_stats``)
        self.allow_early_stats = early_stats
        # key blocks add their dQ (and query-factor) partials of a query block in increasing order,
        # each waiting on a per-(batch, head, query block) counter
        self.deterministic = deterministic
        # each CTA walks its query blocks from its own start, around (``query_block``)
        if rotate_query_blocks and deterministic:
            raise ValueError("the deterministic mode adds dQ in key-block order; it excludes rotate_query_blocks")
        self.rotate_query_blocks = rotate_query_blocks
        # the query heads of a K/V head are split over `head_splits` CTAs (a runtime count), which add their
        # dK / dV partials into float32 buffers: more CTAs when key blocks x K/V heads x batch is small (MQA)
        self.split_heads = split_heads
        self.num_threads = WARPGROUP_THREADS * (1 + NUM_MMA_WARPGROUPS)
        self.num_mma_threads = WARPGROUP_THREADS * NUM_MMA_WARPGROUPS
        # dQ's columns per warpgroup: d / 2 where dQ = dS K is split along d (or dQ^T along its rows), d where the
        # warpgroups take 64 query rows each (dq_rows_per_warpgroup); K's smem swizzle atom spans them
        self.dq_cols = head_dim if dq_rows_per_warpgroup(tile_m) else head_dim // NUM_MMA_WARPGROUPS
        # factor gradients: blocks of 4 rows x 4 rank columns, each summed over `split` slices of the other
        # tile side in neighbouring lanes; query blocks take tile_n / tile_m times the slices of key blocks (the
        # key side is that much longer), so that every item has the same length and every consumer thread an
        # item: (tile_m / 4 * dqf_split + tile_n / 4 * dkf_split) * r4 = r4 * dkf_split * tile_n / 2 items
        ratio = self.tile_n // self.tile_m
        r4 = max(bias_rank // 4, 1)
        self.dkf_split = 1
        while r4 * self.dkf_split * self.tile_n // 2 < self.num_mma_threads:
            self.dkf_split *= 2
        self.dqf_split = ratio * self.dkf_split
        # the wgmma bias as a K-slice of S^T's own group (``split_key_factors``): 16-bit factors of rank <= 8 whose
        # gradients take the tensor cores, 128-row key blocks
        wide_keys = self.tile_n == 64 * NUM_MMA_WARPGROUPS
        if bias_slice and not (self.bias_mma and bias_rank == FACTOR_CHUNK and tc_factor_grads and wide_keys):
            raise ValueError(
                "bias_slice takes 16-bit factors padded to rank 16, their gradients on the tensor cores and "
                f"tile_n = {64 * NUM_MMA_WARPGROUPS}"
            )
        self.bias_slice = bias_slice

    @property
    def dkv_split_d(self) -> bool:
        """Both warpgroups on one 64-row key block (wide heads): S^T / dP^T split along the queries, P^T and
        dS^T through smem, dK and dV (like dQ) split along d."""
        return self.tile_n == 64

    @property
    def has_bias(self) -> bool:
        return self.bias_rank > 0

    @property
    def qf_width(self) -> int:
        """Columns of the query factors' tile: the rank, or with ``bias_slice`` the slice's width (Qf at each piece's
        columns, as the launcher lays them out: ``attention_bwd.sliced_query_factor``)."""
        return SLICE_WIDTH if self.bias_slice else self.bias_rank

    @staticmethod
    def packs_dq(dq_tma_reduce: bool, bias_rank: int, bias_mma: bool, head_dim: int, head_dim_v: int) -> bool:
        """dQaccum's (tile_m, d) tiles in the dQ accumulators' register order (common/packed.py; the postprocess
        must know). The float32-factor kernels above d = 64 that add dQ by atomics keep the (row, column) layout:
        the packed tile's per-thread offset, held across the loop, spilled their registers (ranks 48 and 64 at
        d = 128); the (row, column) addresses are recomputed from the tensor's runtime row stride instead."""
        starved = bias_rank > 0 and not bias_mma and max(head_dim, head_dim_v) > 64
        return dq_tma_reduce or not starved

    @property
    def dq_packed(self) -> bool:
        return self.packs_dq(self.dq_tma_reduce, self.bias_rank, self.bias_mma, self.head_dim, self.head_dim_v)

    @property
    def stat_stride(self) -> int:
        """Floats between the pipeline stages of lse2 / D in smem: tile_m rounded up to 32, so that every stage
        starts 128-byte aligned, as a TMA (tensor) load's destination must (80 rows: 96, not 80)."""
        return -(-self.tile_m // 32) * 32

    @property
    def dq_under_dk(self) -> bool:
        """dQ is added (atomics, or stored for the reduce-add) while the dK wgmma still runs, as FA4 does, instead of
        after it (1.06x to 1.12x faster without a bias on the H100, 2026-11-27 16:39 UTC): also with the tensor-core
        factor gradients (``factor_grads_under_dk``) where dQ goes out by atomics or d <= 64 and, above d = 96,
        without a left window bound, not with 64-row key blocks shared by both warpgroups (``dkv_split_d``, whose
        factor gradients take one warpgroup each). Not with the float32 factor gradients
        (their FMAs already run under the dQ and dK wgmmas) nor in the deterministic mode (whose turn wait would
        stall the wgmma's result). False (``dq_under_dk=False``): after both, the order of the first H100 run."""
        if self.has_bias and (self.fma_factor_grads or self.dkv_split_d):
            return False
        widest = max(self.head_dim, self.head_dim_v)
        if self.tc_factor_grads and (self.dq_tma_reduce and widest > 64 or self.has_window_left and widest > 96):
            # the factor gradients under dK spilled registers in the main loop at d = 128 beside dQ's smem staging
            # (causal) and with a left window bound (SASS, scripts/spill_audit.py)
            return False
        return self.allow_dq_under_dk and not self.deterministic

    @property
    def factor_grads_under_dk(self) -> bool:
        """The tensor-core factor gradients issued between the dQ and dK wgmmas and added with dQ while dK runs
        (``dq_under_dk``), dQf = dS Kf split along the keys (each warpgroup its own 64 key rows, both adding their
        partial), so that no warpgroup issues a wgmma the other does not: one that only the first issued, with dK
        in flight, made ptxas serialize every wgmma of the kernel; issued after dK's wait, ptxas sank dQ's atomics
        below that wait, and dQ no longer went out under dK (SASS, 2026-11-27). One factor chunk only: the kernel
        issues chunk 0 there (``tc_factor_grads`` holds the rank to FACTOR_CHUNK)."""
        under = self.tc_factor_grads and self.dq_under_dk
        assert not under or self.bias_rank <= FACTOR_CHUNK, "factor gradients under dK take one chunk"
        return under

    @property
    def dq_transposed(self) -> bool:
        """dQ^T = K^T dS^T (``dq_swaps_ab``): 80-row query tiles."""
        return dq_swaps_ab(self.tile_m)

    @property
    def ds_stmatrix(self) -> bool:
        """dS^T / P^T reach smem by stmatrix (``make_ds_store``): 13% fewer instructions per query block at d = 128.
        Its loop-invariant row addresses cost registers that some bias kernels above d = 64 do not have; those keep
        the 4-byte stores at the accumulator's own addresses. Where, by a SASS audit of the 516 bf16 bias configs
        at d = 96 and 128 with stmatrix forced on (2026-11-28): d = dv = 128 outside the deterministic mode, except
        the tensor-core factor gradients with a mask (float32 factors, rank-64 16-bit ones, and the unmasked
        tensor-core ones spilled, up to 13 LDL, one in the main loop); above 128 (not audited). The others compiled
        as clean as with the 4-byte stores, and 5 to 11% shorter in the main loop (d = 96 in the deterministic
        mode 7 accesses fewer); so did the 482 fp16 configs the rule gives it. With ``bias_slice`` (no bias wgmma
        waited for and multiplied apart) d = dv = 128 takes it too: none of its configs spilled with it (77
        instructions fewer per query block non-causal, 2026-11-28). ``bias_stmatrix=False`` (the fallback of
        ATTNKIT_SM90_BWD_BIAS_STMATRIX=0): every bias config above d = 64 keeps the 4-byte stores."""
        widest = max(self.head_dim, self.head_dim_v)
        if not self.has_bias or widest <= 64:
            return True
        if widest > 128 or not self.allow_bias_stmatrix:
            return False
        masked = self.has_window_left or self.has_window_right
        both_128 = self.head_dim == self.head_dim_v == 128
        return not both_128 or self.deterministic or (self.tc_factor_grads and masked) or self.bias_slice

    @property
    def early_stats(self) -> bool:
        """The query block's lse2 and D loaded from smem into registers right after S^T's and dP^T's wgmmas are
        issued (FA4's order), while the tensor cores run them: the exp2 of P^T and dS^T = P^T (dP^T - D) then start as
        soon as their wait returns, not a shared-memory load latency later. Costs two registers per query column a
        thread holds (32 with 64 query rows per step), held across the waits. A benchmark variant
        (``early_stats=True``); the default reads each where used, after the waits: the order of the H100 runs.

        Not where those registers spilled (SASS audit of the 1984 configs with 64 query rows per step and no
        float32 factors, both dtypes, against their twins, 2026-11-28): 128 and 80 query rows per step (twice and
        1.25x the columns), float32 factors (their bias FMAs), the tensor-core factor gradients above d = 64
        (d = 128 with 16-bit factors of rank <= 16, the bias slice included, 1 to 12 spilled accesses in the main
        loop; d = 96 without a mask) and dQ's reduce-add from a producer warp (a benchmark variant; 5 accesses at d =
        128 without a mask). A second audit, of the 1112 configs in the other dQ mode (atomics where the default takes
        the reduce-add, and the reverse), found nothing it made worse. Everywhere else none spilled or had its wgmmas
        serialized that did not already (d = 256 with a sliding window and rank-32 or rank-64 factors keep their 4
        accesses outside the loop; in the atomics fallback, d = 128 with a left bound and rank-64 16-bit factors
        keeps its 2 in the loop)."""
        return (
            self.allow_early_stats
            and self.tile_m == 64
            and not self.fma_bias
            and not (self.tc_factor_grads and max(self.head_dim, self.head_dim_v) > 64)
            and not self.dq_reduce_warp
        )

    @property
    def fma_bias(self) -> bool:
        """The bias term of S^T computed in float32 FMAs (float32 factors)."""
        return self.has_bias and not self.bias_mma

    @property
    def tc_factor_grads(self) -> bool:
        """The factor gradients on the tensor cores (``make_factor_mmas``): 16-bit factors of rank <= FACTOR_CHUNK
        (above d = 128 choose_config pads rank 16 to 32). Wider ones spilled at d = 128 (ranks 32 and 64: 24 and
        38 local-memory accesses in chunks, 163 at rank 64 in one piece) and keep the float32 path
        (``factor_grads``) for now."""
        return self.allow_tc_factor_grads and self.bias_mma and self.bias_rank <= FACTOR_CHUNK

    @property
    def dkf_summed_in_smem(self) -> bool:
        """The tensor-core dKf = dS^T Qf summed over a query head's blocks in shared memory and added to its buffer
        once per head, instead of by float32 atomics after every block (a sixth of a rank-16 block's atomics at
        d = 128: 128 x 16 floats of dKf besides dQ's 64 x 128 and dQf's two 64 x 16 partials). Each thread keeps its
        own accumulator elements in a slot of its own (tile_n x 16 / 256 floats): no synchronization, and no
        register held across the blocks (8 more, held, spilled one in the main loop at d = 128 without a mask or
        with a window). This CTA alone adds these (key rows, query head) elements. Where the kernel has no register
        to spare it stays off: at d = 128 with a mask or in the deterministic mode the slot's few instructions made
        ptxas spill loop-invariant values (up to 9 LDL, 2 in the main loop, bf16 causal; SASS audit of the 216
        tensor-core factor-gradient configs, 2026-11-28). At d <= 96 and at d = 128 without either it spilled
        nothing more (d = 96 in the deterministic mode 3 accesses fewer)."""
        widest = max(self.head_dim, self.head_dim_v)
        masked = self.has_window_left or self.has_window_right
        return self.tc_factor_grads and not self.dkv_split_d and (widest <= 96 or not (masked or self.deterministic))

    @property
    def fma_factor_grads(self) -> bool:
        """The factor gradients in float32 FMAs from a float32 copy of dS (``factor_grads``)."""
        return self.has_bias and not self.tc_factor_grads

    @property
    def late_dp(self) -> bool:
        """dP^T issued after the bias FMAs of step 2 instead of under them: float32 factors at d = 128, where
        the FMAs with dP^T's accumulators in flight spill registers (compile test)."""
        return self.fma_bias and not self.dkv_split_d and max(self.head_dim, self.head_dim_v) > 96

    @property
    def bias_dtype(self) -> type[cutlass.Numeric]:
        return self.dtype if self.bias_mma else Float32

    def smem_bytes(self) -> int:
        """The size of ``SharedStorage`` (what the launch asks for): its members' bytes and alignments, in order.
        A CPU test compares it with the compiled struct's size."""
        elem = self.dtype.width // 8
        tm, tn, d, dv, stages = self.tile_m, self.tile_n, self.head_dim, self.head_dim_v, self.num_stages
        ds = self.ds_stages * tn * tm * elem
        rank = max(self.bias_rank, 4)
        bias_elem = self.bias_dtype.width // 8
        members = [
            (8 * 2, 8),  # mbar_kv
            (8 * 2 * stages, 8),  # mbar_q
            (8 * 2, 8),  # mbar_kf
            (tn * d * elem, 1024),  # sK
            (tn * dv * elem, 1024),  # sV
            (stages * tm * d * elem, 1024),  # sQ
            (stages * tm * dv * elem, 1024),  # sdO
            (ds, 1024),  # sdS
            (ds if self.dkv_split_d else 0, 1024),  # sP
            (4 * self.stat_stride * stages, 128),  # sLSE2
            (4 * self.stat_stride * stages, 128),  # sDpsum
            (bias_elem * stages * tm * max(self.qf_width, 4) if self.has_bias else 0, 1024),  # sQf
            (bias_elem * tn * rank if self.has_bias else 0, 1024),  # sKf
            (4 * (tn * (tm + 4) - 4) if self.fma_factor_grads else 0, 128),  # sdSf: (tn, tm) rows padded by 4
            (4 * tm * d if self.dq_tma_reduce else 0, 128),  # sdQ
            (4 * tn * FACTOR_CHUNK if self.dkf_summed_in_smem else 0, 128),  # sdKf: a slot per consumer thread
            (elem * tn * SLICE_WIDTH if self.bias_slice else 0, 1024),  # sKs: the split key factors
        ]
        offset = 0
        for size, align in members:
            offset = -(-offset // align) * align + size
        return -(-offset // 1024) * 1024

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # (b, s_q, h, d)
        mK: cute.Tensor,  # (b, s_k, h_kv, d)
        mV: cute.Tensor,  # (b, s_k, h_kv, dv)
        mdO: cute.Tensor,  # (b, s_q, h, dv)
        mLSE2: cute.Tensor,  # (b, h, s_q_pad) float32, log2 units, +inf where P must be 0
        mDpsum: cute.Tensor,  # (b, h, s_q_pad) float32
        mdQaccum: cute.Tensor,  # (b, h, s_q_pad, d) float32, zero-initialised
        mdK: cute.Tensor,  # (b, s_k, h_kv, d); float32 and zero-initialised with split_heads
        mdV: cute.Tensor,  # (b, s_k, h_kv, dv); float32 and zero-initialised with split_heads
        mQf: cute.Tensor | None,  # (bq, s_q, hq, r) bias_dtype, r = bias_rank
        mKf: cute.Tensor | None,  # (bk, s_k, hk, r) bias_dtype
        mdQf: cute.Tensor | None,  # (b, h, s_q_pad, r) float32, zero-initialised
        mdKf: cute.Tensor | None,  # (b, h, s_k_pad, r) float32, zero-initialised
        mSem: cute.Tensor | None,  # (b, h, ceil(s_q / tile_m)) int32, zero-initialised (deterministic)
        softmax_scale_log2: Float32,
        softmax_scale: Float32,
        window_left: Int32,
        window_right: Int32,
        heads_per_section: Int32,  # causal order: K/V heads whose Q and dO share L2 (see the scheduler)
        head_splits: Int32,  # CTAs per (key block, K/V head, batch), each taking a share of the query heads
        stream: cuda.CUstream,
    ):
        if const_expr(mQ.element_type != self.dtype or mK.element_type != self.dtype):
            raise TypeError("q, k, v, dout must all have the kernel's dtype")
        if const_expr(self.smem_bytes() > 227 * 1024):
            raise ValueError(f"backward config needs {self.smem_bytes()} bytes of shared memory")
        mQ, mK, mV, mdO = [self.to_sdhb(t) for t in (mQ, mK, mV, mdO)]
        tm, tn, d, dv = self.tile_m, self.tile_n, self.head_dim, self.head_dim_v

        tiled_mma_sdp, tiled_mma_dv, tiled_mma_dk, tiled_mma_dq = self.make_tiled_mmas()

        # Q and dO are B operands of dK / dV read MN-major: where the warpgroups split d, each one's columns
        # start on a swizzle atom (as K's do for dQ)
        q_major, do_major = (d // 2, dv // 2) if const_expr(self.dkv_split_d) else (d, dv)
        sQ_layout = _smem_layout(self.dtype, tm, d, self.num_stages, q_major)
        sdO_layout = _smem_layout(self.dtype, tm, dv, self.num_stages, do_major)
        sK_layout = _smem_layout(self.dtype, tn, d, None, self.dq_cols)
        sV_layout = _smem_layout(self.dtype, tn, dv, None, dv)
        sdS_layout = self.sds_layout()

        load_op = cpasync.CopyBulkTensorTileG2SOp()
        tma_atom_Q, tma_Q = cpasync.make_tiled_tma_atom(load_op, mQ, cute.select(sQ_layout, mode=[0, 1]), (tm, d))
        tma_atom_dO, tma_dO = cpasync.make_tiled_tma_atom(load_op, mdO, cute.select(sdO_layout, mode=[0, 1]), (tm, dv))
        tma_atom_K, tma_K = cpasync.make_tiled_tma_atom(load_op, mK, sK_layout, (tn, d))
        tma_atom_V, tma_V = cpasync.make_tiled_tma_atom(load_op, mV, sV_layout, (tn, dv))
        q_bytes = cute.size_in_bytes(self.dtype, cute.select(sQ_layout, mode=[0, 1]))
        q_bytes += cute.size_in_bytes(self.dtype, cute.select(sdO_layout, mode=[0, 1]))
        kv_bytes = cute.size_in_bytes(self.dtype, sK_layout) + cute.size_in_bytes(self.dtype, sV_layout)
        # lse2 and D of the query block travel with Q and dO: (b, h, s) -> (s, h, b)
        mLSE2, mDpsum = [cute.make_tensor(t.iterator, cute.select(t.layout, mode=[2, 1, 0])) for t in (mLSE2, mDpsum)]
        sStat_layout = cute.make_layout((tm, self.num_stages), stride=(1, self.stat_stride))
        tma_atom_LSE2, tma_LSE2 = cpasync.make_tiled_tma_atom(load_op, mLSE2, cute.make_layout(tm), (tm,))
        tma_atom_Dpsum, tma_Dpsum = cpasync.make_tiled_tma_atom(load_op, mDpsum, cute.make_layout(tm), (tm,))
        q_bytes += 2 * 4 * tm

        rank = max(self.bias_rank, 4)
        sKs_layout = None
        if const_expr(self.bias_slice):
            # 32-byte swizzle atoms, a column of them per k16 step: Qf's first one is the factor gradients' chunk
            sQf_layout = _smem_layout(self.dtype, tm, SLICE_WIDTH, self.num_stages, FACTOR_CHUNK)
            sKf_layout = sm90.make_smem_layout(self.dtype, tn, rank)
            sKs_layout = _smem_layout(self.dtype, tn, SLICE_WIDTH, None, FACTOR_CHUNK)
        elif const_expr(self.bias_mma):
            # wgmma operands of S^T's bias slices, swizzled like Q and K
            # with tc_factor_grads (rank 16) one 32-byte swizzle atom wide: also the factor gradients' MN-major B
            sQf_layout = sm90.make_smem_layout(self.dtype, tm, rank, self.num_stages)
            sKf_layout = sm90.make_smem_layout(self.dtype, tn, rank)
        else:
            sQf_layout = cute.make_layout((tm, rank, self.num_stages), stride=(rank, 1, tm * rank))
            sKf_layout = cute.make_layout((tn, rank), stride=(rank, 1))
        # fp32 dS^T, (tile_n, tile_m), rows padded against bank conflicts
        sdSf_layout = cute.make_layout((tn, tm), stride=(tm + 4, 1))
        tma_atom_Qf, tma_Qf, tma_atom_Kf, tma_Kf = None, None, None, None
        if const_expr(self.has_bias):
            mQf, mKf = [self.to_sdhb(t) for t in (mQf, mKf)]
            tma_atom_Qf, tma_Qf = cpasync.make_tiled_tma_atom(
                load_op, mQf, cute.select(sQf_layout, mode=[0, 1]), (tm, self.qf_width)
            )
            tma_atom_Kf, tma_Kf = cpasync.make_tiled_tma_atom(load_op, mKf, sKf_layout, (tn, self.bias_rank))
            q_bytes += self.bias_dtype.width // 8 * tm * self.qf_width
        self.tx_bytes = (q_bytes, kv_bytes, self.bias_dtype.width // 8 * tn * self.bias_rank)

        # (b, h, s, d) -> (s, d, h, b)
        mdQaccum = cute.make_tensor(mdQaccum.iterator, cute.select(mdQaccum.layout, mode=[2, 3, 1, 0]))
        sdQ_layout = self.sdq_layout()
        dq_elems = cute.cosize(sdQ_layout) if const_expr(self.dq_tma_reduce) else 0
        bias_elems_q = cute.cosize(sQf_layout) if const_expr(self.has_bias) else 0
        bias_elems_k = cute.cosize(sKf_layout) if const_expr(self.has_bias) else 0
        ds_f32_elems = cute.cosize(sdSf_layout) if const_expr(self.fma_factor_grads) else 0
        p_elems = cute.cosize(sdS_layout) if const_expr(self.dkv_split_d) else 0
        dkf_elems = self.tile_n * FACTOR_CHUNK if const_expr(self.dkf_summed_in_smem) else 0
        ks_elems = cute.cosize(sKs_layout) if const_expr(self.bias_slice) else 0

        @cute.struct
        class SharedStorage:
            mbar_kv: cute.struct.MemRange[cutlass.Int64, 2]
            mbar_q: cute.struct.MemRange[cutlass.Int64, 2 * self.num_stages]
            mbar_kf: cute.struct.MemRange[cutlass.Int64, 2]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sV_layout)], 1024]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sdO: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sdO_layout)], 1024]
            sdS: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sdS_layout)], 1024]
            sP: cute.struct.Align[cute.struct.MemRange[self.dtype, p_elems], 1024]
            sLSE2: cute.struct.Align[cute.struct.MemRange[Float32, cute.cosize(sStat_layout)], 128]
            sDpsum: cute.struct.Align[cute.struct.MemRange[Float32, cute.cosize(sStat_layout)], 128]
            sQf: cute.struct.Align[cute.struct.MemRange[self.bias_dtype, bias_elems_q], 1024]
            sKf: cute.struct.Align[cute.struct.MemRange[self.bias_dtype, bias_elems_k], 1024]
            sdSf: cute.struct.Align[cute.struct.MemRange[Float32, ds_f32_elems], 128]
            sdQ: cute.struct.Align[cute.struct.MemRange[Float32, dq_elems], 128]
            sdKf: cute.struct.Align[cute.struct.MemRange[Float32, dkf_elems], 128]
            sKs: cute.struct.Align[cute.struct.MemRange[self.dtype, ks_elems], 1024]

        self.shared_storage = SharedStorage
        if const_expr(self.has_bias):
            mdQf, mdKf = [cute.make_tensor(t.iterator, cute.select(t.layout, mode=[2, 3, 1, 0])) for t in (mdQf, mdKf)]
        if const_expr(self.deterministic):
            mSem = cute.make_tensor(mSem.iterator, cute.select(mSem.layout, mode=[2, 1, 0]))
        mdK, mdV = [self.to_sdhb(t) for t in (mdK, mdV)]

        schedule = self.make_schedule(mK.shape[0], mK.shape[2] * head_splits, mK.shape[3], heads_per_section)
        self.kernel(
            tma_Q, tma_K, tma_V, tma_dO, tma_Qf, tma_Kf, tma_LSE2, tma_Dpsum,
            mdQaccum, mdK, mdV, mdQf, mdKf, mSem,
            tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_dO, tma_atom_Qf, tma_atom_Kf, tma_atom_LSE2, tma_atom_Dpsum,
            tiled_mma_sdp, tiled_mma_dv, tiled_mma_dk, tiled_mma_dq,
            sQ_layout, sK_layout, sV_layout, sdO_layout, sdS_layout, sQf_layout, sKf_layout, sdSf_layout,
            sStat_layout, sdQ_layout, sKs_layout,
            softmax_scale_log2, softmax_scale, window_left, window_right, heads_per_section, head_splits,
        ).launch(
            grid=(schedule.num_tiles(), 1, 1), block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1
        )  # fmt: skip

    @cute.kernel
    def kernel(
        self,
        mQ: cute.Tensor,  # (s_q, d, h, b) TMA coordinates
        mK: cute.Tensor,  # (s_k, d, h_kv, b)
        mV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mdO: cute.Tensor,  # (s_q, dv, h, b)
        mQf: cute.Tensor | None,  # (s_q, r, hq, bq)
        mKf: cute.Tensor | None,  # (s_k, r, hk, bk)
        mLSE2: cute.Tensor,  # (s_q_pad, h, b) float32, TMA coordinates
        mDpsum: cute.Tensor,  # (s_q_pad, h, b) float32, TMA coordinates
        mdQaccum: cute.Tensor,  # (s_q_pad, d, h, b) float32 (TMA coordinates with dq_tma_reduce)
        mdK: cute.Tensor,  # (s_k, d, h_kv, b)
        mdV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mdQf: cute.Tensor | None,  # (s_q_pad, r, h, b) float32
        mdKf: cute.Tensor | None,  # (s_k_pad, r, h, b) float32
        mSem: cute.Tensor | None,  # (m_blocks, h, b) int32
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_dO: cute.CopyAtom,
        tma_atom_Qf: cute.CopyAtom | None,
        tma_atom_Kf: cute.CopyAtom | None,
        tma_atom_LSE2: cute.CopyAtom,
        tma_atom_Dpsum: cute.CopyAtom,
        tiled_mma_sdp: cute.TiledMma,
        tiled_mma_dv: cute.TiledMma,
        tiled_mma_dk: cute.TiledMma,
        tiled_mma_dq: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sdO_layout: cute.ComposedLayout,
        sdS_layout: cute.ComposedLayout,
        sQf_layout: cute.Layout | cute.ComposedLayout,
        sKf_layout: cute.Layout | cute.ComposedLayout,
        sdSf_layout: cute.Layout,
        sStat_layout: cute.Layout,
        sdQ_layout: cute.Layout,
        sKs_layout: cute.ComposedLayout | None,
        softmax_scale_log2: Float32,
        softmax_scale: Float32,
        window_left: Int32,
        window_right: Int32,
        heads_per_section: Int32,
        head_splits: Int32,
    ):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        tidx, _, _ = cute.arch.thread_idx()
        if warp_idx == WARP_ROLES.load[0]:
            atoms = (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_dO, tma_atom_Qf, tma_atom_Kf)
            for atom in (*atoms, tma_atom_LSE2, tma_atom_Dpsum):
                if const_expr(atom is not None):
                    cpasync.prefetch_descriptor(atom)

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        q_bytes, kv_bytes, kf_bytes = self.tx_bytes
        pipeline_kv = make_tma_pipeline(storage.mbar_kv.data_ptr(), 1, kv_bytes, self.num_mma_threads)
        pipeline_q = make_tma_pipeline(storage.mbar_q.data_ptr(), self.num_stages, q_bytes, self.num_mma_threads)
        pipeline_kf = None
        if const_expr(self.has_bias):
            # key factors are per query head when hk == h: reloaded for every head of the group
            pipeline_kf = make_tma_pipeline(storage.mbar_kf.data_ptr(), 1, kf_bytes, self.num_mma_threads)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sdO = storage.sdO.get_tensor(sdO_layout.outer, swizzle=sdO_layout.inner)
        sdS = storage.sdS.get_tensor(sdS_layout.outer, swizzle=sdS_layout.inner)
        sP = None
        if const_expr(self.dkv_split_d):
            sP = storage.sP.get_tensor(sdS_layout.outer, swizzle=sdS_layout.inner)
        sLSE2 = storage.sLSE2.get_tensor(sStat_layout)
        sDpsum = storage.sDpsum.get_tensor(sStat_layout)
        sQf, sKf, sdSf = None, None, None
        if const_expr(self.bias_mma):
            sQf = storage.sQf.get_tensor(sQf_layout.outer, swizzle=sQf_layout.inner)
            sKf = storage.sKf.get_tensor(sKf_layout.outer, swizzle=sKf_layout.inner)
        elif const_expr(self.has_bias):
            sQf = storage.sQf.get_tensor(sQf_layout)
            sKf = storage.sKf.get_tensor(sKf_layout)
        if const_expr(self.fma_factor_grads):
            sdSf = storage.sdSf.get_tensor(sdSf_layout)
        sdQ = None
        if const_expr(self.dq_tma_reduce):
            sdQ = storage.sdQ.get_tensor(sdQ_layout)
        sdKf = None
        if const_expr(self.dkf_summed_in_smem):
            # (consumer thread, its dKf accumulator elements)
            slot = self.tile_n * FACTOR_CHUNK // self.num_mma_threads
            sdKf = storage.sdKf.get_tensor(cute.make_layout((self.num_mma_threads, slot), stride=(slot, 1)))
        sKs = None
        if const_expr(self.bias_slice):
            sKs = storage.sKs.get_tensor(sKs_layout.outer, swizzle=sKs_layout.inner)

        schedule = self.make_schedule(mK.shape[0], mK.shape[2] * head_splits, mK.shape[3], heads_per_section)
        n_block, split_head, batch = self.decode_tile(schedule, cute.arch.block_idx()[0])
        head_kv = split_head // head_splits
        qhead_per_kvhead = mQ.shape[2] // mK.shape[2]
        # this CTA's query heads of the group: [g_lo, g_hi)
        heads_per_split = cute.ceil_div(qhead_per_kvhead, head_splits)
        g_lo = (split_head % head_splits) * heads_per_split
        g_hi = cutlass.min(g_lo + heads_per_split, qhead_per_kvhead)
        m_min, m_max = self.m_block_range(n_block, mQ.shape[0], mK.shape[0], window_left, window_right)
        shift = self.query_block_shift(n_block, cute.ceil_div(mK.shape[0], self.tile_n), m_min, m_max)

        if warp_idx < WARP_ROLES.mma_wg1[0]:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            if const_expr(self.dq_reduce_warp):
                # the producer warpgroup's second warp (WARP_ROLES.load names the whole producer warpgroup)
                if warp_idx == WARP_ROLES.load[1]:
                    self.reduce_dq(mdQaccum, sdQ, head_kv, batch, qhead_per_kvhead, g_lo, g_hi, m_min, m_max, shift)
            if const_expr(self.bias_slice):
                if warp_idx == WARP_ROLES.load[2]:
                    self.split_key_factors(sKf, sKs, pipeline_kf, g_lo, g_hi, softmax_scale)
            if warp_idx == WARP_ROLES.load[0]:
                self.load(
                    mQ, mK, mV, mdO, mQf, mKf, mLSE2, mDpsum, sQ, sK, sV, sdO, sQf, sKf, sLSE2, sDpsum,
                    tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_dO, tma_atom_Qf, tma_atom_Kf,
                    tma_atom_LSE2, tma_atom_Dpsum,
                    pipeline_kv, pipeline_q, pipeline_kf, n_block, head_kv, batch, qhead_per_kvhead, g_lo, g_hi,
                    m_min, m_max, shift,
                )  # fmt: skip
        else:
            cute.arch.setmaxregister_increase(MMA_REGS)
            self.mma(
                tidx - WARPGROUP_THREADS,
                mdQaccum, mdK, mdV, mdQf, mdKf, mSem,
                sQ, sK, sV, sdO, sdS, sP, sQf, sKf, sdSf, sLSE2, sDpsum, sdQ, sdKf, sKs,
                tiled_mma_sdp, tiled_mma_dv, tiled_mma_dk, tiled_mma_dq, pipeline_kv, pipeline_q, pipeline_kf,
                n_block, head_kv, batch, qhead_per_kvhead, g_lo, g_hi, m_min, m_max, shift,
                mQ.shape[0], mK.shape[0], softmax_scale_log2, softmax_scale, window_left, window_right,
            )  # fmt: skip

    def sds_layout(self) -> cute.ComposedLayout:
        """dS^T (and P^T with dkv_split_d), (tile_n, tile_m, ds_stages), queries contiguous, swizzled: the S^T
        accumulator's layout as stored, and the MN-major A operand of dQ = dS K. With ``dq_transposed``, dS instead,
        (tile_m, tile_n, ds_stages), keys contiguous (128-byte swizzle, which 80 queries per row would not allow):
        the K-major B operand of dQ^T = K^T dS^T, as FA4 stores it, written by transposing stmatrix."""
        if const_expr(self.dq_transposed):
            return sm90.make_smem_layout(self.dtype, self.tile_m, self.tile_n, self.ds_stages)
        return _smem_layout(self.dtype, self.tile_n, self.tile_m, self.ds_stages, self.tile_m)

    def ds_store_view(self, sdS: cute.Tensor) -> cute.Tensor:
        """The dS smem tile as the S^T accumulator is stored into it: (tile_n, tile_m[, stages])."""
        return _transpose_view(sdS) if const_expr(self.dq_transposed) else sdS

    def sdq_layout(self) -> cute.Layout:
        """The dQ staging buffer of the bulk reduce-add: the float32 (tile_m, d) tile packed in the accumulators'
        register order (common/packed.py), the warpgroups' halves one after the other, like dQaccum's tiles."""
        return cute.make_layout(self.tile_m * self.head_dim)

    def make_tiled_mmas(self) -> tuple[cute.TiledMma, cute.TiledMma, cute.TiledMma, cute.TiledMma]:
        """The wgmmas of S^T / dP^T, dV, dK and dQ, with the warpgroups' share of each."""
        nwg = NUM_MMA_WARPGROUPS
        if const_expr(self.dkv_split_d):
            # S^T = K Q^T, dP^T = V dO^T: both warpgroups on the 64 key rows, tile_m / 2 queries each
            sdp = sm90.make_tiled_mma(
                self.dtype, "K", "K", self.tile_m // nwg, num_warpgroups=nwg, warpgroups_along_n=True
            )
            # dV += P^T dO, dK += dS^T Q: A = P^T / dS^T from smem (both halves), each warpgroup d / 2 columns
            dv = sm90.make_tiled_mma(
                self.dtype, "K", "MN", self.head_dim_v // nwg, num_warpgroups=nwg, warpgroups_along_n=True
            )
            dk = sm90.make_tiled_mma(
                self.dtype, "K", "MN", self.head_dim // nwg, num_warpgroups=nwg, warpgroups_along_n=True
            )
        else:
            # S^T = K Q^T, dP^T = V dO^T: both operands K-major, one warpgroup per 64 key rows
            sdp = sm90.make_tiled_mma(self.dtype, "K", "K", self.tile_m, num_warpgroups=nwg)
            # dV += P^T dO, dK += dS^T Q: A from registers, B = dO / Q read MN-major
            dv = sm90.make_tiled_mma(self.dtype, "K", "MN", self.head_dim_v, a_in_regs=True, num_warpgroups=nwg)
            dk = sm90.make_tiled_mma(self.dtype, "K", "MN", self.head_dim, a_in_regs=True, num_warpgroups=nwg)
        return sdp, dv, dk, dq_tiled_mma(self.dtype, self.head_dim, self.tile_m)

    def make_factor_mmas(self) -> tuple[cute.TiledMma, cute.TiledMma]:
        """The wgmma bias's factor gradients on the tensor cores, from the 16-bit dS that dK and dQ take, both A
        operands from smem, FACTOR_CHUNK factor columns at a time (one chunk's accumulators per thread at most): dKf
        = dS^T Qf (each warpgroup its 64 key rows; with dkv_split_d one warpgroup) and dQf = dS Kf (64 query rows:
        one warpgroup, or with ``factor_grads_under_dk`` each warpgroup over its own key rows, issued between the
        dQ and dK wgmmas; otherwise once dQ's registers are free). B = Qf^T / Kf^T chunks, (FACTOR_CHUNK, rows)
        MN-major views of the factor tiles the S^T bias slices read K-major. Each query block's products go to the
        float32 buffers by atomics."""
        nwg = 1 if const_expr(self.dkv_split_d) else NUM_MMA_WARPGROUPS
        return (
            sm90.make_tiled_mma(self.dtype, "K", "MN", FACTOR_CHUNK, num_warpgroups=nwg),
            sm90.make_tiled_mma(self.dtype, "MN", "MN", FACTOR_CHUNK),
        )

    def factor_chunk_operands(
        self, wg_mma_dkf, wg_mma_dqf, sQf: cute.Tensor, sKf: cute.Tensor, wg_idx: Int32
    ) -> tuple[list, list]:
        """The B operands of each factor column chunk: Qf^T (.., stages) for dKf, Kf^T for dQf (with
        ``factor_grads_under_dk`` this warpgroup's 64 key rows of it)."""
        chunks = range(self.bias_rank // FACTOR_CHUNK)
        qf = [cute.local_tile(sQf, (self.tile_m, FACTOR_CHUNK, self.num_stages), (0, c, 0)) for c in chunks]
        kf = [cute.local_tile(sKf, (self.tile_n, FACTOR_CHUNK), (0, c)) for c in chunks]
        if const_expr(self.factor_grads_under_dk):
            kf = [self.own_keys(t, 0, wg_idx) for t in kf]
        return (
            [wg_mma_dkf.make_fragment_B(wg_mma_dkf.partition_B(_transpose_view(t))) for t in qf],
            [wg_mma_dqf.make_fragment_B(wg_mma_dqf.partition_B(_transpose_view(t))) for t in kf],
        )

    def own_keys(self, t: cute.Tensor, key_mode: int, wg_idx: Int32) -> cute.Tensor:
        """``t`` (whole tile_n along mode ``key_mode``, whole along the others) cut to warpgroup ``wg_idx``'s key
        rows, the ones it holds S^T / dP^T of: dQf = dS Kf split along the keys (``factor_grads_under_dk``)."""
        keys = self.tile_n // NUM_MMA_WARPGROUPS
        tiler = tuple(keys if m == key_mode else cute.size(t, mode=[m]) for m in range(cute.rank(t)))
        coord = tuple(wg_idx if m == key_mode else 0 for m in range(cute.rank(t)))
        return cute.local_tile(t, tiler, coord)

    def factor_chunk_wgs(self, chunk: int) -> tuple[bool, int | None]:
        """(both warpgroups take dKf, the warpgroup that takes dQf; None: both, each over its own key rows) for
        factor column chunk ``chunk``: each takes its own key rows of dKf and they take dQf in turn, or both
        (``factor_grads_under_dk``); with dkv_split_d the first takes dKf, the second dQf (so that no thread holds
        more than two chunks' accumulators)."""
        if const_expr(self.dkv_split_d):
            return False, 1
        if const_expr(self.factor_grads_under_dk):
            return True, None
        return True, chunk % NUM_MMA_WARPGROUPS

    def make_ds_store(self, tiled_mma_sdp: cute.TiledMma, tidx) -> tuple[cute.CopyAtom, cute.TiledCopy]:
        """The copy of an S^T-shaped register tile (dS^T, P^T) into its swizzled smem tile: stmatrix, one 16x16
        block per instruction (its rows 16 contiguous bytes of the tile), instead of a 4-byte store and a
        swizzled address per column pair."""
        # dq_transposed: dS stored keys-contiguous, each 16-byte row 8 keys of one query (a column of the fragment)
        op = warp.StMatrix8x8x16bOp(transpose=self.dq_transposed, num_matrices=4)
        atom = cute.make_copy_atom(op, self.dtype)
        return atom, cute.make_tiled_copy_C(atom, tiled_mma_sdp).get_slice(tidx)

    @cute.jit
    def store_ds(self, atom: cute.CopyAtom, thr_copy, frag: cute.Tensor, dst: cute.Tensor) -> None:
        """An S^T-shaped 16-bit register tile -> its smem stage ``dst`` (partitioned as ``ds_stmatrix`` says)."""
        if const_expr(self.ds_stmatrix):
            cute.copy(atom, thr_copy.retile(frag), dst)
        else:
            cute.autovec_copy(frag, dst)

    def make_schedule(
        self, seqlen_k: Int32, num_heads_kv: Int32, num_batch: Int32, heads_per_section: Int32
    ) -> PersistentTileScheduler:
        """One CTA per (key block, K/V head, batch). Causal: first key blocks (the most query blocks) first, in
        sections of K/V heads whose Q and dO fit in L2; otherwise the key blocks of one head back to back.
        Either way a head's key blocks start in increasing order, which the deterministic dQ order relies on."""
        return PersistentTileScheduler(
            cute.ceil_div(seqlen_k, self.tile_n),
            num_heads_kv,
            num_batch,
            longest_first=self.has_window_right,
            heads_per_section=heads_per_section,
        )

    @cute.jit
    def decode_tile(self, schedule: PersistentTileScheduler, tile: Int32) -> tuple[Int32, Int32, Int32]:
        """CTA index -> (key block, K/V head, batch)."""
        block, head_kv, batch = schedule.decode(tile)
        if const_expr(self.has_window_right):
            # the scheduler's longest-first order runs its blocks last to first; here the first is longest
            block = schedule.num_m_blocks - 1 - block
        return block, head_kv, batch

    @cute.jit
    def m_block_range(
        self, n_block: Int32, seqlen_q: Int32, seqlen_k: Int32, window_left: Int32, window_right: Int32
    ) -> tuple[Int32, Int32]:
        """Query blocks [m_min, m_max) with a row that sees a key of this block (maybe empty)."""
        offset = seqlen_k - seqlen_q
        key_start = n_block * self.tile_n
        key_last = cutlass.min(key_start + self.tile_n, seqlen_k) - 1
        m_min = Int32(0)
        m_max = cute.ceil_div(seqlen_q, self.tile_m)
        if const_expr(self.has_window_right):
            # row i sees key j only if i >= j - offset - window_right
            first_row = cutlass.max(key_start - offset - window_right, 0)
            m_min = first_row // self.tile_m
        if const_expr(self.has_window_left):
            # row i sees key j only if i <= j - offset + window_left; a negative bound means no row
            last_row = cutlass.min(key_last - offset + window_left, seqlen_q - 1)
            m_max = cutlass.max(last_row + 1, 0)
            m_max = cute.ceil_div(m_max, self.tile_m)
        return m_min, m_max

    @cute.jit
    def query_block_shift(self, n_block: Int32, num_n_blocks: Int32, m_min: Int32, m_max: Int32) -> Int32:
        """``rotate_query_blocks``: where in [m_min, m_max) this key block's walk starts, relative to m_min: the key
        blocks of a head spread evenly around the range, so that CTAs that run side by side at the same pace (every
        key block of a non-causal head starts at query block 0) add their dQ to different query blocks at any time,
        not all to the same addresses. 0 without it."""
        shift = Int32(0)
        if const_expr(self.rotate_query_blocks):
            count = cutlass.max(m_max - m_min, 1)
            # n_block * step <= count: no overflow at any length
            step = cutlass.max(count // num_n_blocks, 1)
            shift = (n_block * step) % count
        return shift

    @cute.jit
    def query_block(self, i: Int32, m_min: Int32, m_max: Int32, shift: Int32) -> Int32:
        """The query block of step i in [m_min, m_max) of the walk: i itself, or with ``rotate_query_blocks`` i + shift
        wrapped around into the range. The producer, the consumers and the reduce warp walk alike."""
        m_block = i
        if const_expr(self.rotate_query_blocks):
            m_block = i + shift
            if m_block >= m_max:
                m_block = m_block - (m_max - m_min)
        return m_block

    @cute.jit
    def load(
        self,
        mQ: cute.Tensor,  # (s_q, d, h, b)
        mK: cute.Tensor,  # (s_k, d, h_kv, b)
        mV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mdO: cute.Tensor,  # (s_q, dv, h, b)
        mQf: cute.Tensor | None,  # (s_q, r, hq, bq)
        mKf: cute.Tensor | None,  # (s_k, r, hk, bk)
        mLSE2: cute.Tensor,  # (s_q_pad, h, b)
        mDpsum: cute.Tensor,  # (s_q_pad, h, b)
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        sdO: cute.Tensor,
        sQf: cute.Tensor | None,
        sKf: cute.Tensor | None,
        sLSE2: cute.Tensor,
        sDpsum: cute.Tensor,
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_dO: cute.CopyAtom,
        tma_atom_Qf: cute.CopyAtom | None,
        tma_atom_Kf: cute.CopyAtom | None,
        tma_atom_LSE2: cute.CopyAtom,
        tma_atom_Dpsum: cute.CopyAtom,
        pipeline_kv,
        pipeline_q,
        pipeline_kf,
        n_block: Int32,
        head_kv: Int32,
        batch: Int32,
        qhead_per_kvhead: Int32,
        g_lo: Int32,  # the query heads of the group this CTA takes: [g_lo, g_hi)
        g_hi: Int32,
        m_min: Int32,
        m_max: Int32,
        shift: Int32,  # query_block_shift
    ):
        tm, tn = self.tile_m, self.tile_n
        kv_state = producer_state(1)
        pipeline_kv.producer_acquire(kv_state)
        kv_bar = pipeline_kv.producer_get_barrier(kv_state)
        gK = cute.local_tile(mK[None, None, head_kv, batch], (tn, self.head_dim), (n_block, 0))
        gV = cute.local_tile(mV[None, None, head_kv, batch], (tn, self.head_dim_v), (n_block, 0))
        tKsK, tKgK = cpasync.tma_partition(
            tma_atom_K, 0, cute.make_layout(1), cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
        )
        tVsV, tVgV = cpasync.tma_partition(
            tma_atom_V, 0, cute.make_layout(1), cute.group_modes(sV, 0, 2), cute.group_modes(gV, 0, 2)
        )
        cute.copy(tma_atom_K, tKgK, tKsK, tma_bar_ptr=kv_bar)
        cute.copy(tma_atom_V, tVgV, tVsV, tma_bar_ptr=kv_bar)

        q_state = producer_state(self.num_stages)
        kf_state = producer_state(1)
        for g in cutlass.range(g_lo, g_hi, unroll=1):
            head = head_kv * qhead_per_kvhead + g
            if const_expr(self.has_bias):
                kf_batch = batch if mKf.shape[3] > 1 else 0
                kf_head = head if mKf.shape[2] > 1 else 0
                gKf = cute.local_tile(mKf[None, None, kf_head, kf_batch], (tn, self.bias_rank), (n_block, 0))
                tKfsKf, tKfgKf = cpasync.tma_partition(
                    tma_atom_Kf, 0, cute.make_layout(1), cute.group_modes(sKf, 0, 2), cute.group_modes(gKf, 0, 2)
                )
                pipeline_kf.producer_acquire(kf_state)
                cute.copy(tma_atom_Kf, tKfgKf, tKfsKf, tma_bar_ptr=pipeline_kf.producer_get_barrier(kf_state))
                kf_state.advance()
                kf_state = kf_state
            gQ = cute.local_tile(mQ[None, None, head, batch], (tm, self.head_dim), (None, 0))
            gdO = cute.local_tile(mdO[None, None, head, batch], (tm, self.head_dim_v), (None, 0))
            tQsQ, tQgQ = cpasync.tma_partition(
                tma_atom_Q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
            )
            tdOsdO, tdOgdO = cpasync.tma_partition(
                tma_atom_dO, 0, cute.make_layout(1), cute.group_modes(sdO, 0, 2), cute.group_modes(gdO, 0, 2)
            )
            gLSE2 = cute.local_tile(mLSE2[None, head, batch], (tm,), (None,))
            gDpsum = cute.local_tile(mDpsum[None, head, batch], (tm,), (None,))
            tLsL, tLgL = cpasync.tma_partition(
                tma_atom_LSE2, 0, cute.make_layout(1), cute.group_modes(sLSE2, 0, 1), cute.group_modes(gLSE2, 0, 1)
            )
            tDsD, tDgD = cpasync.tma_partition(
                tma_atom_Dpsum, 0, cute.make_layout(1), cute.group_modes(sDpsum, 0, 1), cute.group_modes(gDpsum, 0, 1)
            )
            for i in cutlass.range(m_min, m_max, unroll=1):
                m_block = self.query_block(i, m_min, m_max, shift)
                pipeline_q.producer_acquire(q_state)
                bar = pipeline_q.producer_get_barrier(q_state)
                cute.copy(tma_atom_Q, tQgQ[None, m_block], tQsQ[None, q_state.index], tma_bar_ptr=bar)
                cute.copy(tma_atom_dO, tdOgdO[None, m_block], tdOsdO[None, q_state.index], tma_bar_ptr=bar)
                cute.copy(tma_atom_LSE2, tLgL[None, m_block], tLsL[None, q_state.index], tma_bar_ptr=bar)
                cute.copy(tma_atom_Dpsum, tDgD[None, m_block], tDsD[None, q_state.index], tma_bar_ptr=bar)
                if const_expr(self.has_bias):
                    qf_batch = batch if mQf.shape[3] > 1 else 0
                    qf_head = head if mQf.shape[2] > 1 else 0
                    gQf = cute.local_tile(mQf[None, None, qf_head, qf_batch], (tm, self.qf_width), (None, 0))
                    tQfsQf, tQfgQf = cpasync.tma_partition(
                        tma_atom_Qf, 0, cute.make_layout(1), cute.group_modes(sQf, 0, 2), cute.group_modes(gQf, 0, 2)
                    )
                    cute.copy(tma_atom_Qf, tQfgQf[None, m_block], tQfsQf[None, q_state.index], tma_bar_ptr=bar)
                q_state.advance()
                q_state = q_state

    @cute.jit
    def mma(
        self,
        tidx: Int32,
        mdQaccum: cute.Tensor,  # (s_q_pad, d, h, b) float32
        mdK: cute.Tensor,  # (s_k, d, h_kv, b)
        mdV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mdQf: cute.Tensor | None,  # (s_q_pad, r, h, b) float32
        mdKf: cute.Tensor | None,  # (s_k_pad, r, h, b) float32
        mSem: cute.Tensor | None,  # (m_blocks, h, b) int32
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        sdO: cute.Tensor,
        sdS: cute.Tensor,  # (tile_n, tile_m, ds_stages): dS^T
        sP: cute.Tensor | None,  # (tile_n, tile_m, ds_stages): P^T with dkv_split_d
        sQf: cute.Tensor | None,
        sKf: cute.Tensor | None,
        sdSf: cute.Tensor | None,
        sLSE2: cute.Tensor,  # (tile_m, stages) float32
        sDpsum: cute.Tensor,  # (tile_m, stages) float32
        sdQ: cute.Tensor | None,  # (tile_m * d,) float32, packed: the warpgroups' halves one after the other
        sdKf: cute.Tensor | None,  # (consumer threads, slot) float32: dkf_summed_in_smem
        sKs: cute.Tensor | None,  # (tile_n, SLICE_WIDTH): bias_slice's split key factors
        tiled_mma_sdp: cute.TiledMma,
        tiled_mma_dv: cute.TiledMma,
        tiled_mma_dk: cute.TiledMma,
        tiled_mma_dq: cute.TiledMma,
        pipeline_kv,
        pipeline_q,
        pipeline_kf,
        n_block: Int32,
        head_kv: Int32,
        batch: Int32,
        qhead_per_kvhead: Int32,
        g_lo: Int32,  # the query heads of the group this CTA takes: [g_lo, g_hi)
        g_hi: Int32,
        m_min: Int32,
        m_max: Int32,
        shift: Int32,  # query_block_shift
        seqlen_q: Int32,
        seqlen_k: Int32,
        softmax_scale_log2: Float32,
        softmax_scale: Float32,
        window_left: Int32,
        window_right: Int32,
    ):
        tm, tn, d, dv = self.tile_m, self.tile_n, self.head_dim, self.head_dim_v
        wg_idx = cute.arch.make_warp_uniform(tidx // WARPGROUP_THREADS)
        # the thread of each warpgroup that issues (commits, waits for) its dQ bulk reduce-add
        lane = tidx % WARPGROUP_THREADS
        is_dq_thread = lane == 0
        # smem operand descriptors are per warpgroup; C partitions per thread
        wg_mma_sdp = tiled_mma_sdp.get_slice(wg_idx * WARPGROUP_THREADS)
        wg_mma_dv = tiled_mma_dv.get_slice(wg_idx * WARPGROUP_THREADS)
        wg_mma_dk = tiled_mma_dk.get_slice(wg_idx * WARPGROUP_THREADS)
        wg_mma_dq = tiled_mma_dq.get_slice(wg_idx * WARPGROUP_THREADS)
        thr_mma_sdp = tiled_mma_sdp.get_slice(tidx)
        thr_mma_dv = tiled_mma_dv.get_slice(tidx)
        thr_mma_dk = tiled_mma_dk.get_slice(tidx)
        thr_mma_dq = tiled_mma_dq.get_slice(tidx)

        # S^T = K Q^T and dP^T = V dO^T
        tSrK = wg_mma_sdp.make_fragment_A(wg_mma_sdp.partition_A(sK))
        tSrQ = wg_mma_sdp.make_fragment_B(wg_mma_sdp.partition_B(sQ))
        tdPrV = wg_mma_sdp.make_fragment_A(wg_mma_sdp.partition_A(sV))
        tdPrdO = wg_mma_sdp.make_fragment_B(wg_mma_sdp.partition_B(sdO))
        acc_shape_S = thr_mma_sdp.partition_shape_C((tn, tm))
        # (key, query) of every S^T accumulator element within the tile
        tScS = thr_mma_sdp.partition_C(cute.make_identity_tensor((tn, tm)))
        # dV += P^T dO: B = dO^T, (dv, tile_m) MN-major; A = P^T in registers, or from smem with dkv_split_d
        tdVrdOt = wg_mma_dv.make_fragment_B(wg_mma_dv.partition_B(_transpose_view(sdO)))
        acc_dV = cute.make_rmem_tensor(thr_mma_dv.partition_shape_C((tn, dv)), Float32)
        # dK += dS^T Q: B = Q^T, (d, tile_m) MN-major; A = dS^T likewise
        tdKrQt = wg_mma_dk.make_fragment_B(wg_mma_dk.partition_B(_transpose_view(sQ)))
        # dS^T (and P^T with dkv_split_d) registers -> smem: by stmatrix, or 4-byte stores of column pairs at the
        # accumulator's own addresses
        smem_copy_dS, smem_thr_copy_dS = self.make_ds_store(tiled_mma_sdp, tidx)
        partition_dS = smem_thr_copy_dS.partition_D if const_expr(self.ds_stmatrix) else thr_mma_sdp.partition_C
        tSsdS = partition_dS(self.ds_store_view(sdS))
        tSsP = None
        if const_expr(self.dkv_split_d):
            tdVrP = wg_mma_dv.make_fragment_A(wg_mma_dv.partition_A(sP))
            tdKrdS = wg_mma_dk.make_fragment_A(wg_mma_dk.partition_A(sdS))
            tSsP = partition_dS(sP)
        else:
            tdVrP = wg_mma_dv.make_fragment_A(wg_mma_dv.partition_shape_A((tn, tm)))
            tdKrdS = wg_mma_dk.make_fragment_A(wg_mma_dk.partition_shape_A((tn, tm)))
        acc_dK = cute.make_rmem_tensor(thr_mma_dk.partition_shape_C((tn, d)), Float32)
        if const_expr(self.dq_transposed):
            # dQ^T = K^T dS^T: A = K^T (d, tile_n) MN-major, this warpgroup's 64 rows of d; B = dS (tile_m, tile_n),
            # K-major
            tdQrKt = wg_mma_dq.make_fragment_A(wg_mma_dq.partition_A(_transpose_view(sK)))
            tdQrdS = wg_mma_dq.make_fragment_B(wg_mma_dq.partition_B(sdS))
            acc_shape_dQ = thr_mma_dq.partition_shape_C((d, tm))
        else:
            # dQ = dS K: A = dS (tile_m, tile_n) MN-major, B = K^T (d, tile_n) MN-major
            tdQrdS = wg_mma_dq.make_fragment_A(wg_mma_dq.partition_A(_transpose_view(sdS)))
            tdQrKt = wg_mma_dq.make_fragment_B(wg_mma_dq.partition_B(_transpose_view(sK)))
            acc_shape_dQ = thr_mma_dq.partition_shape_C((tm, d))
        tSsdSf = None
        if const_expr(self.fma_factor_grads):
            tSsdSf = thr_mma_sdp.partition_C(sdSf)
        # the bias slices of S^T = K Q^T + Kf Qf^T: A = Kf, B = Qf, K-major like K and Q
        tSrKf, tSrQf = None, None
        # and the factor gradients dKf += dS^T Qf, dQf = dS Kf (make_factor_mmas)
        tiled_mma_dkf, tiled_mma_dqf, thr_mma_dkf, thr_mma_dqf = None, None, None, None
        tdKfrdS, tdKfrQf, tdQfrdS, tdQfrKf, acc_shape_dKf, acc_shape_dQf = None, [], None, [], None, None
        if const_expr(self.bias_mma):
            # bias_slice: A = the split Kf' (sKs), B = Qf' at its pieces' columns
            tSrKf = wg_mma_sdp.make_fragment_A(wg_mma_sdp.partition_A(sKs if const_expr(self.bias_slice) else sKf))
            tSrQf = wg_mma_sdp.make_fragment_B(wg_mma_sdp.partition_B(sQf))
        if const_expr(self.tc_factor_grads):
            tiled_mma_dkf, tiled_mma_dqf = self.make_factor_mmas()
            if const_expr(self.dkv_split_d):
                # the first warpgroup's: the others' slices would alias it (lane, not tidx)
                thr_mma_dkf = tiled_mma_dkf.get_slice(lane)
                wg_mma_dkf = tiled_mma_dkf.get_slice(0)
            else:
                thr_mma_dkf = tiled_mma_dkf.get_slice(tidx)
                wg_mma_dkf = tiled_mma_dkf.get_slice(wg_idx * WARPGROUP_THREADS)
            tdKfrdS = wg_mma_dkf.make_fragment_A(wg_mma_dkf.partition_A(sdS))
            acc_shape_dKf = thr_mma_dkf.partition_shape_C((tn, FACTOR_CHUNK))
            thr_mma_dqf = tiled_mma_dqf.get_slice(lane)
            wg_mma_dqf = tiled_mma_dqf.get_slice(0)
            dS = _transpose_view(sdS)
            if const_expr(self.factor_grads_under_dk):
                # dQf's A = dS over this warpgroup's key rows (its B takes the same rows of Kf)
                dS = self.own_keys(dS, 1, wg_idx)
            tdQfrdS = wg_mma_dqf.make_fragment_A(wg_mma_dqf.partition_A(dS))
            acc_shape_dQf = thr_mma_dqf.partition_shape_C((tm, FACTOR_CHUNK))
            tdKfrQf, tdQfrKf = self.factor_chunk_operands(wg_mma_dkf, wg_mma_dqf, sQf, sKf, wg_idx)

        acc_dK.fill(0.0)
        acc_dV.fill(0.0)
        c_mn = acc_view_mn(tScS)
        num_rows = cute.size(c_mn, mode=[0])
        num_cols = cute.size(c_mn, mode=[1])
        key_start = n_block * tn

        # dkf_summed_in_smem: this thread's slot of the query head's dKf, its accumulator elements in their order
        dkf_slot = None
        if const_expr(self.dkf_summed_in_smem):
            dkf_slot = sdKf[tidx, None]
            assert cute.size(acc_shape_dKf) == cute.size(dkf_slot), "a slot holds one thread's dKf accumulator"

        kv_state = consumer_state(1)
        pipeline_kv.consumer_wait(kv_state)
        q_state = consumer_state(self.num_stages)
        kf_state = consumer_state(1)
        iteration = Int32(0)
        for g in cutlass.range(g_lo, g_hi, unroll=1):
            head = head_kv * qhead_per_kvhead + g
            if const_expr(self.has_bias):
                pipeline_kf.consumer_wait(kf_state)
            if const_expr(self.bias_slice):
                # the split warp's pieces of this head's key factors are in sKs
                barrier_sync(BwdBarrier.KfSplit, self.num_mma_threads + cute.arch.WARP_SIZE)
            if const_expr(self.dkf_summed_in_smem):
                zeros = cute.make_rmem_tensor(cute.size(dkf_slot), Float32)
                zeros.fill(0.0)
                cute.autovec_copy(zeros, dkf_slot)
            for i in cutlass.range(m_min, m_max, unroll=1):
                m_block = self.query_block(i, m_min, m_max, shift)
                stage = q_state.index
                ds_stage = iteration % self.ds_stages
                row_start = m_block * tm
                # 1. S^T = K Q^T and dP^T = V dO^T; dP^T runs under the exp2 (and bias FMAs) of step 2,
                # except with ``late_dp``. The wgmma bias goes first, alone in flight, divided by the scale:
                # S^T accumulates onto it; with ``bias_slice`` it is two more k16 steps of S^T's group
                pipeline_q.consumer_wait(q_state)
                acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
                if const_expr(self.bias_slice):
                    sm90.gemm(
                        tiled_mma_sdp, acc_S, tSrK, tSrQ[None, None, None, stage], True, -1,
                        then=(tSrKf, tSrQf[None, None, None, stage]),
                    )  # fmt: skip
                elif const_expr(self.bias_mma):
                    sm90.gemm(tiled_mma_sdp, acc_S, tSrKf, tSrQf[None, None, None, stage], True, 0)
                    acc_S.store(acc_S.load() * (Float32(1.0) / softmax_scale))
                    sm90.gemm(tiled_mma_sdp, acc_S, tSrK, tSrQ[None, None, None, stage], False, -1)
                else:
                    sm90.gemm(tiled_mma_sdp, acc_S, tSrK, tSrQ[None, None, None, stage], True, -1)
                acc_dP = cute.make_rmem_tensor(acc_shape_S, Float32)
                if const_expr(not self.late_dp):
                    sm90.gemm(tiled_mma_sdp, acc_dP, tdPrV, tdPrdO[None, None, None, stage], True, -1)
                # per column: lse2 and D, read from smem while the wgmmas run (early_stats) or where used
                lse2s, dpsums = None, None
                if const_expr(self.early_stats):
                    lse2s, dpsums = cute.make_rmem_tensor(num_cols, Float32), cute.make_rmem_tensor(num_cols, Float32)
                    for c in cutlass.range_constexpr(num_cols):
                        lse2s[c] = sLSE2[c_mn[0, c][1], stage]
                    for c in cutlass.range_constexpr(num_cols):
                        dpsums[c] = sDpsum[c_mn[0, c][1], stage]
                warpgroup.wait_group(0 if const_expr(self.late_dp) else 1)

                # 2. P^T = exp2(S^T * scale_log2 [+ bias] - lse2), zeroed where invisible
                s_mn = acc_view_mn(acc_S)
                if const_expr(self.fma_bias):
                    self.add_lowrank_bias(acc_S, tScS, sKf, sQf[None, None, stage], softmax_scale_log2)
                for c in cutlass.range_constexpr(num_cols):
                    lse2 = lse2s[c] if const_expr(self.early_stats) else sLSE2[c_mn[0, c][1], stage]
                    for r in cutlass.range_constexpr(num_rows):
                        if const_expr(self.fma_bias):
                            s_mn[r, c] = cute.math.exp2(s_mn[r, c] - lse2, fastmath=True)
                        else:
                            s_mn[r, c] = cute.math.exp2(s_mn[r, c] * softmax_scale_log2 - lse2, fastmath=True)
                # a select, not a product: a masked logit may have overflowed to inf
                tile = (row_start, key_start, seqlen_q, seqlen_k, window_left, window_right)
                if self.tile_needs_mask(*tile):
                    self.zero_invisible(acc_S, tScS, *tile)
                if const_expr(self.ds_stages == 1 and not (self.fma_factor_grads or self.deterministic)):
                    # one buffer: both warpgroups' wgmmas of the previous query block must be done with it (with a
                    # bias or in deterministic mode, BiasGradsDone / DqTurn after every wait_group(0) see to that)
                    barrier_sync(BwdBarrier.PdSEmpty, self.num_mma_threads)
                if const_expr(self.dkv_split_d):
                    rP = cute.make_rmem_tensor_like(acc_S, self.dtype)
                    rP.store(acc_S.load().to(self.dtype))
                    self.store_ds(smem_copy_dS, smem_thr_copy_dS, rP, tSsP[None, None, None, ds_stage])
                else:
                    tdVrP.store(acc_view_as_operand_a(acc_S).load().to(self.dtype))

                # 3. dS^T = P^T (dP^T - D)
                if const_expr(self.late_dp):
                    sm90.gemm(tiled_mma_sdp, acc_dP, tdPrV, tdPrdO[None, None, None, stage], True, -1)
                warpgroup.wait_group(0)
                dp_mn = acc_view_mn(acc_dP)
                for c in cutlass.range_constexpr(num_cols):
                    dpsum = dpsums[c] if const_expr(self.early_stats) else sDpsum[c_mn[0, c][1], stage]
                    for r in cutlass.range_constexpr(num_rows):
                        dp_mn[r, c] = s_mn[r, c] * (dp_mn[r, c] - dpsum)
                rdS = cute.make_rmem_tensor_like(acc_dP, self.dtype)
                rdS.store(acc_dP.load().to(self.dtype))
                if const_expr(not self.dkv_split_d):
                    tdKrdS.store(acc_view_as_operand_a(rdS).load())
                self.store_ds(smem_copy_dS, smem_thr_copy_dS, rdS, tSsdS[None, None, None, ds_stage])
                if const_expr(self.fma_factor_grads):
                    cute.autovec_copy(acc_dP, tSsdSf)

                # 4. dV += P^T dO (P^T from registers: before the barrier; from smem: after it, which makes
                # the other warpgroup's half visible)
                if const_expr(not self.dkv_split_d):
                    sm90.gemm(tiled_mma_dv, acc_dV, tdVrP, tdVrdOt[None, None, None, stage], False, -1)
                # generic-proxy smem writes of dS (and P) must be visible to wgmma (async proxy)
                cute.arch.fence_view_async_shared()
                barrier_sync(BwdBarrier.PdS, self.num_mma_threads)
                if const_expr(self.dkv_split_d):
                    sm90.gemm(
                        tiled_mma_dv, acc_dV, tdVrP[None, None, None, ds_stage], tdVrdOt[None, None, None, stage],
                        False, -1,
                    )  # fmt: skip

                # 5. dQ = dS K (this warpgroup's d columns); dK += dS^T Q; under them, the factor gradients
                # from the float32 dS in smem (deterministic mode: in this key block's turn, step 7)
                acc_dQ = cute.make_rmem_tensor(acc_shape_dQ, Float32)
                if const_expr(self.dq_transposed):
                    sm90.gemm(tiled_mma_dq, acc_dQ, tdQrKt, tdQrdS[None, None, None, ds_stage], True, -1)
                else:
                    sm90.gemm(tiled_mma_dq, acc_dQ, tdQrdS[None, None, None, ds_stage], tdQrKt, True, -1)
                acc_dQf, acc_dKf = None, None
                if const_expr(self.factor_grads_under_dk):
                    acc_dQf, acc_dKf = self.factor_grad_mmas(
                        tiled_mma_dkf, tiled_mma_dqf, tdKfrdS, tdKfrQf, tdQfrdS, tdQfrKf, acc_shape_dQf, acc_shape_dKf,
                        wg_idx, 0, stage, ds_stage,
                    )  # fmt: skip
                if const_expr(self.dkv_split_d):
                    sm90.gemm(
                        tiled_mma_dk, acc_dK, tdKrdS[None, None, None, ds_stage], tdKrQt[None, None, None, stage],
                        False, -1,
                    )  # fmt: skip
                else:
                    sm90.gemm(tiled_mma_dk, acc_dK, tdKrdS, tdKrQt[None, None, None, stage], False, -1)
                if const_expr(self.fma_factor_grads and not self.deterministic):
                    self.factor_grads(
                        tidx, sdSf, sQf[None, None, stage], sKf,
                        mdQf[None, None, head, batch], mdKf[None, None, head, batch], row_start, key_start,
                    )  # fmt: skip
                if const_expr(self.dq_under_dk):
                    # dQ (and dV) done, dK still running: dQ goes out under it
                    warpgroup.wait_group(1)
                else:
                    warpgroup.wait_group(0)
                    if const_expr(not self.has_bias):
                        pipeline_q.consumer_release(q_state)

                sem_ptr = None
                if const_expr(self.deterministic):
                    sem_ptr = mSem.iterator + cute.crd2idx((m_block, head, batch), mSem.layout)
                    self.dq_turn_begin(
                        sem_ptr, n_block - self.first_n_block(row_start, seqlen_q, seqlen_k, window_left), tidx
                    )
                # 6. dQaccum += dQ, its (tile_m, d) tile packed in register order (common/packed.py) or by (row, col)
                gdQ = cute.local_tile(mdQaccum[None, None, head, batch], (tm, d), (m_block, 0))
                if const_expr(self.dq_reduce_warp):
                    self.store_dq_for_reduce_warp(acc_dQ, sdQ, wg_idx, lane)
                elif const_expr(self.dq_tma_reduce):
                    self.store_dq_bulk(acc_dQ, sdQ, gdQ.iterator, wg_idx, lane, is_dq_thread)
                elif const_expr(self.dq_packed):
                    red_add_packed(gdQ.iterator, acc_dQ, wg_idx, lane)
                else:
                    red_add_acc_f32(thr_mma_dq.partition_C(gdQ), acc_dQ)
                if const_expr(self.factor_grads_under_dk):
                    self.add_factor_grads_tc(
                        acc_dQf, acc_dKf, thr_mma_dqf, thr_mma_dkf, mdQf[None, None, head, batch],
                        mdKf[None, None, head, batch], m_block, n_block, wg_idx, 0, dkf_slot,
                    )  # fmt: skip
                if const_expr(self.dq_under_dk):
                    # dK has read Q^T (and dS^T), the factor gradients Qf
                    warpgroup.wait_group(0)
                    if const_expr(not self.has_bias or self.factor_grads_under_dk):
                        pipeline_q.consumer_release(q_state)
                if const_expr(self.tc_factor_grads and not self.factor_grads_under_dk):
                    # the factor gradients once dQ's registers are free: dS^T and dS from smem (this stage is not
                    # written again before both warpgroups pass the next query block's PdS barrier), Qf from
                    # the Q stage, released after them
                    for c in cutlass.range_constexpr(self.bias_rank // FACTOR_CHUNK):
                        acc_dQf, acc_dKf = self.factor_grad_mmas(
                            tiled_mma_dkf, tiled_mma_dqf, tdKfrdS, tdKfrQf, tdQfrdS, tdQfrKf, acc_shape_dQf,
                            acc_shape_dKf, wg_idx, c, stage, ds_stage,
                        )  # fmt: skip
                        warpgroup.wait_group(0)
                        self.add_factor_grads_tc(
                            acc_dQf, acc_dKf, thr_mma_dqf, thr_mma_dkf, mdQf[None, None, head, batch],
                            mdKf[None, None, head, batch], m_block, n_block, wg_idx, c, dkf_slot,
                        )  # fmt: skip
                    pipeline_q.consumer_release(q_state)

                # 7. every thread is done with the float32 dS and the query factors: release Q's stage
                if const_expr(self.fma_factor_grads):
                    if const_expr(self.deterministic):
                        self.factor_grads(
                            tidx, sdSf, sQf[None, None, stage], sKf,
                            mdQf[None, None, head, batch], mdKf[None, None, head, batch], row_start, key_start,
                        )  # fmt: skip
                    barrier_sync(BwdBarrier.BiasGradsDone, self.num_mma_threads)
                    pipeline_q.consumer_release(q_state)
                if const_expr(self.deterministic):
                    self.dq_turn_end(sem_ptr, tidx)

                q_state.advance()
                q_state = q_state
                iteration += 1
            if const_expr(self.dkf_summed_in_smem):
                summed = cute.make_rmem_tensor(cute.size(dkf_slot), Float32)
                cute.autovec_copy(dkf_slot, summed)
                acc_dKf_head = cute.make_rmem_tensor(acc_shape_dKf, Float32)
                for i in cutlass.range_constexpr(cute.size(acc_dKf_head)):
                    acc_dKf_head[i] = summed[i]
                tile_dKf = self.factor_chunk_tile(mdKf[None, None, head, batch], tn, n_block, 0)
                red_add_acc_f32(thr_mma_dkf.partition_C(tile_dKf), acc_dKf_head)
            if const_expr(self.has_bias):
                pipeline_kf.consumer_release(kf_state)
                kf_state.advance()
                kf_state = kf_state
            if const_expr(self.bias_slice):
                # each warpgroup waited for its last S^T of the head (step 3): the split warp may write sKs
                barrier_arrive(BwdBarrier.KsEmpty, self.num_mma_threads + cute.arch.WARP_SIZE)
        pipeline_kv.consumer_release(kv_state)
        if const_expr(self.dq_reduce_warp):
            # the reduce warp's last arrival: its last reduce-add has read the buffer (balances the barrier)
            barrier_sync(NamedBarrierBwd.dQEmpty, self.num_mma_threads + cute.arch.WARP_SIZE)
        elif const_expr(self.dq_tma_reduce):
            if is_dq_thread:
                # the last reduce-add has read the staging buffer: enough, as for CUTLASS's TMA stores (the adds
                # complete with the grid, before the postprocess reads dQ)
                cute.arch.cp_async_bulk_wait_group(0, read=True)

        # 8. epilogue: dK * softmax_scale and dV to the input dtype, rows past seqlen_k dropped; with
        # split_heads added in float32 to the buffers the launcher converts
        if const_expr(self.split_heads):
            self.add_dkv_partials(acc_dK, acc_dV, mdK, mdV, thr_mma_dk, thr_mma_dv, n_block, head_kv, batch,
                                  seqlen_k, softmax_scale)  # fmt: skip
        else:
            rdK = cute.make_rmem_tensor_like(acc_dK, self.dtype)
            rdK.store((acc_dK.load() * softmax_scale).to(self.dtype))
            rdV = cute.make_rmem_tensor_like(acc_dV, self.dtype)
            rdV.store(acc_dV.load().to(self.dtype))
            gdK = cute.local_tile(mdK[None, None, head_kv, batch], (tn, d), (n_block, 0))
            gdV = cute.local_tile(mdV[None, None, head_kv, batch], (tn, dv), (n_block, 0))
            tdKgdK = thr_mma_dk.partition_C(gdK)
            tdVgdV = thr_mma_dv.partition_C(gdV)
            tdKcdK = thr_mma_dk.partition_C(cute.make_identity_tensor((tn, d)))
            tdVcdV = thr_mma_dv.partition_C(cute.make_identity_tensor((tn, dv)))
            store_acc_pairs(rdK, tdKgdK, tdKcdK, seqlen_k - key_start)
            store_acc_pairs(rdV, tdVgdV, tdVcdV, seqlen_k - key_start)

    @cute.jit
    def add_dkv_partials(
        self,
        acc_dK: cute.Tensor,
        acc_dV: cute.Tensor,
        mdK: cute.Tensor,  # (s_k, d, h_kv, b) float32
        mdV: cute.Tensor,  # (s_k, dv, h_kv, b) float32
        thr_mma_dk: cute.ThrMma,
        thr_mma_dv: cute.ThrMma,
        n_block: Int32,
        head_kv: Int32,
        batch: Int32,
        seqlen_k: Int32,
        softmax_scale: Float32,
    ) -> None:
        """split_heads: this CTA's share of dK (scaled) and dV, added with float32 atomics; rows past seqlen_k
        dropped."""
        tn = self.tile_n
        key_start = n_block * tn
        gdK = cute.local_tile(mdK[None, None, head_kv, batch], (tn, self.head_dim), (n_block, 0))
        gdV = cute.local_tile(mdV[None, None, head_kv, batch], (tn, self.head_dim_v), (n_block, 0))
        tdKgdK = thr_mma_dk.partition_C(gdK)
        tdVgdV = thr_mma_dv.partition_C(gdV)
        tdKcdK = thr_mma_dk.partition_C(cute.make_identity_tensor((tn, self.head_dim)))
        tdVcdV = thr_mma_dv.partition_C(cute.make_identity_tensor((tn, self.head_dim_v)))
        red_add_acc_f32(tdKgdK, acc_dK, softmax_scale, tdKcdK, seqlen_k - key_start)
        red_add_acc_f32(tdVgdV, acc_dV, None, tdVcdV, seqlen_k - key_start)

    @cute.jit
    def first_n_block(self, row_start: Int32, seqlen_q: Int32, seqlen_k: Int32, window_left: Int32) -> Int32:
        """The first key block whose query range (``m_block_range``) holds this query block."""
        n_first = Int32(0)
        if const_expr(self.has_window_left):
            n_first = cutlass.max(row_start + seqlen_k - seqlen_q - window_left, 0) // self.tile_n
        return n_first

    @cute.jit
    def dq_turn_begin(self, sem_ptr: cute.Pointer, target: Int32, tidx: Int32) -> None:
        """Deterministic mode: wait until the ``target`` earlier key blocks have added their partials."""
        if tidx == 0:
            done = cute.arch.load(sem_ptr, Int32, sem="acquire", scope="gpu")
            while done != target:
                done = cute.arch.load(sem_ptr, Int32, sem="acquire", scope="gpu")
        barrier_sync(BwdBarrier.DqTurn, self.num_mma_threads)

    @cute.jit
    def dq_turn_end(self, sem_ptr: cute.Pointer, tidx: Int32) -> None:
        """Deterministic mode: publish this CTA's adds, then pass the turn to the next key block."""
        cute.arch.fence_acq_rel_gpu()
        barrier_sync(BwdBarrier.DqTurn, self.num_mma_threads)
        if tidx == 0:
            cute.arch.red(sem_ptr, Int32(1), op="add", dtype=Int32, sem="release", scope="gpu")

    @cute.jit
    def factor_grad_mmas(
        self,
        tiled_mma_dkf: cute.TiledMma,
        tiled_mma_dqf: cute.TiledMma,
        tdKfrdS: cute.Tensor,
        tdKfrQf: list,
        tdQfrdS: cute.Tensor,
        tdQfrKf: list,
        acc_shape_dQf,
        acc_shape_dKf,
        wg_idx: Int32,
        chunk: cutlass.Constexpr[int],
        stage: Int32,
        ds_stage: Int32,
    ) -> tuple[cute.Tensor, cute.Tensor]:
        """Issue (not wait for) factor column chunk ``chunk`` of one query block's tensor-core factor gradients,
        dKf = dS^T Qf and dQf = dS Kf, each by the warpgroups ``factor_chunk_wgs`` names; their accumulators."""
        both_dkf, dqf_wg = self.factor_chunk_wgs(chunk)
        acc_dQf = cute.make_rmem_tensor(acc_shape_dQf, Float32)
        acc_dKf = cute.make_rmem_tensor(acc_shape_dKf, Float32)
        dkf_b = tdKfrQf[chunk][None, None, None, stage]
        if const_expr(both_dkf):
            sm90.gemm(tiled_mma_dkf, acc_dKf, tdKfrdS[None, None, None, ds_stage], dkf_b, True, -1)
        elif wg_idx == 1 - dqf_wg:
            sm90.gemm(tiled_mma_dkf, acc_dKf, tdKfrdS[None, None, None, ds_stage], dkf_b, True, -1)
        if const_expr(dqf_wg is None):
            sm90.gemm(tiled_mma_dqf, acc_dQf, tdQfrdS[None, None, None, ds_stage], tdQfrKf[chunk], True, -1)
        elif wg_idx == dqf_wg:
            sm90.gemm(tiled_mma_dqf, acc_dQf, tdQfrdS[None, None, None, ds_stage], tdQfrKf[chunk], True, -1)
        return acc_dQf, acc_dKf

    @cute.jit
    def add_factor_grads_tc(
        self,
        acc_dQf: cute.Tensor,  # this query block's dQf = dS Kf (the first warpgroup's)
        acc_dKf: cute.Tensor,  # its dKf = dS^T Qf (each warpgroup's key rows; the first's alone with dkv_split_d)
        thr_mma_dqf,
        thr_mma_dkf,
        gdQf: cute.Tensor,  # (s_q_pad, r) float32 of this (batch, query head)
        gdKf: cute.Tensor,  # (s_k_pad, r) float32 of this (batch, query head)
        m_block: Int32,
        n_block: Int32,
        wg_idx: Int32,
        chunk: cutlass.Constexpr[int],
        dkf_slot: cute.Tensor | None = None,  # dkf_summed_in_smem: this thread's slot of the head's dKf
    ) -> None:
        """Factor column chunk ``chunk`` of one query block's tensor-core factor gradients into their float32
        buffers (two columns per atomic; padding rows carry dS = 0), by the warpgroups that computed it; dKf onto
        the thread's slot instead with ``dkf_summed_in_smem``."""
        both_dkf, dqf_wg = self.factor_chunk_wgs(chunk)
        tile_dKf = self.factor_chunk_tile(gdKf, self.tile_n, n_block, chunk)
        if const_expr(self.dkf_summed_in_smem):
            # onto the thread's slot (both warpgroups hold dKf: factor_chunk_wgs); added once per query head
            summed = cute.make_rmem_tensor(cute.size(dkf_slot), Float32)
            cute.autovec_copy(dkf_slot, summed)
            for i in cutlass.range_constexpr(cute.size(acc_dKf)):
                summed[i] = summed[i] + acc_dKf[i]
            cute.autovec_copy(summed, dkf_slot)
        elif const_expr(both_dkf):
            red_add_acc_f32(thr_mma_dkf.partition_C(tile_dKf), acc_dKf)
        elif wg_idx == 1 - dqf_wg:
            red_add_acc_f32(thr_mma_dkf.partition_C(tile_dKf), acc_dKf)
        if const_expr(dqf_wg is None):
            # each warpgroup's partial over its own key rows
            tile_dQf = self.factor_chunk_tile(gdQf, self.tile_m, m_block, chunk)
            red_add_acc_f32(thr_mma_dqf.partition_C(tile_dQf), acc_dQf)
        elif wg_idx == dqf_wg:
            tile_dQf = self.factor_chunk_tile(gdQf, self.tile_m, m_block, chunk)
            red_add_acc_f32(thr_mma_dqf.partition_C(tile_dQf), acc_dQf)

    def factor_chunk_tile(self, grad: cute.Tensor, rows: int, block: Int32, chunk: int) -> cute.Tensor:
        """Rows [block * rows, (block + 1) * rows) and factor columns of ``chunk`` of a (s_pad, r) float32 gradient
        buffer, with its row stride r made static (the launcher's buffers are contiguous): the per-thread offsets
        of every chunk then differ by constants, one register for all of them instead of one per chunk."""
        r = self.bias_rank
        origin = cute.local_tile(grad, (rows, r), (block, 0)).iterator + chunk * FACTOR_CHUNK
        return cute.make_tensor(origin, cute.make_layout((rows, FACTOR_CHUNK), stride=(r, 1)))

    @cute.jit
    def store_dq_bulk(
        self,
        acc_dQ: cute.Tensor,
        sdQ: cute.Tensor,  # (tile_m * d,) float32, packed: the warpgroups' halves one after the other
        gdQ: cute.Pointer,  # this query block's packed (tile_m, d) tile of dQaccum
        wg_idx: Int32,
        lane: Int32,
        is_leader: cutlass.Boolean,  # the warpgroup's thread that issues the reduce-add
    ) -> None:
        """This warpgroup's dQ columns -> its half of the packed smem tile (a 16-byte store per 4 elements, a warp's
        512 bytes contiguous) -> one bulk reduce-add into the same half of dQaccum's tile."""
        barrier = NamedBarrierBwd.EpilogueWG1 + wg_idx
        if is_leader:
            # the previous reduce must have finished reading the buffer
            cute.arch.cp_async_bulk_wait_group(0, read=True)
        barrier_sync(barrier, WARPGROUP_THREADS)
        store_packed(sdQ.iterator, acc_dQ, wg_idx, lane)
        # generic-proxy smem writes must be visible to the bulk copy (async proxy)
        cute.arch.fence_view_async_shared()
        barrier_sync(barrier, WARPGROUP_THREADS)
        if is_leader:
            half = self.tile_m * self.head_dim // NUM_MMA_WARPGROUPS
            sm90.bulk_reduce_add_f32(gdQ + wg_idx * half, sdQ.iterator + wg_idx * half, 4 * half)
            cute.arch.cp_async_bulk_commit_group()

    @cute.jit
    def store_dq_for_reduce_warp(self, acc_dQ: cute.Tensor, sdQ: cute.Tensor, wg_idx: Int32, lane: Int32) -> None:
        """``dq_reduce_warp``: this warpgroup's dQ -> its half of the packed smem tile, once the reduce warp has read
        the previous one (dQEmpty); then dQFull tells it the tile is there, without waiting."""
        threads = self.num_mma_threads + cute.arch.WARP_SIZE
        barrier_sync(NamedBarrierBwd.dQEmpty, threads)
        store_packed(sdQ.iterator, acc_dQ, wg_idx, lane)
        # generic-proxy smem writes must be visible to the bulk copy (async proxy)
        cute.arch.fence_view_async_shared()
        barrier_arrive(NamedBarrierBwd.dQFull, threads)

    @cute.jit
    def reduce_dq(
        self,
        mdQaccum: cute.Tensor,  # (s_q_pad, d, h, b) float32
        sdQ: cute.Tensor,  # (tile_m * d,) float32, packed
        head_kv: Int32,
        batch: Int32,
        qhead_per_kvhead: Int32,
        g_lo: Int32,
        g_hi: Int32,
        m_min: Int32,
        m_max: Int32,
        shift: Int32,  # query_block_shift
    ) -> None:
        """``dq_reduce_warp``, a producer warp: for every query block the consumers visit, in their order, wait for
        both warpgroups' dQ in smem (dQFull), add the whole packed tile to dQaccum by one bulk reduce-add, and once
        it has read the buffer hand it back (dQEmpty; an arrival up front, since the buffer starts empty, and the
        consumers' one sync after their loop takes the last)."""
        threads = self.num_mma_threads + cute.arch.WARP_SIZE
        tm, d = self.tile_m, self.head_dim
        lane = cute.arch.lane_idx()
        barrier_arrive(NamedBarrierBwd.dQEmpty, threads)
        for g in cutlass.range(g_lo, g_hi, unroll=1):
            head = head_kv * qhead_per_kvhead + g
            for i in cutlass.range(m_min, m_max, unroll=1):
                m_block = self.query_block(i, m_min, m_max, shift)
                barrier_sync(NamedBarrierBwd.dQFull, threads)
                if lane == 0:
                    gdQ = cute.local_tile(mdQaccum[None, None, head, batch], (tm, d), (m_block, 0))
                    sm90.bulk_reduce_add_f32(gdQ.iterator, sdQ.iterator, 4 * tm * d)
                    cute.arch.cp_async_bulk_commit_group()
                    cute.arch.cp_async_bulk_wait_group(0, read=True)
                cute.arch.sync_warp()
                barrier_arrive(NamedBarrierBwd.dQEmpty, threads)
        if lane == 0:
            cute.arch.cp_async_bulk_wait_group(0, read=True)

    @cute.jit
    def tile_needs_mask(
        self,
        row_start: Int32,
        key_start: Int32,
        seqlen_q: Int32,
        seqlen_k: Int32,
        window_left: Int32,
        window_right: Int32,
    ) -> cutlass.Boolean:
        """Whether some (query, key) pair of the tile is invisible or past a sequence end."""
        offset = seqlen_k - seqlen_q
        need = key_start + self.tile_n > seqlen_k or row_start + self.tile_m > seqlen_q
        if const_expr(self.has_window_right):
            # the last key against the first query
            need = need or key_start + self.tile_n - 1 > row_start + offset + window_right
        if const_expr(self.has_window_left):
            # the first key against the last query
            need = need or key_start < row_start + self.tile_m - 1 + offset - window_left
        return need

    @cute.jit
    def zero_invisible(
        self,
        acc_P: cute.Tensor,
        tScS: cute.Tensor,
        row_start: Int32,
        key_start: Int32,
        seqlen_q: Int32,
        seqlen_k: Int32,
        window_left: Int32,
        window_right: Int32,
    ) -> None:
        """P^T <- 0 where key j is invisible to query i (the visibility rule of the module docstring)."""
        p_mn = acc_view_mn(acc_P)
        c_mn = acc_view_mn(tScS)
        offset = seqlen_k - seqlen_q
        for c in cutlass.range_constexpr(cute.size(p_mn, mode=[1])):
            row = row_start + c_mn[0, c][1]
            for r in cutlass.range_constexpr(cute.size(p_mn, mode=[0])):
                key = key_start + c_mn[r, 0][0]
                visible = key < seqlen_k and row < seqlen_q
                if const_expr(self.has_window_right):
                    visible = visible and key <= row + offset + window_right
                if const_expr(self.has_window_left):
                    visible = visible and key >= row + offset - window_left
                p_mn[r, c] = p_mn[r, c] if visible else Float32(0.0)

    @cute.jit
    def split_key_factors(
        self, sKf: cute.Tensor, sKs: cute.Tensor, pipeline_kf, g_lo: Int32, g_hi: Int32, softmax_scale: Float32
    ) -> None:
        """bias_slice's split warp (the producer warpgroup's third), once per query head: sKs becomes the key
        factors' three pieces of x = Kf / softmax_scale (float32, ``split_in_three``) at SLICE_PIECE_COLS, zeros
        in [8, 16). Against Qf at each piece's columns, S^T's two extra k16 steps add Kf Qf^T / scale, as the
        separate wgmma divided by the scale did. A warp of its own, not the consumers: there the split's
        loop-invariant smem addresses, hoisted out of the head loop, spilled registers (SASS, 2026-11-28).

        Per head: wait for the key factors' TMA (the consumers release that stage), split, make the generic-proxy
        writes visible to wgmma and arrive on KfSplit, on which the consumers wait before their first S^T; then wait
        on KsEmpty, on which they arrive once their last S^T of the head is done."""
        lane = cute.arch.lane_idx()
        items = self.tile_n * 2 // cute.arch.WARP_SIZE  # half-rows per lane
        zeros = cute.make_rmem_tensor(SLICE_MAX_RANK // 2, self.dtype)
        zeros.fill(0.0)
        for i in cutlass.range_constexpr(items):
            item = lane + cute.arch.WARP_SIZE * i
            cute.autovec_copy(zeros, cute.local_tile(sKs, (1, SLICE_MAX_RANK // 2), (item // 2, 2 + item % 2)))
        inv_scale = Float32(1.0) / softmax_scale
        kf_state = consumer_state(1)
        for _g in cutlass.range(g_lo, g_hi, unroll=1):
            pipeline_kf.consumer_wait(kf_state)
            for i in cutlass.range(items, unroll=1):
                self.split_key_factor_row(sKf, sKs, lane + cute.arch.WARP_SIZE * i, inv_scale)
            cute.arch.fence_view_async_shared()
            barrier_arrive(BwdBarrier.KfSplit, self.num_mma_threads + cute.arch.WARP_SIZE)
            barrier_sync(BwdBarrier.KsEmpty, self.num_mma_threads + cute.arch.WARP_SIZE)
            kf_state.advance()
            kf_state = kf_state

    @cute.jit
    def split_key_factor_row(self, sKf: cute.Tensor, sKs: cute.Tensor, item: Int32, inv_scale: Float32) -> None:
        """``split_key_factors``' work item ``item`` in [0, 2 tile_n): half the first 8 factor columns of key row
        item // 2, each into its three pieces, by one 8-byte load and three 8-byte stores. Plain tensor arithmetic,
        so that a host probe can replay every item."""
        per_item = SLICE_MAX_RANK // 2
        row, part = item // 2, item % 2
        x = cute.make_rmem_tensor(per_item, self.dtype)
        cute.autovec_copy(cute.local_tile(sKf, (1, per_item), (row, part)), x)
        pieces = [cute.make_rmem_tensor(per_item, self.dtype) for _ in SLICE_PIECE_COLS]
        for i in cutlass.range_constexpr(per_item):
            pieces[0][i], pieces[1][i], pieces[2][i] = split_in_three(x[i].to(Float32) * inv_scale, self.dtype)
        for col, piece in zip(SLICE_PIECE_COLS, pieces, strict=True):
            cute.autovec_copy(piece, cute.local_tile(sKs, (1, per_item), (row, col // per_item + part)))

    @cute.jit
    def add_lowrank_bias(
        self,
        acc_S: cute.Tensor,
        tScS: cute.Tensor,
        sKf: cute.Tensor,  # (tile_n, r) float32, rows of S^T
        sQf: cute.Tensor,  # (tile_m, r) float32, columns of S^T
        scale_log2: Float32,
    ) -> None:
        """acc_S <- acc_S * scale_log2 + log2(e) * (kf . qf): S^T in log2 units, float32 FMAs."""
        add_lowrank_fma(acc_S, tScS, sKf, sQf, scale_log2, self.bias_rank)

    @cute.jit
    def factor_grads(
        self,
        tidx: Int32,
        sdSf: cute.Tensor,  # (tile_n, tile_m) float32, dS^T
        sQf: cute.Tensor,  # (tile_m, r) bias_dtype
        sKf: cute.Tensor,  # (tile_n, r) bias_dtype
        gdQf: cute.Tensor,  # (s_q_pad, r) float32 of this (batch, head)
        gdKf: cute.Tensor,  # (s_k_pad, r) float32 of this (batch, head)
        row_start: Int32,
        key_start: Int32,
    ) -> None:
        """dqf += dS kf and dkf += dS^T qf for this tile, from the float32 dS in smem, by every consumer thread.

        An item is a block of 4 rows x 4 rank columns of one gradient, summed over one slice of the other
        tile side: query items first, then key items, each kind a multiple of 32 items, so a warp takes one
        kind. The slices of a block sit in neighbouring lanes, are summed by butterfly shuffles, and the first
        slice's lane adds the 16 sums. Rows past the sequence ends have dS = 0 and the buffers are padded to
        whole tiles, so no predicate is needed.
        """
        length = self.tile_n // self.dqf_split  # == tile_m // dkf_split
        for item in cutlass.range(tidx, self.num_factor_items(), self.num_mma_threads, unroll=1):
            is_query, row0, col0, first = self.factor_item(item)
            acc = cute.make_rmem_tensor((4, 4), Float32)
            acc.fill(0.0)
            if is_query:
                for n in cutlass.range(first, first + length, unroll=2):
                    for j in cutlass.range_constexpr(4):
                        kf = self.factor_f32(sKf[n, col0 + j])
                        for i in cutlass.range_constexpr(4):
                            acc[i, j] = acc[i, j] + sdSf[n, row0 + i] * kf
                self.add_block(acc, gdQf, row_start + row0, col0, first == 0, self.dqf_split)
            else:
                for m in cutlass.range(first, first + length, unroll=2):
                    for j in cutlass.range_constexpr(4):
                        qf = self.factor_f32(sQf[m, col0 + j])
                        for i in cutlass.range_constexpr(4):
                            acc[i, j] = acc[i, j] + sdSf[row0 + i, m] * qf
                self.add_block(acc, gdKf, key_start + row0, col0, first == 0, self.dkf_split)

    def factor_f32(self, x):
        """A factor element as float32 (exact from fp16 / bf16)."""
        return x.to(Float32) if const_expr(self.bias_mma) else x

    def num_factor_items(self) -> int:
        """Query items, then key items (see ``factor_item``); each kind a multiple of 32."""
        r4 = self.bias_rank // 4
        return (self.tile_m // 4) * r4 * self.dqf_split + (self.tile_n // 4) * r4 * self.dkf_split

    @cute.jit
    def factor_item(self, item: Int32) -> tuple:
        """item -> (is_query, first row, first rank column, first index of the summed slice) of its 4 x 4 block.

        Query items: 4 query rows of dqf, summed over a slice of the key side; key items: 4 key rows of dkf over
        a slice of the query side. A block's slices are consecutive items.
        """
        r4 = self.bias_rank // 4
        length = self.tile_n // self.dqf_split
        num_q_items = (self.tile_m // 4) * r4 * self.dqf_split
        is_query = item < num_q_items
        split = self.dkf_split
        local = item - num_q_items
        if is_query:
            split = self.dqf_split
            local = item
        blk = local // split
        return is_query, (blk // r4) * 4, (blk % r4) * 4, (local % split) * length

    @cute.jit
    def add_block(
        self,
        acc: cute.Tensor,  # (4, 4) float32 registers: this lane's slice of the block
        gGrad: cute.Tensor,  # (rows, r) float32 global accumulation buffer
        row0: Int32,
        col0: Int32,
        is_first_slice: cutlass.Boolean,
        split: cutlass.Constexpr[int],
    ) -> None:
        """Sum a block over the ``split`` neighbouring lanes holding its slices; the first slice's lane adds it."""
        for i in cutlass.range_constexpr(4):
            for j in cutlass.range_constexpr(4):
                v = acc[i, j]
                for step in cutlass.range_constexpr(int(math.log2(split))):
                    v = v + cute.arch.shuffle_sync_bfly(v, offset=1 << step)
                acc[i, j] = v
        if is_first_slice:
            # a row's 4 rank columns are contiguous and 16-byte aligned (the rank is padded to a multiple of 4): two
            # red.global.add.v2.f32 each (v4 needs four aligned registers, which spills at d = 256)
            pair = cute.make_rmem_tensor((2,), Float32)
            for i in cutlass.range_constexpr(4):
                for j in cutlass.range_constexpr(0, 4, 2):
                    pair[0] = acc[i, j]
                    pair[1] = acc[i, j + 1]
                    red_add_f32(gGrad, (row0 + i, col0 + j), pair.load())
