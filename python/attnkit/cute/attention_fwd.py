"""Launcher for the CuTe-DSL attention forward (sm90): config choice, compile, call.

``compile_fwd(config)`` compiles against fake tensors only (symbolic batch, sequence, head and
head-dim extents), so it runs without a GPU and one binary serves every shape of a config. The
compile cache (``compile_cache.py``) keys on the frozen ``FwdConfig``.

``attention_fwd(q, k, v, q_factor, k_factor, *, softmax_scale, window_left, window_right)``
returns ``(out, lse)`` with ``out`` (B, Sq, H, Dv) in q.dtype and ``lse`` (B, H, Sq) float32; see
``kernels/cute/attention/base.py`` for the visibility rule and the bias contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import torch

from .compile_cache import CompileCache
from .schedule import forward_ctas, section_heads
from .tensors import fake_stream, launch_stream, launch_tensor, prepare_factor, tma_ready

__all__ = [
    "FwdConfig",
    "attention_fwd",
    "choose_config",
    "compile_config",
    "compile_fwd",
    "shipped_configs",
]

_CACHE = CompileCache("attention_fwd_sm90")

SMEM_CAPACITY = 227 * 1024
TILE_M = 128  # query rows per tile: two consumer warpgroups of 64 (three where wide_tile_fits)

# widest head dim -> (tile_n, num_stages, o_aliases_q). Not yet measured on an H100: sized so that
# Q + stages * (K + V) + O fits the 227 KiB of shared memory and acc_S + P + acc_O fit the 240
# registers of a consumer thread. Above 128 the key tiles are FA4's sm90 ones (192: 112, 128 where
# dv <= 128; 256: 80; with a left window bound 96 and 64) and O goes over Q (no room for both).
_TILES = {
    64: (128, 3, False),
    96: (128, 2, False),
    128: (128, 2, False),
    192: (112, 2, True),
    256: (80, 2, True),
}
_WINDOWED_TILE_N = {192: 96, 256: 64}

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class FwdConfig:
    """Everything static about one compiled forward kernel."""

    dtype: str  # "fp16" | "bf16"
    head_dim: int
    head_dim_v: int
    window_left: bool  # a left window bound exists (window_left >= 0)
    window_right: bool  # a right bound exists; causal is window_right == 0
    bias_rank: int = 0  # padded: a multiple of 4 (float32 factors) or 16 (bias_mma); 0 = no bias
    bias_mma: bool = False  # factors in the input dtype, product on the tensor cores
    tile_n: int = 128
    num_stages: int = 2
    o_aliases_q: bool = False
    # online-softmax switches (see kernels/cute/common/softmax.py). The lazy rescale (a threshold of 8) measured
    # 1.03x slower non-causal and 1.01x causal than rescaling every block on the H100 (bench/RESULTS.md,
    # 2026-11-27: the vote and branch cost more than the 64 multiplies they skip), so the default rescales
    # every block; the threshold stays a variant
    rescale_threshold: float = 0.0
    poly_exp2_per_8: int = 0
    pingpong: bool = True
    intra_wg_overlap: bool = True
    # query heads per K/V head packed into one tile (1: one head per tile); see sm90_fwd.py
    pack_gqa: int = 1
    # consumer warpgroups of 64 query rows: 2 (128-row tiles, 240 registers) or 3 (192 rows, 160)
    num_mma_warpgroups: int = 2
    # the key blocks no row needs masked in a loop of their own, without mask code (FA4's way); a benchmark variant:
    # on the H100 (2026-11-27 16:39 UTC) 1.03x non-causal, 0.96x causal at D = 128, within noise at D = 64. The
    # default only where one loop had its wgmmas serialized (_serialized_in_one_loop)
    split_mask_loops: bool = False
    # persistent, the tiles after each CTA's first taken from a global counter (FA3's dynamic schedule): a benchmark
    # variant (0.97x the default causal at N = 8192 on the H100, schedule.py); the launcher's schedules are
    # schedule.forward_ctas's
    dynamic_schedule: bool = False
    # every key block's scores go through the mask, without the boundary-tile test's branch around it: where ptxas
    # serialized the wgmmas over that branch ("compiler-inserted WG.AR in divergent path"; SASS, choose_config)
    mask_every_block: bool = False
    # the wgmma bias as a K-slice of S's own wgmma group, [Q | Qf / scale in three 16-bit pieces] [K | Kf Kf Kf]^T
    # (sm90_fwd.py), instead of a wgmma waited for alone and multiplied before S: bf16 factors of rank <= 10
    # (_slices_bias); bias_rank is then the slice's width, 16 or 32
    bias_slice: bool = False
    arch: str = "sm_90a"

    @property
    def tile_m(self) -> int:
        return 64 * self.num_mma_warpgroups

    def make_kernel(self):
        import cutlass

        from attnkit.kernels.cute.attention.sm90_fwd import AttentionFwdSm90

        return AttentionFwdSm90(
            {"fp16": cutlass.Float16, "bf16": cutlass.BFloat16}[self.dtype],
            self.head_dim,
            self.head_dim_v,
            self.tile_n,
            self.num_stages,
            self.window_left,
            self.window_right,
            bias_rank=self.bias_rank,
            rescale_threshold=self.rescale_threshold,
            poly_exp2_per_8=self.poly_exp2_per_8,
            pingpong=self.pingpong,
            intra_wg_overlap=self.intra_wg_overlap,
            o_aliases_q=self.o_aliases_q,
            bias_mma=self.bias_mma,
            pack_gqa=self.pack_gqa,
            num_mma_warpgroups=self.num_mma_warpgroups,
            split_mask_loops=self.split_mask_loops,
            dynamic_schedule=self.dynamic_schedule,
            mask_every_block=self.mask_every_block,
            bias_slice=self.bias_slice,
        )


# "0": every forward takes two consumer warpgroups (scripts/gpu_check.sh sets it for the rest of its run
# when the 192-row tiles fail their smoke test, so that the forward is still tested and measured)
WIDE_TILE_ENV = "ATTNKIT_SM90_FWD_192_ROWS"


# "0": the benchmark variants and GPU tests leave out the split mainloop (FwdConfig.split_mask_loops), and the configs
# that take it by default (_serialized_in_one_loop) take one loop; gpu_check sets it when its smoke group fails
SPLIT_LOOPS_ENV = "ATTNKIT_SM90_FWD_SPLIT_LOOPS"


def split_loops_enabled() -> bool:
    return os.environ.get(SPLIT_LOOPS_ENV, "1") != "0"


# "0": the wgmma bias is waited for alone and multiplied before S again (FwdConfig.bias_slice off); gpu_check sets it
# when its smoke group fails
BIAS_SLICE_ENV = "ATTNKIT_SM90_FWD_BIAS_SLICE"
# the widest query-factor slice: three pieces of rank 10 in two k16 steps
BIAS_SLICE_MAX_RANK = 10


def bias_slices_enabled() -> bool:
    return os.environ.get(BIAS_SLICE_ENV, "1") != "0"


@contextlib.contextmanager
def switched_off(name: str):
    """``name=0`` inside the block, restored after it: a launcher switch that every call reads."""
    old = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def bias_slices_off():
    """``ATTNKIT_SM90_FWD_BIAS_SLICE=0`` inside the block: the configs and kernels without the bias slice, as under
    gpu_check's fallback (the GPU tests' twins, the bias benchmark's row of the old path)."""
    return switched_off(BIAS_SLICE_ENV)


