"""Launchers for the Triton attention kernels (kernels/triton/attention.py): tile choice, strides and grids.

Inputs are (B, S, H, D) with a contiguous last dim and any other strides; every buffer a kernel fills comes from
`alloc.empty`. Launches never read device values on the host, so they can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton

from attnkit.kernels.triton import attention as kernels

from ..broadcast import sum_to
from . import alloc


@dataclass(frozen=True)
class Tiles:
    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AttentionTiles:
    fwd: Tiles  # one program per query block, streams key tiles
    dkdv: Tiles  # one program per key block, streams query tiles
    dq: Tiles  # one program per query block, streams key tiles


# Keyed on the padded head dim max(next_pow2(D), next_pow2(Dv)). Not timed on a GPU yet. The backward streams
# narrow tiles past a wide resident block (as in the Triton fused-attention tutorial). Chosen from AOT compiles for
# sm_90a with the specialization a real launch gets (16-byte aligned pointers, strides and lengths divisible by 16,
# group == 1 a constexpr; without those hints no load is pipelined and the spill counts mean nothing), ptxas -v and
# nvdisasm: every choice issues wgmma and pipelines its streamed loads with cp.async.
# - D = 64 and 128, no bias, a rank-8 bf16 bias or fp32 ALiBi (rank 2, causal): nothing spills inside a tile loop.
#   ptxas reports 0 bytes except dK/dV at D = 128 with ALiBi (20 B, stored before the loops, reloaded after) and
#   GQA dK/dV (group > 1: 200-500 B at D = 128 in the per-head code around the tile loops; a rank-8 bias puts a
#   few accesses in the loop).
# - D = 256: fwd and dQ spill nothing in the loops (dQ needs 252-255 registers with 4 warps, 227 with 8). dK/dV
#   spills at any tile: 16 query rows per step keep it out of the loops without a bias and cut the in-loop
#   accesses to about a third with one (vs 32 rows).
# - Larger tiles spill in the loop or overflow shared memory: fwd (128, 128) at D = 128 (12-120 B; 240 KB of
#   shared memory with a bias at 3 stages), dK/dV (64, 128) at D = 128 (108-852 B), dQ (128, 64) at D = 128 with
#   ALiBi (16 B).
_GPU_TILES = {
    64: AttentionTiles(fwd=Tiles(128, 64, 4, 3), dkdv=Tiles(32, 128, 8, 3), dq=Tiles(128, 32, 8, 3)),
    128: AttentionTiles(fwd=Tiles(128, 64, 8, 3), dkdv=Tiles(32, 128, 8, 3), dq=Tiles(128, 32, 8, 3)),
    256: AttentionTiles(fwd=Tiles(128, 32, 8, 2), dkdv=Tiles(16, 64, 8, 2), dq=Tiles(64, 32, 8, 2)),
}
# Per (padded head dim, bias mode) forward overrides: the fp32 outer-product bias (ALiBi) at D = 64 needs 255
# registers with 4 warps and spills inside the key loop (124 B); 8 warps on the same tile need 184 and spill none.
_GPU_FWD_TILES_BY_BIAS = {
    (64, kernels.BIAS_OUTER.value): Tiles(128, 64, 8, 3),
}
# float32 factors of padded rank >= 32 (BIAS_IEEE): the float32 dots run on FMAs with whole factor rows per thread,
# and the table's tiles spill 2-5 KB inside the loops at D = 128 and rank 64 (a few bytes outside them at rank
# 8-16). These small tiles spill nothing at D = 64 and 128 (rank 32 and 64; 130-206 registers); at D = 256 the
# forward spills nothing either (2 KB in the loop on the table's tile), and dK/dV and dQ are the table's tiles.
_GPU_TILES_WIDE_FP32_BIAS = AttentionTiles(fwd=Tiles(64, 32, 8, 2), dkdv=Tiles(16, 64, 8, 2), dq=Tiles(64, 32, 8, 2))
# The interpreter's cost is per tile step: small tiles keep the tiny CPU test shapes quick, and unequal query and
# key tiles exercise the boundary-tile logic (warps and stages are ignored there).
_CPU_TILES = AttentionTiles(fwd=Tiles(32, 16, 1, 1), dkdv=Tiles(16, 32, 1, 1), dq=Tiles(32, 16, 1, 1))
_PREPROCESS_BLOCK_M = 64


def attention_tiles(
    device: torch.device,
    head_dim: int,
    value_dim: int,
    bias_mode: int = kernels.BIAS_NONE.value,
    block_r: int = 1,
) -> AttentionTiles:
    """Tiles for a launch; bias_mode and block_r are the kernels' BIAS and BLOCK_R (`_bias(...)`)."""
    if device.type != "cuda":
        return _CPU_TILES
    if bias_mode == kernels.BIAS_IEEE.value and block_r >= 32:
        return _GPU_TILES_WIDE_FP32_BIAS
    padded = max(64, triton.next_power_of_2(head_dim), triton.next_power_of_2(value_dim))
    tiles = _GPU_TILES[padded]
    fwd = _GPU_FWD_TILES_BY_BIAS.get((padded, bias_mode))
    if fwd is not None:
        tiles = replace(tiles, fwd=fwd)
    return tiles


