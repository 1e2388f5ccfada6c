"""Launcher for the CuTe-DSL attention backward (sm90): config choice, compile, call.

Three kernels per call (``kernels/cute/attention/sm90_bwd.py``): the preprocess (D = rowsum(dO * O),
lse in log2 units), the main kernel (dK, dV, and dQ / bias factor gradients accumulated in float32:
by atomics or bulk reduce-adds in any order, or in ``deterministic`` mode in a fixed key-block order) and the
postprocess (dQ to the input dtype). Each has its own frozen config, so
``compile_config`` and the compile cache treat them alike; all compile against fake tensors only
(symbolic batch, sequence and head extents), without a GPU.

``attention_bwd(dout, q, k, v, out, lse, q_factor, k_factor, *, softmax_scale, window_left,
window_right)`` returns ``(dq, dk, dv, dq_factor, dk_factor)``; the factor gradients are None
without a bias and otherwise have the factors' shapes and dtypes (summed over the batch/head
dimensions the factors broadcast along).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import torch

from ..broadcast import sum_to
from .attention_fwd import _sm_count, _window_arg, switched_off
from .compile_cache import CompileCache
from .schedule import section_heads
from .tensors import fake_stream, launch_stream, launch_tensor, prepare_factor, tma_ready

__all__ = [
    "BwdConfig",
    "BwdPostprocessConfig",
    "BwdPreprocessConfig",
    "attention_bwd",
    "choose_config",
    "compile_config",
    "shipped_configs",
]

_CACHE = CompileCache("attention_bwd_sm90")

SMEM_CAPACITY = 227 * 1024

# Padding of the float32 work buffers along the sequence: whole main-kernel tiles (the query side also a multiple of
# tile_m: 640 rows for 80), so the main kernel reads lse2 / D and adds dQ and the factor gradients without bounds
# checks.
SEQ_PAD = 128

# head_dim -> Q/dO pipeline stages. Not measured on an H100 yet: two stages let the producer load
# query block m+1 while block m is consumed; a bias at d = 128 needs the smem of the second stage
# for the float32 factors and dS (choose_config drops to one stage when the config does not fit).
# Above d = 128 the key block is 64 rows (dK / dV split along d, P^T and dS^T through smem); where that does not
# fit, choose_config gives up the second P^T / dS^T buffer before the second stage.
_TILES = {64: 2, 96: 2, 128: 2, 192: 2, 256: 2}

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _cutlass_dtype(name: str):
    import cutlass

    return {"fp16": cutlass.Float16, "bf16": cutlass.BFloat16}[name]


@dataclass(frozen=True)
class BwdConfig:
    """Everything static about one compiled main backward kernel."""

    dtype: str  # "fp16" | "bf16"
    head_dim: int
    head_dim_v: int
    window_left: bool  # a left window bound exists (window_left >= 0)
    window_right: bool  # a right bound exists; causal is window_right == 0
    bias_rank: int = 0  # padded: a multiple of 4 (float32 factors) or 16 (bias_mma); 0 = no bias
    bias_mma: bool = False  # factors in the input dtype: S^T's bias term on the tensor cores
    num_stages: int = 2
    # dQ: False = float32 vector atomics from registers; True = smem + one bulk (TMA) reduce-add per warpgroup, or per
    # tile from a producer warp with dq_reduce_warp (the default where it costs no pipeline stage; bench_variants
    # compares them)
    dq_tma_reduce: bool = False
    # dQ (and the query-factor gradients) added in a fixed key-block order: bitwise reproducible
    deterministic: bool = False
    # the query heads of a K/V head split over several CTAs (their count is a runtime argument), dK / dV
    # added in float32: for grids of fewer CTAs than SMs (MQA, small batch)
    split_heads: bool = False
    # key rows per CTA: 128 up to d = 128, 64 above (sm90_bwd.key_tile); P^T / dS^T smem buffers
    tile_n: int = 128
    ds_stages: int = 2
    # query rows per step of the key block's loop
    tile_m: int = 64
    # 16-bit factors of rank <= 16: their gradients on the tensor cores (False: float32 FMAs, the fallback of
    # ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0); True wherever it makes no difference
    tc_factor_grads: bool = True
    # the TMA reduce-add of dQ issued by a producer warp for the whole tile (the consumers store and go on, as FA3
    # and FA4 do) instead of by each consumer warpgroup for its half; a benchmark variant (0.93x to 0.96x the
    # default on the H100, 2026-11-27 16:39 UTC)
    dq_reduce_warp: bool = False
    # dQ added while the dK wgmma runs (as FA4 orders them) where nothing else takes that slot (not deterministic; a
    # bias only with tensor-core factor gradients, up to d = 128, dQ by atomics above d = 64, no left window above
    # d = 96: AttentionBwdSm90.dq_under_dk); False: after it, as in the first H100 run. Set in choose_config, False
    # where it decides nothing (one config, not two alike)
    dq_under_dk: bool = True
    # dS^T to smem by stmatrix with a bias where the SASS audit found room for it (AttentionBwdSm90.ds_stmatrix);
    # False: the 4-byte stores of every bias config above d = 64, the fallback of ATTNKIT_SM90_BWD_BIAS_STMATRIX=0.
    # True wherever it decides nothing
    bias_stmatrix: bool = True
    # S^T's wgmma bias as two k16 steps of S^T's own group (AttentionBwdSm90.bias_slice): bf16 factors of rank <= 8
    # with tensor-core factor gradients; the launcher lays the query factors out at the key factors' piece columns
    # (sliced_query_factor). False: the bias wgmma waited for alone and divided by the scale, the fallback of
    # ATTNKIT_SM90_BWD_BIAS_SLICE=0
    bias_slice: bool = False
    # the query block's lse2 and D loaded into registers while S^T's and dP^T's wgmmas run (FA4's order), where the
    # SASS audit found room (AttentionBwdSm90.early_stats): a benchmark variant (EARLY_STATS_VARIANT), not measured
    # yet. False, the default: read from smem where used, after the waits, the order of the H100 runs (the kernels
    # backend='auto' takes are the ones those runs checked: tests/test_precompile.py pins their SASS). False wherever
    # it decides nothing
    early_stats: bool = False
    # each CTA walks its query blocks from its own start, around (AttentionBwdSm90.query_block_shift), so that the
    # key blocks of a head that run side by side add dQ to different query blocks; a benchmark variant
    # (ROTATED_VARIANT), never the default (not measured yet). Not with the deterministic mode, nor with a bias above
    # d = 128 or with a left window bound (choose_config: spills)
    rotate_query_blocks: bool = False
    arch: str = "sm_90a"

    @property
    def dq_packed(self) -> bool:
        """dQaccum's tiles in the main kernel's register order (else by row and column): its postprocess must know."""
        from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdSm90

        return AttentionBwdSm90.packs_dq(
            self.dq_tma_reduce, self.bias_rank, self.bias_mma, self.head_dim, self.head_dim_v
        )

    def make_kernel(self):
        from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdSm90

        return AttentionBwdSm90(
            _cutlass_dtype(self.dtype),
            self.head_dim,
            self.head_dim_v,
            self.num_stages,
            self.window_left,
            self.window_right,
            bias_rank=self.bias_rank,
            dq_tma_reduce=self.dq_tma_reduce,
            deterministic=self.deterministic,
            split_heads=self.split_heads,
            bias_mma=self.bias_mma,
            tile_n=self.tile_n,
            ds_stages=self.ds_stages,
            tile_m=self.tile_m,
            tc_factor_grads=self.tc_factor_grads,
            dq_reduce_warp=self.dq_reduce_warp,
            dq_under_dk=self.dq_under_dk,
            bias_stmatrix=self.bias_stmatrix,
            bias_slice=self.bias_slice,
            early_stats=self.early_stats,
            rotate_query_blocks=self.rotate_query_blocks,
        )


@dataclass(frozen=True)
class BwdPreprocessConfig:
    dtype: str
    head_dim_v: int
    arch: str = "sm_90a"

    def make_kernel(self):
        from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdPreprocessSm90

        return AttentionBwdPreprocessSm90(_cutlass_dtype(self.dtype), self.head_dim_v)


@dataclass(frozen=True)
class BwdPostprocessConfig:
    dtype: str
    head_dim: int
    arch: str = "sm_90a"
    # the main kernel's query rows per step: dQaccum's tiles are packed in its accumulators' register order
    tile_m: int = 64
    # False: the main kernel added dQ by (row, column) (BwdConfig.dq_packed)
    packed: bool = True

    def make_kernel(self):
        from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdPostprocessSm90

        return AttentionBwdPostprocessSm90(_cutlass_dtype(self.dtype), self.head_dim, self.tile_m, self.packed)


def _padded_rank(rank: int, bias_mma: bool = False, head_dim: int = 0) -> int:
    step = 16 if bias_mma else 4
    padded = 0 if rank == 0 else step * math.ceil(rank / step)
    if bias_mma and head_dim == 128 and padded == 48:
        # three k16 bias slices at d = 128 spill registers (at one stage or two); four do not
        padded = 64
    if bias_mma and head_dim > 128 and padded in (16, 48):
        # likewise one or three slices at d = 256 (a few spilled registers); two and four do not
        padded += 16
    return padded


# "0": dQ by float32 atomics where the launcher would pick the TMA reduce-add (scripts/gpu_check.sh sets it for the
# rest of its run when the reduce-add fails its smoke test, so that the backward is still tested and measured)
DQ_TMA_REDUCE_ENV = "ATTNKIT_SM90_BWD_DQ_TMA_REDUCE"


# "0": the 16-bit factors' gradients in float32 FMAs instead of on the tensor cores (gpu_check's fallback when its
# cute-bwd-bias-tc smoke group fails)
TC_FACTOR_GRADS_ENV = "ATTNKIT_SM90_BWD_TC_FACTOR_GRADS"


# "0": the benchmark variants and GPU tests leave out the 80-row steps / the producer warp's dQ reduce-add
# (gpu_check sets them when their smoke groups fail, so that the rest is still tested and measured)
ROWS_80_ENV = "ATTNKIT_SM90_BWD_80_ROWS"
REDUCE_WARP_ENV = "ATTNKIT_SM90_BWD_DQ_REDUCE_WARP"
# likewise for the variant with a third Q / dO stage (THREE_STAGES_VARIANT)
THREE_STAGES_ENV = "ATTNKIT_SM90_BWD_3_STAGES"
# the backward variant whose producer keeps three query blocks in flight instead of two (where the smem has room:
# d = 128 without a bias): the load of block m + 3 then has two blocks' compute to land, not one. FA4's sm90
# backward (2 stages, 80-row steps) hands dO back before its dQ and dK wgmmas; this kernel hands Q and dO back together
# after them. Not measured yet (bench_variants times it against the default)
THREE_STAGES_VARIANT = "3 Q / dO stages"
# the default with lse2 and D loaded while S^T's and dP^T's wgmmas run (BwdConfig.early_stats), where it changes the
# kernel; the default reads them after the waits, the order of the H100 runs
EARLY_STATS_VARIANT = "lse2 and D read while S^T and dP^T run"
# "0": the benchmark variants and GPU tests leave out EARLY_STATS_VARIANT; gpu_check sets it when its smoke group fails
EARLY_STATS_ENV = "ATTNKIT_SM90_BWD_EARLY_STATS"
# the default with each key block's walk over the query blocks starting at its own place (BwdConfig.rotate_query_blocks)
ROTATED_VARIANT = "query blocks from a rotated start"
# "0": the benchmark variants and GPU tests leave out ROTATED_VARIANT; gpu_check sets it when its smoke group fails
ROTATE_ENV = "ATTNKIT_SM90_BWD_ROTATE"


def rows_80_enabled() -> bool:
    return os.environ.get(ROWS_80_ENV, "1") != "0"


def three_stages_enabled() -> bool:
    return os.environ.get(THREE_STAGES_ENV, "1") != "0"


def early_stats_enabled() -> bool:
    return os.environ.get(EARLY_STATS_ENV, "1") != "0"


def rotation_enabled() -> bool:
    return os.environ.get(ROTATE_ENV, "1") != "0"


def reduce_warp_enabled() -> bool:
    return reduce_add_enabled() and os.environ.get(REDUCE_WARP_ENV, "1") != "0"


def tc_factor_grads_enabled() -> bool:
    return os.environ.get(TC_FACTOR_GRADS_ENV, "1") != "0"


# "0": dS^T by 4-byte stores in every bias config above d = 64, as before the stmatrix audit (gpu_check's fallback
# when its cute-bwd-bias-stmatrix smoke group fails)
BIAS_STMATRIX_ENV = "ATTNKIT_SM90_BWD_BIAS_STMATRIX"


def bias_stmatrix_enabled() -> bool:
    return os.environ.get(BIAS_STMATRIX_ENV, "1") != "0"


# "0": the wgmma bias of S^T waited for alone and divided by the scale before S^T, as before the slice
# (BwdConfig.bias_slice off); gpu_check sets it when its cute-bwd-bias-slice smoke group fails
BIAS_SLICE_ENV = "ATTNKIT_SM90_BWD_BIAS_SLICE"


def bias_slices_enabled() -> bool:
    return os.environ.get(BIAS_SLICE_ENV, "1") != "0"


def bias_slices_off():
    """``ATTNKIT_SM90_BWD_BIAS_SLICE=0`` inside the block: the configs without the backward's bias slice, as under
    gpu_check's fallback (the GPU tests' twins, the bias benchmark's row of the old path)."""
    return switched_off(BIAS_SLICE_ENV)


