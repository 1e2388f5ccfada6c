"""The shapes the CuTe GPU tests run, in one place, with the kernel configs they need: `scripts/gpu_check.sh`
compiles those on every core first (`python -m attnkit.precompile --cases tests/cute_gpu_cases.py`), so the
tests spend the device's minutes running kernels, not compiling them one after another."""

from __future__ import annotations

import torch

# (b, sq, sk, h, hkv, d, window_left, window_right, rank); rank < 0: factors in the input dtype
FWD_CASES = [
    (2, 1000, 1000, 4, 4, 128, -1, -1, 0),
    (2, 77, 1000, 4, 2, 64, -1, 0, 0),
    (1, 4097, 4097, 2, 1, 128, -1, 0, 8),
    (2, 1000, 1000, 4, 2, 128, -1, 0, -8),
    (1, 1000, 77, 2, 2, 64, -1, 0, 0),
    (1, 1, 1000, 2, 2, 128, 100, 0, 0),
    (1, 333, 1000, 2, 2, 64, 64, 16, 3),
    (1, 333, 1000, 2, 2, 64, -1, -1, -24),
    (1, 256, 256, 2, 2, 256, -1, -1, 0),
    # short queries with GQA: the group's heads packed per tile
    (2, 1, 1000, 8, 1, 128, -1, 0, 0),
    (1, 50, 300, 8, 2, 64, -1, 0, 0),
    (1, 60, 333, 16, 1, 128, 64, 16, 0),
    (1, 33, 200, 4, 2, 256, -1, -1, 0),
    # d = 64 without a left window: 192-row tiles (three consumer warpgroups, round-robin ping-pong)
    (1, 4097, 4097, 2, 1, 64, -1, -1, 0),
    # key tiles of 112 (d = 192) and, with a left window bound, 64 (d = 256)
    (1, 333, 1000, 2, 1, 192, -1, 0, 0),
    (1, 500, 700, 2, 2, 256, 64, 16, 0),
    # the ends of the bias ranks: 1 (float32 factors, padded to 4) and 64 (in the input dtype, four wgmma k16 slices)
    (1, 300, 500, 2, 2, 128, -1, -1, 1),
    (1, 333, 333, 2, 1, 64, -1, 0, -64),
]
FWD_DTYPES = [torch.bfloat16, torch.float16]
# cases run with the dynamic persistent schedule (bench_variants' causal variant), bf16: CTAs taking several tiles,
# causal at d = 128 (8-head L2 sections) and d = 64 (192-row tiles), windowed, and fewer tiles than SMs
FWD_DYNAMIC_CASES = [
    (4, 2048, 2048, 8, 2, 128, -1, 0, 0),
    (2, 2048, 2048, 16, 16, 64, -1, 0, 0),
    (2, 2048, 3000, 8, 8, 128, 500, 0, 0),
    (2, 77, 1000, 4, 2, 128, -1, 0, 0),
]
# bf16 cases whose launcher config takes the split mainloop, where one loop had its wgmmas serialized
# (attention_fwd._serialized_in_one_loop): (b, sq, sk, h, hkv, d, dv, window_left, window_right, rank)
FWD_SPLIT_DEFAULT_CASES = [
    (1, 500, 700, 2, 2, 192, 64, 64, 16, 0),
    (1, 40, 333, 16, 2, 192, 64, 64, 16, 0),  # 8 query heads packed per tile
    (1, 300, 500, 2, 1, 256, 128, -1, 0, -16),
    (1, 400, 300, 2, 2, 256, 96, -1, 0, -48),  # sq > sk: rows with no key
    (1, 333, 1000, 2, 2, 256, 64, -1, 0, -64),
    (2, 3, 500, 8, 2, 256, 128, -1, 0, 0),  # 4 query heads packed per tile
]
# bf16 cases of the bias as a K-slice of S (FwdConfig.bias_slice, the launcher's default for factors in the input
# dtype of rank <= 10 on two consumer warpgroups), each also run with it off: ranks 1 and 5 (one k16 step of the
# slice), 6, 8 and 10 (two), causal, windowed, GQA, rows with no key, d = 64 with a left window (two warpgroups), 96,
# 256; (b, sq, sk, h, hkv, d, window_left, window_right, rank), rank < 0 as above
FWD_BIAS_SLICE_CASES = [
    (2, 700, 700, 4, 2, 128, -1, 0, -8),
    (2, 300, 333, 4, 4, 128, -1, -1, -1),
    (1, 1000, 1200, 2, 2, 128, 300, 16, -5),
    (1, 1000, 77, 2, 2, 128, -1, 0, -10),
    (1, 300, 300, 2, 2, 96, -1, -1, -6),
    (1, 333, 1000, 2, 2, 64, 64, 16, -8),
    (1, 300, 500, 2, 1, 256, -1, 0, -8),
    (2, 4097, 4097, 2, 2, 128, -1, -1, -8),
]
# non-causal d = 128 cases run with FA3's 176-key tiles (bench_variants' variant), bf16: key tails of every kind
FWD_WIDE_KEY_TILE_CASES = [
    (2, 1000, 1000, 4, 4, 128, -1, -1, 0),
    (1, 77, 1000, 4, 2, 128, -1, -1, 0),
    (1, 4097, 4097, 2, 1, 128, -1, -1, 0),
    (1, 1, 176, 2, 2, 128, -1, -1, 0),
]
# more tiles than an H100 has SMs (FWD_CASES have fewer), each run persistent and one CTA per tile
# (attnkit.cute.schedule.forward_ctas): causal at d = 128 in 8-head L2 sections and at d = 64 (192-row tiles), and
# without a mask, bf16
FWD_SCHEDULE_CASES = [
    (4, 2048, 2048, 8, 2, 128, -1, 0, 0),
    (2, 2048, 2048, 16, 16, 64, -1, 0, 0),
    (4, 2048, 2048, 8, 8, 128, -1, -1, 0),
]
# d = 64 cases whose default takes three consumer warpgroups, run with two (bench_variants' other tile), bf16
FWD_TWO_WG_CASES = [
    (2, 77, 1000, 4, 2, 64, -1, 0, 0),
    (1, 4097, 4097, 2, 1, 64, -1, -1, 0),
]


