"""Launchers for the Triton Lightning Attention-2 kernels (kernels/triton/lightning.py).

The forward and the backward products (dq forward in time, dk and dv reversed) are one recurrence on permuted
operands. Each runs with one of two strategies:

- fused: one program per (b, h, value tile) walks the whole sequence with the state on chip;
- split: the sequence is cut into segments; one program per (b, h, value tile, segment) computes its segment's
  local state, a prefix pass turns those into the state entering each segment, and an output pass runs the
  segments in parallel from there. It reads K and V twice and writes the segment states, so it pays only when
  the fused grid leaves SMs idle.

Rule (`_blocks_per_segment`): fused when B·H·(value tiles) >= the SM count, or when the sequence has fewer
than 2·min_blocks_per_segment blocks; else split into min(⌈2·SMs / (B·H·value tiles)⌉, blocks /
min_blocks_per_segment) segments, about two waves of programs. The thresholds are a first guess, to be measured
on an H100 (`STRATEGY_OVERRIDE` forces either strategy for that and for tests).

dk and dv come from one fused reverse pass (`lightning_bwd_dkdv_kernel`, the whole (D, E) state on chip) when
D, E <= 128, else (or with FUSED_DKDV_OVERRIDE = False) from two chunk-kernel passes; with the split strategy the
fused pass is seeded per segment by the chunk kernel's state-only pass and the prefix.

Every launch is decided by shapes alone (no host sync), so the launchers are CUDA-graph capturable.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton

from attnkit.kernels.triton.lightning import (
    lightning_bwd_dkdv_kernel,
    lightning_chunk_kernel,
    lightning_prefix_kernel,
    lightning_step_kernel,
)

from . import alloc

# "fused" or "split" forces a strategy (tests, measurements); None applies the rule.
STRATEGY_OVERRIDE: str | None = None
# False forces dk and dv through two chunk-kernel passes (measurements); None applies `_dkdv_config`.
FUSED_DKDV_OVERRIDE: bool | None = None


@dataclass(frozen=True)
class ChunkConfig:
    chunk: int  # tokens per block; every pass of one launch uses the same
    block_v: int  # value columns of the state per program
    num_warps: int
    num_stages: int
    min_blocks_per_segment: int  # the split strategy's shortest segment


def _config(dk: int, dv: int, device: torch.device) -> ChunkConfig:
    if device.type != "cuda":
        # The interpreter: small tiles keep CPU tests quick and still cover several blocks per sequence.
        return ChunkConfig(chunk=16, block_v=min(dv, 32), num_warps=1, num_stages=1, min_blocks_per_segment=1)
    # Chosen by ptxas -v for sm_90a without a GPU (Triton 3.9, bf16, forward and reverse alike): the smallest
    # tiles here spill nothing; DK=128 at 64 x 64 spills 12 bytes at 8 warps (652 at 4); DK=256 needs 32-token
    # blocks (8 bytes; 256 at 64 tokens). Speed is unmeasured.
    if dk == 256:
        return ChunkConfig(chunk=32, block_v=min(dv, 32), num_warps=8, num_stages=2, min_blocks_per_segment=8)
    warps = 4 if dk == 32 and dv <= 32 else 8
    return ChunkConfig(chunk=64, block_v=min(dv, 64), num_warps=warps, num_stages=2, min_blocks_per_segment=4)


def _dkdv_config(d: int, e: int, device: torch.device) -> ChunkConfig | None:
    """The fused dk/dv pass holds the whole (D, E) float32 state; None: dk and dv as two chunk-kernel passes."""
    if device.type != "cuda":
        # The interpreter takes the two-pass path from E = 128, so that CPU tests cover both.
        if e > 64:
            return None
        return ChunkConfig(chunk=16, block_v=e, num_warps=1, num_stages=1, min_blocks_per_segment=1)
    # ptxas -v, sm_90a, bf16, 8 warps: D, E <= 64 spill <= 16 bytes at 64-token blocks; a 128 side spills
    # 352-1384 bytes at 64 tokens, 4-136 at 32 (none for 128 x 128 at 16). Whether this beats the two passes
    # is unmeasured.
    if d <= 64 and e <= 64:
        return ChunkConfig(chunk=64, block_v=e, num_warps=8, num_stages=1, min_blocks_per_segment=4)
    if d <= 128 and e <= 128:
        return ChunkConfig(chunk=32, block_v=e, num_warps=8, num_stages=1, min_blocks_per_segment=8)
    return None


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a small machine, so that the rule's split also runs in CPU tests
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).multi_processor_count


def _blocks_per_segment(programs: int, n_blocks: int, cfg: ChunkConfig, device: torch.device) -> int:
    """n_blocks (one segment: fused) or fewer (split), for a grid of `programs` per segment."""
    strategy = STRATEGY_OVERRIDE
    sms = _sm_count(device)
    if strategy is None:
        few_programs = programs < sms
        long_enough = n_blocks >= 2 * cfg.min_blocks_per_segment
        strategy = "split" if few_programs and long_enough else "fused"
    if strategy == "fused":
        return n_blocks
    if strategy != "split":
        raise ValueError(f"unknown strategy {strategy!r}")
    n_segments = max(1, min(triton.cdiv(2 * sms, programs), n_blocks // cfg.min_blocks_per_segment))
    if STRATEGY_OVERRIDE == "split":  # forced: at least two segments wherever there are two blocks
        n_segments = max(n_segments, min(n_blocks, 2))
    return triton.cdiv(n_blocks, n_segments)


def _state_strides(x: torch.Tensor | None) -> tuple[int, ...]:
    """(b, h, segment, row, col) strides; a 4-d (B, H, ·, ·) state has segment stride 0."""
    if x is None:
        return (0, 0, 0, 0, 0)
    if x.dim() == 5:
        return tuple(x.stride())
    b, h, r, c = x.stride()
    return (b, h, 0, r, c)


def _bth_strides(x: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if x is None else (x.stride(0), x.stride(1), x.stride(2))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _chunk_pass(q, k, v, slopes, out, seed, state_out, cfg, n_segments, blocks_per_segment, **kw) -> None:
    """One launch of the chunk kernel over (b, h, value tile) x segments; None pointers are never read."""
    batch, t, heads, dk = q.shape
    dv = v.shape[3]
    lightning_chunk_kernel[(batch * heads * (dv // cfg.block_v), n_segments)](
        q,
        k,
        v,
        q if out is None else out,
        slopes,
        q if seed is None else seed,
        q if state_out is None else state_out,
        *_bth_strides(q),
        *_bth_strides(k),
        *_bth_strides(v),
        *_bth_strides(out),
        *_state_strides(seed),
        *_state_strides(state_out),
        T=t,
        H=heads,
        n_blocks=triton.cdiv(t, cfg.chunk),
        blocks_per_segment=blocks_per_segment,
        DK=dk,
        DV=dv,
        CHUNK=cfg.chunk,
        BLOCK_V=cfg.block_v,
        WRITE_O=out is not None,
        HAS_SEED=seed is not None,
        STORE_STATE=state_out is not None,
        DOT_PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **kw,
    )


def _entry_carries(q, k, v, slopes, seed, final, cfg, blocks_per_segment, **kw) -> torch.Tensor:
    """The split strategy's first two passes: each segment's local carry from zero, then a prefix over the
    segments. Returns the carry entering each segment (B, H, segments, DK, DV) and writes `final`."""
    batch, t, heads, dk = q.shape
    dv = v.shape[3]
    n_segments = triton.cdiv(triton.cdiv(t, cfg.chunk), blocks_per_segment)
    buf = alloc.empty(batch, heads, n_segments, dk, dv, dtype=torch.float32, device=q.device)
    _chunk_pass(q, k, v, slopes, None, None, buf, cfg, n_segments, blocks_per_segment, out_scale=1.0, **kw)
    seed_strides = _state_strides(seed)
    final_strides = _state_strides(final)
    lightning_prefix_kernel[(batch * heads * (dv // cfg.block_v),)](
        buf,
        buf if seed is None else seed,
        buf if final is None else final,
        slopes,
        *buf.stride(),
        *seed_strides[:2],
        *seed_strides[3:],
        *final_strides[:2],
        *final_strides[3:],
        T=t,
        H=heads,
        n_segments=n_segments,
        segment_len=blocks_per_segment * cfg.chunk,
        DK=dk,
        DV=dv,
        BLOCK_V=cfg.block_v,
        HAS_SEED=seed is not None,
        STORE_FINAL=final is not None,
        num_warps=cfg.num_warps,
    )
    return buf


def _recurrence(
    q: torch.Tensor,  # (B, T, H, DK)
    k: torch.Tensor,  # (B, T, H, DK)
    v: torch.Tensor,  # (B, T, H, DV)
    slopes: torch.Tensor,  # (H,)
    out: torch.Tensor,  # (B, T, H, DV): o_t = out_scale·q_t·state_t
    seed: torch.Tensor | None,  # (B, H, DK, DV) float32, any strides (a transposed view is fine)
    final: torch.Tensor | None,  # (B, H, DK, DV) float32: the carry after the last token
    *,
    reverse: bool,
    shift: int,
    out_scale: float,
    state_scale: float,
) -> None:
    batch, t, heads, dk = q.shape
    cfg = _config(dk, v.shape[3], q.device)
    n_blocks = triton.cdiv(t, cfg.chunk)
    programs = batch * heads * (v.shape[3] // cfg.block_v)
    per_segment = _blocks_per_segment(programs, n_blocks, cfg, q.device)
    n_segments = triton.cdiv(n_blocks, per_segment)
    kw = dict(REVERSE=reverse, SHIFT=shift, state_scale=state_scale)
    if n_segments == 1:
        _chunk_pass(q, k, v, slopes, out, seed, final, cfg, 1, n_blocks, out_scale=out_scale, **kw)
        return
    buf = _entry_carries(q, k, v, slopes, seed, final, cfg, per_segment, **kw)
    _chunk_pass(q, k, v, slopes, out, buf, None, cfg, n_segments, per_segment, out_scale=out_scale, **kw)


def _dkdv(q, k, v, do, slopes, dk, dv, dfin, dinit, *, scale, cfg: ChunkConfig) -> None:
    """dk and dv in one reverse pass (the reverse-time state seeded with dS_final, last carry λ·G_0)."""
    batch, t, heads, d = q.shape
    e = v.shape[3]
    n_blocks = triton.cdiv(t, cfg.chunk)
    per_segment = _blocks_per_segment(batch * heads, n_blocks, cfg, q.device)
    n_segments = triton.cdiv(n_blocks, per_segment)
    seed, state_out = dfin, dinit
    if n_segments > 1:
        state_cfg = dataclasses.replace(_config(d, e, q.device), chunk=cfg.chunk)  # segments count dk/dv blocks
        kw = dict(REVERSE=True, SHIFT=1, state_scale=scale)
        seed = _entry_carries(k, q, do, slopes, dfin, dinit, state_cfg, per_segment, **kw)
        state_out = None
    lightning_bwd_dkdv_kernel[(batch * heads, n_segments)](
        q,
        k,
        v,
        do,
        dk,
        dv,
        slopes,
        q if seed is None else seed,
        q if state_out is None else state_out,
        *_bth_strides(q),
        *_bth_strides(k),
        *_bth_strides(v),
        *_bth_strides(do),
        *_bth_strides(dk),
        *_bth_strides(dv),
        *_state_strides(seed),
        *_state_strides(state_out),
        T=t,
        H=heads,
        n_blocks=n_blocks,
        blocks_per_segment=per_segment,
        scale=scale,
        D=d,
        E=e,
        CHUNK=cfg.chunk,
        HAS_SEED=seed is not None,
        STORE_STATE=state_out is not None,
        DOT_PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _as_state(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.to(torch.float32)


def lightning_fwd(q, k, v, slopes, *, scale, initial_state):
    """o (B, S, H, E) in q.dtype and the final state (B, H, D, E) float32."""
    batch, t, heads, d = q.shape
    e = v.shape[3]
    o = alloc.empty(batch, t, heads, e, dtype=q.dtype, device=q.device)
    final = alloc.empty(batch, heads, d, e, dtype=torch.float32, device=q.device)
    _recurrence(
        q,
        k,
        v,
        slopes,
        o,
        _as_state(initial_state),
        final,
        reverse=False,
        shift=0,
        out_scale=scale,
        state_scale=1.0,
    )
    return o, final


def lightning_bwd(do, dfinal_state, q, k, v, slopes, *, scale, initial_state):
    """(dq, dk, dv, d_initial_state): dq from the forward-time state, dk and dv from the reverse-time one."""
    batch, t, heads, d = q.shape
    e = v.shape[3]
    init = _as_state(initial_state)
    dfin = _as_state(dfinal_state)
    dq = alloc.empty(batch, t, heads, d, dtype=q.dtype, device=q.device)
    dk = alloc.empty(batch, t, heads, d, dtype=k.dtype, device=q.device)
    dv = alloc.empty(batch, t, heads, e, dtype=v.dtype, device=q.device)
    dinit = None if init is None else alloc.empty(batch, heads, d, e, dtype=torch.float32, device=q.device)
    # dq_t = scale·dO_t·S_tᵀ: the forward recurrence on (dO, v, k) carries S_tᵀ (E, D).
    _recurrence(
        do,
        v,
        k,
        slopes,
        dq,
        None if init is None else init.transpose(2, 3),
        None,
        reverse=False,
        shift=0,
        out_scale=scale,
        state_scale=1.0,
    )
    # G_t = λ·G_{t+1} + scale·q_tᵀ dO_t reversed in time, carried as λ·G (SHIFT=1) from dS_final; its last
    # carry is λ·G_0 = d_initial_state. dk_t = G_t·v_t and dv_t = G_tᵀ·k_t: one fused pass when G fits on
    # chip, else the chunk kernel on (v, dO, q) for dk and on (k, q, dO) for dv.
    cfg = None if FUSED_DKDV_OVERRIDE is False else _dkdv_config(d, e, q.device)
    if cfg is not None:
        _dkdv(q, k, v, do, slopes, dk, dv, dfin, dinit, scale=scale, cfg=cfg)
        return dq, dk, dv, dinit
    reverse = dict(reverse=True, shift=1, out_scale=1.0, state_scale=scale)
    _recurrence(v, do, q, slopes, dk, None if dfin is None else dfin.transpose(2, 3), None, **reverse)
    _recurrence(k, q, do, slopes, dv, dfin, dinit, **reverse)
    return dq, dk, dv, dinit


def lightning_step(q, k, v, slopes, state, *, scale):
    """One token: o (B, 1, H, E) in q.dtype and the new state (B, H, D, E) float32; `state` is not written."""
    batch, _, heads, d = q.shape
    e = v.shape[3]
    state = state.to(torch.float32)
    o = alloc.empty(batch, 1, heads, e, dtype=q.dtype, device=q.device)
    new_state = alloc.empty(batch, heads, d, e, dtype=torch.float32, device=q.device)
    on_gpu = q.device.type == "cuda"
    # Memory-bound: a 16 KB (D, block_v) float32 tile per program, many programs to cover the state.
    block_v = min(e, 4096 // d if on_gpu else 32)
    lightning_step_kernel[(batch * heads * (e // block_v),)](
        q,
        k,
        v,
        o,
        slopes,
        state,
        new_state,
        q.stride(0),
        q.stride(2),
        k.stride(0),
        k.stride(2),
        v.stride(0),
        v.stride(2),
        o.stride(0),
        o.stride(2),
        *state.stride(),
        *new_state.stride(),
        H=heads,
        scale=scale,
        DK=d,
        DV=e,
        BLOCK_V=block_v,
        num_warps=4 if on_gpu else 1,
    )
    return o, new_state