def _slices_bias(dtype: torch.dtype, bias_rank: int, cfg: BwdConfig) -> bool:
    """Whether the backward takes S^T's wgmma bias as a K-slice of S^T's own group (BwdConfig.bias_slice): bf16
    factors (fp16 ones of 5.8e3 and more would overflow when divided by the scale of d = 128) of rank at most 8,
    whose gradients take the tensor cores (up to d = 128). The separate bias wgmma is waited for alone, its result
    multiplied by 1 / scale, before S^T is issued: per query block the tensor cores idle for its latency and 32
    multiplies a thread, as they did in the forward, whose rank-8 bias took 1.24x the time without one on the H100
    (2026-11-27 16:39 UTC). The slice adds two k16 steps to S^T's 8 at d = 128. Not where it spilled registers
    outside the main loop and the separate wgmma did not (SASS audit of the 108 configs it reaches, 2026-11-28):
    d = dv = 96 with a mask, d = 128 / dv = 96 causal."""
    from attnkit.kernels.cute.attention.sm90_bwd import SLICE_MAX_RANK

    masked = cfg.window_left or cfg.window_right
    spilled = (
        masked
        and (cfg.head_dim, cfg.head_dim_v) == (96, 96)
        or ((cfg.head_dim, cfg.head_dim_v) == (128, 96) and cfg.window_right and not cfg.window_left)
    )
    fits = 0 < bias_rank <= SLICE_MAX_RANK and cfg.tile_n == 128 and not spilled
    return dtype == torch.bfloat16 and cfg.bias_mma and fits and cfg.make_kernel().tc_factor_grads