def split_loops(cfg):
    """A forward config with its interior key blocks in a loop of their own (bench_variants' split mainloop)."""
    import dataclasses

    return dataclasses.replace(cfg, split_mask_loops=True)


def wide_key_tiles(cfg):
    """A d = 128 forward config with FA3's 176-key tiles, O over Q (bench_variants' variant, non-causal)."""
    from attnkit.cute import attention_fwd as fwd

    return fwd.wide_key_tiles(cfg)


def dynamic_schedule(cfg):
    """A forward config with FA3's dynamic persistent schedule (bench_variants' causal variant)."""
    import dataclasses

    return dataclasses.replace(cfg, dynamic_schedule=True)


def two_warpgroups(cfg):
    """A forward config with 128-row tiles (two consumer warpgroups) in place of its 192."""
    import dataclasses

    return dataclasses.replace(cfg, num_mma_warpgroups=2)


BWD_CASES = [
    (2, 1000, 1000, 4, 4, 128, -1, -1, 0),
    (2, 77, 1000, 4, 2, 64, -1, 0, 0),
    (1, 4097, 4097, 2, 1, 128, -1, 0, 0),
    (1, 1000, 77, 2, 2, 64, -1, 0, 0),
    # d = 64 without a bias: 128 query rows per step in the tma_reduce mode, full and windowed
    (2, 300, 300, 4, 4, 64, -1, -1, 0),
    (1, 333, 1000, 4, 2, 64, 64, 16, 0),
    (2, 300, 300, 4, 1, 96, -1, -1, 0),
    (1, 1, 1000, 2, 2, 128, 100, 0, 0),
    (1, 333, 1000, 4, 2, 64, 64, 16, 3),
    (2, 500, 700, 4, 4, 128, -1, 0, 8),
    (1, 256, 256, 2, 2, 64, -1, -1, 64),
    # a small grid: the 16 query heads of the one K/V head split over CTAs (not in deterministic mode)
    (1, 512, 512, 16, 1, 128, -1, 0, 0),
    # float32 factors with the GQA group's query heads split over CTAs
    (1, 300, 300, 8, 2, 64, -1, -1, 8),
    # factors in the input dtype: the bias slices of S^T on the tensor cores (rank 16 and below: their gradients on the
    # tensor cores too, issued between the dQ and dK wgmmas)
    (2, 500, 700, 4, 4, 128, -1, 0, -8),
    (1, 300, 500, 4, 2, 128, -1, -1, -16),
    (1, 333, 1000, 4, 2, 64, 64, 16, -8),
    (1, 333, 1000, 4, 2, 64, 64, 16, -24),
    (1, 300, 500, 4, 2, 64, -1, -1, -16),
    (1, 300, 500, 4, 2, 96, -1, 0, -16),
    # a grid of at least 132 CTAs: each walks 4 query heads, dKf summed per head in smem (dkf_summed_in_smem)
    (2, 200, 4300, 8, 2, 128, -1, -1, -16),
    # rank 1 (float32 factors, padded to 4)
    (1, 300, 500, 2, 2, 128, -1, -1, 1),
]
# (dtype, dQ mode): the launcher's flags for each mode
BWD_MODES = [
    (torch.bfloat16, "atomics"),
    (torch.float16, "atomics"),
    (torch.bfloat16, "tma_reduce"),
    (torch.bfloat16, "deterministic"),
]
DQ_FLAGS = {
    "default": dict(dq_tma_reduce=None, deterministic=False),
    "atomics": dict(dq_tma_reduce=False, deterministic=False),
    "tma_reduce": dict(dq_tma_reduce=True, deterministic=False),
    "deterministic": dict(dq_tma_reduce=False, deterministic=True),
    "reduce_warp": dict(dq_tma_reduce=True, deterministic=False, dq_reduce_warp=True),
}

