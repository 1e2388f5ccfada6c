"""Arch-independent part of the attention forward kernels.

Everything here is the same on sm90 and sm100: the static configuration and its validation, the
(b, s, h, d) -> (s, d, h, b) views that TMA and the MMAs want, the tile scheduler, the visibility
mask, the online softmax, the low-rank bias in float32, and the lse store. Subclasses supply the
shared-memory plan, the warp roles and the MMA mainloop.

Tensor conventions at the kernel boundary (last dim contiguous everywhere but lse):
    mQ  (b, s_q, h, d)        mK  (b, s_k, h_kv, d)      mV  (b, s_k, h_kv, dv)
    mO  (b, s_q, h, dv)       mLSE (b, h, s_q) float32
    mQf (bq, s_q, hq, r)      mKf (bk, s_k, hk, r)       with bq, bk in {1, b} and hq, hk in {1, h}
With ``pack_gqa`` = G > 1 the G query heads of one K/V head share each tile (``to_packed``): tile row r
is head r % G of the group at query position r // G, and K/V are read once per group.
Logits are ``softmax_scale * q.k + qf.kf``; the kernels receive ``softmax_scale * log2(e)``. The
factors are float32 ("position-like", product in float32 FMAs) or, with ``bias_mma``, in the input
dtype (product on the tensor cores as extra k16 slices: S = scale * (Q K^T) + Qf Kf^T).
"""

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from ..common.layouts import acc_view_mn
from ..common.lowrank import add_lowrank_fma
from ..common.mask import AttentionMask
from ..common.softmax import OnlineSoftmax
from ..common.tile_scheduler import PersistentTileScheduler

SUPPORTED_HEAD_DIMS = (64, 96, 128, 192, 256)