def reduce_add_enabled() -> bool:
    """False under ``ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0``: the default dQ mode is the atomics, and the benchmark
    variants and GPU tests leave the reduce-add out."""
    return os.environ.get(DQ_TMA_REDUCE_ENV, "1") != "0"


def choose_config(
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    window_left: bool,
    window_right: bool,
    bias_rank: int = 0,
    arch: str = "sm_90a",
    dq_tma_reduce: bool | None = None,
    deterministic: bool = False,
    split_heads: bool = False,
    bias_mma: bool = False,
    tile_m: int | None = None,
    tc_factor_grads: bool | None = None,
    dq_reduce_warp: bool = False,
    dq_under_dk: bool = True,
    num_stages: int | None = None,
    early_stats: bool = False,
    rotate_query_blocks: bool = False,
) -> BwdConfig:
    """The main kernel's config (see ``_choose_config``); ``ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0`` makes the default
    dQ mode the atomics (except with ``tile_m=128``, which needs the reduce-add), and
    ``ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0`` the default factor gradients float32 FMAs. ``dq_reduce_warp``: that
    config's TMA reduce-add issued by a producer warp (an error where the config adds dQ otherwise);
    ``dq_under_dk=False``: dQ added after the dK wgmma (``BwdConfig.dq_under_dk``); ``num_stages``: the Q / dO
    pipeline's stages (None: the default's; a ValueError where they do not fit shared memory);
    ``early_stats=True``: lse2 and D loaded while S^T's and dP^T's wgmmas run, where the audit found room
    (``BwdConfig.early_stats``; a benchmark variant);
    ``rotate_query_blocks``: each key block's walk over the query blocks from its own start (a ValueError with
    ``deterministic``, and with a bias above d = 128 or with a left window bound, where it spills)."""
    if dq_tma_reduce is None and tile_m != 128 and not reduce_add_enabled():
        dq_tma_reduce = False
    if tc_factor_grads is None:
        tc_factor_grads = tc_factor_grads_enabled()
    cfg = _choose_config(
        dtype, head_dim, head_dim_v, window_left, window_right, bias_rank, arch, dq_tma_reduce, deterministic,
        split_heads, bias_mma, tile_m, tc_factor_grads, bias_stmatrix_enabled(), bias_slices_enabled(),
    )  # fmt: skip
    if dq_reduce_warp:
        if not cfg.dq_tma_reduce:
            raise ValueError(f"dq_reduce_warp issues dQ's TMA reduce-add; this config adds dQ by atomics: {cfg}")
        cfg = dataclasses.replace(cfg, dq_reduce_warp=True)
    if not dq_under_dk:
        cfg = dataclasses.replace(cfg, dq_under_dk=False)
    if early_stats:
        cfg = with_early_stats(cfg)
    if num_stages is not None and num_stages != cfg.num_stages:
        if num_stages not in (1, 2, 3):
            raise ValueError(f"num_stages = {num_stages}: the Q / dO pipeline takes 1 to 3 stages")
        staged = dataclasses.replace(cfg, num_stages=num_stages)
        smem = staged.make_kernel().smem_bytes()
        if smem > SMEM_CAPACITY:
            raise ValueError(f"num_stages = {num_stages}: {smem} bytes of shared memory, {SMEM_CAPACITY} fit: {staged}")
        cfg = staged
    if rotate_query_blocks:
        if cfg.deterministic:
            raise ValueError("rotate_query_blocks: the deterministic mode adds dQ in key-block order")
        if cfg.bias_rank and (max(head_dim, head_dim_v) > 128 or window_left):
            # a SASS audit of the 274 bf16 configs (d = dv) found spills in these and nowhere else (2026-11-28)
            raise ValueError(
                "rotate_query_blocks: with a bias it takes head dims <= 128 and no left window bound (it spills there)"
            )
        cfg = dataclasses.replace(cfg, rotate_query_blocks=True)
    return cfg