def _slices_bias(dtype: torch.dtype, bias_rank: int, bias_mma: bool) -> bool:
    """Whether the forward takes the wgmma bias as a K-slice of S (FwdConfig.bias_slice): bf16 factors (fp16 ones
    of 5.8e3 and more would overflow when divided by the scale of d = 128) of rank at most 10, whose three pieces
    take two k16 steps. The bias wgmma waited for alone costs its latency and 64 multiplies per block while the
    tensor cores idle (the rank-8 forward took 1.24x the time without a bias on the H100, 2026-11-27 16:39 UTC;
    the slice adds one k16 step to S's 8 and P V's 8). Higher ranks keep the separate wgmma, whose one k16 step
    per 16 ranks the slice would triple."""
    return dtype == torch.bfloat16 and bias_mma and 0 < bias_rank <= BIAS_SLICE_MAX_RANK


def wide_tiles_enabled() -> bool:
    """False under ``ATTNKIT_SM90_FWD_192_ROWS=0``: every forward takes 128-row tiles."""
    return os.environ.get(WIDE_TILE_ENV, "1") != "0"


def wide_tile_fits(widest_head_dim: int, window_left: bool, bias_rank: int, bias_mma: bool, pack_gqa: int) -> bool:
    """Whether the forward takes three consumer warpgroups (192-row tiles, 160 registers each) instead of
    two: FA3's and FA4's sm90 tile at head dim 64, where a warpgroup's 64 x 128 scores, their P and its
    64 x 64 O fit the smaller budget. Where they did not fit (SASS: local-memory spills) it keeps two: a
    left window bound and float32 bias factors need more per-row state, head dim 96 more accumulator.
    Packed GQA tiles serve short query sequences, where a 128-row tile wastes fewer rows."""
    return widest_head_dim <= 64 and not window_left and not (bias_rank > 0 and not bias_mma) and pack_gqa == 1