# Wide heads (d or dv > 128: 64-row key blocks shared by both warpgroups, dK / dV split along d, P^T / dS^T
# through smem), in tests/test_cute_sm90_bwd_wide.py so that gpu_check can leave them out alone:
# (b, sq, sk, h, hkv, d, dv, window_left, window_right, rank, dtype, dQ mode); "default" = the launcher's choice
WIDE_BWD_CASES = [
    (2, 300, 300, 2, 1, 256, 256, -1, -1, 0, torch.bfloat16, "default"),  # dQ atomics
    (2, 300, 300, 2, 1, 256, 256, -1, -1, 0, torch.float16, "deterministic"),
    (1, 333, 1000, 4, 2, 192, 192, -1, 0, 0, torch.bfloat16, "default"),  # dQ TMA reduce-add
    (1, 333, 1000, 4, 2, 192, 192, -1, 0, 0, torch.bfloat16, "atomics"),
    (1, 300, 500, 2, 2, 256, 128, -1, 0, 0, torch.bfloat16, "tma_reduce"),  # one P^T / dS^T buffer
    (1, 300, 300, 2, 2, 192, 192, -1, -1, 64, torch.bfloat16, "default"),  # one buffer, with a bias
    (1, 500, 700, 2, 2, 256, 256, 64, 16, 8, torch.bfloat16, "default"),  # float32 factors, one Q / dO stage
    (1, 500, 700, 2, 2, 256, 256, 64, 16, 8, torch.bfloat16, "deterministic"),
    (1, 500, 500, 2, 2, 256, 256, 64, 16, 0, torch.bfloat16, "deterministic"),
    (1, 77, 300, 2, 2, 256, 256, -1, 0, -16, torch.bfloat16, "default"),  # tensor-core bias
    (1, 512, 512, 8, 1, 256, 256, -1, 0, 0, torch.bfloat16, "default"),  # MQA: query heads split over CTAs
    (2, 333, 500, 4, 2, 128, 256, -1, 0, 0, torch.bfloat16, "default"),
    (2, 333, 500, 4, 2, 192, 128, -1, -1, 0, torch.bfloat16, "default"),
    (2, 333, 500, 4, 2, 256, 64, -1, 0, 0, torch.bfloat16, "default"),
    (2, 333, 500, 4, 2, 96, 256, -1, -1, 0, torch.bfloat16, "default"),
]