def without_bias_stmatrix(cfg: BwdConfig) -> BwdConfig:
    """``cfg`` with dS^T by 4-byte stores where the audit gave a bias config stmatrix (``BwdConfig.bias_stmatrix``);
    ``cfg`` itself where that decides nothing."""
    twin = dataclasses.replace(cfg, bias_stmatrix=False)
    return twin if cfg.make_kernel().ds_stmatrix != twin.make_kernel().ds_stmatrix else cfg


def with_early_stats(cfg: BwdConfig) -> BwdConfig:
    """``cfg`` with lse2 and D loaded while S^T's and dP^T's wgmmas run (``BwdConfig.early_stats``, a benchmark
    variant); ``cfg`` itself where the audit left no room for it (it would decide nothing there)."""
    twin = dataclasses.replace(cfg, early_stats=True)
    return twin if twin.make_kernel().early_stats else cfg


def without_bias_slice(cfg: BwdConfig) -> BwdConfig:
    """``cfg`` as ``choose_config`` gives it under ATTNKIT_SM90_BWD_BIAS_SLICE=0: the separate bias wgmma."""
    return dataclasses.replace(cfg, bias_slice=False)


def _atomics_measured_faster(
    head_dim: int, head_dim_v: int, window_left: bool, window_right: bool, bias_rank: int
) -> bool:
    """Where the H100 timed dQ atomics ahead of the TMA reduce-add: d = 128 without a mask or a bias (4.916 ms
    against 5.165 ms, 1.05x, B2 H16 N8192, 2026-11-27 16:39 UTC at 6a29e05; the 12:06 UTC run had them ahead
    too, 5.228 against 5.291 ms). Causal they tied (2.760 against 2.751 ms) and at d = 64 the reduce-add led
    (1.11x), so those keep it; bench/RESULTS.md."""
    return (head_dim, head_dim_v, window_left, window_right, bias_rank) == (128, 128, False, False, 0)


@functools.lru_cache(maxsize=256)
def _choose_config(
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    window_left: bool,
    window_right: bool,
    bias_rank: int,
    arch: str,
    dq_tma_reduce: bool | None,
    deterministic: bool,
    split_heads: bool,
    bias_mma: bool,
    tile_m: int | None,
    tc_factor_grads: bool,
    bias_stmatrix: bool = True,
    bias_slices: bool = True,
) -> BwdConfig:
    """The main kernel's config. ``dq_tma_reduce=None``: dQ by TMA reduce-add (one bulk reduction per
    warpgroup and query block, as FA3 does, instead of per-element atomics) unless deterministic, where the H100
    timed the atomics faster (``_atomics_measured_faster``: d = 128 without a mask or a bias), or where its
    float32 staging buffer would cost a pipeline stage (a bias at d = 128) or a P^T / dS^T buffer (d > 128).
    ``tile_m=None``: 128 query rows per step where FA3 takes them (d <= 64) and they fit in registers (bf16, no
    bias, dQ by TMA reduce-add: fp16 and dQ atomics spill a few registers at 128), else 64."""
    if dq_tma_reduce is None:
        args = (dtype, head_dim, head_dim_v, window_left, window_right, bias_rank, arch)
        flags = dict(
            deterministic=deterministic, split_heads=split_heads, bias_mma=bias_mma, tile_m=tile_m,
            tc_factor_grads=tc_factor_grads,
        )  # fmt: skip
        if tile_m == 128:  # only with the TMA reduce-add (dQ atomics spill at 128 rows)
            return choose_config(*args, dq_tma_reduce=True, **flags)
        atomics = choose_config(*args, dq_tma_reduce=False, **flags)
        if deterministic or _atomics_measured_faster(head_dim, head_dim_v, window_left, window_right, bias_rank):
            return atomics
        try:
            reduce = choose_config(*args, dq_tma_reduce=True, **flags)
        except ValueError:  # its staging buffer does not fit at all
            return atomics
        costs_nothing = reduce.num_stages >= atomics.num_stages and reduce.ds_stages >= atomics.ds_stages
        return reduce if costs_nothing else atomics
    if dtype not in _DTYPES:
        raise TypeError(f"CuTe attention backward supports fp16/bf16, got {dtype}")
    if head_dim not in _TILES or head_dim_v not in _TILES:
        raise ValueError(f"unsupported backward head dims ({head_dim}, {head_dim_v}); supported: {sorted(_TILES)}")
    if not 0 <= bias_rank <= 64:
        raise ValueError(f"bias rank must be in [0, 64], got {bias_rank}")
    wide_m = dtype == torch.bfloat16 and max(head_dim, head_dim_v) <= 64 and bias_rank == 0 and dq_tma_reduce
    wide_m = wide_m and not deterministic
    # 80 query rows per step (FA4's non-causal tile at d = 128): dQ computed transposed, d on the wgmma's 128 rows
    dq_transposable = head_dim == 128 and head_dim_v <= 128 and bias_rank == 0
    if tile_m is None:
        tile_m = 128 if wide_m else 64
    elif tile_m not in (64, 80, 128) or (tile_m == 128 and not wide_m) or (tile_m == 80 and not dq_transposable):
        raise ValueError(
            f"tile_m = {tile_m}: the backward takes 64; 128 for bf16 at head dims <= 64 without a bias with dQ by TMA "
            "reduce-add (not deterministic); 80 at head_dim 128 (head_dim_v <= 128) without a bias"
        )
    cfg = BwdConfig(
        _DTYPES[dtype],
        head_dim,
        head_dim_v,
        window_left,
        window_right,
        bias_rank=_padded_rank(bias_rank, bias_mma, max(head_dim, head_dim_v)),
        bias_mma=bias_mma and bias_rank > 0,
        num_stages=_TILES[max(head_dim, head_dim_v)],
        dq_tma_reduce=dq_tma_reduce,
        deterministic=deterministic,
        split_heads=split_heads,
        tile_n=key_tile_n(head_dim, head_dim_v),
        tile_m=tile_m,
        arch=arch,
    )
    if not cfg.make_kernel().dq_under_dk:
        # False where it decides nothing (a bias, the deterministic mode): one config, not two alike
        cfg = dataclasses.replace(cfg, dq_under_dk=False)
    if not tc_factor_grads and cfg.make_kernel().tc_factor_grads:
        # False only where it decides something (one config, not two alike)
        cfg = dataclasses.replace(cfg, tc_factor_grads=False)
    if not bias_stmatrix:
        cfg = without_bias_stmatrix(cfg)  # False only where it decides something
    if bias_slices and _slices_bias(dtype, bias_rank, cfg):
        cfg = dataclasses.replace(cfg, bias_slice=True)
    if cfg.make_kernel().tc_factor_grads and cfg.dq_tma_reduce and max(head_dim, head_dim_v) > 64:
        # the tensor-core factor gradients beside the reduce-add's staging spill a few registers with two Q / dO
        # stages at d = 128 (compile test); with one they do not (and the default takes the atomics instead)
        cfg = dataclasses.replace(cfg, num_stages=1)
    # what does not fit gives up, in this order, the second P^T / dS^T buffer (an extra barrier per query
    # block) and then the second Q / dO stage (the loads no longer overlap the compute)
    while cfg.make_kernel().smem_bytes() > SMEM_CAPACITY:
        if cfg.ds_stages > 1 and cfg.tile_n == 64:
            cfg = dataclasses.replace(cfg, ds_stages=1)
        elif cfg.num_stages > 1:
            cfg = dataclasses.replace(cfg, num_stages=cfg.num_stages - 1, ds_stages=2)
        else:
            break
    if cfg.make_kernel().smem_bytes() > SMEM_CAPACITY:
        raise ValueError(f"no backward config fits shared memory for {cfg}")
    return cfg