def _serialized_in_one_loop(cfg: FwdConfig) -> bool:
    """The bf16 forward configs whose wgmmas ptxas serialized with the boundary-tile mask in the one loop, and not
    with the split mainloop (FwdConfig.split_mask_loops; SASS for sm_90a, scripts/spill_audit.py, 2026-11-27/28):
    d = 192 with dv = 64 and a sliding window, no bias (one head per tile and packed); d = 256 with dv <= 128,
    causal, with 16-bit factors (every padded rank but 64 at dv = 128, which was not serialized; the split one keeps
    one spilled register outside the main loop at dv = 96 and 128); d = 256 with dv = 128, causal, GQA heads packed
    (every group size). The fp16 twins are not serialized either way. The split mainloop itself ran right on the
    H100 (2026-11-27 16:39 UTC, at d = 64 and 128)."""
    if cfg.dtype != "bf16":
        return False
    dims = (cfg.head_dim, cfg.head_dim_v)
    sliding = cfg.window_left and cfg.window_right
    causal = cfg.window_right and not cfg.window_left
    return (
        (dims == (192, 64) and sliding and cfg.bias_rank == 0)
        or (cfg.head_dim == 256 and cfg.head_dim_v <= 128 and causal and cfg.bias_mma)
        or (dims == (256, 128) and causal and cfg.pack_gqa > 1)
    )


def _padded_rank(rank: int, bias_mma: bool, bias_slice: bool = False) -> int:
    """The rank the kernel takes: the slice's width (three pieces of the factors, each at most width // 3 wide),
    or the rank padded to a multiple of 16 (wgmma) or 4."""
    if bias_slice:
        return 16 * math.ceil(3 * rank / 16)
    step = 16 if bias_mma else 4
    return 0 if rank == 0 else step * math.ceil(rank / step)