# bf16 cases of S^T's bias as a K-slice of its own wgmma group (BwdConfig.bias_slice, the launcher's default for
# factors in the input dtype of rank <= 8 at d <= 128), each also run with it off: ranks 1, 5 and 8, non-causal,
# causal, windowed, GQA, empty query blocks, d = 64 and 96, 4 query heads per CTA (the split warp's head loop), the
# group's query heads split over CTAs, the deterministic mode; (b, sq, sk, h, hkv, d, window_left, window_right, rank,
# dQ mode), rank < 0 as above
BWD_BIAS_SLICE_CASES = [
    (2, 700, 700, 4, 2, 128, -1, -1, -8, "default"),
    (2, 500, 700, 4, 4, 128, -1, 0, -8, "default"),
    (1, 1000, 1200, 2, 2, 128, 300, 16, -5, "default"),
    (1, 1000, 77, 2, 2, 128, -1, 0, -1, "default"),
    (1, 300, 300, 2, 2, 96, -1, -1, -6, "default"),
    (1, 333, 1000, 4, 2, 64, 64, 16, -8, "default"),
    (2, 200, 4300, 8, 2, 128, -1, -1, -8, "default"),
    (1, 512, 512, 16, 1, 128, -1, 0, -8, "default"),
    (1, 500, 700, 4, 4, 128, -1, 0, -8, "deterministic"),
]

# the producer warp's dQ reduce-add (a benchmark variant): (b, sq, sk, h, hkv, d, window_left, window_right), bf16
REDUCE_WARP_CASES = [
    (2, 1000, 1000, 4, 4, 128, -1, -1),
    (1, 4097, 4097, 2, 1, 128, -1, 0),
    (2, 300, 300, 4, 4, 64, -1, -1),  # 128 query rows per step
    (1, 333, 1000, 4, 2, 64, 64, 16),
    (1, 512, 512, 16, 1, 128, -1, 0),  # query heads split over CTAs
]

# 80 query rows per step at d = 128, dQ computed transposed (a benchmark variant, FA4's non-causal tile), bf16:
# (b, sq, sk, h, hkv, dv, window_left, window_right), each in BWD_80_MODES
BWD_80_CASES = [
    (2, 1000, 1000, 4, 2, 128, -1, -1),
    (1, 77, 1000, 4, 2, 128, -1, 0),
    (1, 1000, 333, 2, 2, 64, 64, 16),
    (1, 4097, 4097, 2, 1, 128, -1, -1),
]
BWD_80_MODES = ["default", "atomics", "deterministic", "reduce_warp"]

