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
]
FWD_DTYPES = [torch.bfloat16, torch.float16]

BWD_CASES = [
    (2, 1000, 1000, 4, 4, 128, -1, -1, 0),
    (2, 77, 1000, 4, 2, 64, -1, 0, 0),
    (1, 4097, 4097, 2, 1, 128, -1, 0, 0),
    (1, 1000, 77, 2, 2, 64, -1, 0, 0),
    (2, 300, 300, 4, 1, 96, -1, -1, 0),
    (1, 1, 1000, 2, 2, 128, 100, 0, 0),
    (1, 333, 1000, 4, 2, 64, 64, 16, 3),
    (2, 500, 700, 4, 4, 128, -1, 0, 8),
    (1, 256, 256, 2, 2, 64, -1, -1, 64),
    # a small grid: the 16 query heads of the one K/V head split over CTAs (not in deterministic mode)
    (1, 512, 512, 16, 1, 128, -1, 0, 0),
    # factors in the input dtype: the bias slices of S^T on the tensor cores
    (2, 500, 700, 4, 4, 128, -1, 0, -8),
    (1, 333, 1000, 4, 2, 64, 64, 16, -24),
]
# (dtype, dQ mode): the launcher's flags for each mode
BWD_MODES = [
    (torch.bfloat16, "atomics"),
    (torch.float16, "atomics"),
    (torch.bfloat16, "tma_reduce"),
    (torch.bfloat16, "deterministic"),
]
DQ_FLAGS = {
    "atomics": dict(dq_tma_reduce=False, deterministic=False),
    "tma_reduce": dict(dq_tma_reduce=True, deterministic=False),
    "deterministic": dict(dq_tma_reduce=False, deterministic=True),
}

# v narrower or wider than q / k: (d, dv, window_right), at b, sq, sk, h, hkv = DV_SHAPE
DV_CASES = [(128, 64, 0), (64, 128, -1), (96, 128, 0)]
DV_SHAPE = (2, 333, 500, 4, 2)


def configs(arch: str = "sm_90a", sm_count: int = 132) -> list:
    """Every CuTe config the GPU tests above run (an H100 SXM's 132 SMs for the head-split choice)."""
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    found = []
    for _b, sq, _sk, h, hkv, d, wl, wr, rank in FWD_CASES:
        for dtype in FWD_DTYPES:
            found.append(fwd.config_for(dtype, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0))
    for b, _sq, sk, h, hkv, d, wl, wr, rank in BWD_CASES:
        for dtype, mode in BWD_MODES:
            flags = DQ_FLAGS[mode]
            found.append(bwd.config_for(dtype, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0, sm_count, **flags)[0])
    b, _sq, sk, h, hkv = DV_SHAPE
    for d, dv, wr in DV_CASES:
        found.append(bwd.config_for(torch.bfloat16, b, sk, h, hkv, d, dv, -1, wr, sm_count=sm_count)[0])
    unique = []
    for cfg in found:
        if cfg.arch == arch and cfg not in unique:
            unique.append(cfg)
    return unique
