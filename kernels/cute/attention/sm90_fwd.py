"""Attention forward for Hopper (sm90): TMA + wgmma, warp-specialized, persistent or one CTA per tile.

Supported: fp16/bf16; head dims 64, 96, 128, 192, 256 (q/k and v may differ); any sequence lengths
(TMA zero-fills and clips the tails); causal (bottom-right) and sliding windows, masked only on
boundary tiles; GQA/MQA by indexing the K/V head (no copies; heads of a group run on neighbouring
CTAs and share K/V through L2) or, with ``pack_gqa`` = G, by packing the G query heads of a K/V head
into each tile (rows: head fastest, then position), so K/V are read once per group and short
query sequences fill the tile (the launcher packs where G divides the tile, there is no bias and an
unpacked tile would be mostly empty); a low-rank logit bias ``qf @ kf.T`` whose factors are TMA-loaded
with Q and K: float32 factors in float32 FMAs, factors in the input dtype as extra wgmma k16
slices (a wgmma of their own waited for and divided by the scale before S, or, with ``bias_slice``, k16
steps of S's own group over query factors each warpgroup splits in smem into three 16-bit pieces of
Qf / scale); natural-log lse.
Not supported: varlen, paged KV, dropout, fp8, K/V multicast across a cluster, a bias with pack_gqa.

CTA layout (1 + ``num_mma_warpgroups`` warpgroups):
    WG0      producer: warp 0 issues every TMA load; the warpgroup gives registers back.
    WG1..    consumers, two (a 128-row tile, 240 registers each) or three (a 192-row tile, 160
             registers each: FA3's and FA4's tile at head dim 64, where the 64 x 128 score tile and
             its P leave room): 64 query rows each; S = Q K^T with both operands in smem, online
             softmax in registers, O += P V with P taken from registers.

Shared-memory pipelines (mbarrier full/empty pairs): Q (1 stage, Q and its bias factor rows),
K (+ key bias factors) and V (``num_stages`` each, advanced together). The producer loads a tile's
first K block before its Q, and with ``intra_wg_overlap`` the consumers release Q after their last
S = Q K^T, so the next tile's first loads run under this tile's last P V and epilogue. The
schedule (``common/tile_scheduler.py``) runs causal tiles longest first in sections of heads whose
K/V fit in L2; ``max_ctas`` makes it persistent (the SM count) or one CTA per tile (the launcher's
choice for causal, ``attnkit.cute.schedule.forward_ctas``); with ``dynamic_schedule`` it is
persistent and each CTA's tiles after its first come from a global counter (``TileHandoff``: the
producer warp claims one per tile and passes it to the consumers through shared memory). With
``pingpong`` the consumers take turns issuing wgmma (round robin, one named barrier each), so one
warpgroup's softmax runs under the others' GEMMs; with ``intra_wg_overlap`` a warpgroup issues
S(n) = Q K(n)^T and O += P(n+1) V(n+1) back to back and computes softmax(n) while the latter is in
flight.
"""

import math

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import cpasync, warp, warpgroup

from ..common import sm90
from ..common.barriers import WARPGROUP_THREADS, NamedBarrierFwd, barrier_arrive, barrier_sync
from ..common.layouts import acc_view_as_operand_a, acc_view_mn
from ..common.lowrank import split_in_three
from ..common.pipeline import consumer_state, make_tma_pipeline, producer_state
from ..common.sm90 import REGISTER_BUDGETS, WARP_ROLES
from ..common.tile_scheduler import TileHandoff
from .base import AttentionFwdBase

LN2 = math.log(2.0)
# a ping-pong barrier joins the warpgroup waiting for its turn and the one handing it over
PINGPONG_THREADS = 2 * WARPGROUP_THREADS