def choose_config(
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    window_left: bool,
    window_right: bool,
    bias_rank: int = 0,
    bias_mma: bool = False,
    arch: str = "sm_90a",
    pack_gqa: int = 1,
) -> FwdConfig:
    """The forward config for inputs of this kind (``ATTNKIT_SM90_FWD_192_ROWS=0``: 128-row tiles only)."""
    return _choose_config(
        dtype, head_dim, head_dim_v, window_left, window_right, bias_rank, bias_mma, arch, pack_gqa,
        wide_tiles_enabled(), split_loops_enabled(), bias_slices_enabled(),
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _choose_config(
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    window_left: bool,
    window_right: bool,
    bias_rank: int,
    bias_mma: bool,
    arch: str,
    pack_gqa: int,
    wide_tiles: bool,
    split_loops: bool,
    bias_slices: bool = False,
) -> FwdConfig:
    if dtype not in _DTYPES:
        raise TypeError(f"CuTe attention supports fp16/bf16, got {dtype}")
    widest = max(head_dim, head_dim_v)
    if widest not in _TILES or head_dim not in _TILES or head_dim_v not in _TILES:
        raise ValueError(f"unsupported head dims ({head_dim}, {head_dim_v}); supported: {sorted(_TILES)}")
    tile_n, stages, o_aliases_q = _TILES[widest]
    if window_left:
        tile_n = _WINDOWED_TILE_N.get(widest, tile_n)
    elif widest == 192 and head_dim_v <= 128:
        tile_n = 128
    can_alias = head_dim_v <= head_dim
    o_aliases_q = o_aliases_q and can_alias
    wide = wide_tiles and wide_tile_fits(widest, window_left, bias_rank, bias_mma, pack_gqa)
    # three consumer warpgroups of 160 registers spilled a few with the slice (outside the main loop): not there
    bias_slice = bias_slices and _slices_bias(dtype, bias_rank, bias_mma) and not wide
    cfg = FwdConfig(
        _DTYPES[dtype],
        head_dim,
        head_dim_v,
        window_left,
        window_right,
        bias_rank=_padded_rank(bias_rank, bias_mma, bias_slice),
        bias_mma=bias_mma and bias_rank > 0,
        bias_slice=bias_slice,
        tile_n=tile_n,
        num_stages=stages,
        o_aliases_q=o_aliases_q,
        pack_gqa=pack_gqa,
        num_mma_warpgroups=3 if wide else 2,
        # above d = 128 ptxas serialized every wgmma of several masked configs (d = 256 with dv < 256, causal) over the
        # boundary-tile test's branch; without the branch it does not, except with 16-bit factors, where it did either
        # way and serialized one more (d = 256, dv = 128, rank 64) without it (SASS, scripts/spill_audit.py)
        mask_every_block=widest > 128 and (window_left or window_right) and not (bias_mma and bias_rank > 0),
        arch=arch,
    )
    # the bias factors take smem too (and O cannot go over Q where dv > d): give up the separate O buffer,
    # then take 64-row key tiles, then 32
    short = min(cfg.tile_n, 64)
    for change in ({"o_aliases_q": can_alias}, {"tile_n": short}, {"tile_n": short // 2}):
        if cfg.make_kernel().smem_bytes() <= SMEM_CAPACITY:
            break
        cfg = dataclasses.replace(cfg, **change)
    if cfg.make_kernel().smem_bytes() > SMEM_CAPACITY:
        raise ValueError(f"no forward config fits shared memory for {cfg}")
    if split_loops and _serialized_in_one_loop(cfg):
        cfg = dataclasses.replace(cfg, split_mask_loops=True)
    return cfg


def shipped_configs(arch: str = "sm_90a") -> list[FwdConfig]:
    """The configs ``python -m attnkit.precompile`` builds: the common cases at full speed."""
    configs = []
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128):
            for causal in (False, True):
                configs.append(choose_config(dtype, head_dim, head_dim, False, causal, arch=arch))
    configs.append(choose_config(torch.bfloat16, 128, 128, True, True, arch=arch))
    configs.append(choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=8, arch=arch))
    # ALiBi: exact rank-2 float32 factors, causal (bench_bias' shape)
    configs.append(choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=2, arch=arch))
    for causal in (True, False):  # bench_bias' shape is the non-causal one (rank 8: the bias slice)
        configs.append(choose_config(torch.bfloat16, 128, 128, False, causal, bias_rank=8, bias_mma=True, arch=arch))
    configs.append(choose_config(torch.float16, 64, 64, False, False, bias_rank=8, bias_mma=True, arch=arch))
    for head_dim in (96, 192, 256):
        configs.append(choose_config(torch.bfloat16, head_dim, head_dim, False, False, arch=arch))
    # decoding and short chunks with the common GQA groups: their query heads packed per tile
    for group in (4, 8):
        configs.append(choose_config(torch.bfloat16, 128, 128, False, True, arch=arch, pack_gqa=group))
    return configs


def pack_gqa_for(group: int, seqlen_q: int, bias_rank: int) -> int:
    """How many query heads of a K/V head to pack per tile: the whole group where the group divides the
    128-row tile, there is no bias, and an unpacked tile would be mostly empty (short query sequences:
    decoding, chunked prefill). A tile costs the same whatever its number of live rows, so packing these
    shapes does G times less work without making any CTA's work longer; it does not add parallelism over
    the keys (no split-KV), which decoding on a small batch would need. Longer sequences keep one head per
    tile until a device run measures packing there (bench_variants' "pack GQA" row)."""
    if group > 1 and TILE_M % group == 0 and bias_rank == 0 and seqlen_q * 2 <= TILE_M:
        return group
    return 1


