"""CuTe-DSL sm90 attention backward for wide heads (d or dv > 128): 64-row key blocks that both consumer
warpgroups share, S^T / dP^T split along the queries, P^T and dS^T through smem, dK / dV / dQ split along d.

CPU: the configs compile without spills at every bias rank, and the warpgroups' shares of every wgmma tile
cover it exactly once. GPU (gpu/sm90 markers): numerics against float64; gpu_check.sh leaves this file out
alone when its smoke group (cute-bwd-wide) fails, so the other backward tests still run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cutlass")

import cute_gpu_cases  # noqa: E402
import cutlass  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from attnkit import precompile  # noqa: E402
from attnkit.cute import attention_bwd as bwd  # noqa: E402
from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdSm90, key_tile  # noqa: E402


def test_key_tile_follows_the_widest_head_dim():
    assert [key_tile(d, d) for d in (64, 96, 128, 192, 256)] == [128, 128, 128, 64, 64]
    assert key_tile(128, 256) == key_tile(256, 64) == 64
    with pytest.raises(ValueError, match="tile_n = 64"):
        AttentionBwdSm90(cutlass.BFloat16, 256, 256, 2, False, False, tile_n=128)
    with pytest.raises(ValueError, match="ds_stages"):
        AttentionBwdSm90(cutlass.BFloat16, 256, 256, 2, False, False, ds_stages=3)


def test_wide_configs_fit_and_keep_two_query_stages_without_a_bias():
    for d, dv in ((192, 192), (256, 256), (128, 256), (256, 64)):
        for causal in (False, True):
            cfg = bwd.choose_config(torch.bfloat16, d, dv, False, causal)
            assert cfg.tile_n == 64
            assert (cfg.num_stages, cfg.ds_stages) == (2, 2), cfg
            assert cfg.make_kernel().smem_bytes() <= bwd.SMEM_CAPACITY
    # the default dQ mode is the TMA reduce-add where its staging buffer costs nothing (d = 192), else atomics
    assert bwd.choose_config(torch.bfloat16, 192, 192, False, True).dq_tma_reduce
    assert not bwd.choose_config(torch.bfloat16, 256, 256, False, True).dq_tma_reduce
    # what does not fit gives up the second P^T / dS^T buffer before the second Q / dO stage
    reduce = bwd.choose_config(torch.bfloat16, 256, 128, False, True, dq_tma_reduce=True)
    assert (reduce.num_stages, reduce.ds_stages) == (2, 1)
    biased = bwd.choose_config(torch.bfloat16, 192, 192, False, True, bias_rank=64)
    assert (biased.num_stages, biased.ds_stages) == (2, 1)
    # ... and a bias at d = 256 the second stage
    biased = bwd.choose_config(torch.bfloat16, 256, 256, False, True, bias_rank=8)
    assert (biased.num_stages, biased.ds_stages) == (1, 2)
    with pytest.raises(ValueError, match="fits shared memory"):
        bwd.choose_config(torch.bfloat16, 256, 256, False, True, bias_rank=64, dq_tma_reduce=True)


_WIDE = [
    dict(head_dim=256, head_dim_v=256, window_right=False),
    dict(head_dim=256, head_dim_v=256, window_left=True, window_right=True, deterministic=True),
    dict(head_dim=192, head_dim_v=192, window_right=True, dq_tma_reduce=True),
    dict(head_dim=256, head_dim_v=256, window_right=False, split_heads=True, dtype=torch.float16),
    dict(head_dim=128, head_dim_v=256, window_right=True),
    dict(head_dim=192, head_dim_v=128, window_right=False),
    dict(head_dim=256, head_dim_v=64, window_right=True),
    dict(head_dim=96, head_dim_v=256, window_right=True),
    dict(head_dim=256, head_dim_v=128, window_right=True, dq_tma_reduce=True),  # one P^T / dS^T buffer
    # every padded bias rank: float32 factors (FMAs) and factors in the input dtype (wgmma slices)
    *(dict(head_dim=d, head_dim_v=d, window_right=True, bias_rank=r) for d in (192, 256) for r in (4, 28, 48, 64)),
    *(
        dict(head_dim=d, head_dim_v=d, window_right=True, bias_rank=r, bias_mma=True)
        for d in (192, 256)
        for r in (16, 32, 48, 64)
    ),
]


def _wide_config(kw):
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.bfloat16)
    return bwd.choose_config(dtype, kw.pop("head_dim"), kw.pop("head_dim_v"), kw.pop("window_left", False), **kw)


@pytest.mark.parametrize("kw", _WIDE, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_wide_config_compiles_to_clean_sass(cache_dir, kw):
    cfg = _wide_config(kw)
    assert cfg.tile_n == 64
    bwd.compile_config(cfg)
    sass = precompile.sass_of(bwd.cache().cubin(cfg))
    counts = precompile.sass_summary(sass)
    assert counts["HGMMA"] > 0 and counts["UTMALDG"] > 0 and counts["MUFU.EX2"] > 0, counts
    assert ("UBLKRED" in sass) == cfg.dq_tma_reduce
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts} ({cfg})"
    assert not counts["serialized"], "ptxas serialized the wgmmas"


def _cover_probe(kernel):
    from attnkit.kernels.cute.attention.sm90_bwd import _smem_layout, _transpose_view

    tm, tn, d, dv = kernel.tile_m, kernel.tile_n, kernel.head_dim, kernel.head_dim_v
    dtype = kernel.dtype

    @cute.jit
    def probe(
        s_out: cute.Tensor,  # (256, elems, 2) int32: (row, col) of each thread's accumulator elements
        dv_out: cute.Tensor,
        dk_out: cute.Tensor,
        dq_out: cute.Tensor,
        offsets: cute.Tensor,  # (2, 4) int32: per warpgroup, the first smem element of its B operand slices
    ):
        sdp, mma_dv, mma_dk, mma_dq = kernel.make_tiled_mmas()
        for mma, out, shape in ((sdp, s_out, (tn, tm)), (mma_dv, dv_out, (tn, dv)), (mma_dk, dk_out, (tn, d))):
            for t in cutlass.range(256):
                c = mma.get_slice(t).partition_C(cute.make_identity_tensor(shape))
                for i in cutlass.range(cute.size(c), unroll_full=True):
                    out[t, i, 0] = c[i][0]
                    out[t, i, 1] = c[i][1]
        for t in cutlass.range(256):
            c = mma_dq.get_slice(t).partition_C(cute.make_identity_tensor((tm, d)))
            for i in cutlass.range(cute.size(c), unroll_full=True):
                dq_out[t, i, 0] = c[i][0]
                dq_out[t, i, 1] = c[i][1]
        # Q and dO as the kernel lays them out (swizzle atoms d / 2 and dv / 2 wide), at smem address 0
        sQ_layout = _smem_layout(dtype, tm, d, 1, d // 2)
        sdO_layout = _smem_layout(dtype, tm, dv, 1, dv // 2)
        base = cute.make_ptr(dtype, 0, cute.AddressSpace.smem, assumed_align=1024)
        sQ = cute.make_tensor(cute.recast_ptr(base, sQ_layout.inner, dtype=dtype), sQ_layout.outer)
        sdO = cute.make_tensor(cute.recast_ptr(base, sdO_layout.inner, dtype=dtype), sdO_layout.outer)
        elem = dtype.width // 8
        for wg in cutlass.range_constexpr(2):
            offsets[wg, 0] = sdp.get_slice(wg * 128).partition_B(sQ).iterator.toint() // elem
            offsets[wg, 1] = sdp.get_slice(wg * 128).partition_B(sdO).iterator.toint() // elem
            offsets[wg, 2] = mma_dk.get_slice(wg * 128).partition_B(_transpose_view(sQ)).iterator.toint() // elem
            offsets[wg, 3] = mma_dv.get_slice(wg * 128).partition_B(_transpose_view(sdO)).iterator.toint() // elem

    return probe


def _atom_width(cols: int) -> int:
    """Elements per row of the 16-bit swizzle atom the kernel picks for a (rows, cols) tile: 128, 64 or 32 bytes."""
    row_bytes = 2 * cols
    return 64 if row_bytes % 128 == 0 else 32 if row_bytes % 64 == 0 else 16


@pytest.mark.parametrize("d, dv", [(256, 256), (192, 192), (128, 256), (256, 64), (96, 256)])
def test_warpgroup_shares_cover_every_tile_once(d, dv):
    """Thread t (of the 256 consumers) owns a part of S^T / dP^T (64 keys x 64 queries), of dV (64 x dv), dK and
    dQ: over all threads each element once, and a warpgroup's share of S^T is its half of the queries, of dK / dV
    its half of the columns (what the smem hand-over of P^T and dS^T and the epilogue rely on). The B operands in
    smem: warpgroup 1's slice of Q / dO for S^T / dP^T starts at query row 32, for dK / dV at column d / 2 (dv / 2),
    whole swizzle atoms into the tile (a wgmma descriptor cannot start inside an atom)."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, d, dv, 2, False, True)
    assert kernel.dkv_split_d
    tm, tn = kernel.tile_m, kernel.tile_n
    shapes = ((tn, tm), (tn, dv), (tn, d), (tm, d))
    outs = [torch.full((256, rows * cols // 256, 2), -1, dtype=torch.int32) for rows, cols in shapes]
    offsets = torch.full((2, 4), -1, dtype=torch.int32)
    args = [from_dlpack(o) for o in (*outs, offsets)]
    cute.compile(_cover_probe(kernel), *args, options="--gpu-arch sm_90a")(*args)
    for out, (rows, cols) in zip(outs, shapes, strict=True):
        seen = torch.zeros(rows, cols, dtype=torch.int32)
        flat = out.reshape(-1, 2).long()
        seen.index_put_((flat[:, 0], flat[:, 1]), torch.ones(len(flat), dtype=torch.int32), accumulate=True)
        assert torch.equal(seen, torch.ones_like(seen)), (rows, cols)
        # warpgroup w: columns [w * cols / 2, (w + 1) * cols / 2), every row
        for w in range(2):
            share = out[128 * w : 128 * (w + 1)].reshape(-1, 2)
            assert share[:, 1].min() == w * cols // 2 and share[:, 1].max() == (w + 1) * cols // 2 - 1
            assert share[:, 0].unique().numel() == rows
    wq, wdo = _atom_width(d // 2), _atom_width(dv // 2)
    assert offsets[0].tolist() == [0, 0, 0, 0]
    # K-major for S^T / dP^T: row 32 of 8-row atoms; MN-major for dK / dV: the column block at d / 2, all tm rows
    assert offsets[1].tolist() == [32 * wq, 32 * wdo, tm * d // 2, tm * dv // 2]
    assert (tm * d // 2) % (8 * wq) == 0 and (tm * dv // 2) % (8 * wdo) == 0


def test_smem_model_matches_the_compiled_struct():
    """choose_config fits configs to the 227 KiB by smem_bytes(): it must be the size the launch asks for."""
    for d, dv, kw in (
        (128, 128, dict(bias_rank=8)),
        (64, 64, dict(bias_rank=16, bias_mma=True, dq_tma_reduce=True)),
        (256, 256, dict()),
        (192, 192, dict(bias_rank=64)),
        (256, 128, dict(dq_tma_reduce=True)),
        (96, 96, dict(deterministic=True, bias_rank=4)),
        (128, 128, dict(tile_m=80, dq_tma_reduce=True)),  # 80 query rows: all 227 KiB
    ):
        cfg = bwd.choose_config(torch.bfloat16, d, dv, False, True, **kw)
        kernel = cfg.make_kernel()
        cute.compile(kernel, *bwd._fake_args(cfg), options="--gpu-arch sm_90a")
        assert kernel.shared_storage.size_in_bytes() == kernel.smem_bytes() <= bwd.SMEM_CAPACITY, cfg


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, dv, wl, wr, rank, dtype, dq_mode", cute_gpu_cases.WIDE_BWD_CASES)
def test_wide_numerics_against_float64(b, sq, sk, h, hkv, d, dv, wl, wr, rank, dtype, dq_mode):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, dv, wl, wr, rank, dtype, dq_mode)