# lse2 and D loaded while S^T's and dP^T's wgmmas run (a benchmark variant, attention_bwd.EARLY_STATS_VARIANT), each
# case a config where it changes the kernel: (b, sq, sk, h, hkv, d, window_left, window_right, rank, dtype, dQ mode);
# scripts/gpu_smoke.py's cute-bwd-early-stats runs the first seven
EARLY_STATS_CASES = [
    (2, 1000, 1000, 4, 2, 128, -1, -1, 0, torch.bfloat16, "default"),  # dQ atomics, GQA
    (2, 1000, 1000, 4, 4, 128, -1, 0, 0, torch.bfloat16, "default"),  # causal, dQ reduce-add
    (1, 77, 1000, 4, 2, 128, -1, 0, 0, torch.bfloat16, "atomics"),  # fewer query blocks than key blocks
    (1, 1000, 333, 2, 2, 64, 64, 16, 0, torch.float16, "default"),  # d = 64 with 64 query rows per step, a window
    (1, 512, 512, 16, 1, 128, -1, 0, 0, torch.bfloat16, "default"),  # query heads split over CTAs
    (1, 300, 400, 2, 2, 64, -1, 0, -16, torch.bfloat16, "default"),  # 16-bit factors, gradients on the tensor cores
    (1, 300, 300, 2, 2, 256, 64, 0, 0, torch.float16, "default"),  # wide heads, sliding window
    (1, 500, 500, 2, 2, 128, -1, 0, 0, torch.bfloat16, "deterministic"),
    (1, 300, 300, 2, 2, 128, -1, 0, -64, torch.bfloat16, "default"),  # rank 64: factor gradients in float32 FMAs
    (1, 4097, 4097, 2, 1, 128, -1, -1, 0, torch.bfloat16, "default"),
]

# three Q / dO stages at d = 128 (a benchmark variant, attention_bwd.THREE_STAGES_VARIANT), bf16:
# (b, sq, sk, h, hkv, window_left, window_right, dQ mode); scripts/gpu_smoke.py's cute-bwd-3-stages runs the first six
BWD_3_STAGES_CASES = [
    (2, 1000, 1000, 4, 2, -1, -1, "default"),  # dQ atomics, GQA
    (2, 1000, 1000, 4, 4, -1, 0, "default"),  # dQ reduce-add
    (1, 77, 1000, 4, 2, -1, 0, "atomics"),  # fewer query blocks than stages
    (1, 1000, 333, 2, 2, 64, 16, "default"),
    (1, 512, 512, 16, 1, -1, 0, "default"),  # query heads split over CTAs
    (1, 500, 500, 2, 2, -1, 0, "deterministic"),
    (1, 4097, 4097, 2, 1, -1, -1, "default"),
]

# each key block's walk over the query blocks from a rotated start (a benchmark variant, attention_bwd.ROTATED_VARIANT),
# bf16: (b, sq, sk, h, hkv, d, window_left, window_right, rank, dQ mode); scripts/gpu_smoke.py's cute-bwd-rotate runs
# the first seven
ROTATED_CASES = [
    (2, 1000, 1000, 4, 2, 128, -1, -1, 0, "default"),  # dQ atomics, GQA: 16 query blocks, 8 key blocks
    (2, 1000, 1000, 4, 4, 128, -1, 0, 0, "default"),  # causal, dQ reduce-add
    (2, 1023, 1023, 4, 2, 64, -1, -1, 0, "default"),  # 128 query rows per step
    (1, 77, 1000, 4, 2, 128, -1, 0, 0, "atomics"),  # fewer query blocks than key blocks
    (1, 512, 512, 16, 1, 128, -1, 0, 0, "default"),  # query heads split over CTAs
    (1, 700, 700, 4, 4, 128, -1, -1, -8, "default"),  # the bias slice, rank 8
    (1, 1000, 333, 2, 2, 128, 64, 16, 0, "default"),  # window
    (1, 4097, 4097, 2, 1, 128, -1, -1, 0, "default"),
    (1, 1000, 1000, 4, 4, 128, -1, -1, 0, "reduce_warp"),  # the producer warp walks the same rotated order
]

# v narrower or wider than q / k: (d, dv, window_right), at b, sq, sk, h, hkv = DV_SHAPE
DV_CASES = [(128, 64, 0), (64, 128, -1), (96, 128, 0)]
# the forward's: O over Q with 128 keys (d = 192, dv = 128), a separate O with 80 (d = 128, dv = 256)
FWD_DV_CASES = [*DV_CASES, (192, 128, -1), (128, 256, 0), (256, 64, -1)]
DV_SHAPE = (2, 333, 500, 4, 2)