def shipped_configs(arch: str = "sm_90a") -> list:
    """The configs ``python -m attnkit.precompile`` builds: main kernels, then pre/postprocess."""
    configs = []
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128):
            for causal in (False, True):
                configs.append(choose_config(dtype, head_dim, head_dim, False, causal, arch=arch))
    configs.append(choose_config(torch.bfloat16, 128, 128, True, True, arch=arch))
    for head_dim in (64, 128):
        configs.append(choose_config(torch.bfloat16, head_dim, head_dim, False, True, arch=arch, dq_tma_reduce=False))
    configs.append(choose_config(torch.bfloat16, 96, 96, False, False, arch=arch))
    # wide heads: 64-row key blocks, dK / dV split along d
    for head_dim in (192, 256):
        for causal in (False, True):
            configs.append(choose_config(torch.bfloat16, head_dim, head_dim, False, causal, arch=arch))
    configs.append(choose_config(torch.float16, 256, 256, False, True, arch=arch))
    configs.append(choose_config(torch.bfloat16, 256, 256, False, True, bias_rank=8, arch=arch))
    # v narrower or wider than q / k
    configs.append(choose_config(torch.bfloat16, 128, 64, False, True, arch=arch))
    configs.append(choose_config(torch.bfloat16, 64, 128, False, True, arch=arch))
    configs.append(choose_config(torch.bfloat16, 128, 128, True, True, bias_rank=8, arch=arch, deterministic=True))
    # ALiBi: exact rank-2 float32 factors, causal (bench_bias' shape)
    configs.append(choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=2, arch=arch))
    for head_dim in (64, 128):
        configs.append(choose_config(torch.bfloat16, head_dim, head_dim, False, True, bias_rank=8, arch=arch))
        # learned factors in the input dtype (the tensor-core bias), causal and not: rank 8 (bench_bias' shape, S^T's
        # bias slice) and 16 (the separate bias wgmma)
        for causal in (True, False):
            for rank in (8, 16):
                configs.append(
                    choose_config(
                        torch.bfloat16, head_dim, head_dim, False, causal, bias_rank=rank, bias_mma=True, arch=arch
                    )
                )
    # MQA / GQA on small grids: the group's query heads split over CTAs
    for causal in (False, True):
        configs.append(choose_config(torch.bfloat16, 128, 128, False, causal, arch=arch, split_heads=True))
    for name in ("bf16", "fp16"):
        for head_dim in (64, 96, 128, 192, 256):
            configs.append(BwdPreprocessConfig(name, head_dim, arch))
            configs.append(BwdPostprocessConfig(name, head_dim, arch))
            if head_dim > 64:  # the float32-factor kernels that add dQ by (row, column) (BwdConfig.dq_packed)
                configs.append(BwdPostprocessConfig(name, head_dim, arch, packed=False))
        # the 128-row steps (d <= 64) pack dQaccum's tiles 128 rows at a time; the 80-row ones (d = 128, a benchmark
        # variant) as dQ^T
        configs.append(BwdPostprocessConfig(name, 64, arch, tile_m=128))
        configs.append(BwdPostprocessConfig(name, 128, arch, tile_m=80))
    return configs


# the head dims bench/bench_variants.py times the backward variants at
VARIANT_HEAD_DIMS = (128, 64)