class AttentionFwdBase:
    """Static configuration shared by the forward kernels of every arch."""

    def __init__(
        self,
        dtype: type[cutlass.Numeric],
        head_dim: int,
        head_dim_v: int,
        tile_m: int,
        tile_n: int,
        num_stages: int,
        has_window_left: bool,
        has_window_right: bool,
        bias_rank: int = 0,
        rescale_threshold: float = 0.0,
        poly_exp2_per_8: int = 0,
        bias_mma: bool = False,
        pack_gqa: int = 1,
    ):
        if dtype not in (cutlass.Float16, cutlass.BFloat16):
            raise TypeError(f"attention supports fp16/bf16 inputs, got {dtype}")
        if head_dim not in SUPPORTED_HEAD_DIMS or head_dim_v not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"head dims must be in {SUPPORTED_HEAD_DIMS}, got {head_dim}, {head_dim_v}")
        # fp32 factors: float4 smem reads; 16-bit factors: whole wgmma k16 slices
        rank_step = 16 if bias_mma else 4
        if bias_rank % rank_step != 0 or not 0 <= bias_rank <= 64:
            raise ValueError(f"bias rank is padded to a multiple of {rank_step} in [0, 64], got {bias_rank}")
        if not 0 <= poly_exp2_per_8 <= 8:
            raise ValueError("poly_exp2_per_8 must be in [0, 8]")
        if pack_gqa < 1 or tile_m % pack_gqa != 0 or (pack_gqa > 1 and bias_rank > 0):
            raise ValueError(f"pack_gqa must divide the {tile_m}-row tile and excludes a bias, got {pack_gqa}")
        self.dtype = dtype
        self.head_dim = head_dim
        self.head_dim_v = head_dim_v
        self.tile_m = tile_m
        self.tile_n = tile_n
        self.num_stages = num_stages
        self.has_window_left = has_window_left
        self.has_window_right = has_window_right
        self.bias_rank = bias_rank
        self.bias_mma = bias_mma and bias_rank > 0
        self.rescale_threshold = rescale_threshold
        self.poly_exp2_per_8 = poly_exp2_per_8
        self.pack_gqa = pack_gqa
        # degree 3 is within a bf16 half-ulp budget with margin; fp16 has 4x finer rounding
        self.poly_degree = 3 if dtype is cutlass.BFloat16 else 4

    @property
    def has_bias(self) -> bool:
        return self.bias_rank > 0

    @property
    def bias_dtype(self) -> type[cutlass.Numeric]:
        """Factor element type in memory: the input dtype on the wgmma path, else float32."""
        return self.dtype if self.bias_mma else Float32

    @staticmethod
    def to_sdhb(t: cute.Tensor) -> cute.Tensor:
        """(b, s, h, d) -> (s, d, h, b): the (s, d) tile is what TMA and the MMAs consume."""
        return cute.make_tensor(t.iterator, cute.select(t.layout, mode=[1, 3, 2, 0]))

    def to_packed(self, t: cute.Tensor) -> cute.Tensor:
        """Q or O, (b, s, h, d) -> ((G, s), d, h / G, b): a tile's rows walk the G heads of a group, then s.

        Without packing (G = 1) this is ``to_sdhb``. TMA takes the (G, rows / G) box of the first mode as two
        of its dimensions, so sequence tails are clipped as usual.
        """
        if const_expr(self.pack_gqa == 1):
            return self.to_sdhb(t)
        g = self.pack_gqa
        b, s, h, d = t.shape
        sb, ss, sh, sd = t.stride
        return cute.make_tensor(t.iterator, cute.make_layout(((g, s), d, h // g, b), stride=((sh, ss), sd, sh * g, sb)))

    def lse_view(self, lse: cute.Tensor) -> cute.Tensor:
        """lse (b, h, s) -> (b, h / G, (G, s)): indexed by the batch, the tile's head and the tile row."""
        if const_expr(self.pack_gqa == 1):
            return lse
        g = self.pack_gqa
        b, h, s = lse.shape
        sb, sh, ss = lse.stride
        return cute.make_tensor(lse.iterator, cute.make_layout((b, h // g, (g, s)), stride=(sb, sh * g, (sh, ss))))

    def make_scheduler(
        self, q_rows: Int32, num_heads: Int32, num_batch: Int32, heads_per_section: Int32
    ) -> PersistentTileScheduler:
        """``q_rows``: the tile rows of one (batch, head) -- seqlen_q, or G * seqlen_q packed."""
        return PersistentTileScheduler(
            cute.ceil_div(q_rows, self.tile_m),
            num_heads,
            num_batch,
            longest_first=self.has_window_right,
            heads_per_section=heads_per_section,
        )

    def make_mask(self, seqlen_q: Int32, seqlen_k: Int32, window_left: Int32, window_right: Int32):
        return AttentionMask(
            seqlen_q,
            seqlen_k,
            window_left,
            window_right,
            self.has_window_left,
            self.has_window_right,
            self.tile_n,
            rows_per_position=self.pack_gqa,
        )

    def make_softmax(self, scale_log2: Float32, num_rows: int) -> OnlineSoftmax:
        # The float32 bias folds the scale into the scores before adding the bias: they reach the softmax in
        # log2 units. The wgmma bias divides its product by the scale instead: the accumulator keeps the
        # units of the scores without a bias.
        score_scale = scale_log2
        if const_expr(self.has_bias and not self.bias_mma):
            score_scale = Float32(1.0)
        return OnlineSoftmax(
            score_scale,
            num_rows,
            rescale_threshold=self.rescale_threshold,
            poly_exp2_per_8=self.poly_exp2_per_8,
            poly_degree=self.poly_degree,
        )

    @cute.jit
    def add_lowrank_bias(
        self,
        acc_S: cute.Tensor,  # ((2, 2, tile_n / 8), 1, 1) float32 registers
        tScS: cute.Tensor,  # (row, col) in the tile of each acc_S element
        sQf: cute.Tensor,  # (tile_m, r) float32
        sKf: cute.Tensor,  # (tile_n, r) float32
        scale_log2: Float32,
    ) -> None:
        """acc_S <- acc_S * scale_log2 + log2(e) * (qf . kf) in float32 FMAs (position-like factors)."""
        add_lowrank_fma(acc_S, tScS, sQf, sKf, scale_log2, self.bias_rank)

    @cute.jit
    def store_lse(
        self,
        lse: cute.Tensor,  # (rows per thread,) float32 registers
        tOcO: cute.Tensor,  # (row, col) in the tile of each acc_O element
        gLSE: cute.Tensor,  # (s_q,) or packed ((G, s_q),) float32 of this (batch, tile head)
        row_base: Int32,
        q_rows: Int32,  # s_q, or G * s_q packed
    ) -> None:
        """One lane per quad writes the rows it owns; rows past the last query are dropped."""
        c_mn = acc_view_mn(tOcO)
        if c_mn[0, 0][1] == 0:
            for r in cutlass.range_constexpr(cute.size(lse)):
                row = row_base + c_mn[r, 0][0]
                if row < q_rows:
                    gLSE[row] = lse[r]