def make_inputs(b, sq, sk, h, hkv, d, dv, rank, dtype) -> tuple:
    """q, k, v and the bias factors (None without a bias) on the GPU; rank < 0: factors in the input dtype (the
    tensor-core bias), rank > 0: float32 factors. The query factor broadcasts over heads, the key one over batch."""
    dev = "cuda"
    q = torch.randn(b, sq, h, d, device=dev, dtype=dtype)
    k = torch.randn(b, sk, hkv, d, device=dev, dtype=dtype)
    v = torch.randn(b, sk, hkv, dv, device=dev, dtype=dtype)
    qf = kf = None
    if rank:
        factor_dtype = dtype if rank < 0 else torch.float32
        qf = (torch.randn(b, sq, 1, abs(rank), device=dev) * 0.5).to(factor_dtype)
        kf = (torch.randn(1, sk, h, abs(rank), device=dev) * 0.5).to(factor_dtype)
    return q, k, v, qf, kf


def check_backward(
    b, sq, sk, h, hkv, d, dv, wl, wr, rank, dtype, dq_mode, tile_m=None, num_stages=None, early_stats=False,
    rotate_query_blocks=False,
) -> None:  # fmt: skip
    """The CuTe backward on one case against the float64 reference (the 2x rule), every gradient, outputs
    allocated over NaN-poisoned memory. rank < 0: factors in the input dtype (tensor-core bias); ``tile_m``: the
    query rows per step, ``num_stages`` the Q / dO stages (None: the launcher's choice); ``early_stats``: lse2 and
    D loaded while the wgmmas run, ``rotate_query_blocks``: each key block's walk from its own query block (benchmark
    variants)."""
    import math

    import pytest
    from attnkit.cute import attention_bwd as bwd
    from attnkit.reference.attention import attention_backward, attention_forward
    from numerics import assert_2x

    if dq_mode in ("tma_reduce", "reduce_warp") and not bwd.reduce_add_enabled():
        pytest.skip(f"{bwd.DQ_TMA_REDUCE_ENV}=0: the reduce-add failed gpu_check's smoke test")
    if dq_mode == "reduce_warp" and not bwd.reduce_warp_enabled():
        pytest.skip(f"{bwd.REDUCE_WARP_ENV}=0: the producer warp's reduce-add failed gpu_check's smoke test")
    if tile_m == 80 and not bwd.rows_80_enabled():
        pytest.skip(f"{bwd.ROWS_80_ENV}=0: the 80-row steps failed gpu_check's smoke test")
    if num_stages == 3 and not bwd.three_stages_enabled():
        pytest.skip(f"{bwd.THREE_STAGES_ENV}=0: the three Q / dO stages failed gpu_check's smoke test")
    if early_stats and not bwd.early_stats_enabled():
        pytest.skip(f"{bwd.EARLY_STATS_ENV}=0: lse2 and D loaded early failed gpu_check's smoke test")
    if rotate_query_blocks and not bwd.rotation_enabled():
        pytest.skip(f"{bwd.ROTATE_ENV}=0: the rotated query-block walk failed gpu_check's smoke test")
    dev = "cuda"
    q, k, v, qf, kf = make_inputs(b, sq, sk, h, hkv, d, dv, rank, dtype)
    dout = torch.randn(b, sq, h, dv, device=dev, dtype=dtype)
    kw = dict(softmax_scale=1.0 / math.sqrt(d), window_left=wl, window_right=wr)
    inputs = [q, k, v, qf, kf]
    ins64 = [None if x is None else x.double() for x in inputs]
    out_lp, lse_lp = attention_forward(*inputs, compute_dtype=dtype, **kw)
    out64, lse64 = attention_forward(*ins64, compute_dtype=torch.float64, **kw)
    # poison: the outputs are allocated from the caching allocator's freed NaN blocks
    poison = [torch.full((4 * b * max(sq, sk) * h * max(d, dv),), float("nan"), device=dev) for _ in range(4)]
    del poison
    flags = dict(
        **DQ_FLAGS[dq_mode], tile_m=tile_m, num_stages=num_stages, early_stats=early_stats,
        rotate_query_blocks=rotate_query_blocks,
    )  # fmt: skip
    got = bwd.attention_bwd(dout, q, k, v, out_lp, lse_lp, qf, kf, **kw, **flags)
    torch.cuda.synchronize()
    ref64 = attention_backward(dout.double(), *ins64[:3], out64, lse64, *ins64[3:], compute_dtype=torch.float64, **kw)
    ref_lp = attention_backward(dout, q, k, v, out_lp, lse_lp, qf, kf, compute_dtype=dtype, **kw)
    names = ("dq", "dk", "dv", "dq_factor", "dk_factor")
    for name, g, x, r64, rlp in zip(names, got, inputs, ref64, ref_lp, strict=True):
        if x is None:
            assert g is None, name
            continue
        assert g.dtype == x.dtype and g.shape == x.shape, name
        assert torch.isfinite(g).all(), f"{name}: not finite"
        assert_2x(name, g, r64, rlp)