def variant_configs(causal: bool, head_dim: int = 128, arch: str = "sm_90a") -> dict[str, BwdConfig]:
    """The default and the three ways dQ reaches its float32 buffer, bf16; where the default takes 128 query rows
    per step (d <= 64) 64 rows; at d = 128 80 rows (dQ by the default mode and by atomics) and three Q / dO stages
    (``THREE_STAGES_VARIANT``); the default with lse2 and D read while the wgmmas run (``EARLY_STATS_VARIANT``); and the
    default with each key block's walk over the query blocks from a rotated start (``ROTATED_VARIANT``). For
    ``bench/bench_variants.py`` (and ``precompile --variants``); ``attention_bwd`` picks each by its flags."""
    args = (torch.bfloat16, head_dim, head_dim, False, causal)
    variants = {
        "default": choose_config(*args, arch=arch),
        "atomics": choose_config(*args, arch=arch, dq_tma_reduce=False),
        "TMA reduce-add": choose_config(*args, arch=arch, dq_tma_reduce=True),
        "deterministic": choose_config(*args, arch=arch, deterministic=True),
    }
    if not reduce_add_enabled():
        del variants["TMA reduce-add"]
    if variants["default"].tile_m == 128:
        variants["64 query rows per step"] = choose_config(*args, arch=arch, tile_m=64)
    if head_dim == 128 and rows_80_enabled():
        # FA4's non-causal tile at d = 128 (dQ computed transposed): a variant (on the H100, 2026-11-27 16:39 UTC,
        # 1.01x the 64-row default non-causal, 0.96x causal; with atomics 1.05x, as the 64-row atomics)
        variants["80 query rows per step"] = choose_config(*args, arch=arch, tile_m=80)
        atomics = choose_config(*args, arch=arch, tile_m=80, dq_tma_reduce=False)
        if atomics != variants["80 query rows per step"]:  # the same where the reduce-add is switched off
            variants["80 query rows, dQ atomics"] = atomics
    if reduce_warp_enabled():
        # the reduce-add from a producer warp (FA3 / FA4's way), for every variant that takes the reduce-add
        for name, cfg in list(variants.items()):
            if cfg.dq_tma_reduce and name != "TMA reduce-add":
                variants[f"{name}, dQ reduce warp"] = dataclasses.replace(cfg, dq_reduce_warp=True)
    if variants["default"].dq_under_dk:
        # the order of the 2026-11-27 run: dQ added after the dK wgmma
        variants["dQ after dK"] = dataclasses.replace(variants["default"], dq_under_dk=False)
    if head_dim == 128 and three_stages_enabled():
        # after the reduce warp's loop: not combined with it
        variants[THREE_STAGES_VARIANT] = choose_config(*args, arch=arch, num_stages=3)
    early = with_early_stats(variants["default"])
    if early_stats_enabled() and early != variants["default"]:
        variants[EARLY_STATS_VARIANT] = early
    if rotation_enabled() and not variants["default"].deterministic:
        variants[ROTATED_VARIANT] = dataclasses.replace(variants["default"], rotate_query_blocks=True)
    return variants


def _fake_args(cfg):
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    def fake(dtype, rank: int, align_elems: int):
        # every extent symbolic; strides symbolic 16-byte multiples, last dim contiguous: the type
        # from_dlpack(t).mark_layout_dynamic(leading_dim=rank - 1) produces at run time
        shape = tuple(cute.sym_int() for _ in range(rank))
        stride = tuple(cute.sym_int64(divisibility=align_elems) for _ in range(rank - 1)) + (1,)
        return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)

    f32 = cutlass.Float32
    stream = fake_stream()
    if isinstance(cfg, BwdPreprocessConfig):
        elem = _cutlass_dtype(cfg.dtype)
        lse = make_fake_tensor(
            f32,
            tuple(cute.sym_int() for _ in range(3)),
            stride=(cute.sym_int64(), cute.sym_int64(), 1),
            assumed_align=4,
        )
        return (fake(elem, 4, 8), fake(elem, 4, 8), lse, fake(f32, 3, 4), fake(f32, 3, 4), stream)
    if isinstance(cfg, BwdPostprocessConfig):
        return (fake(f32, 4, 4), fake(_cutlass_dtype(cfg.dtype), 4, 8), f32(1.0), stream)
    elem = _cutlass_dtype(cfg.dtype)
    q, k, v, do = (fake(elem, 4, 8) for _ in range(4))
    lse2, dpsum, dq_accum = fake(f32, 3, 4), fake(f32, 3, 4), fake(f32, 4, 4)
    dk, dv = (fake(f32, 4, 4), fake(f32, 4, 4)) if cfg.split_heads else (fake(elem, 4, 8), fake(elem, 4, 8))
    bias = (None, None, None, None)
    if cfg.bias_rank:
        factor = elem if cfg.bias_mma else f32
        align = 16 // (factor.width // 8)
        bias = (fake(factor, 4, align), fake(factor, 4, align), fake(f32, 4, 4), fake(f32, 4, 4))
    sem = None
    if cfg.deterministic:
        shape = tuple(cute.sym_int() for _ in range(3))
        sem = make_fake_tensor(cutlass.Int32, shape, stride=(cute.sym_int64(), cute.sym_int64(), 1), assumed_align=4)
    # softmax_scale_log2, softmax_scale, window_left, window_right, heads_per_section, head_splits
    scalars = (f32(1.0), f32(1.0), cutlass.Int32(0), cutlass.Int32(0), cutlass.Int32(1), cutlass.Int32(1))
    return (q, k, v, do, lse2, dpsum, dq_accum, dk, dv, *bias, sem, *scalars, stream)


def compile_config(cfg):
    """The compiled kernel for any backward config (memory, then disk cache, then a cold compile)."""

    def build(options: str):
        import cutlass.cute as cute

        return cute.compile(cfg.make_kernel(), *_fake_args(cfg), options=options)

    return _CACHE.get(cfg, build)


def cache() -> CompileCache:
    return _CACHE


def heads_per_section(
    seqlen_q: int, head_dim: int, head_dim_v: int, elem_bytes: int, group: int, num_bh_kv: int
) -> int:
    """K/V heads per section of the causal schedule: those whose query heads' Q, dO, lse and D fit in L2."""
    per_kv_head = group * seqlen_q * ((head_dim + head_dim_v) * elem_bytes + 8)
    return section_heads(per_kv_head, num_bh_kv)