@dataclass(frozen=True)
class _Bias:
    mode: int  # kernels.BIAS_*
    rank: int
    block_r: int
    q_strides: tuple[int, int, int]  # (batch, seq, head) of q_factor, 0 where it broadcasts
    k_strides: tuple[int, int, int]


def _broadcast_strides(f: torch.Tensor, batch: int, heads: int) -> tuple[int, int, int]:
    s = f.expand(batch, f.shape[1], heads, f.shape[3]).stride()
    return s[0], s[1], s[2]


def _bias(q_factor, k_factor, batch: int, heads: int) -> _Bias:
    if q_factor is None:
        return _Bias(kernels.BIAS_NONE.value, 1, 1, (0, 0, 0), (0, 0, 0))
    rank = q_factor.shape[3]
    if q_factor.dtype == torch.float32 and rank <= 4:
        # R outer products in float32 beat a float32 dot that pads R to 16.
        mode, block_r = kernels.BIAS_OUTER.value, triton.next_power_of_2(rank)
    else:
        mode = (kernels.BIAS_IEEE if q_factor.dtype == torch.float32 else kernels.BIAS_HALF).value
        block_r = max(16, triton.next_power_of_2(rank))
    return _Bias(
        mode,
        rank,
        block_r,
        _broadcast_strides(q_factor, batch, heads),
        _broadcast_strides(k_factor, batch, heads),
    )


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, seq, head) strides of a (B, S, H, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _check_int32(**tensors) -> None:
    """The kernels index within one batch entry in int32 (int64 tile offsets cost the backward registers)."""
    for name, x in tensors.items():
        span = sum((n - 1) * st for n, st in zip(x.shape[1:], x.stride()[1:], strict=True))
        if span >= 2**31:
            raise ValueError(
                f"{name} {tuple(x.shape)}: one batch entry spans {span} elements, past the int32 offsets of "
                "backend='triton'; call it on fewer heads at a time"
            )


def _common(q, v, q_factor, k_factor, window_left, window_right):
    b, _, h, d = q.shape
    dv = v.shape[3]
    bias = _bias(q_factor, k_factor, b, h)
    constexprs = dict(
        HEAD_DIM=d,
        HEAD_DIM_V=dv,
        RANK=bias.rank,
        BLOCK_D=triton.next_power_of_2(d),
        BLOCK_DV=triton.next_power_of_2(dv),
        BLOCK_R=bias.block_r,
        BIAS=bias.mode,
        HAS_LEFT=window_left >= 0,
        HAS_RIGHT=window_right >= 0,
    )
    qf = q if q_factor is None else q_factor
    kf = q if k_factor is None else k_factor
    return bias, constexprs, qf, kf


def attention_fwd(q, k, v, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    """q (B, Sq, H, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv) -> out (B, Sq, H, Dv), lse (B, H, Sq) float32."""
    b, sq, h, d = q.shape
    sk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    out = alloc.empty(b, sq, h, dv, dtype=q.dtype, device=q.device)
    lse = alloc.empty(b, h, sq, dtype=torch.float32, device=q.device)
    if b * h == 0:
        return out, lse
    _check_int32(q=q, k=k, v=v, out=out)
    bias, constexprs, qf, kf = _common(q, v, q_factor, k_factor, window_left, window_right)
    tiles = attention_tiles(q.device, d, dv, bias.mode, bias.block_r).fwd
    grid = (triton.cdiv(sq, tiles.block_m), h, b)
    kernels.attention_fwd[grid](
        q, k, v, qf, kf, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *bias.q_strides, *bias.k_strides, *_strides(out),
        sq, sk, h, h // hkv, softmax_scale, window_left, window_right,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        LOGITS_RAW=q_factor is None and softmax_scale > 0, **constexprs,
    )  # fmt: skip
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    """Returns (dq, dk, dv, dq_factor, dk_factor); the factor gradients are None without a bias."""
    b, sq, h, d = q.shape
    sk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    dq = alloc.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    dk = alloc.empty(b, sk, hkv, d, dtype=k.dtype, device=k.device)
    dv_ = alloc.empty(b, sk, hkv, dv, dtype=v.dtype, device=v.device)
    has_bias = q_factor is not None
    if has_bias:
        r = q_factor.shape[3]
        dqf = alloc.empty(b, sq, h, r, dtype=torch.float32, device=q.device)
        dkf = alloc.empty(b, sk, h, r, dtype=torch.float32, device=q.device)
    else:
        dqf = dkf = q
    if b * h > 0:
        _check_int32(q=q, k=k, v=v, dout=dout, out=out, dq=dq, dk=dk, dv=dv_)
        lse = lse.contiguous()
        bias, constexprs, qf, kf = _common(q, v, q_factor, k_factor, window_left, window_right)
        tiles = attention_tiles(q.device, d, dv, bias.mode, bias.block_r)
        scales = (softmax_scale, window_left, window_right)

        delta = alloc.empty(b, h, sq, dtype=torch.float32, device=q.device)
        kernels.attention_bwd_preprocess[(triton.cdiv(sq, _PREPROCESS_BLOCK_M), h, b)](
            out, dout, delta, *_strides(out), *_strides(dout), sq, h,
            HEAD_DIM_V=dv, BLOCK_M=_PREPROCESS_BLOCK_M, BLOCK_DV=constexprs["BLOCK_DV"],
        )  # fmt: skip
        t = tiles.dkdv
        kernels.attention_bwd_dkdv[(triton.cdiv(sk, t.block_n), hkv, b)](
            q, k, v, qf, kf, dout, lse, delta, dk, dv_, dkf,
            *_strides(q), *_strides(k), *_strides(v), *bias.q_strides, *bias.k_strides, *_strides(dout),
            *_strides(dk), *_strides(dv_), *(_strides(dkf) if has_bias else (0, 0, 0)),
            sq, sk, h, h // hkv, *scales,
            BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.num_warps, num_stages=t.num_stages, **constexprs,
        )  # fmt: skip
        t = tiles.dq
        kernels.attention_bwd_dq[(triton.cdiv(sq, t.block_m), h, b)](
            q, k, v, qf, kf, dout, lse, delta, dq, dqf,
            *_strides(q), *_strides(k), *_strides(v), *bias.q_strides, *bias.k_strides, *_strides(dout),
            *_strides(dq), *(_strides(dqf) if has_bias else (0, 0, 0)),
            sq, sk, h, h // hkv, *scales,
            BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.num_warps, num_stages=t.num_stages, **constexprs,
        )  # fmt: skip
    if not has_bias:
        return dq, dk, dv_, None, None
    return dq, dk, dv_, sum_to(dqf, q_factor.shape).to(q_factor.dtype), sum_to(dkf, k_factor.shape).to(k_factor.dtype)