def config_for(
    dtype: torch.dtype,
    seqlen_q: int,
    num_heads: int,
    num_heads_kv: int,
    head_dim: int,
    head_dim_v: int,
    window_left: int,
    window_right: int,
    bias_rank: int = 0,
    factors_in_input_dtype: bool = False,
) -> FwdConfig:
    """The config ``attention_fwd`` runs for inputs of this kind (precompile --cases warms them ahead)."""
    # learned factors in q's dtype go on the tensor cores; float32 (position-like) ones on FMAs
    bias_mma = bias_rank > 0 and factors_in_input_dtype
    return choose_config(
        dtype,
        head_dim,
        head_dim_v,
        window_left >= 0,
        window_right >= 0,
        bias_rank=bias_rank,
        bias_mma=bias_mma,
        pack_gqa=pack_gqa_for(num_heads // num_heads_kv, seqlen_q, bias_rank),
    )


# head dims bench_variants times the forward at (precompile --variants builds their variants)
VARIANT_HEAD_DIMS = (128, 64)


WIDE_KEY_TILE_VARIANT = "key tiles of 176, O over Q"
DYNAMIC_VARIANT = "persistent (dynamic)"
# "0": the benchmark variants and GPU tests leave out the dynamic schedule; gpu_check sets it when its smoke group fails
DYNAMIC_ENV = "ATTNKIT_SM90_FWD_DYNAMIC"


def dynamic_schedule_enabled() -> bool:
    return os.environ.get(DYNAMIC_ENV, "1") != "0"


# "0": the benchmark variants and GPU tests leave out the 176-key tiles; gpu_check sets it when their smoke group fails
WIDE_KEY_TILE_ENV = "ATTNKIT_SM90_FWD_176_KEYS"


def wide_key_tiles_enabled() -> bool:
    return os.environ.get(WIDE_KEY_TILE_ENV, "1") != "0"


def wide_key_tiles(cfg: FwdConfig) -> FwdConfig:
    """``cfg`` with FA3's non-causal d = 128 key tile: 176 keys per block (Q + two stages of K and V fill 208 KiB of
    shared memory, so O goes over Q). A benchmark variant: 0.98x the default on the H100 (2026-11-27 16:39 UTC)."""
    if (cfg.head_dim, cfg.head_dim_v, cfg.num_mma_warpgroups, cfg.bias_rank) != (128, 128, 2, 0):
        raise ValueError(f"176-key tiles are sized for d = dv = 128, 128-row tiles, no bias: {cfg}")
    return dataclasses.replace(cfg, tile_n=176, o_aliases_q=True)


def variant_configs(causal: bool, head_dim: int = 128, arch: str = "sm_90a") -> dict[str, FwdConfig]:
    """The default bf16 config and one variant per on/off switch, for ``bench/bench_variants.py`` (and
    ``precompile --variants``): what each FA-style technique is worth is measured, not assumed. At another head
    dim than 128: the default against 128-row tiles, where the default takes 192 (three consumer warpgroups)."""
    base = choose_config(torch.bfloat16, head_dim, head_dim, False, causal, arch=arch)
    extra = {}
    if split_loops_enabled():
        # FA4's mainloop: the key blocks no row needs masked in a loop without mask code
        extra["interior blocks in their own loop"] = dataclasses.replace(base, split_mask_loops=True)
    if causal and dynamic_schedule_enabled():
        # FA3's dynamic persistent schedule, against the default's one CTA per tile (and bench_variants' static one)
        extra[DYNAMIC_VARIANT] = dataclasses.replace(base, dynamic_schedule=True)
    if head_dim != 128:
        variants = {"default": base, **extra}
        if base.num_mma_warpgroups == 3:
            variants["128 query rows per tile"] = dataclasses.replace(base, num_mma_warpgroups=2)
        return variants
    # FA3's (C++) non-causal tile at d = 128: 176 keys per block, O written over Q (no room for both)
    wide_n = {WIDE_KEY_TILE_VARIANT: wide_key_tiles(base)} if not causal and wide_key_tiles_enabled() else {}
    return {
        "default": base,
        **extra,
        **wide_n,
        "lazy rescale (threshold 8)": dataclasses.replace(base, rescale_threshold=8.0),
        "poly exp2 on 2 of 8": dataclasses.replace(base, poly_exp2_per_8=2),
        "no ping-pong": dataclasses.replace(base, pingpong=False),
        "no intra-WG overlap": dataclasses.replace(base, intra_wg_overlap=False),
        # for inputs with 8 query heads per K/V head
        "pack GQA (8 heads)": dataclasses.replace(base, pack_gqa=8),
    }


def _fake_args(cfg: FwdConfig):
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    elem = {"fp16": cutlass.Float16, "bf16": cutlass.BFloat16}[cfg.dtype]

    def fake_4d(dtype, align_elems):
        # every extent symbolic; strides symbolic but 16-byte multiples (TMA), last dim contiguous.
        # This is the type from_dlpack(t).mark_layout_dynamic(leading_dim=3) produces at run time.
        shape = tuple(cute.sym_int() for _ in range(4))
        stride = tuple(cute.sym_int64(divisibility=align_elems) for _ in range(3)) + (1,)
        return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)

    q, k, v, o = (fake_4d(elem, 8) for _ in range(4))
    lse = make_fake_tensor(
        cutlass.Float32,
        tuple(cute.sym_int() for _ in range(3)),
        stride=(cute.sym_int64(), cute.sym_int64(), 1),
        assumed_align=4,
    )
    qf = kf = None
    if cfg.bias_rank:
        factor = elem if cfg.bias_mma else cutlass.Float32
        qf, kf = fake_4d(factor, 16 // (factor.width // 8)), fake_4d(factor, 16 // (factor.width // 8))
    counter = None
    if cfg.dynamic_schedule:
        # (1, 1): marshals like the other tensors (every extent dynamic, the last stride 1)
        counter = make_fake_tensor(
            cutlass.Int32, (cute.sym_int(), cute.sym_int()), stride=(cute.sym_int64(), 1), assumed_align=4
        )
    # softmax_scale_log2, window_left, window_right, max_ctas, heads_per_section
    scalars = (cutlass.Float32(1.0), cutlass.Int32(0), cutlass.Int32(0), cutlass.Int32(1), cutlass.Int32(1))
    return (q, k, v, o, lse, qf, kf, counter, *scalars, fake_stream())


def _builder(cfg: FwdConfig):
    def build(options: str):
        import cutlass.cute as cute

        return cute.compile(cfg.make_kernel(), *_fake_args(cfg), options=options)

    return build


def compile_fwd(cfg: FwdConfig):
    """The compiled kernel for ``cfg`` (memory, then disk cache, then a cold compile)."""
    return _CACHE.get(cfg, _builder(cfg))


compile_config = compile_fwd


def cache() -> CompileCache:
    return _CACHE


def _to_cute(t: torch.Tensor, align: int = 16):
    """A tensor argument of the compiled forward (``tensors.launch_tensor``)."""
    return launch_tensor(t, align)


def _window_arg(window: int, seqlen_q: int, seqlen_k: int) -> int:
    """The kernel's Int32 window: unused when negative (the config has no such bound), and clamped
    to Sq + Sk, beyond which every window admits every key (keeps i + offset + window in Int32)."""
    return min(max(window, 0), seqlen_q + seqlen_k)


def heads_per_section(seqlen_k: int, head_dim: int, head_dim_v: int, elem_bytes: int, group: int, num_bh: int) -> int:
    """Query heads per section of the causal schedule: whole GQA groups whose K/V fit in L2 together."""
    kv_head_bytes = seqlen_k * (head_dim + head_dim_v) * elem_bytes
    return section_heads(kv_head_bytes, max(num_bh // group, 1), heads_per_unit=group)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def sliced_key_factor(k_factor: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """FwdConfig.bias_slice's key factors: Kf (in ``dtype``) at columns 0, p and 2p of ``width`` (p = width // 3),
    zeros elsewhere, against the query factors' three pieces there (the kernel splits them in smem)."""
    p = width // 3
    out = k_factor.new_zeros(*k_factor.shape[:-1], width, dtype=dtype)
    out[..., : 3 * p].unflatten(-1, (3, p))[..., : k_factor.shape[-1]].copy_(k_factor.unsqueeze(-2))
    return tma_ready(out)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_factor: torch.Tensor | None,
    k_factor: torch.Tensor | None,
    *,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    config: FwdConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention forward on sm90. q (B, Sq, H, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv).

    ``config``: a variant of the config this call would choose (a benchmark of the switches); it must agree
    with the inputs in dtype, head dims, window bounds and bias.
    """
    batch, seqlen_q, num_heads, head_dim = q.shape
    head_dim_v = v.shape[-1]
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError("q, k, v must share a dtype")
    if num_heads % k.shape[2] != 0 or k.shape[2] != v.shape[2]:
        raise ValueError("the number of query heads must be a multiple of the number of K/V heads")
    if not softmax_scale > 0:
        raise ValueError("the kernel's running max assumes softmax_scale > 0")
    if (q_factor is None) != (k_factor is None):
        raise ValueError("q_factor and k_factor come together")
    rank = 0 if q_factor is None else q_factor.shape[-1]
    if rank:
        bq, sq_f, hq, _ = q_factor.shape
        bk, sk_f, hk, rank_k = k_factor.shape
        if sq_f != seqlen_q or sk_f != k.shape[1] or rank_k != rank or not 1 <= rank <= 64:
            raise ValueError("factors must be (B|1, Sq, H|1, R) and (B|1, Sk, H|1, R) with 1 <= R <= 64")
        if bq not in (1, batch) or bk not in (1, batch) or hq not in (1, num_heads) or hk not in (1, num_heads):
            raise ValueError("factor batch/head extents must be 1 or match q")
    group = num_heads // k.shape[2]
    in_dtype = rank > 0 and q_factor.dtype == q.dtype and k_factor.dtype == q.dtype
    cfg = config_for(
        q.dtype, seqlen_q, num_heads, k.shape[2], head_dim, head_dim_v, window_left, window_right, rank, in_dtype
    )
    if config is not None:
        fixed = ("dtype", "head_dim", "head_dim_v", "window_left", "window_right", "bias_rank", "bias_mma", "arch")
        if config.pack_gqa not in (1, group):
            raise ValueError(f"config packs {config.pack_gqa} query heads per K/V head; the inputs have {group}")
        if config.bias_slice and not _slices_bias(q.dtype, rank, in_dtype):
            raise ValueError(f"bias_slice takes bf16 factors of rank <= {BIAS_SLICE_MAX_RANK}, with bf16 q: {config}")
        # a config with the bias slice switched the other way takes the other padded rank
        cfg = dataclasses.replace(
            cfg, bias_rank=_padded_rank(rank, cfg.bias_mma, config.bias_slice), bias_slice=config.bias_slice
        )
        wrong = [f for f in fixed if getattr(config, f) != getattr(cfg, f)]
        if wrong:
            raise ValueError(f"config disagrees with the inputs in {', '.join(wrong)}: {config} vs {cfg}")
        cfg = config
    kernel = compile_fwd(cfg)

    out = torch.empty(batch, seqlen_q, num_heads, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, num_heads, seqlen_q, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if k.shape[1] == 0:
        # no keys at all: every row is empty (TMA descriptors cannot describe a 0-extent tensor)
        return out.zero_(), lse.fill_(float("-inf"))
    q, k, v = (tma_ready(t) for t in (q, k, v))
    qf = kf = None
    if rank:
        factor_dtype = q.dtype if cfg.bias_mma else torch.float32
        qf = _to_cute(prepare_factor(q_factor, cfg.bias_rank, factor_dtype))
        if cfg.bias_slice:
            kf = _to_cute(sliced_key_factor(k_factor, cfg.bias_rank, factor_dtype))
        else:
            kf = _to_cute(prepare_factor(k_factor, cfg.bias_rank, factor_dtype))
    counter = None
    if cfg.dynamic_schedule:
        # the dynamic schedule's tile counter, zero at launch
        counter = _to_cute(torch.zeros(1, 1, dtype=torch.int32, device=q.device), align=4)
    args = (
        _to_cute(q),
        _to_cute(k),
        _to_cute(v),
        _to_cute(out),
        _to_cute(lse, align=4),
        qf,
        kf,
        counter,
        softmax_scale * math.log2(math.e),
        _window_arg(window_left, seqlen_q, k.shape[1]),
        _window_arg(window_right, seqlen_q, k.shape[1]),
        # persistent, or one CTA per tile where the tiles' work differs (schedule.py)
        forward_ctas(_sm_count(q.device), cfg.window_right, cfg.dynamic_schedule),
        # packed, the schedule's heads are K/V heads
        heads_per_section(k.shape[1], head_dim, head_dim_v, q.element_size(), group, batch * num_heads) // cfg.pack_gqa,
        *launch_stream(q.device),
    )
    try:
        kernel(*args)
    except Exception:
        record = _CACHE.records.get(cfg)
        if record is None or record.source != "disk":
            raise
        # a cached object from another toolchain build or machine: rebuild it here, once
        _CACHE.recompile(cfg, _builder(cfg))(*args)
    return out, lse