def head_splits(group: int, ctas: int, sm_count: int, deterministic: bool) -> int:
    """CTAs per (key block, K/V head, batch): enough to fill the SMs once, each with a whole share of the
    group's query heads (no empty share); 1 in the deterministic mode (the split CTAs would add their dK / dV
    partials by atomics, in any order)."""
    if deterministic or group == 1 or ctas >= sm_count:
        return 1
    want = min(group, -(-sm_count // ctas))
    per_split = -(-group // want)
    return -(-group // per_split)


def config_for(
    dtype: torch.dtype,
    batch: int,
    seqlen_k: int,
    num_heads: int,
    num_heads_kv: int,
    head_dim: int,
    head_dim_v: int,
    window_left: int,
    window_right: int,
    bias_rank: int = 0,
    factors_in_input_dtype: bool = False,
    sm_count: int | None = None,
    dq_tma_reduce: bool | None = None,
    deterministic: bool = False,
    tile_m: int | None = None,
    tc_factor_grads: bool | None = None,
    dq_reduce_warp: bool = False,
    dq_under_dk: bool = True,
    num_stages: int | None = None,
    early_stats: bool = False,
    rotate_query_blocks: bool = False,
) -> tuple[BwdConfig, int]:
    """The main kernel's config ``attention_bwd`` runs for inputs of this kind, and its head splits (1 without
    ``sm_count``); precompile --cases warms them ahead."""
    group = num_heads // num_heads_kv
    n_blocks = -(-seqlen_k // key_tile_n(head_dim, head_dim_v))
    splits = 1 if sm_count is None else head_splits(group, n_blocks * num_heads_kv * batch, sm_count, deterministic)
    cfg = choose_config(
        dtype,
        head_dim,
        head_dim_v,
        window_left >= 0,
        window_right >= 0,
        bias_rank=bias_rank,
        dq_tma_reduce=dq_tma_reduce,
        deterministic=deterministic,
        tile_m=tile_m,
        split_heads=splits > 1,
        # learned factors in q's dtype go on the tensor cores (as in the forward); others in float32
        bias_mma=bias_rank > 0 and factors_in_input_dtype,
        tc_factor_grads=tc_factor_grads,
        dq_reduce_warp=dq_reduce_warp,
        dq_under_dk=dq_under_dk,
        num_stages=num_stages,
        early_stats=early_stats,
        rotate_query_blocks=rotate_query_blocks,
    )
    return cfg, splits


def pass_configs(cfg: BwdConfig) -> tuple[BwdPreprocessConfig, BwdPostprocessConfig]:
    """The preprocess (D = rowsum(dO * O), lse2) and the postprocess (dQ to the output dtype) that run with the main
    kernel ``cfg``."""
    pre = BwdPreprocessConfig(cfg.dtype, cfg.head_dim_v, cfg.arch)
    return pre, BwdPostprocessConfig(cfg.dtype, cfg.head_dim, cfg.arch, cfg.tile_m, cfg.dq_packed)


def key_tile_n(head_dim: int, head_dim_v: int) -> int:
    """Key rows per CTA of the main kernel for these head dims."""
    from attnkit.kernels.cute.attention.sm90_bwd import key_tile

    return key_tile(head_dim, head_dim_v)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def sliced_query_factor(q_factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BwdConfig.bias_slice's query factors: Qf (in ``dtype``) at each column the kernel puts a piece of the key
    factors at (sm90_bwd.SLICE_PIECE_COLS), zeros elsewhere, SLICE_WIDTH wide. The first 16 columns are the zero-padded
    Qf the factor gradients read."""
    from attnkit.kernels.cute.attention.sm90_bwd import SLICE_MAX_RANK, SLICE_PIECE_COLS, SLICE_WIDTH

    rank = q_factor.shape[-1]
    if rank > SLICE_MAX_RANK:
        raise ValueError(f"bias_slice takes factors of rank <= {SLICE_MAX_RANK}, got q_factor of rank {rank}")
    out = q_factor.new_zeros(*q_factor.shape[:-1], SLICE_WIDTH, dtype=dtype)
    for col in SLICE_PIECE_COLS:
        out[..., col : col + rank].copy_(q_factor)
    return tma_ready(out)


def attention_bwd(
    dout: torch.Tensor,  # (B, Sq, H, Dv)
    q: torch.Tensor,  # (B, Sq, H, D)
    k: torch.Tensor,  # (B, Sk, Hkv, D)
    v: torch.Tensor,  # (B, Sk, Hkv, Dv)
    out: torch.Tensor,  # (B, Sq, H, Dv)
    lse: torch.Tensor,  # (B, H, Sq) float32, natural log
    q_factor: torch.Tensor | None,  # (B|1, Sq, H|1, R)
    k_factor: torch.Tensor | None,  # (B|1, Sk, H|1, R)
    *,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    dq_tma_reduce: bool | None = None,
    deterministic: bool = False,
    tile_m: int | None = None,
    dq_reduce_warp: bool = False,
    dq_under_dk: bool = True,
    num_stages: int | None = None,
    early_stats: bool = False,
    rotate_query_blocks: bool = False,
):
    """Attention backward on sm90: (dq, dk, dv, dq_factor, dk_factor).

    ``dq_tma_reduce`` picks how dQ partials reach the float32 buffer (None: ``choose_config``'s default);
    ``deterministic`` orders them (see ``BwdConfig``); ``tile_m`` the query rows per step (None: the default);
    ``dq_reduce_warp`` has a producer warp issue the reduce-add; ``dq_under_dk=False`` adds dQ after the dK wgmma;
    ``num_stages`` sets the Q / dO pipeline's stages (None: the default's); ``early_stats=True`` loads lse2 and D
    while S^T's and dP^T's wgmmas run (where the audit found room); ``rotate_query_blocks`` starts each key block's
    walk over the query blocks at its own place.
    """
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_kv, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    if not (k.dtype == v.dtype == dout.dtype == out.dtype == q.dtype):
        raise TypeError("q, k, v, out, dout must share a dtype")
    if num_heads % num_heads_kv != 0 or v.shape[2] != num_heads_kv:
        raise ValueError("the number of query heads must be a multiple of the number of K/V heads")
    if (q_factor is None) != (k_factor is None):
        raise ValueError("q_factor and k_factor come together")
    if q_factor is not None and q_factor.shape[-1] != k_factor.shape[-1]:
        raise ValueError("q_factor and k_factor must have the same rank")
    if lse.shape != (batch, num_heads, seqlen_q):
        raise ValueError(f"lse must be (B, H, Sq) = {(batch, num_heads, seqlen_q)}, got {tuple(lse.shape)}")
    rank = 0 if q_factor is None else q_factor.shape[-1]
    group = num_heads // num_heads_kv
    cfg, splits = config_for(
        q.dtype,
        batch,
        seqlen_k,
        num_heads,
        num_heads_kv,
        head_dim,
        head_dim_v,
        window_left,
        window_right,
        rank,
        rank > 0 and q_factor.dtype == q.dtype and k_factor.dtype == q.dtype,
        _sm_count(q.device) if q.is_cuda else None,
        dq_tma_reduce,
        deterministic,
        tile_m,
        dq_reduce_warp=dq_reduce_warp,
        dq_under_dk=dq_under_dk,
        num_stages=num_stages,
        early_stats=early_stats,
        rotate_query_blocks=rotate_query_blocks,
    )

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    dq_factor = dk_factor = None
    if rank:
        dq_factor = torch.zeros_like(q_factor)
        dk_factor = torch.zeros_like(k_factor)
    if batch == 0 or num_heads == 0:
        return dq, dk, dv, dq_factor, dk_factor
    if seqlen_q == 0 or seqlen_k == 0:
        # nothing is visible: every gradient is zero (TMA cannot describe a 0-extent tensor)
        return dq.zero_(), dk.zero_(), dv.zero_(), dq_factor, dk_factor

    pre_cfg, post_cfg = pass_configs(cfg)
    pre = compile_config(pre_cfg)
    main = compile_config(cfg)
    post = compile_config(post_cfg)

    dev = q.device
    q, k, v, dout, out = (tma_ready(t) for t in (q, k, v, dout, out))
    lse = lse.float().contiguous()
    # the main kernel reads lse2 / D and adds dQ and the factor gradients in whole tiles of the padded buffers, and
    # the preprocess writes lse2 / D in whole 64-row blocks: the query side pads to a multiple of SEQ_PAD (128) and
    # of tile_m (640 rows for 80)
    assert SEQ_PAD % cfg.tile_n == 0, cfg
    sq_pad, sk_pad = _round_up(seqlen_q, math.lcm(SEQ_PAD, cfg.tile_m)), _round_up(seqlen_k, SEQ_PAD)
    lse2 = torch.empty(batch, num_heads, sq_pad, dtype=torch.float32, device=dev)
    dpsum = torch.empty(batch, num_heads, sq_pad, dtype=torch.float32, device=dev)
    # contiguous: each (tile_m, d) tile is tile_m * d consecutive floats, packed in the dQ accumulators' order
    dq_accum = torch.zeros(batch, num_heads, sq_pad, head_dim, dtype=torch.float32, device=dev)
    qf = kf = dqf_accum = dkf_accum = None
    if rank:
        factor_dtype = q.dtype if cfg.bias_mma else torch.float32
        if cfg.bias_slice:
            qf = launch_tensor(sliced_query_factor(q_factor, factor_dtype))
        else:
            qf = launch_tensor(prepare_factor(q_factor, cfg.bias_rank, factor_dtype))
        kf = launch_tensor(prepare_factor(k_factor, cfg.bias_rank, factor_dtype))
        dqf_buf = torch.zeros(batch, num_heads, sq_pad, cfg.bias_rank, dtype=torch.float32, device=dev)
        dkf_buf = torch.zeros(batch, num_heads, sk_pad, cfg.bias_rank, dtype=torch.float32, device=dev)
        dqf_accum, dkf_accum = launch_tensor(dqf_buf), launch_tensor(dkf_buf)
    sem = None
    if deterministic:
        num_m_blocks = -(-seqlen_q // cfg.tile_m)
        sem = launch_tensor(torch.zeros(batch, num_heads, num_m_blocks, dtype=torch.int32, device=dev))
    dk_out, dv_out = dk, dv
    if splits > 1:
        # the CTAs of one K/V head add their shares in float32; converted below
        dk_out = torch.zeros(dk.shape, dtype=torch.float32, device=dev)
        dv_out = torch.zeros(dv.shape, dtype=torch.float32, device=dev)
    stream = launch_stream(dev)
    # each tensor converted once, though dout, lse2, dpsum and dq_accum go to two of the kernels
    c_dout, c_lse2, c_dpsum, c_dq_accum = (launch_tensor(t) for t in (dout, lse2, dpsum, dq_accum))

    pre(launch_tensor(out), c_dout, launch_tensor(lse), c_lse2, c_dpsum, *stream)
    main(
        launch_tensor(q),
        launch_tensor(k),
        launch_tensor(v),
        c_dout,
        c_lse2,
        c_dpsum,
        c_dq_accum,
        launch_tensor(dk_out),
        launch_tensor(dv_out),
        qf,
        kf,
        dqf_accum,
        dkf_accum,
        sem,
        softmax_scale * math.log2(math.e),
        softmax_scale,
        _window_arg(window_left, seqlen_q, seqlen_k),
        _window_arg(window_right, seqlen_q, seqlen_k),
        # the schedule's heads are (K/V head, split) pairs, each with a share of the group's query heads
        heads_per_section(
            seqlen_q, head_dim, head_dim_v, q.element_size(), -(-group // splits), batch * num_heads_kv * splits
        ),
        splits,
        *stream,
    )
    post(c_dq_accum, launch_tensor(dq), softmax_scale, *stream)
    if splits > 1:
        dk.copy_(dk_out)
        dv.copy_(dv_out)

    if rank:
        dqf = dqf_buf[:, :, :seqlen_q, :rank].transpose(1, 2)  # (B, Sq, H, R)
        dkf = dkf_buf[:, :, :seqlen_k, :rank].transpose(1, 2)  # (B, Sk, H, R)
        dq_factor = sum_to(dqf, q_factor.shape).to(q_factor.dtype)
        dk_factor = sum_to(dkf, k_factor.shape).to(k_factor.dtype)
    return dq, dk, dv, dq_factor, dk_factor