def without_bias_slice(make):
    """The forward config ``make()`` returns under gpu_check's ATTNKIT_SM90_FWD_BIAS_SLICE=0 (set when the smoke group
    of the bias slice fails, and in the other forward smoke groups)."""
    from attnkit.cute import attention_fwd as fwd

    with fwd.bias_slices_off():
        return make()


def without_bwd_bias_slice(make):
    """The backward config ``make()`` returns under gpu_check's ATTNKIT_SM90_BWD_BIAS_SLICE=0 (set when the smoke
    group of the backward's bias slice fails, and in the other backward smoke groups)."""
    from attnkit.cute import attention_bwd as bwd

    with bwd.bias_slices_off():
        return make()


def with_twin(make) -> list:
    """``make()``'s forward config and, where it takes the bias slice, the one it takes without."""
    cfg = make()
    return [cfg, without_bias_slice(make)] if cfg.bias_slice else [cfg]


def configs(arch: str = "sm_90a", sm_count: int = 132) -> list:
    """Every CuTe config the GPU tests above run (an H100 SXM's 132 SMs for the head-split choice)."""
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    found = []
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_CASES:
        for dtype in FWD_DTYPES:

            def make(dtype=dtype, sq=sq, h=h, hkv=hkv, d=d, wl=wl, wr=wr, rank=rank):
                return fwd.config_for(dtype, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0)

            cfg = make()
            # and its 128-row twin: FWD_TWO_WG_CASES, and every case under gpu_check's ATTNKIT_SM90_FWD_192_ROWS=0
            found += [cfg, two_warpgroups(cfg)] if cfg.num_mma_warpgroups == 3 else with_twin(make)
            if dtype == torch.bfloat16:  # the split mainloop's GPU test runs the bf16 cases
                found += [split_loops(c) for c in with_twin(make)]
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_BIAS_SLICE_CASES:
        found += with_twin(lambda sq=sq, h=h, hkv=hkv, d=d, wl=wl, wr=wr, rank=rank: fwd.config_for(
            torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0
        ))  # fmt: skip
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_DYNAMIC_CASES:
        found.append(dynamic_schedule(fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0)))
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_WIDE_KEY_TILE_CASES:
        found.append(wide_key_tiles(fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0)))
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_SCHEDULE_CASES:
        found.append(fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0))
    for _b, sq, _sk, h, hkv, d, dv, wl, wr, rank in FWD_SPLIT_DEFAULT_CASES:
        found.append(fwd.config_for(torch.bfloat16, sq, h, hkv, d, dv, wl, wr, abs(rank), rank < 0))
    _b, sq, _sk, h, hkv = DV_SHAPE
    for d, dv, wr in FWD_DV_CASES:
        found.append(fwd.config_for(torch.bfloat16, sq, h, hkv, d, dv, -1, wr))
    for b, _sq, sk, h, hkv, d, wl, wr, rank in BWD_CASES:
        for dtype, mode in BWD_MODES:
            flags = DQ_FLAGS[mode]
            # and, where the 16-bit factors' gradients take the tensor cores, the float32 twin that gpu_check's
            # ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0 runs
            for tc in (True, False):
                args = (dtype, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0, sm_count)
                found.append(bwd.config_for(*args, **flags, tc_factor_grads=tc)[0])
    for b, _sq, sk, h, hkv, d, wl, wr, rank, mode in BWD_BIAS_SLICE_CASES:
        args = (torch.bfloat16, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0, sm_count)
        found.append(bwd.config_for(*args, **DQ_FLAGS[mode])[0])
    # the launcher's default dQ mode, and under gpu_check's ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0 (and in the smoke groups
    # that pin it) the atomics
    default_modes = ("default", "atomics")
    for b, _sq, sk, h, hkv, d, dv, wl, wr, rank, dtype, mode in WIDE_BWD_CASES:
        for m in (mode, "atomics") if mode in ("default", "tma_reduce") else (mode,):
            flags = DQ_FLAGS[m]
            cfg = bwd.config_for(dtype, b, sk, h, hkv, d, dv, wl, wr, abs(rank), rank < 0, sm_count, **flags)[0]
            found.append(cfg)
    for b, _sq, sk, h, hkv, d, wl, wr in REDUCE_WARP_CASES:
        args = (torch.bfloat16, b, sk, h, hkv, d, d, wl, wr)
        found.append(bwd.config_for(*args, sm_count=sm_count, **DQ_FLAGS["reduce_warp"])[0])
    for b, _sq, sk, h, hkv, dv, wl, wr in BWD_80_CASES:
        for m in BWD_80_MODES:
            args = (torch.bfloat16, b, sk, h, hkv, 128, dv, wl, wr)
            found.append(bwd.config_for(*args, sm_count=sm_count, **DQ_FLAGS[m], tile_m=80)[0])
    for b, _sq, sk, h, hkv, d, wl, wr, rank, dtype, m in EARLY_STATS_CASES:
        args = (dtype, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0)
        found.append(bwd.config_for(*args, sm_count=sm_count, **DQ_FLAGS[m], early_stats=True)[0])
    for b, _sq, sk, h, hkv, wl, wr, m in BWD_3_STAGES_CASES:
        args = (torch.bfloat16, b, sk, h, hkv, 128, 128, wl, wr)
        found.append(bwd.config_for(*args, sm_count=sm_count, **DQ_FLAGS[m], num_stages=3)[0])
    for b, _sq, sk, h, hkv, d, wl, wr, rank, m in ROTATED_CASES:
        args = (torch.bfloat16, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0)
        found.append(bwd.config_for(*args, sm_count=sm_count, **DQ_FLAGS[m], rotate_query_blocks=True)[0])
    b, _sq, sk, h, hkv = DV_SHAPE
    for d, dv, wr in DV_CASES:
        for m in default_modes:
            cfg = bwd.config_for(torch.bfloat16, b, sk, h, hkv, d, dv, -1, wr, sm_count=sm_count, **DQ_FLAGS[m])[0]
            found.append(cfg)
    # where one takes the backward's bias slice, its twin without, which every backward smoke group but the slice's
    # own runs (and, once that group fails, ATTNKIT_SM90_BWD_BIAS_SLICE=0 the tests)
    found += [bwd.without_bias_slice(c) for c in found if isinstance(c, bwd.BwdConfig) and c.bias_slice]
    # and each backward config's twin without the bias stmatrix, which every backward smoke group but its own runs
    # (and, once that group fails, ATTNKIT_SM90_BWD_BIAS_STMATRIX=0 the tests)
    found += [bwd.without_bias_stmatrix(c) for c in found if isinstance(c, bwd.BwdConfig)]
    unique = []
    for cfg in found:
        if cfg.arch == arch and cfg not in unique:
            unique.append(cfg)
    return unique