class AttentionFwdSm90(AttentionFwdBase):
    def __init__(
        self,
        dtype: type[cutlass.Numeric],
        head_dim: int,
        head_dim_v: int,
        tile_n: int,
        num_stages: int,
        has_window_left: bool,
        has_window_right: bool,
        bias_rank: int = 0,
        rescale_threshold: float = 0.0,
        poly_exp2_per_8: int = 0,
        pingpong: bool = True,
        intra_wg_overlap: bool = True,
        o_aliases_q: bool = False,
        bias_mma: bool = False,
        pack_gqa: int = 1,
        num_mma_warpgroups: int = 2,
        split_mask_loops: bool = False,
        dynamic_schedule: bool = False,
        mask_every_block: bool = False,
        bias_slice: bool = False,
    ):
        if num_mma_warpgroups not in REGISTER_BUDGETS:
            raise ValueError(f"num_mma_warpgroups must be one of {sorted(REGISTER_BUDGETS)}, got {num_mma_warpgroups}")
        super().__init__(
            dtype,
            head_dim,
            head_dim_v,
            64 * num_mma_warpgroups,
            tile_n,
            num_stages,
            has_window_left,
            has_window_right,
            bias_rank,
            rescale_threshold,
            poly_exp2_per_8,
            bias_mma,
            pack_gqa,
        )
        self.pingpong = pingpong
        self.intra_wg_overlap = intra_wg_overlap
        # the overlapped mainloop's key blocks in up to three loops, FA4's way: the boundary blocks at either end
        # (masked where tile_needs_mask says) and the interior ones between, with no mask code at all
        if split_mask_loops and not intra_wg_overlap:
            raise ValueError("split_mask_loops splits the overlapped mainloop: it needs intra_wg_overlap")
        self.split_mask_loops = split_mask_loops
        # the mask on every key block that may need it, without tile_needs_mask's branch (a masked block that needs
        # none is unchanged): ptxas serialized every wgmma of some wide-head configs over that branch
        self.mask_every_block = mask_every_block
        # the wgmma bias as a K-slice of S's own wgmma group, FlashBias's concatenation [Q | Qf'] [K | Kf']^T: each
        # warpgroup rewrites its rows of the query factors in smem as Qf / scale in three 16-bit pieces (hi, mid,
        # lo: their sum is Qf / scale to float32 precision, as a float32 multiply of the product would be) at
        # columns 0, p and 2p (p = bias_rank // 3; the launcher puts the factors in columns [0, p) and Kf at all
        # three), so that S = Q K^T + Qf' Kf'^T needs no wait and no multiply of its own. Without it the bias is
        # waited for alone and divided by the scale before S (``bias_scores``)
        if bias_slice and not (bias_mma and bias_rank > 0):
            raise ValueError("bias_slice puts the wgmma bias into S's group: it needs bias_mma")
        self.bias_slice = bias_slice
        # tiles after a CTA's first from a global counter (TileHandoff): a tile_counter argument, zero at launch
        self.dynamic_schedule = dynamic_schedule
        # large head dims: the epilogue writes O into Q's buffer, released only after the store
        if o_aliases_q and head_dim_v > head_dim:
            raise ValueError("O can only reuse Q's shared memory when head_dim_v <= head_dim")
        self.o_aliases_q = o_aliases_q
        self.num_mma_warpgroups = num_mma_warpgroups
        self.num_threads = WARPGROUP_THREADS * (1 + num_mma_warpgroups)
        self.num_mma_threads = WARPGROUP_THREADS * num_mma_warpgroups
        self.producer_regs, self.mma_regs = REGISTER_BUDGETS[num_mma_warpgroups]

    def smem_bytes(self) -> int:
        """The size of ``SharedStorage`` (what the launch asks for): its members' bytes and alignments, in order.
        A CPU test compares it with the compiled struct's size."""
        elem = self.dtype.width // 8
        tm, tn, stages = self.tile_m, self.tile_n, self.num_stages
        bias_elem = self.bias_dtype.width // 8
        members = [
            (8 * 2, 8),  # mbar_q
            (8 * 2 * stages, 8),  # mbar_k
            (8 * 2 * stages, 8),  # mbar_v
            (tm * self.head_dim * elem, 1024),  # sQ
            (stages * tn * self.head_dim * elem, 1024),  # sK
            (stages * tn * self.head_dim_v * elem, 1024),  # sV
            (0 if self.o_aliases_q else tm * self.head_dim_v * elem, 1024),  # sO
            (bias_elem * tm * self.bias_rank, 1024),  # sQf
            (bias_elem * stages * tn * self.bias_rank, 1024),  # sKf
            (4 if self.dynamic_schedule else 0, 4),  # tile_slot
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
        mO: cute.Tensor,  # (b, s_q, h, dv)
        mLSE: cute.Tensor,  # (b, h, s_q) float32
        mQf: cute.Tensor | None,  # (bq, s_q, hq, r) bias_dtype, r = bias_rank
        mKf: cute.Tensor | None,  # (bk, s_k, hk, r) bias_dtype
        mTileCounter: cute.Tensor | None,  # (1, 1) int32, zero: the dynamic schedule's counter
        softmax_scale_log2: Float32,
        window_left: Int32,
        window_right: Int32,
        max_ctas: Int32,
        heads_per_section: Int32,  # longest-first schedule: heads whose K/V share L2 (see the scheduler)
        stream: cuda.CUstream,
    ):
        if const_expr(mQ.element_type != self.dtype or mK.element_type != self.dtype):
            raise TypeError("q, k, v, o must all have the kernel's dtype")
        mQ, mO = [self.to_packed(t) for t in (mQ, mO)]
        mK, mV = [self.to_sdhb(t) for t in (mK, mV)]
        mLSE = self.lse_view(mLSE)

        nwg = self.num_mma_warpgroups
        tiled_mma_qk = sm90.make_tiled_mma(self.dtype, "K", "K", self.tile_n, num_warpgroups=nwg)
        tiled_mma_pv = sm90.make_tiled_mma(self.dtype, "K", "MN", self.head_dim_v, a_in_regs=True, num_warpgroups=nwg)
        sQ_layout = sm90.make_smem_layout(self.dtype, self.tile_m, self.head_dim)
        sK_layout = sm90.make_smem_layout(self.dtype, self.tile_n, self.head_dim, self.num_stages)
        sV_layout = sm90.make_smem_layout(self.dtype, self.tile_n, self.head_dim_v, self.num_stages)
        sO_layout = sm90.make_smem_layout(self.dtype, self.tile_m, self.head_dim_v)

        load_op = cpasync.CopyBulkTensorTileG2SOp()
        tma_atom_Q, tma_Q = cpasync.make_tiled_tma_atom(load_op, mQ, sQ_layout, (self.tile_m, self.head_dim))
        tma_atom_K, tma_K = cpasync.make_tiled_tma_atom(
            load_op, mK, cute.select(sK_layout, mode=[0, 1]), (self.tile_n, self.head_dim)
        )
        tma_atom_V, tma_V = cpasync.make_tiled_tma_atom(
            load_op, mV, cute.select(sV_layout, mode=[0, 1]), (self.tile_n, self.head_dim_v)
        )
        tma_atom_O, tma_O = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(), mO, sO_layout, (self.tile_m, self.head_dim_v)
        )
        q_bytes = cute.size_in_bytes(self.dtype, sQ_layout)
        k_bytes = cute.size_in_bytes(self.dtype, cute.select(sK_layout, mode=[0, 1]))
        v_bytes = cute.size_in_bytes(self.dtype, cute.select(sV_layout, mode=[0, 1]))

        rank = self.bias_rank if const_expr(self.has_bias) else 16
        if const_expr(self.bias_mma):
            # wgmma operands, swizzled like Q and K
            sQf_layout = sm90.make_smem_layout(self.dtype, self.tile_m, rank)
            sKf_layout = sm90.make_smem_layout(self.dtype, self.tile_n, rank, self.num_stages)
        else:
            # plain row-major float32: each thread reads float4s of one row
            sQf_layout = cute.make_layout((self.tile_m, rank), stride=(rank, 1))
            sKf_layout = cute.make_layout((self.tile_n, rank, self.num_stages), stride=(rank, 1, self.tile_n * rank))
        tma_atom_Qf, tma_Qf, tma_atom_Kf, tma_Kf = None, None, None, None
        if const_expr(self.has_bias):
            mQf, mKf = [self.to_sdhb(t) for t in (mQf, mKf)]
            tma_atom_Qf, tma_Qf = cpasync.make_tiled_tma_atom(load_op, mQf, sQf_layout, (self.tile_m, self.bias_rank))
            tma_atom_Kf, tma_Kf = cpasync.make_tiled_tma_atom(
                load_op, mKf, cute.select(sKf_layout, mode=[0, 1]), (self.tile_n, self.bias_rank)
            )
            bias_elem = self.bias_dtype.width // 8
            q_bytes += bias_elem * self.tile_m * self.bias_rank
            k_bytes += bias_elem * self.tile_n * self.bias_rank
        self.tx_bytes = (q_bytes, k_bytes, v_bytes)

        bias_elems_q = self.tile_m * self.bias_rank
        bias_elems_k = self.num_stages * self.tile_n * self.bias_rank
        o_elems = 0 if const_expr(self.o_aliases_q) else cute.cosize(sO_layout)

        @cute.struct
        class SharedStorage:
            mbar_q: cute.struct.MemRange[cutlass.Int64, 2]
            mbar_k: cute.struct.MemRange[cutlass.Int64, 2 * self.num_stages]
            mbar_v: cute.struct.MemRange[cutlass.Int64, 2 * self.num_stages]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sV_layout)], 1024]
            sO: cute.struct.Align[cute.struct.MemRange[self.dtype, o_elems], 1024]
            sQf: cute.struct.Align[cute.struct.MemRange[self.bias_dtype, bias_elems_q], 1024]
            sKf: cute.struct.Align[cute.struct.MemRange[self.bias_dtype, bias_elems_k], 1024]
            tile_slot: cute.struct.MemRange[Int32, 1 if self.dynamic_schedule else 0]

        self.shared_storage = SharedStorage

        scheduler = self.make_scheduler(cute.size(mQ, mode=[0]), mQ.shape[2], mQ.shape[3], heads_per_section)
        self.kernel(
            tma_Q,
            tma_K,
            tma_V,
            tma_O,
            mLSE,
            tma_Qf,
            tma_Kf,
            mTileCounter,
            tma_atom_Q,
            tma_atom_K,
            tma_atom_V,
            tma_atom_O,
            tma_atom_Qf,
            tma_atom_Kf,
            tiled_mma_qk,
            tiled_mma_pv,
            sQ_layout,
            sK_layout,
            sV_layout,
            sO_layout,
            sQf_layout,
            sKf_layout,
            softmax_scale_log2,
            window_left,
            window_right,
            mK.shape[0],
            heads_per_section,
        ).launch(
            grid=scheduler.grid(max_ctas),
            block=[self.num_threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
        )

    @cute.kernel
    def kernel(
        self,
        mQ: cute.Tensor,  # (s_q, d, h, b) TMA coordinates; packed ((G, s_q), d, h_kv, b)
        mK: cute.Tensor,  # (s_k, d, h_kv, b)
        mV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mO: cute.Tensor,  # (s_q, dv, h, b); packed ((G, s_q), dv, h_kv, b)
        mLSE: cute.Tensor,  # (b, h, s_q) float32; packed (b, h_kv, (G, s_q))
        mQf: cute.Tensor | None,  # (s_q, r, hq, bq)
        mKf: cute.Tensor | None,  # (s_k, r, hk, bk)
        mTileCounter: cute.Tensor | None,  # (1, 1) int32
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_O: cute.CopyAtom,
        tma_atom_Qf: cute.CopyAtom | None,
        tma_atom_Kf: cute.CopyAtom | None,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
        sQf_layout: cute.Layout | cute.ComposedLayout,
        sKf_layout: cute.Layout | cute.ComposedLayout,
        softmax_scale_log2: Float32,
        window_left: Int32,
        window_right: Int32,
        seqlen_k: Int32,
        heads_per_section: Int32,
    ):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        tidx, _, _ = cute.arch.thread_idx()
        if warp_idx == WARP_ROLES.load[0]:
            for atom in (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O, tma_atom_Qf, tma_atom_Kf):
                if const_expr(atom is not None):
                    cpasync.prefetch_descriptor(atom)

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        q_bytes, k_bytes, v_bytes = self.tx_bytes
        pipeline_q = make_tma_pipeline(storage.mbar_q.data_ptr(), 1, q_bytes, self.num_mma_threads)
        pipeline_k = make_tma_pipeline(storage.mbar_k.data_ptr(), self.num_stages, k_bytes, self.num_mma_threads)
        pipeline_v = make_tma_pipeline(storage.mbar_v.data_ptr(), self.num_stages, v_bytes, self.num_mma_threads)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)
        if const_expr(self.o_aliases_q):
            sO = storage.sQ.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)
        else:
            sO = storage.sO.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)
        sQf = None
        sKf = None
        if const_expr(self.bias_mma):
            sQf = storage.sQf.get_tensor(sQf_layout.outer, swizzle=sQf_layout.inner)
            sKf = storage.sKf.get_tensor(sKf_layout.outer, swizzle=sKf_layout.inner)
        elif const_expr(self.has_bias):
            sQf = storage.sQf.get_tensor(sQf_layout)
            sKf = storage.sKf.get_tensor(sKf_layout)

        # packed, mode 0 of mQ is (G, s_q) and its heads are K/V heads
        q_rows = cute.size(mQ, mode=[0])
        seqlen_q = mQ.shape[0][1] if const_expr(self.pack_gqa > 1) else mQ.shape[0]
        num_heads = mQ.shape[2]
        scheduler = self.make_scheduler(q_rows, num_heads, mQ.shape[3], heads_per_section)
        mask = self.make_mask(seqlen_q, seqlen_k, window_left, window_right)
        qhead_per_kvhead = num_heads // mK.shape[2]
        handoff = None
        if const_expr(self.dynamic_schedule):
            handoff = TileHandoff(
                mTileCounter,
                storage.tile_slot.get_tensor(cute.make_layout(1)),
                NamedBarrierFwd.TileFull,
                NamedBarrierFwd.TileEmpty,
                cute.arch.WARP_SIZE + self.num_mma_threads,
            )

        if warp_idx < WARP_ROLES.mma_wg1[0]:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            if warp_idx == WARP_ROLES.load[0]:
                self.load(
                    mQ, mK, mV, mQf, mKf, sQ, sK, sV, sQf, sKf,
                    tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_Qf, tma_atom_Kf,
                    pipeline_q, pipeline_k, pipeline_v, scheduler, handoff, mask, qhead_per_kvhead,
                )  # fmt: skip
        else:
            cute.arch.setmaxregister_increase(self.mma_regs)
            self.mma(
                tidx - WARPGROUP_THREADS,
                mO, mLSE, sQ, sK, sV, sO, sQf, sKf, tma_atom_O,
                tiled_mma_qk, tiled_mma_pv, pipeline_q, pipeline_k, pipeline_v,
                scheduler, handoff, mask, softmax_scale_log2,
            )  # fmt: skip

    @cute.jit
    def load(
        self,
        mQ: cute.Tensor,  # (s_q, d, h, b); packed ((G, s_q), d, h_kv, b)
        mK: cute.Tensor,  # (s_k, d, h_kv, b)
        mV: cute.Tensor,  # (s_k, dv, h_kv, b)
        mQf: cute.Tensor | None,  # (s_q, r, hq, bq)
        mKf: cute.Tensor | None,  # (s_k, r, hk, bk)
        sQ: cute.Tensor,  # (tile_m, d) smem
        sK: cute.Tensor,  # (tile_n, d, stages) smem
        sV: cute.Tensor,  # (tile_n, dv, stages) smem
        sQf: cute.Tensor | None,  # (tile_m, r) smem
        sKf: cute.Tensor | None,  # (tile_n, r, stages) smem
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_Qf: cute.CopyAtom | None,
        tma_atom_Kf: cute.CopyAtom | None,
        pipeline_q,
        pipeline_k,
        pipeline_v,
        scheduler,
        handoff: TileHandoff | None,
        mask,
        qhead_per_kvhead: Int32,
    ):
        q_state = producer_state(1)
        kv_state = producer_state(self.num_stages)
        tile = scheduler.first_tile()
        num_tiles = scheduler.num_tiles()
        while tile < num_tiles:
            claimed = Int32(0)
            if const_expr(handoff is not None):
                # claimed now, handed to the consumers after this tile's loads
                claimed = handoff.claim()
            m_block, head, batch = scheduler.decode(tile)
            head_kv = head // qhead_per_kvhead
            row_start = m_block * self.tile_m
            n_min, n_max = mask.n_block_range(row_start, row_start + self.tile_m)

            gQ = cute.local_tile(mQ[None, None, head, batch], (self.tile_m, self.head_dim), (m_block, 0))
            tQsQ, tQgQ = cpasync.tma_partition(
                tma_atom_Q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
            )
            gK = cute.local_tile(mK[None, None, head_kv, batch], (self.tile_n, self.head_dim), (None, 0))
            tKsK, tKgK = cpasync.tma_partition(
                tma_atom_K, 0, cute.make_layout(1), cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
            )
            gV = cute.local_tile(mV[None, None, head_kv, batch], (self.tile_n, self.head_dim_v), (None, 0))
            tVsV, tVgV = cpasync.tma_partition(
                tma_atom_V, 0, cute.make_layout(1), cute.group_modes(sV, 0, 2), cute.group_modes(gV, 0, 2)
            )

            tKfsKf = None
            tKfgKf = None
            if const_expr(self.has_bias):
                head_kf = head if mKf.shape[2] > 1 else 0
                batch_kf = batch if mKf.shape[3] > 1 else 0
                gKf = cute.local_tile(mKf[None, None, head_kf, batch_kf], (self.tile_n, self.bias_rank), (None, 0))
                tKfsKf, tKfgKf = cpasync.tma_partition(
                    tma_atom_Kf, 0, cute.make_layout(1), cute.group_modes(sKf, 0, 2), cute.group_modes(gKf, 0, 2)
                )
            num_blocks = cutlass.max(n_max - n_min, 0)

            # 1. the first K block, while the consumers may still be finishing the previous tile
            #    (they release Q after their last S = Q K^T, before its P V and the epilogue)
            if num_blocks > 0:
                self.load_k(tma_atom_K, tma_atom_Kf, tKgK, tKsK, tKfgKf, tKfsKf, pipeline_k, kv_state, n_max - 1)

            # 2. Q (and its bias factor rows) for the whole tile, one barrier
            pipeline_q.producer_acquire(q_state)
            cute.copy(tma_atom_Q, tQgQ, tQsQ, tma_bar_ptr=pipeline_q.producer_get_barrier(q_state))
            if const_expr(self.has_bias):
                # broadcast factor dims (size 1) are indexed at 0
                head_f = head if mQf.shape[2] > 1 else 0
                batch_f = batch if mQf.shape[3] > 1 else 0
                gQf = cute.local_tile(mQf[None, None, head_f, batch_f], (self.tile_m, self.bias_rank), (m_block, 0))
                tQfsQf, tQfgQf = cpasync.tma_partition(
                    tma_atom_Qf, 0, cute.make_layout(1), cute.group_modes(sQf, 0, 2), cute.group_modes(gQf, 0, 2)
                )
                cute.copy(tma_atom_Qf, tQfgQf, tQfsQf, tma_bar_ptr=pipeline_q.producer_get_barrier(q_state))
            q_state.advance()

            # 3. V of the first block, then K and V of the others, right to left (boundary blocks
            #    first, matching the consumers)
            for i in cutlass.range(num_blocks, unroll=1):
                n_block = n_max - 1 - i
                if i > 0:
                    self.load_k(tma_atom_K, tma_atom_Kf, tKgK, tKsK, tKfgKf, tKfsKf, pipeline_k, kv_state, n_block)
                pipeline_v.producer_acquire(kv_state)
                cute.copy(
                    tma_atom_V,
                    tVgV[None, n_block],
                    tVsV[None, kv_state.index],
                    tma_bar_ptr=pipeline_v.producer_get_barrier(kv_state),
                )
                kv_state.advance()
            if const_expr(handoff is not None):
                tile = handoff.publish(claimed)
            else:
                tile = scheduler.next_tile(tile)

    @cute.jit
    def load_k(
        self,
        tma_atom_K: cute.CopyAtom,
        tma_atom_Kf: cute.CopyAtom | None,
        tKgK: cute.Tensor,  # TMA view of this head's K blocks, (.., n_blocks)
        tKsK: cute.Tensor,  # (.., stages) smem
        tKfgKf: cute.Tensor | None,  # key bias factor blocks, (.., n_blocks)
        tKfsKf: cute.Tensor | None,  # (.., stages) smem
        pipeline_k,
        kv_state,
        n_block: Int32,
    ) -> None:
        """K block ``n_block`` (and its bias factor rows) into the stage of ``kv_state``, one barrier."""
        pipeline_k.producer_acquire(kv_state)
        k_bar = pipeline_k.producer_get_barrier(kv_state)
        cute.copy(tma_atom_K, tKgK[None, n_block], tKsK[None, kv_state.index], tma_bar_ptr=k_bar)
        if const_expr(self.has_bias):
            cute.copy(tma_atom_Kf, tKfgKf[None, n_block], tKfsKf[None, kv_state.index], tma_bar_ptr=k_bar)

    @cute.jit
    def mma(
        self,
        tidx: Int32,
        mO: cute.Tensor,  # (s_q, dv, h, b) TMA coordinates; packed ((G, s_q), dv, h_kv, b)
        mLSE: cute.Tensor,  # (b, h, s_q) float32; packed (b, h_kv, (G, s_q))
        sQ: cute.Tensor,  # (tile_m, d) smem
        sK: cute.Tensor,  # (tile_n, d, stages) smem
        sV: cute.Tensor,  # (tile_n, dv, stages) smem
        sO: cute.Tensor,  # (tile_m, dv) smem
        sQf: cute.Tensor | None,  # (tile_m, r) smem
        sKf: cute.Tensor | None,  # (tile_n, r, stages) smem
        tma_atom_O: cute.CopyAtom,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_q,
        pipeline_k,
        pipeline_v,
        scheduler,
        handoff: TileHandoff | None,
        mask,
        softmax_scale_log2: Float32,
    ):
        wg_idx = cute.arch.make_warp_uniform(tidx // WARPGROUP_THREADS)
        thr_mma_qk = tiled_mma_qk.get_slice(tidx)
        thr_mma_pv = tiled_mma_pv.get_slice(tidx)
        # smem operand descriptors are per warpgroup
        wg_mma_qk = tiled_mma_qk.get_slice(wg_idx * WARPGROUP_THREADS)
        wg_mma_pv = tiled_mma_pv.get_slice(wg_idx * WARPGROUP_THREADS)
        tSrQ = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_A(sQ))
        tSrK = wg_mma_qk.make_fragment_B(wg_mma_qk.partition_B(sK))
        # V is stored (tile_n, dv) with dv contiguous: an MN-major B operand of P V
        sVt = cute.composition(
            sV,
            cute.make_ordered_layout((self.head_dim_v, self.tile_n, self.num_stages), order=(1, 0, 2)),
        )
        tOrVt = wg_mma_pv.make_fragment_B(wg_mma_pv.partition_B(sVt))
        # the bias operands: smem tensors (float32 path) or wgmma fragments over them
        bias_a, bias_b = sQf, sKf
        if const_expr(self.bias_mma):
            bias_a = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_A(sQf))
            bias_b = wg_mma_qk.make_fragment_B(wg_mma_qk.partition_B(sKf))
        tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
        acc_O = cute.make_rmem_tensor(thr_mma_pv.partition_shape_C((self.tile_m, self.head_dim_v)), Float32)
        acc_shape_S = thr_mma_qk.partition_shape_C((self.tile_m, self.tile_n))
        # (row, col) of every accumulator element within the CTA tile
        tScS = thr_mma_qk.partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n)))
        tOcO = thr_mma_pv.partition_C(cute.make_identity_tensor((self.tile_m, self.head_dim_v)))
        num_rows = cute.size(acc_view_mn(tScS), mode=[0])
        softmax = self.make_softmax(softmax_scale_log2, num_rows)
        # rows of this warpgroup, for the per-warpgroup boundary-tile test
        wg_row_offset = wg_idx * (self.tile_m // self.num_mma_warpgroups)

        # stmatrix: one 16x16 block per instruction instead of one swizzled address per 2 elements
        smem_copy_O = cute.make_copy_atom(warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype)
        smem_thr_copy_O = cute.make_tiled_copy_C(smem_copy_O, tiled_mma_pv).get_slice(tidx)
        tOsO_r2s = smem_thr_copy_O.partition_D(sO)

        q_state = consumer_state(1)
        kv_state = consumer_state(self.num_stages)
        # the first consumer warp issues the O store (a whole warp: see sm90.in_first_warp)
        is_store_warp = sm90.in_first_warp(tidx, self.num_mma_threads)
        if const_expr(self.pingpong):
            # the first warpgroup may issue first
            if wg_idx == 0:
                barrier_arrive(NamedBarrierFwd.WarpSchedulerWG1, PINGPONG_THREADS)

        tile = scheduler.first_tile()
        num_tiles = scheduler.num_tiles()
        if const_expr(handoff is not None):
            handoff.start()
        while tile < num_tiles:
            m_block, head, batch = scheduler.decode(tile)
            row_start = m_block * self.tile_m
            n_min, n_max = mask.n_block_range(row_start, row_start + self.tile_m)
            num_blocks = cutlass.max(n_max - n_min, 0)
            wg_row_start = row_start + wg_row_offset
            wg_row_end = wg_row_start + self.tile_m // self.num_mma_warpgroups
            softmax.reset()
            acc_O.fill(0.0)

            pipeline_q.consumer_wait(q_state)
            if const_expr(self.bias_slice):
                self.split_query_factors(sQf, tidx, wg_idx, softmax_scale_log2)
            # 1. S(n) = Q K(n)^T, right to left; mask on boundary tiles; online softmax
            # 2. O += P(n) V(n)
            if const_expr(self.intra_wg_overlap):
                kv_state = self.mainloop_overlapped(
                    num_blocks, n_max, tSrQ, tSrK, tOrP, tOrVt, acc_O, acc_shape_S, tScS,
                    bias_a, bias_b, softmax, mask, tiled_mma_qk, tiled_mma_pv, pipeline_q, pipeline_k,
                    pipeline_v, q_state, kv_state, wg_idx, row_start, wg_row_start, wg_row_end, softmax_scale_log2,
                )  # fmt: skip
            else:
                for i in cutlass.range(num_blocks, unroll=1):
                    n_block = n_max - 1 - i
                    acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
                    pipeline_k.consumer_wait(kv_state)
                    self.bias_scores(acc_S, bias_a, bias_b, kv_state.index, tiled_mma_qk, softmax_scale_log2)
                    self.scheduler_sync(wg_idx)
                    self.issue_scores(acc_S, tSrQ, tSrK, kv_state.index, tiled_mma_qk, bias_a, bias_b)
                    self.scheduler_arrive(wg_idx)
                    warpgroup.wait_group(0)
                    self.score_epilogue(
                        acc_S, tScS, bias_a, bias_b, kv_state.index, mask, row_start,
                        wg_row_start, wg_row_end, n_block, softmax_scale_log2,
                    )  # fmt: skip
                    pipeline_k.consumer_release(kv_state)
                    row_scale = softmax.step(acc_S, is_first=False)
                    softmax.rescale_o(acc_O, row_scale)
                    tOrP.store(acc_view_as_operand_a(acc_S).load().to(self.dtype))
                    pipeline_v.consumer_wait(kv_state)
                    self.scheduler_sync(wg_idx)
                    sm90.gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_state.index], False, -1)
                    self.scheduler_arrive(wg_idx)
                    warpgroup.wait_group(0)
                    pipeline_v.consumer_release(kv_state)
                    kv_state.advance()
            if const_expr(not self.o_aliases_q):
                # the overlapped mainloop released Q after its last S = Q K^T
                if const_expr(self.intra_wg_overlap):
                    if num_blocks == 0:
                        pipeline_q.consumer_release(q_state)
                else:
                    pipeline_q.consumer_release(q_state)

            # 3. epilogue: normalize, lse, O -> smem -> TMA store
            out_scale, lse = softmax.finalize()
            o_mn = acc_view_mn(acc_O)
            for r in cutlass.range_constexpr(num_rows):
                o_mn[r, None].store(o_mn[r, None].load() * out_scale[r])
            self.store_lse(lse, tOcO, mLSE[batch, head, None], row_start, mask.seqlen_q * self.pack_gqa)

            if is_store_warp:
                # the previous tile's store must have finished reading sO
                cute.arch.cp_async_bulk_wait_group(0, read=True)
            barrier_sync(NamedBarrierFwd.EpilogueWG1, self.num_mma_threads)
            rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
            rO.store(acc_O.load().to(self.dtype))
            cute.copy(smem_copy_O, smem_thr_copy_O.retile(rO), tOsO_r2s)
            # generic-proxy smem writes must be visible to the TMA (async proxy) store
            cute.arch.fence_proxy("async.shared", space="cta")
            barrier_sync(NamedBarrierFwd.EpilogueWG1, self.num_mma_threads)
            if is_store_warp:
                gO = cute.local_tile(mO[None, None, head, batch], (self.tile_m, self.head_dim_v), (m_block, 0))
                tOsO, tOgO = cpasync.tma_partition(
                    tma_atom_O, 0, cute.make_layout(1), cute.group_modes(sO, 0, 2), cute.group_modes(gO, 0, 2)
                )
                cute.copy(tma_atom_O, tOsO, tOgO)
                cute.arch.cp_async_bulk_commit_group()
            if const_expr(self.o_aliases_q):
                if is_store_warp:
                    cute.arch.cp_async_bulk_wait_group(0, read=True)
                barrier_sync(NamedBarrierFwd.EpilogueWG1, self.num_mma_threads)
                pipeline_q.consumer_release(q_state)
            q_state.advance()
            if const_expr(handoff is not None):
                tile = handoff.receive(num_tiles)
            else:
                tile = scheduler.next_tile(tile)

        if is_store_warp:
            # the CTA may exit once its last store has read sO, as CUTLASS's and FA4's epilogues do: the writes
            # complete with the grid (the full wait only added an L1 invalidation before EXIT)
            cute.arch.cp_async_bulk_wait_group(0, read=True)

    @cute.jit
    def mainloop_overlapped(
        self,
        num_blocks: Int32,
        n_max: Int32,
        tSrQ: cute.Tensor,  # wgmma A descriptors of this warpgroup's Q rows
        tSrK: cute.Tensor,  # wgmma B descriptors, (.., stages)
        tOrP: cute.Tensor,  # P in registers, the A operand of P V
        tOrVt: cute.Tensor,  # wgmma B descriptors of V^T, (.., stages)
        acc_O: cute.Tensor,  # ((2, 2, dv / 8), 1, 1) float32 registers
        acc_shape_S,
        tScS: cute.Tensor,  # (row, col) in the tile of each acc_S element
        bias_a: cute.Tensor | None,  # sQf, or its wgmma A descriptors (bias_mma)
        bias_b: cute.Tensor | None,  # sKf, or its wgmma B descriptors (bias_mma)
        softmax,
        mask,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_q,
        pipeline_k,
        pipeline_v,
        q_state,
        kv_state,
        wg_idx: Int32,
        row_start: Int32,
        wg_row_start: Int32,
        wg_row_end: Int32,
        softmax_scale_log2: Float32,
    ):
        """Software-pipelined loop: softmax(n) runs while S(n) is done and O += P(n+1) V(n+1) is in flight.

        Block j (0-based, right to left) lives in pipeline stage kv_state + j. Iteration j >= 1
        issues S(j) and then PV(j-1) as one scheduler slot, waits for S(j) only, and overlaps the
        softmax of block j with PV(j-1); the last PV is issued after the loop. Q (and its bias
        factor rows) is released once the last S is done, unless O is to be written over it, so the
        producer can load the next tile's Q under this tile's last P V and epilogue.
        """
        if num_blocks > 0:
            # block 0: S, mask, softmax; P stays in registers for the next slot
            acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
            pipeline_k.consumer_wait(kv_state)
            self.bias_scores(acc_S, bias_a, bias_b, kv_state.index, tiled_mma_qk, softmax_scale_log2)
            self.scheduler_sync(wg_idx)
            self.issue_scores(acc_S, tSrQ, tSrK, kv_state.index, tiled_mma_qk, bias_a, bias_b)
            self.scheduler_arrive(wg_idx)
            warpgroup.wait_group(0)
            self.score_epilogue(
                acc_S, tScS, bias_a, bias_b, kv_state.index, mask, row_start,
                wg_row_start, wg_row_end, n_max - 1, softmax_scale_log2,
            )  # fmt: skip
            pipeline_k.consumer_release(kv_state)
            softmax.step(acc_S, is_first=True)
            tOrP.store(acc_view_as_operand_a(acc_S).load().to(self.dtype))

            step = (
                tSrQ, tSrK, tOrP, tOrVt, acc_O, acc_shape_S, tScS, bias_a, bias_b, softmax, mask, tiled_mma_qk,
                tiled_mma_pv, pipeline_k, pipeline_v, wg_idx, row_start, wg_row_start, wg_row_end, n_max,
                softmax_scale_log2,
            )  # fmt: skip
            if const_expr(self.split_mask_loops):
                # iteration j takes block n_max - 1 - j: the right boundary blocks are the first iterations, the
                # left ones the last
                right, left = mask.boundary_blocks(wg_row_start, wg_row_end, n_max - num_blocks, n_max)
                interior_start = cutlass.min(cutlass.max(right, 1), num_blocks)
                interior_end = cutlass.max(num_blocks - left, interior_start)
                if const_expr(mask.has_right):
                    for j in cutlass.range(1, interior_start, unroll=1):
                        kv_state = self.overlapped_block(j, kv_state, True, *step)
                for j in cutlass.range(interior_start, interior_end, unroll=1):
                    kv_state = self.overlapped_block(j, kv_state, False, *step)
                if const_expr(mask.has_left):
                    for j in cutlass.range(interior_end, num_blocks, unroll=1):
                        kv_state = self.overlapped_block(j, kv_state, True, *step)
            else:
                for j in cutlass.range(1, num_blocks, unroll=1):
                    kv_state = self.overlapped_block(j, kv_state, True, *step)

            if const_expr(not self.o_aliases_q):
                pipeline_q.consumer_release(q_state)
            # last block's P V
            pipeline_v.consumer_wait(kv_state)
            self.scheduler_sync(wg_idx)
            sm90.gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_state.index], False, -1)
            self.scheduler_arrive(wg_idx)
            warpgroup.wait_group(0)
            pipeline_v.consumer_release(kv_state)
            kv_state.advance()
        return kv_state

    @cute.jit
    def overlapped_block(
        self,
        j: Int32,
        kv_state,  # the stage of block j - 1; returned advanced to block j's
        may_mask: cutlass.Constexpr[bool],  # False: a block no row of this warpgroup needs masked in
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,
        tOrP: cute.Tensor,
        tOrVt: cute.Tensor,
        acc_O: cute.Tensor,
        acc_shape_S,
        tScS: cute.Tensor,
        bias_a: cute.Tensor | None,
        bias_b: cute.Tensor | None,
        softmax,
        mask,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_k,
        pipeline_v,
        wg_idx: Int32,
        row_start: Int32,
        wg_row_start: Int32,
        wg_row_end: Int32,
        n_max: Int32,
        softmax_scale_log2: Float32,
    ):
        """Iteration j >= 1 of ``mainloop_overlapped``: S(j) and PV(j - 1) issued in one scheduler slot, the softmax
        of block j under PV(j - 1), P(j) left in registers."""
        v_state = kv_state.clone()
        kv_state.advance()
        acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
        pipeline_k.consumer_wait(kv_state)
        self.bias_scores(acc_S, bias_a, bias_b, kv_state.index, tiled_mma_qk, softmax_scale_log2)
        self.scheduler_sync(wg_idx)
        self.issue_scores(acc_S, tSrQ, tSrK, kv_state.index, tiled_mma_qk, bias_a, bias_b)
        pipeline_v.consumer_wait(v_state)
        sm90.gemm(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, v_state.index], False, -1)
        self.scheduler_arrive(wg_idx)
        # S(j) done; PV(j-1) may still run
        warpgroup.wait_group(1)
        self.score_epilogue(
            acc_S, tScS, bias_a, bias_b, kv_state.index, mask, row_start,
            wg_row_start, wg_row_end, n_max - 1 - j, softmax_scale_log2, may_mask,
        )  # fmt: skip
        pipeline_k.consumer_release(kv_state)
        row_scale = softmax.step(acc_S, is_first=False)
        # PV(j-1) read P(j-1) from tOrP and accumulates into acc_O: both free after this
        warpgroup.wait_group(0)
        pipeline_v.consumer_release(v_state)
        softmax.rescale_o(acc_O, row_scale)
        tOrP.store(acc_view_as_operand_a(acc_S).load().to(self.dtype))
        return kv_state

    @cute.jit
    def bias_scores(
        self,
        acc_S: cute.Tensor,  # ((2, 2, tile_n / 8), 1, 1) float32 registers
        bias_a: cute.Tensor | None,  # wgmma A descriptors of Qf (bias_mma)
        bias_b: cute.Tensor | None,  # wgmma B descriptors of Kf, (.., stages) (bias_mma)
        stage: Int32,
        tiled_mma_qk: cute.TiledMma,
        softmax_scale_log2: Float32,
    ) -> None:
        """With the wgmma bias: acc_S = Qf Kf^T / softmax_scale, waited for; ``issue_scores`` accumulates Q K^T onto
        it, so ``scale * acc`` is ``scale * Q K^T + Qf Kf^T``, and the softmax takes the accumulator in the same
        units as without a bias (one multiply per score, not two). Called before the warpgroup's ping-pong slot,
        where every earlier wgmma of the warpgroup has retired: this small wgmma is alone in flight, and its latency
        and the multiply run while the other warpgroup holds the tensor cores, not inside this one's slot (where
        they held both warpgroups' GEMMs up: the rank-8 forward took 1.24x the time without a bias on the H100,
        2026-11-27 16:39 UTC). Nothing without the wgmma bias, or with ``bias_slice`` (``issue_scores``)."""
        if const_expr(self.bias_mma and not self.bias_slice):
            sm90.gemm(tiled_mma_qk, acc_S, bias_a, bias_b[None, None, None, stage], True, 0)
            acc_S.store(acc_S.load() * (Float32(1.0) / (softmax_scale_log2 * LN2)))

    @cute.jit
    def issue_scores(
        self,
        acc_S: cute.Tensor,  # ((2, 2, tile_n / 8), 1, 1) float32 registers
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,  # (.., stages)
        stage: Int32,
        tiled_mma_qk: cute.TiledMma,
        bias_a: cute.Tensor | None = None,  # bias_slice: the wgmma A descriptors of the split Qf
        bias_b: cute.Tensor | None = None,  # bias_slice: the wgmma B descriptors of Kf, (.., stages)
    ) -> None:
        """Issue S = Q K^T (onto ``bias_scores``'s with the wgmma bias; with ``bias_slice``, + Qf' Kf'^T in the same
        group), left in flight."""
        if const_expr(self.bias_slice):
            sm90.gemm(
                tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, stage], True, -1,
                then=(bias_a, bias_b[None, None, None, stage]),
            )  # fmt: skip
        else:
            sm90.gemm(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, stage], not self.bias_mma, -1)

    @cute.jit
    def split_query_factors(
        self,
        sQf: cute.Tensor,  # (tile_m, bias_rank) smem: the factors in columns [0, p), zeros after
        tidx: Int32,
        wg_idx: Int32,
        softmax_scale_log2: Float32,
    ) -> None:
        """bias_slice: this warpgroup's rows of sQf become [hi | mid | lo | 0] of x = Qf / softmax_scale (float32,
        ``split_in_three``). Two threads a row, in place: a thread reads only the columns below p it also writes,
        the others' writes land at p and above, which hold zeros. Then the generic-proxy writes are made visible to
        wgmma, and the warpgroup synced."""
        self.split_factor_row(sQf, tidx % WARPGROUP_THREADS, wg_idx, Float32(1.0) / (softmax_scale_log2 * LN2))
        cute.arch.fence_view_async_shared()
        barrier_sync(NamedBarrierFwd.BiasSliceWG1 + wg_idx, WARPGROUP_THREADS)

    @cute.jit
    def split_factor_row(self, sQf: cute.Tensor, lane: Int32, wg_idx: Int32, inv_scale: Float32) -> None:
        """``split_query_factors``' work for one thread (``lane`` of warpgroup ``wg_idx``): half the factor columns
        of row wg_idx * 64 + lane // 2 (the even or the odd ones), each into its three pieces. Plain tensor
        arithmetic, so a host probe can replay every thread (tests/test_cute_bias_slice.py)."""
        row = wg_idx * 64 + lane // 2
        p = self.bias_rank // 3
        for i in cutlass.range_constexpr((p + 1) // 2):
            col = lane % 2 + 2 * i
            if col < p:
                hi, mid, lo = split_in_three(sQf[row, col].to(Float32) * inv_scale, self.dtype)
                sQf[row, col] = hi
                sQf[row, p + col] = mid
                sQf[row, 2 * p + col] = lo

    @cute.jit
    def score_epilogue(
        self,
        acc_S: cute.Tensor,  # ((2, 2, tile_n / 8), 1, 1) float32 registers
        tScS: cute.Tensor,  # (row, col) in the tile of each acc_S element
        bias_a: cute.Tensor | None,  # sQf, or its wgmma A descriptors (bias_mma)
        bias_b: cute.Tensor | None,  # sKf, or its wgmma B descriptors (bias_mma)
        stage: Int32,
        mask,
        row_start: Int32,
        wg_row_start: Int32,
        wg_row_end: Int32,
        n_block: Int32,
        softmax_scale_log2: Float32,
        may_mask: cutlass.Constexpr[bool] = True,
    ) -> None:
        """Float32 bias (if any) and boundary-tile mask on S, before the K stage (holding Kf) is released (the
        wgmma bias is already in the accumulator: ``bias_scores``). ``may_mask=False``: an interior block
        (``AttentionMask.boundary_blocks``), no mask code."""
        if const_expr(self.has_bias and not self.bias_mma):
            self.add_lowrank_bias(acc_S, tScS, bias_a, bias_b[None, None, stage], softmax_scale_log2)
        if const_expr(may_mask and self.mask_every_block):
            mask.apply(acc_S, tScS, row_start, n_block)
        elif const_expr(may_mask):
            if mask.tile_needs_mask(wg_row_start, wg_row_end, n_block):
                mask.apply(acc_S, tScS, row_start, n_block)

    @cute.jit
    def scheduler_sync(self, wg_idx: Int32) -> None:
        """Ping-pong: wait for this warpgroup's turn to issue wgmma."""
        if const_expr(self.pingpong):
            barrier_sync(NamedBarrierFwd.WarpSchedulerWG1 + wg_idx, PINGPONG_THREADS)

    @cute.jit
    def scheduler_arrive(self, wg_idx: Int32) -> None:
        """Ping-pong: hand the tensor cores to the next warpgroup (round robin with three)."""
        if const_expr(self.pingpong):
            if const_expr(self.num_mma_warpgroups == 2):
                next_wg = 1 - wg_idx
            else:
                next_wg = wg_idx + 1
                if wg_idx == self.num_mma_warpgroups - 1:
                    next_wg = Int32(0)
            barrier_arrive(NamedBarrierFwd.WarpSchedulerWG1 + next_wg, PINGPONG_THREADS)
