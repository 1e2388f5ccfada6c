"""CuTe-DSL sm90 attention backward: every shipped config (main kernel, preprocess, postprocess)
compiles for sm_90a without a GPU; the main kernel's SASS has wgmma (HGMMA) and TMA loads
(UTMALDG), and no kernel touches local memory (LDL/STL). The numerics test at the end needs an
H100 and runs under the gpu/sm90 markers."""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import pytest
import torch

pytest.importorskip("cutlass")

import cute_gpu_cases  # noqa: E402
import cutlass  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from attnkit import precompile  # noqa: E402
from attnkit.cute import attention_bwd as bwd  # noqa: E402
from attnkit.kernels.cute.attention.sm90_bwd import AttentionBwdSm90  # noqa: E402
from attnkit.kernels.cute.common.barriers import WARPGROUP_THREADS  # noqa: E402
from attnkit.kernels.cute.common.sm90 import NUM_MMA_WARPGROUPS  # noqa: E402
from cutlass import Float32, Int32  # noqa: E402


def _assert_one_exp2_per_score(cfg, sass: str) -> None:
    """The key block's loop issues one MUFU.EX2 per entry of P a thread holds (tile_m x tile_n over the
    two consumer warpgroups): none recomputed."""
    loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
    assert loop, "no loop with wgmma and exp2 found"
    issued = sum(1 for t in loop if precompile.opcode(t) == "MUFU.EX2")
    expected = cfg.tile_m * cfg.tile_n // (NUM_MMA_WARPGROUPS * WARPGROUP_THREADS)
    assert issued == expected, f"{issued} MUFU.EX2 per query block, expected {expected}"


@pytest.mark.parametrize("cfg", bwd.shipped_configs("sm_90a"), ids=precompile.config_name)
def test_shipped_config_compiles_to_clean_sass(cache_dir, cfg):
    bwd.compile_config(cfg)
    cubin = bwd.cache().cubin(cfg)
    assert cubin is not None
    sass = precompile.sass_of(cubin)
    counts = precompile.sass_summary(sass)
    if isinstance(cfg, bwd.BwdConfig):
        assert counts["HGMMA"] > 0, counts
        assert counts["UTMALDG"] > 0, counts
        assert counts["MUFU.EX2"] > 0, counts
        # dQ reaches the float32 buffer by one TMA reduce-add per warpgroup, or by atomics; factor gradients
        # and split-head dK/dV partials are atomics too
        assert ("UBLKRED" in sass) == cfg.dq_tma_reduce
        atomics = not cfg.dq_tma_reduce or cfg.bias_rank > 0 or cfg.split_heads
        assert ("REDG.E.ADD.F32" in sass) == atomics
        # two adjacent columns per atomic (red.global.add.v2.f32), never one
        assert re.search(r"REDG\.E\.ADD\.F32\.", sass) is None, "scalar float32 atomics"
        _assert_one_exp2_per_score(cfg, sass)
        # dQ tiles in register order: 16-byte atomics (or the bulk reduce-add)
        if cfg.dq_packed and not cfg.dq_tma_reduce:
            assert "REDG.E.ADD.F32x4" in sass
        # dS^T (P^T) to smem: stmatrix where the kernel can afford its registers (ds_stmatrix), else 4-byte stores
        assert ("STSM" in sass) == cfg.make_kernel().ds_stmatrix
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts}"
    assert not counts["serialized"], "ptxas serialized the wgmmas"


_VARIANTS = [c for c in precompile.configs_of(bwd, "sm_90a", variants=True) if c not in bwd.shipped_configs("sm_90a")]


@pytest.mark.parametrize("cfg", _VARIANTS, ids=precompile.config_name)
def test_benchmark_variant_compiles_to_clean_sass(cache_dir, cfg):
    """bench/bench_variants.py's dQ modes at every shape it times build without spills."""
    bwd.compile_config(cfg)
    sass = precompile.sass_of(bwd.cache().cubin(cfg))
    counts = precompile.sass_summary(sass)
    assert counts["HGMMA"] > 0 and counts["UTMALDG"] > 0, counts
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts}"
    assert not counts["serialized"], "ptxas serialized the wgmmas"
    _assert_one_exp2_per_score(cfg, sass)


def _factor_item_probe(kernel):
    @cute.jit
    def probe(out: cute.Tensor, num_items: Int32):  # (items, 4) int32
        for item in cutlass.range(num_items):
            is_query, row0, col0, first = kernel.factor_item(item)
            out[item, 0] = Int32(is_query)
            out[item, 1] = row0
            out[item, 2] = col0
            out[item, 3] = first

    return probe


@pytest.mark.parametrize("head_dim", [128, 256])  # 128- and 64-row key blocks
@pytest.mark.parametrize("rank", [4, 8, 12, 16, 28, 64])
def test_factor_gradient_items_cover_each_product_once(head_dim, rank):
    """Every (row, rank column, summed index) of dqf = dS kf and dkf = dS^T qf belongs to exactly one item; the
    slices of a block are aligned groups of neighbouring lanes (the shuffle reduction), each kind a multiple of
    32 items (a warp never mixes kinds)."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, False, True, bias_rank=rank)
    tm, tn = kernel.tile_m, kernel.tile_n
    n = kernel.num_factor_items()
    out = torch.zeros(n, 4, dtype=torch.int32)
    cute.compile(_factor_item_probe(kernel), from_dlpack(out), n, options="--gpu-arch sm_90a")(from_dlpack(out), n)
    length = tn // kernel.dqf_split
    assert length == tm // kernel.dkf_split
    for is_query, rows, sums, split in ((1, tm, tn, kernel.dqf_split), (0, tn, tm, kernel.dkf_split)):
        items = out[out[:, 0] == is_query]
        assert len(items) % 32 == 0
        seen = torch.zeros(rows, rank, sums, dtype=torch.int32)
        for _, row0, col0, first in items.tolist():
            seen[row0 : row0 + 4, col0 : col0 + 4, first : first + length] += 1
        assert torch.equal(seen, torch.ones_like(seen)), f"{'query' if is_query else 'key'} items"
        groups = items[:, 1:3].reshape(-1, split, 2)
        assert (groups == groups[:, :1]).all(), "a block's slices are consecutive items"
        assert torch.equal(items[:, 3].reshape(-1, split), torch.arange(split).repeat(len(groups), 1) * length)
    assert n >= kernel.num_mma_threads, "every consumer thread has an item"


def _bwd_schedule_probe(kernel):
    @cute.jit
    def probe(
        out: cute.Tensor,  # (tiles, 3) int32: (key block, K/V head, batch) of each CTA index
        n_blocks: Int32,
        heads_kv: Int32,
        batch: Int32,
        heads_per_section: Int32,
    ):
        schedule = kernel.make_schedule(n_blocks * kernel.tile_n, heads_kv, batch, heads_per_section)
        for t in cutlass.range(schedule.num_tiles()):
            n, h, b = kernel.decode_tile(schedule, t)
            out[t, 0] = n
            out[t, 1] = h
            out[t, 2] = b

    return probe


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads_per_section", [1, 2, 5])
def test_backward_schedule_runs_each_head_key_blocks_in_order(causal, heads_per_section):
    """Every (key block, K/V head, batch) once; a head's key blocks in increasing CTA order (the deterministic
    dQ turns wait on lower key blocks); causal: first key blocks first within each section."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, 64, 64, 2, False, causal)
    n_blocks, heads_kv, batch = 4, 3, 2
    out = torch.zeros(n_blocks * heads_kv * batch, 3, dtype=torch.int32)
    args = (n_blocks, heads_kv, batch, heads_per_section)
    probe = _bwd_schedule_probe(kernel)
    cute.compile(probe, from_dlpack(out), *args, options="--gpu-arch sm_90a")(from_dlpack(out), *args)
    assert len({tuple(r) for r in out.tolist()}) == len(out)
    for h in range(heads_kv):
        for b in range(batch):
            blocks = out[(out[:, 1] == h) & (out[:, 2] == b), 0]
            assert torch.equal(blocks, torch.arange(n_blocks, dtype=torch.int32)), (h, b, blocks)
    if causal:
        section = (out[:, 2] * heads_kv + out[:, 1]) // min(heads_per_section, heads_kv * batch)
        for s in section.unique():
            blocks = out[section == s, 0]
            assert torch.equal(blocks, blocks.sort().values), "first key blocks first"


def test_head_splits_fill_the_sms_without_an_empty_share():
    assert bwd.head_splits(16, 4, 132, False) == 16  # MQA, 4 key blocks: one query head per CTA
    assert bwd.head_splits(8, 200, 132, False) == 1  # enough CTAs already
    assert bwd.head_splits(8, 4, 132, True) == 1  # deterministic: no float32 atomics for dK / dV
    assert bwd.head_splits(1, 4, 132, False) == 1
    for group in range(2, 65):
        for ctas in (1, 3, 7, 20, 40, 100):
            splits = bwd.head_splits(group, ctas, 132, False)
            per = -(-group // splits)  # the kernel's share per CTA
            assert 1 <= splits <= group and (splits - 1) * per < group, (group, ctas, splits)


def test_backward_sections_hold_the_query_side_of_whole_kv_heads():
    # 8k queries, d = 128, bf16, groups of 4: 4 * 8192 * (512 + 8) bytes = 16.25 MiB per K/V head -> 1 per section
    assert bwd.heads_per_section(8192, 128, 128, 2, 4, 64) == 1
    assert bwd.heads_per_section(1024, 128, 128, 2, 1, 64) == 63
    assert bwd.heads_per_section(1024, 128, 128, 2, 1, 8) == 8


@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize(
    "rank, bias_mma", [(16, True), (32, True), (48, True), (64, True), (4, False), (48, False), (64, False)]
)
def test_every_bias_rank_compiles_without_spills(cache_dir, head_dim, rank, bias_mma):
    cfg = bwd.choose_config(torch.bfloat16, head_dim, head_dim, False, True, bias_rank=rank, bias_mma=bias_mma)
    bwd.compile_config(cfg)
    sass = precompile.sass_of(bwd.cache().cubin(cfg))
    counts = precompile.sass_summary(sass)
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts} ({cfg})"
    assert not counts["serialized"], "ptxas serialized the wgmmas"
    # rank 16 in the input dtype: the factor gradients as 64 x 16 wgmmas, no float32 dS copy to loop over
    assert ("HGMMA.64x16x16" in sass) == cfg.make_kernel().tc_factor_grads == (rank == 16 and bias_mma)


def test_ds_stmatrix_with_a_bias_where_the_audit_found_room():
    """dS^T by stmatrix: without a bias, at d <= 64, and up to d = 128 except d = dv = 128 outside the deterministic
    mode without the masked tensor-core factor gradients or the bias slice (the configs that spilled with it)."""

    def stm(d, dv, window, **kw):
        return bwd.choose_config(torch.bfloat16, d, dv, window[0] >= 0, window[1] >= 0, **kw).make_kernel().ds_stmatrix

    tc = dict(bias_rank=16, bias_mma=True)
    sliced = dict(bias_rank=8, bias_mma=True)
    for window in ((-1, -1), (-1, 0), (64, 16)):
        assert stm(128, 128, window) and stm(64, 64, window, bias_rank=8)
        assert stm(96, 96, window, **tc) and stm(128, 96, window, bias_rank=4) and stm(64, 128, window, **tc)
        assert stm(128, 128, window, deterministic=True, bias_rank=4)
        assert stm(128, 128, window, **tc) == (window != (-1, -1))
        assert stm(128, 128, window, **sliced)
        with bwd.bias_slices_off():
            assert stm(128, 128, window, **sliced) == (window != (-1, -1))
        assert not stm(128, 128, window, bias_rank=4) and not stm(128, 128, window, bias_rank=64, bias_mma=True)
        assert not stm(192, 192, window, **tc)


@pytest.mark.parametrize("head_dim, window", [(128, (-1, -1)), (128, (-1, 0)), (96, (-1, -1)), (64, (64, 16))])
def test_bias_slice_joins_the_score_wgmma_group(cache_dir, head_dim, window):
    """BwdConfig.bias_slice: S^T's group is K Q^T from zero, then the slice's two k16 steps, left in flight like the
    no-bias S^T. Against the separate bias wgmma it replaces (waited for alone, then multiplied by 1 / scale), the
    main loop has one wait fewer, the S^T accumulator's multiplies fewer, one HGMMA more (two slice steps for one),
    no local memory and no serialized wgmma."""
    wl, wr = window
    sliced = bwd.choose_config(torch.bfloat16, head_dim, head_dim, wl >= 0, wr >= 0, bias_rank=8, bias_mma=True)
    assert sliced.bias_slice
    loops = []
    for cfg in (sliced, bwd.without_bias_slice(sliced)):
        bwd.compile_config(cfg)
        sass = precompile.sass_of(bwd.cache().cubin(cfg))
        counts = precompile.sass_summary(sass)
        # (the separate wgmma's d = 96 kernel keeps its one spilled register at a head's start)
        assert cfg is not sliced or counts["LDL"] == 0 and counts["STL"] == 0, (cfg, counts)
        assert not counts["serialized"], cfg
        loops.append(precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2")))

    def count(loop, prefix):
        return sum(precompile.opcode(t).startswith(prefix) for t in loop)

    accumulator = sliced.tile_n * sliced.tile_m // (NUM_MMA_WARPGROUPS * WARPGROUP_THREADS)
    assert count(loops[0], "HGMMA") == count(loops[1], "HGMMA") + 1
    assert count(loops[0], "WARPGROUP.DEPBAR") == count(loops[1], "WARPGROUP.DEPBAR") - 1
    assert count(loops[0], "FMUL") == count(loops[1], "FMUL") - accumulator
    first = [t for t in loops[0] if "HGMMA" in t][0]
    assert ", RZ, !UPT" in first and "gsb0" not in first, first  # from zero, not a group of its own


def test_the_backward_split_of_each_key_row_replayed_on_the_host():
    """AttentionBwdSm90.split_key_factor_row, the split warp's own code, run for all 2 x 128 items over host tiles
    laid out like sKf (rank 8, zeros to 16) and sKs: every row ends as the three pieces at columns 0, 16 and 24 that
    test_cute_bias_slice's PyTorch replay expects, in bf16, to the bit, and columns 8 to 15 (the split warp zeroes
    them once) untouched."""
    from cutlass.cute.runtime import from_dlpack
    from test_cute_bias_slice import split_key_factors

    cfg = bwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=8, bias_mma=True)
    kernel = cfg.make_kernel()
    assert kernel.bias_slice and kernel.tile_n == 128
    scale = 128**-0.5
    inv_scale = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32))
    torch.manual_seed(0)
    kf = (torch.randn(128, 8) * 3).to(torch.bfloat16)
    src = torch.nn.functional.pad(kf, (0, 8)).view(torch.int16).contiguous()
    sentinel = 0x1234
    dst = torch.full((128, 32), sentinel, dtype=torch.int16)

    @cute.jit
    def probe(raw_src: cute.Tensor, raw_dst: cute.Tensor, inv: Float32):
        s = cute.make_tensor(cute.recast_ptr(raw_src.iterator, dtype=cutlass.BFloat16), raw_src.layout)
        d = cute.make_tensor(cute.recast_ptr(raw_dst.iterator, dtype=cutlass.BFloat16), raw_dst.layout)
        for item in cutlass.range(256, unroll=1):
            kernel.split_key_factor_row(s, d, Int32(item), inv)

    args = (from_dlpack(src), from_dlpack(dst), Float32(inv_scale))
    cute.compile(probe, *args)(*args)
    expected = split_key_factors(kf, scale).view(torch.int16).clone()
    expected[:, 8:16] = sentinel
    assert torch.equal(dst, expected)


def test_key_factor_gradient_summed_in_smem_where_registers_allow():
    """dkf_summed_in_smem: every tensor-core factor-gradient config up to d = 96, and at d = 128 those without a mask
    or the deterministic mode (the others spilled with it)."""
    for d in (64, 96, 128):
        for window in ((-1, -1), (-1, 0), (64, 16), (64, -1)):
            for det in (False, True):
                cfg = bwd.choose_config(
                    torch.bfloat16, d, d, window[0] >= 0, window[1] >= 0, bias_rank=8, bias_mma=True, deterministic=det
                )
                kernel = cfg.make_kernel()
                assert kernel.tc_factor_grads
                assert kernel.dkf_summed_in_smem == (d <= 96 or (window == (-1, -1) and not det)), (d, window, det)
    for kw in (dict(bias_rank=8), dict(bias_rank=32, bias_mma=True)):  # float32 factor gradients
        assert not bwd.choose_config(torch.bfloat16, 64, 64, False, False, **kw).make_kernel().dkf_summed_in_smem


@pytest.mark.parametrize("head_dim, window", [(64, (-1, -1)), (64, (64, 16)), (128, (-1, -1))])
def test_key_factor_gradient_leaves_the_main_loop(cache_dir, head_dim, window):
    """dkf_summed_in_smem: the tensor-core dKf is summed over a query head's blocks in each thread's smem slot and
    added once per head, so the main loop's float32 atomics are dQ's and dQf's only: as many as without a bias plus
    dQf's (tile_m x 16 per warpgroup, two columns per red.v2), where dKf added 64 x 16 more per warpgroup."""
    from attnkit.kernels.cute.attention.sm90_bwd import FACTOR_CHUNK

    wl, wr = window
    cfgs = [
        bwd.choose_config(torch.bfloat16, head_dim, head_dim, wl >= 0, wr >= 0, dq_tma_reduce=False, **kw)
        for kw in (dict(bias_rank=16, bias_mma=True), {})
    ]
    kernel = cfgs[0].make_kernel()
    assert kernel.dkf_summed_in_smem and kernel.smem_bytes() <= bwd.SMEM_CAPACITY
    reds = []
    for cfg in cfgs:
        bwd.compile_config(cfg)
        sass = precompile.sass_of(bwd.cache().cubin(cfg))
        counts = precompile.sass_summary(sass)
        assert counts["LDL"] == 0 and counts["STL"] == 0 and not counts["serialized"], counts
        loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
        reds.append(sum(precompile.opcode(t).startswith("REDG") for t in loop))
    assert reds[0] - reds[1] == cfgs[0].tile_m * FACTOR_CHUNK // 128 // 2, reds


def _factor_mma_probe(kernel):
    from attnkit.kernels.cute.attention.sm90_bwd import FACTOR_CHUNK

    @cute.jit
    def probe(dkf: cute.Tensor, dqf: cute.Tensor):  # (256, n, 2) int32 each: -1 where a thread adds nothing
        tiled_dkf, tiled_dqf = kernel.make_factor_mmas()
        both_dkf, dqf_wg = kernel.factor_chunk_wgs(0)
        for t in cutlass.range(256):
            wg, lane = t // 128, t % 128
            adds_dkf = both_dkf or wg == 1 - dqf_wg
            thr_dkf = tiled_dkf.get_slice(t if both_dkf else lane)
            c_dkf = thr_dkf.partition_C(cute.make_identity_tensor((kernel.tile_n, FACTOR_CHUNK)))
            c_dqf = tiled_dqf.get_slice(lane).partition_C(cute.make_identity_tensor((kernel.tile_m, FACTOR_CHUNK)))
            for e in cutlass.range(cute.size(c_dkf), unroll_full=True):
                dkf[t, e, 0] = c_dkf[e][0] if adds_dkf else -1
                dkf[t, e, 1] = c_dkf[e][1] if adds_dkf else -1
            adds_dqf = dqf_wg is None or wg == dqf_wg
            for e in cutlass.range(cute.size(c_dqf), unroll_full=True):
                dqf[t, e, 0] = c_dqf[e][0] if adds_dqf else -1
                dqf[t, e, 1] = c_dqf[e][1] if adds_dqf else -1

    return probe


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_tensor_core_factor_gradients_add_every_element_once(head_dim):
    """dKf = dS^T Qf and dQf = dS Kf of a factor chunk leave the wgmma accumulators of the warpgroups that
    factor_chunk_wgs names (both for dKf's key rows, or one with dkv_split_d; one for dQf, or both, each its
    partial over its own key rows) and are added from there: across each adding warpgroup's threads every (row,
    factor column) of the chunk once, none by the others."""
    from attnkit.kernels.cute.attention.sm90_bwd import FACTOR_CHUNK
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, False, True, bias_rank=16, bias_mma=True)
    assert kernel.tc_factor_grads
    both_dkf, dqf_wg = kernel.factor_chunk_wgs(0)
    dkf_rows = kernel.tile_n if both_dkf else 64
    dkf = torch.zeros(256, dkf_rows * FACTOR_CHUNK // (256 if both_dkf else 128), 2, dtype=torch.int32)
    dqf = torch.zeros(256, kernel.tile_m * FACTOR_CHUNK // 128, 2, dtype=torch.int32)
    args = (from_dlpack(dkf), from_dlpack(dqf))
    cute.compile(_factor_mma_probe(kernel), *args, options="--gpu-arch sm_90a")(*args)
    assert (dqf_wg is None) == kernel.factor_grads_under_dk == (head_dim <= 128)
    partials = 2 if dqf_wg is None else 1  # dQf: one partial per warpgroup
    for out, rows, times in ((dkf, kernel.tile_n, 1), (dqf, kernel.tile_m, partials)):
        added = [tuple(x) for x in out.reshape(-1, 2).tolist() if x[0] >= 0]
        assert sorted(added) == sorted([(r, c) for r in range(rows) for c in range(FACTOR_CHUNK)] * times)
    if dqf_wg is None:
        for wg in range(2):  # each warpgroup's partial: its own half of the rows
            added = [tuple(x) for x in dqf[128 * wg : 128 * (wg + 1)].reshape(-1, 2).tolist()]
            assert sorted(added) == [(r, c) for r in range(kernel.tile_m) for c in range(FACTOR_CHUNK)]


@pytest.mark.parametrize("head_dim", [64, 128])
def test_tensor_core_query_factor_gradient_splits_the_keys_between_warpgroups(head_dim):
    """With the factor gradients under dK, dQf = dS Kf is split along the keys: each warpgroup's A (dS) and B (Kf)
    views (``own_keys``) take the same key rows, its own 64 (those of its S^T / dP^T), and together all tile_n."""
    kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, False, True, bias_rank=16, bias_mma=True)
    assert kernel.factor_grads_under_dk

    @cute.jit
    def probe(keys_ds: cute.Tensor, keys_kf: cute.Tensor):  # (2, 64) int32: the key of each row per warpgroup
        for wg in cutlass.range_constexpr(2):
            ds = kernel.own_keys(cute.make_identity_tensor((kernel.tile_m, kernel.tile_n, 2)), 1, Int32(wg))
            kf = kernel.own_keys(cute.make_identity_tensor((kernel.tile_n, 16)), 0, Int32(wg))
            for i in cutlass.range(64, unroll_full=True):
                keys_ds[wg, i] = ds[0, i, 0][1]
                keys_kf[wg, i] = kf[i, 0][0]

    from cutlass.cute.runtime import from_dlpack

    keys_ds, keys_kf = torch.full((2, 64), -1, dtype=torch.int32), torch.full((2, 64), -1, dtype=torch.int32)
    args = (from_dlpack(keys_ds), from_dlpack(keys_kf))
    cute.compile(probe, *args, options="--gpu-arch sm_90a")(*args)
    for wg in range(2):
        assert keys_ds[wg].tolist() == keys_kf[wg].tolist() == list(range(64 * wg, 64 * wg + 64))


def test_config_choice():
    cfg = bwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=5)
    assert cfg.bias_rank == 8
    assert cfg.make_kernel().smem_bytes() <= bwd.SMEM_CAPACITY
    big = bwd.choose_config(torch.bfloat16, 128, 128, True, True, bias_rank=64)
    assert big.num_stages == 1
    assert big.make_kernel().smem_bytes() <= bwd.SMEM_CAPACITY
    assert bwd.choose_config(torch.float16, 64, 64, False, False).num_stages == 2
    with pytest.raises(ValueError, match="head dims"):
        bwd.choose_config(torch.bfloat16, 32, 32, False, False)
    with pytest.raises(ValueError, match="head dims"):
        bwd.choose_config(torch.bfloat16, 128, 512, False, False)
    assert bwd.choose_config(torch.bfloat16, 128, 64, False, False).head_dim_v == 64
    with pytest.raises(TypeError):
        bwd.choose_config(torch.float32, 64, 64, False, False)


def test_query_rows_per_step():
    """128 query rows per step at d <= 64 (FA3's 128 x 128 tile) where S^T, dP^T, dK and dV fit in registers
    (the shipped-config compile test checks no spills): bf16, no bias, dQ by TMA reduce-add; everything else 64."""
    wide = bwd.choose_config(torch.bfloat16, 64, 64, False, True)
    assert (wide.tile_m, wide.num_stages, wide.dq_tma_reduce) == (128, 2, True)
    assert bwd.choose_config(torch.bfloat16, 64, 64, False, True, tile_m=64).tile_m == 64
    for kw in (dict(bias_rank=8), dict(deterministic=True), dict(dq_tma_reduce=False)):
        assert bwd.choose_config(torch.bfloat16, 64, 64, False, True, **kw).tile_m == 64, kw
    assert bwd.choose_config(torch.float16, 64, 64, False, True).tile_m == 64
    for d in (96, 128, 256):
        assert bwd.choose_config(torch.bfloat16, d, d, False, True).tile_m == 64
    with pytest.raises(ValueError, match="tile_m = 128"):
        bwd.choose_config(torch.bfloat16, 64, 64, False, True, dq_tma_reduce=False, tile_m=128)
    # asking for 128 rows with the default dQ mode gets the TMA reduce-add that 128 rows need
    assert bwd.choose_config(torch.bfloat16, 64, 64, False, True, tile_m=128) == wide
    assert bwd.config_for(torch.bfloat16, 1, 1000, 4, 2, 64, 64, -1, 0, tile_m=128)[0].tile_m == 128
    with pytest.raises(ValueError, match="tile_m"):
        AttentionBwdSm90(cutlass.BFloat16, 128, 128, 2, False, True, tile_m=128)
    variants = bwd.variant_configs(True, 64)
    assert variants["default"].tile_m == 128 and variants["64 query rows per step"].tile_m == 64
    assert "64 query rows per step" not in bwd.variant_configs(True, 128)


@pytest.mark.parametrize("tile_m", [64, 80])
def test_dq_reduce_warp_takes_the_reduce_add_out_of_the_consumer_loop(cache_dir, tile_m):
    """dq_reduce_warp (FA3 / FA4's way): the consumers' loop stores dQ to smem and arrives on dQFull without
    waiting (one BAR.ARV, no bulk reduce-add, one BAR.SYNC fewer than the warpgroups' own reduce-add); a producer warp
    issues the whole tile's UBLKRED; dQFull and dQEmpty count the 256 consumer threads and that warp's 32."""
    from attnkit.kernels.cute.attention.sm90_bwd import BwdBarrier
    from attnkit.kernels.cute.common.barriers import NamedBarrierBwd

    ids = [int(b) for b in BwdBarrier] + [int(NamedBarrierBwd.dQFull), int(NamedBarrierBwd.dQEmpty)]
    assert len(set(ids)) == len(ids) and max(ids) < 16
    loops = {}
    for warp in (False, True):
        cfg = bwd.choose_config(
            torch.bfloat16, 128, 128, False, False, tile_m=tile_m, dq_tma_reduce=True, dq_reduce_warp=warp
        )
        assert cfg.dq_reduce_warp == warp
        bwd.compile_config(cfg)
        sass = precompile.sass_of(bwd.cache().cubin(cfg))
        assert precompile.sass_summary(sass)["LDL"] == 0 and "UBLKRED" in sass
        loops[warp] = [precompile.opcode(t) for t in precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))]
        if warp:
            full, empty = int(NamedBarrierBwd.dQFull), int(NamedBarrierBwd.dQEmpty)
            barriers = set(re.findall(r"BAR\.(?:ARV|SYNC\.DEFER_BLOCKING) (0x[0-9a-f]+), (0x[0-9a-f]+)", sass))
            assert {(hex(full), "0x120"), (hex(empty), "0x120")} <= barriers, barriers
    assert not any(op.startswith("UBLKRED") for op in loops[True])
    assert loops[True].count("BAR.ARV") == 1
    syncs = {w: sum(op.startswith("BAR.SYNC") for op in ops) for w, ops in loops.items()}
    assert syncs[True] == syncs[False] - 1, syncs
    with pytest.raises(ValueError, match="dq_reduce_warp"):
        bwd.choose_config(torch.bfloat16, 128, 128, False, False, dq_tma_reduce=False, dq_reduce_warp=True)
    with pytest.raises(ValueError, match="dq_reduce_warp"):
        AttentionBwdSm90(cutlass.BFloat16, 128, 128, 2, False, False, dq_reduce_warp=True)


# every dQ path that takes dq_under_dk: d = 128 with 64 query rows in each dQ mode, d = 64 with 128 rows (the
# default there, dQ split by rows) with and without the reduce warp, d = 128 with 80 rows (dQ transposed) and
# d = 256 (key blocks of 64 split along d)
_DQ_UNDER_DK = {
    "d128 atomics": (128, dict(dq_tma_reduce=False)),
    "d128 tma_reduce": (128, dict(dq_tma_reduce=True)),
    "d128 reduce_warp": (128, dict(dq_tma_reduce=True, dq_reduce_warp=True)),
    "d64 128 rows": (64, dict()),
    "d64 128 rows, reduce warp": (64, dict(dq_reduce_warp=True)),
    "d128 80 rows, tma_reduce": (128, dict(tile_m=80, dq_tma_reduce=True)),
    "d128 80 rows, atomics": (128, dict(tile_m=80, dq_tma_reduce=False)),
    "d256": (256, dict()),
    # a rank-8 bias of 16-bit factors: their gradients on the tensor cores, issued between the dQ and dK wgmmas and
    # added with dQ while dK runs (factor_grads_under_dk)
    "d64 bias rank 8": (64, dict(bias_rank=8, bias_mma=True)),
    "d128 bias rank 8": (128, dict(bias_rank=8, bias_mma=True)),
}


def _last_group_registers(loop: list[str], wait: int) -> set[int]:
    """The registers of the wgmma group issued last before ``loop[wait]`` (back to its WARPGROUP.ARRIVE): each
    HGMMA's accumulators (N / 2 per thread for 64 x N float32) and its A operand when in registers (4 per k16)."""
    regs: set[int] = set()
    j = wait - 1
    while j >= 0 and precompile.opcode(loop[j]) != "WARPGROUP.ARRIVE":
        m = re.match(r"(?:@!?U?P\w+ )?HGMMA\.64x(\d+)x16\S* R(\d+), (?:R(\d+)|gdesc)", loop[j])
        if m:
            acc = int(m.group(2))
            regs |= set(range(acc, acc + int(m.group(1)) // 2))
            if m.group(3) is not None:
                regs |= set(range(int(m.group(3)), int(m.group(3)) + 4))
        j -= 1
    return regs


def _written_register(instruction: str) -> int | None:
    """The first destination register of an instruction that writes one (not stores, reductions or barriers)."""
    words = instruction.split()
    if words[0].startswith("@"):
        words = words[1:]
    if len(words) < 2 or words[0].startswith(("ST", "RED", "BAR", "UBLK", "WARPGROUP", "HGMMA")):
        return None
    m = re.match(r"R(\d+)", words[1])
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("case", list(_DQ_UNDER_DK))
def test_dq_goes_out_while_the_dk_wgmma_runs(cache_dir, case):
    """dq_under_dk (FA4's order): the loop waits for dQ with dK's wgmma group still in flight (wait_group 1), adds or
    stores dQ, then waits for dK (wait_group 0); nothing in between writes a register of the dK group (its
    accumulators, its dS^T operand). With dq_under_dk=False the first dQ access comes after the full wait. Neither
    the float32 factor gradients nor the deterministic mode: those keep the full wait (their own work takes that
    slot)."""
    head_dim, flags = _DQ_UNDER_DK[case]
    # dQ after dK as well where bench_variants times both orders (d = 128, 64 rows, no bias)
    for under in (True, False) if head_dim == 128 and not {"tile_m", "bias_rank"} & set(flags) else (True,):
        cfg = bwd.choose_config(torch.bfloat16, head_dim, head_dim, False, False, dq_under_dk=under, **flags)
        assert cfg.dq_under_dk == under and cfg.make_kernel().dq_under_dk == under
        if not flags:
            assert under, "the default takes dq_under_dk"
        bwd.compile_config(cfg)
        sass = precompile.sass_of(bwd.cache().cubin(cfg))
        assert precompile.sass_summary(sass)["LDL"] == 0
        loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
        first_access = "STS.128" if cfg.dq_tma_reduce else "REDG.E.ADD.F32x4"
        store = next(i for i, t in enumerate(loop) if precompile.opcode(t).startswith(first_access))
        waits = [(i, t.split()[-1]) for i, t in enumerate(loop) if precompile.opcode(t) == "WARPGROUP.DEPBAR.LE"]
        before = [(i, w) for i, w in waits if i < store]
        assert before[-1][1] == ("0x1" if under else "0x0"), (under, waits, store)
        if not under:
            continue
        after = [i for i, w in waits if i > store and w == "0x0"]
        assert after, "dK is waited for after the dQ store"
        in_flight = _last_group_registers(loop, before[-1][0])
        assert len(in_flight) >= 16, in_flight  # the dK accumulators at least
        clobbered = [t for t in loop[before[-1][0] + 1 : after[0]] if _written_register(t) in in_flight]
        assert not clobbered, clobbered
    for kw in (dict(bias_rank=8), dict(deterministic=True), dict(bias_rank=8, bias_mma=True, deterministic=True)):
        assert not bwd.choose_config(torch.bfloat16, 128, 128, False, False, **kw).dq_under_dk
    # rank 32: float32 factor gradients; d = 256: dK / dV split along d (the factor wgmmas on one warpgroup each)
    assert not bwd.choose_config(torch.bfloat16, 64, 64, False, False, bias_rank=32, bias_mma=True).dq_under_dk
    assert not bwd.choose_config(torch.bfloat16, 256, 256, False, False, bias_rank=8, bias_mma=True).dq_under_dk


def test_80_query_rows_per_step():
    """FA4's non-causal d = 128 tile: 80 query rows per step, dQ computed transposed (dQ^T = K^T dS^T, d on the
    wgmma's rows). A benchmark variant (no faster than 64 rows on the H100): the default stays 64. Only where dQ^T's two
    64-row warpgroups cover d (d = 128, dv <= 128) and without a bias."""
    for causal in (False, True):
        assert bwd.choose_config(torch.bfloat16, 128, 128, False, causal).tile_m == 64
        for reduce in (False, True):
            cfg = bwd.choose_config(torch.bfloat16, 128, 128, False, causal, tile_m=80, dq_tma_reduce=reduce)
            assert (cfg.tile_m, cfg.dq_tma_reduce, cfg.num_stages, cfg.ds_stages) == (80, reduce, 2, 2)
            assert cfg.dq_packed and cfg.make_kernel().dq_transposed
        variants = bwd.variant_configs(causal, 128)
        assert variants["80 query rows per step"].tile_m == 80
        # in the default's dQ mode, and with atomics where that is not already the atomics (non-causal d = 128 is)
        assert variants["80 query rows per step"].dq_tma_reduce == causal
        if causal:
            assert variants["80 query rows, dQ atomics"].tile_m == 80
        else:
            assert "80 query rows, dQ atomics" not in variants
        assert "80 query rows per step" not in bwd.variant_configs(causal, 64)
    assert bwd.choose_config(torch.float16, 128, 64, True, True, tile_m=80, deterministic=True).tile_m == 80
    for d, dv, rank in ((64, 64, 0), (96, 96, 0), (128, 256, 0), (256, 256, 0), (128, 128, 8)):
        with pytest.raises(ValueError, match="tile_m = 80"):
            bwd.choose_config(torch.bfloat16, d, dv, False, False, bias_rank=rank, tile_m=80)
    with pytest.raises(ValueError, match="tile_m = 80"):
        AttentionBwdSm90(cutlass.BFloat16, 128, 128, 2, False, False, bias_rank=8, tile_m=80)
    with pytest.raises(ValueError, match="tile_m = 80"):
        AttentionBwdSm90(cutlass.BFloat16, 128, 128, 2, False, False, tile_n=64, tile_m=80)
    # lse2 / D stages are TMA destinations: each 128-byte aligned (80 floats per stage would put the second at 320)
    for tile_m in (64, 80, 128):
        d = 64 if tile_m == 128 else 128
        kernel = AttentionBwdSm90(cutlass.BFloat16, d, d, 2, False, False, tile_m=tile_m)
        assert kernel.stat_stride >= tile_m and 4 * kernel.stat_stride % 128 == 0
    with pytest.raises(ValueError, match="tile_m = 80"):
        bwd.BwdPostprocessConfig("bf16", 64, tile_m=80).make_kernel()


def test_three_q_do_stages_variant(monkeypatch):
    """The variant with a third Q / dO stage: at d = 128 without a bias it fits (the causal default's reduce-add
    staging included, to the byte), and is the default config but for its stages; where it does not fit the launcher
    says so instead of building it; gpu_check's ATTNKIT_SM90_BWD_3_STAGES=0 leaves it out."""
    for causal in (False, True):
        variants = bwd.variant_configs(causal, 128)
        three = variants[bwd.THREE_STAGES_VARIANT]
        assert three == dataclasses.replace(variants["default"], num_stages=3)
        assert three.make_kernel().smem_bytes() <= bwd.SMEM_CAPACITY
        assert bwd.choose_config(torch.bfloat16, 128, 128, False, causal, num_stages=3) == three
        assert bwd.THREE_STAGES_VARIANT not in bwd.variant_configs(causal, 64)
    # the launcher's own choice is untouched; the flag reaches the config through config_for
    assert bwd.choose_config(torch.bfloat16, 128, 128, False, False).num_stages == 2
    assert bwd.config_for(torch.bfloat16, 1, 1000, 4, 2, 128, 128, -1, 0, num_stages=3)[0].num_stages == 3
    for d, rank, stages in ((64, 0, 3), (128, 8, 3), (128, 0, 4), (128, 0, 0)):
        with pytest.raises(ValueError, match=f"num_stages = {stages}"):
            bwd.choose_config(torch.bfloat16, d, d, False, True, bias_rank=rank, num_stages=stages)
    monkeypatch.setenv(bwd.THREE_STAGES_ENV, "0")
    assert bwd.THREE_STAGES_VARIANT not in bwd.variant_configs(False, 128)


def test_rotated_query_block_variant(monkeypatch):
    """Each key block's walk over the query blocks from its own start: a variant of the default at d = 64 and 128,
    causal or not (its SASS checked with the other variants'), never the default; the flag reaches the kernel
    through config_for and attention_bwd's keyword; the deterministic mode, whose dQ order it would break, refuses
    it, and so do the bias configs where it spilled; gpu_check's ATTNKIT_SM90_BWD_ROTATE=0 leaves it out."""
    for causal in (False, True):
        for d in bwd.VARIANT_HEAD_DIMS:
            variants = bwd.variant_configs(causal, d)
            rotated = variants[bwd.ROTATED_VARIANT]
            assert rotated == dataclasses.replace(variants["default"], rotate_query_blocks=True)
            assert rotated.make_kernel().rotate_query_blocks
            assert not variants["default"].rotate_query_blocks
            assert rotated in _VARIANTS
    assert not any(getattr(c, "rotate_query_blocks", False) for c in bwd.shipped_configs("sm_90a"))
    cfg = bwd.config_for(torch.bfloat16, 2, 1000, 4, 2, 128, 128, -1, -1, rotate_query_blocks=True)[0]
    assert cfg.rotate_query_blocks and cfg == dataclasses.replace(
        bwd.config_for(torch.bfloat16, 2, 1000, 4, 2, 128, 128, -1, -1)[0], rotate_query_blocks=True
    )
    with pytest.raises(ValueError, match="rotate_query_blocks"):
        bwd.choose_config(torch.bfloat16, 128, 128, False, True, deterministic=True, rotate_query_blocks=True)
    # where the SASS audit found it spilling: a bias with a left window bound, or above d = 128
    for d, window_left in ((128, True), (256, False)):
        with pytest.raises(ValueError, match="rotate_query_blocks"):
            bwd.choose_config(torch.bfloat16, d, d, window_left, True, bias_rank=8, rotate_query_blocks=True)
    assert bwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=8, rotate_query_blocks=True).bias_rank
    with pytest.raises(ValueError, match="rotate_query_blocks"):
        AttentionBwdSm90(cutlass.BFloat16, 128, 128, 2, False, True, deterministic=True, rotate_query_blocks=True)
    monkeypatch.setenv(bwd.ROTATE_ENV, "0")
    assert bwd.ROTATED_VARIANT not in bwd.variant_configs(False, 128)


def test_rotated_walk_changes_only_the_order():
    """The rotated kernel's loop holds the default's instructions of every kind that does the work (the same
    wgmmas, exp2s, loads, stores and dQ reduction adds) and only a few more uniform-datapath ones: the start and
    the wrap of the walk."""
    for causal in (False, True):
        base = bwd.choose_config(torch.bfloat16, 128, 128, False, causal)
        counts = []
        for cfg in (base, dataclasses.replace(base, rotate_query_blocks=True)):
            bwd.compile_config(cfg)
            loop = precompile.innermost_loop(precompile.sass_of(bwd.cache().cubin(cfg)), ("HGMMA", "MUFU.EX2"))
            ops = collections.Counter(precompile.opcode(t).split(".")[0] for t in loop)
            counts.append((len(loop), ops))
        (n0, ops0), (n1, ops1) = counts
        for op in ("HGMMA", "MUFU", "LDS", "STS", "STSM", "REDG", "UBLKRED", "BAR", "SYNCS", "FFMA", "FMUL"):
            assert ops0[op] == ops1[op], (causal, op, ops0[op], ops1[op])
        assert n0 < n1 <= n0 + 32, (causal, n0, n1)


def _loads_before_first_wait(cfg) -> int:
    """Shared-memory loads in the key block's loop before its first wgmma wait (S^T's)."""
    bwd.compile_config(cfg)
    loop = precompile.innermost_loop(precompile.sass_of(bwd.cache().cubin(cfg)), ("HGMMA", "MUFU.EX2"))
    first_wait = next(i for i, t in enumerate(loop) if precompile.opcode(t).startswith("WARPGROUP.DEPBAR"))
    return sum(precompile.opcode(t).startswith("LDS") for t in loop[:first_wait])


@pytest.mark.parametrize("causal", [False, True])
def test_lse_and_d_are_loaded_while_the_score_wgmmas_run(cache_dir, causal, monkeypatch):
    """BwdConfig.early_stats, a benchmark variant: the query block's lse2 and D (16 columns a thread, 8-byte loads)
    are read from smem between the issue of S^T's and dP^T's wgmmas and the wait for them, as FA4 orders them; the
    default (the order of the H100 runs) reads them after the waits. The flag reaches the config through
    config_for; gpu_check's ATTNKIT_SM90_BWD_EARLY_STATS=0 leaves the variant out."""
    cfg = bwd.choose_config(torch.bfloat16, 128, 128, False, causal)
    assert not cfg.early_stats and not cfg.make_kernel().early_stats
    assert _loads_before_first_wait(cfg) == 0
    early = bwd.variant_configs(causal, 128)[bwd.EARLY_STATS_VARIANT]
    assert (
        early
        == bwd.with_early_stats(cfg)
        == dataclasses.replace(cfg, early_stats=True)
        == bwd.choose_config(torch.bfloat16, 128, 128, False, causal, early_stats=True)
        == bwd.config_for(torch.bfloat16, 2, 1000, 4, 4, 128, 128, -1, 0 if causal else -1, early_stats=True)[0]
    )
    assert early.make_kernel().early_stats and _loads_before_first_wait(early) == 16
    assert early in _VARIANTS
    assert not any(getattr(c, "early_stats", False) for c in bwd.shipped_configs("sm_90a"))
    monkeypatch.setenv(bwd.EARLY_STATS_ENV, "0")
    assert bwd.EARLY_STATS_VARIANT not in bwd.variant_configs(causal, 128)


def test_early_stats_only_where_the_audit_found_room():
    """Where the registers held across the waits spilled (SASS audit, 2026-11-28): 128 or 80 query rows per step
    (twice or 1.25x the columns), float32 factors (their bias FMAs), the tensor-core factor gradients above d = 64
    (16-bit factors of rank <= 16, the bias slice included); there the switch decides nothing, and the config asked
    for with it is the one without. Every case of the variant's GPU tests has it."""
    half = dict(bias_rank=8, bias_mma=True)
    for d, kw in ((64, {}), (128, dict(tile_m=80)), (128, dict(bias_rank=8)), (128, half), (96, half)):
        cfg = bwd.choose_config(torch.bfloat16, d, d, False, False, **kw)
        assert not dataclasses.replace(cfg, early_stats=True).make_kernel().early_stats, (d, kw)
        assert bwd.with_early_stats(cfg) == cfg == bwd.choose_config(torch.bfloat16, d, d, False, False, **kw)
        assert bwd.choose_config(torch.bfloat16, d, d, False, False, early_stats=True, **kw) == cfg
    assert bwd.EARLY_STATS_VARIANT not in bwd.variant_configs(False, 64)
    # 16-bit factors with their gradients on the tensor cores at d = 64, or above rank 16 (in FMAs) at d = 128
    for d, rank in ((64, 16), (128, 64)):
        cfg = bwd.choose_config(torch.bfloat16, d, d, False, True, bias_rank=rank, bias_mma=True, early_stats=True)
        assert cfg.make_kernel().early_stats, (d, rank)
    assert bwd.choose_config(torch.float16, 256, 256, True, True, early_stats=True).make_kernel().early_stats
    for b, _sq, sk, h, hkv, d, wl, wr, rank, dtype, m in cute_gpu_cases.EARLY_STATS_CASES:
        args = (dtype, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0)
        cfg = bwd.config_for(*args, **cute_gpu_cases.DQ_FLAGS[m], early_stats=True)[0]
        assert cfg.early_stats and cfg.make_kernel().early_stats, (d, wl, wr, rank, dtype, m)


def test_configs_are_distinct_cache_keys():
    configs = bwd.shipped_configs("sm_90a")
    assert len(set(configs)) == len(configs)
    assert {type(c) for c in configs} == {bwd.BwdConfig, bwd.BwdPreprocessConfig, bwd.BwdPostprocessConfig}


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank", cute_gpu_cases.BWD_CASES)
@pytest.mark.parametrize("dtype, dq_mode", cute_gpu_cases.BWD_MODES)
def test_numerics_against_float64(b, sq, sk, h, hkv, d, wl, wr, rank, dtype, dq_mode):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, d, wl, wr, rank, dtype, dq_mode)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode", cute_gpu_cases.BWD_BIAS_SLICE_CASES)
@pytest.mark.parametrize("bias_slice", [True, False])
def test_numerics_of_the_bias_slice_and_without_it(b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode, bias_slice):
    """S^T's bias as a K-slice of its wgmma group (key factors split by the split warp, query factors at the pieces'
    columns) and the separate bias wgmma it replaces, on the same inputs; under gpu_check's
    ATTNKIT_SM90_BWD_BIAS_SLICE=0 only the latter."""
    import contextlib

    if bias_slice and not bwd.bias_slices_enabled():
        pytest.skip(f"{bwd.BIAS_SLICE_ENV}=0: the backward's bias slice failed gpu_check's smoke test")
    with contextlib.nullcontext() if bias_slice else bwd.bias_slices_off():
        cfg = bwd.config_for(torch.bfloat16, b, sk, h, hkv, d, d, wl, wr, abs(rank), rank < 0)[0]
        assert cfg.bias_slice == bias_slice
        cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, d, wl, wr, rank, torch.bfloat16, dq_mode)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr", cute_gpu_cases.REDUCE_WARP_CASES)
def test_numerics_with_the_dq_reduce_warp(b, sq, sk, h, hkv, d, wl, wr):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, d, wl, wr, 0, torch.bfloat16, "reduce_warp")


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, dv, wl, wr", cute_gpu_cases.BWD_80_CASES)
@pytest.mark.parametrize("dq_mode", cute_gpu_cases.BWD_80_MODES)
def test_numerics_with_80_query_rows_per_step(b, sq, sk, h, hkv, dv, wl, wr, dq_mode):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, 128, dv, wl, wr, 0, torch.bfloat16, dq_mode, tile_m=80)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank, dtype, dq_mode", cute_gpu_cases.EARLY_STATS_CASES)
def test_numerics_with_lse_and_d_loaded_while_the_wgmmas_run(b, sq, sk, h, hkv, d, wl, wr, rank, dtype, dq_mode):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, d, wl, wr, rank, dtype, dq_mode, early_stats=True)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, wl, wr, dq_mode", cute_gpu_cases.BWD_3_STAGES_CASES)
def test_numerics_with_three_q_do_stages(b, sq, sk, h, hkv, wl, wr, dq_mode):
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, 128, 128, wl, wr, 0, torch.bfloat16, dq_mode, num_stages=3)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode", cute_gpu_cases.ROTATED_CASES)
def test_numerics_with_query_blocks_from_a_rotated_start(b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode):
    cute_gpu_cases.check_backward(
        b, sq, sk, h, hkv, d, d, wl, wr, rank, torch.bfloat16, dq_mode, rotate_query_blocks=True
    )


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("d, dv, wr", cute_gpu_cases.DV_CASES)
def test_numerics_with_v_narrower_or_wider(d, dv, wr):
    b, sq, sk, h, hkv = cute_gpu_cases.DV_SHAPE
    cute_gpu_cases.check_backward(b, sq, sk, h, hkv, d, dv, -1, wr, 0, torch.bfloat16, "default")


@pytest.mark.gpu
@pytest.mark.sm90
def test_deterministic_mode_is_bitwise_reproducible():
    from attnkit.reference.attention import attention_forward

    dev, dtype = "cuda", torch.bfloat16
    b, sq, sk, h, hkv, d, rank = 2, 1500, 1500, 4, 2, 128, 8
    q = torch.randn(b, sq, h, d, device=dev, dtype=dtype)
    k = torch.randn(b, sk, hkv, d, device=dev, dtype=dtype)
    v = torch.randn(b, sk, hkv, d, device=dev, dtype=dtype)
    dout = torch.randn(b, sq, h, d, device=dev, dtype=dtype)
    qf = torch.randn(b, sq, h, rank, device=dev) * 0.5
    kf = torch.randn(b, sk, h, rank, device=dev) * 0.5
    kw = dict(softmax_scale=d**-0.5, window_left=-1, window_right=0)
    out, lse = attention_forward(q, k, v, qf, kf, compute_dtype=dtype, **kw)
    first = bwd.attention_bwd(dout, q, k, v, out, lse, qf, kf, **kw, deterministic=True)
    for _ in range(3):
        again = bwd.attention_bwd(dout, q, k, v, out, lse, qf, kf, **kw, deterministic=True)
        for x, y in zip(first, again, strict=True):
            assert torch.equal(x, y)


# Host-side probe of the backward's visibility logic (no device instructions: runs on the CPU): the query
# blocks each key block visits, the first key block of each query block (the deterministic dQ turns wait on
# it: a wrong one deadlocks or races), the boundary-tile test and the masking of P^T, element by element.


def _bwd_mask_probe(kernel):
    tn, tm = kernel.tile_n, kernel.tile_m

    @cute.jit
    def probe(
        ranges: cute.Tensor,  # (n_blocks, 2) int32: m_min, m_max of each key block
        first: cute.Tensor,  # (m_blocks,) int32: first_n_block of each query block
        needs: cute.Tensor,  # (n_blocks, m_blocks) int32: tile_needs_mask
        vals: cute.Tensor,  # (256, n_elem) float32: 1, or 0 where zero_invisible cleared P^T
        coords: cute.Tensor,  # (256, n_elem, 2) int32: (key, query) within the tile
        seqlen_q: Int32,
        seqlen_k: Int32,
        window_left: Int32,
        window_right: Int32,
        n_probe: Int32,
        m_probe: Int32,
    ):
        for n in cutlass.range(ranges.shape[0]):
            m_min, m_max = kernel.m_block_range(n, seqlen_q, seqlen_k, window_left, window_right)
            ranges[n, 0] = m_min
            ranges[n, 1] = m_max
            for m in cutlass.range(first.shape[0]):
                tile = (m * tm, n * tn, seqlen_q, seqlen_k, window_left, window_right)
                needs[n, m] = Int32(kernel.tile_needs_mask(*tile))
        for m in cutlass.range(first.shape[0]):
            first[m] = kernel.first_n_block(m * tm, seqlen_q, seqlen_k, window_left)
        tiled_mma = kernel.make_tiled_mmas()[0]
        acc_shape = tiled_mma.get_slice(0).partition_shape_C((tn, tm))
        for t in cutlass.range(256):
            tScS = tiled_mma.get_slice(t).partition_C(cute.make_identity_tensor((tn, tm)))
            acc = cute.make_tensor(vals[t, None].iterator, cute.make_layout(acc_shape))
            for i in cutlass.range_constexpr(cute.size(acc)):
                acc[i] = cutlass.Float32(1.0)
                coords[t, i, 0] = tScS[i][0]
                coords[t, i, 1] = tScS[i][1]
            kernel.zero_invisible(acc, tScS, m_probe * tm, n_probe * tn, seqlen_q, seqlen_k, window_left, window_right)

    return probe


_BWD_MASK_PROBES = {}


# (head_dim, tile_m): 64 x 128 tiles; 128 x 128 (d <= 64); 80 x 128 (d = 128, dQ^T); 64-row key blocks shared by both
# warpgroups (d > 128)
@pytest.mark.parametrize("head_dim, tile_m", [(64, 64), (64, 128), (128, 80), (256, 64)])
@pytest.mark.parametrize("sq, sk", [(1, 300), (77, 300), (300, 77), (200, 200), (129, 257), (65, 1)])
@pytest.mark.parametrize("wl, wr", [(-1, -1), (-1, 0), (100, 0), (64, 16), (5, -1), (0, 0), (200, 3)])
def test_backward_visibility_logic_matches_the_rule(head_dim, tile_m, sq, sk, wl, wr):
    from attnkit.reference.attention import visible_mask
    from cutlass.cute.runtime import from_dlpack

    key = (head_dim, tile_m, wl >= 0, wr >= 0)
    if key not in _BWD_MASK_PROBES:
        kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, *key[2:], tile_m=tile_m)
        _BWD_MASK_PROBES[key] = (kernel, _bwd_mask_probe(kernel), {})
    kernel, probe, compiled = _BWD_MASK_PROBES[key]
    tm, tn = kernel.tile_m, kernel.tile_n
    m_blocks, n_blocks = math.ceil(sq / tm), math.ceil(sk / tn)
    ranges = torch.zeros(n_blocks, 2, dtype=torch.int32)
    first = torch.zeros(m_blocks, dtype=torch.int32)
    needs = torch.zeros(n_blocks, m_blocks, dtype=torch.int32)
    vals = torch.zeros(256, tm * tn // 256)
    coords = torch.zeros(256, tm * tn // 256, 2, dtype=torch.int32)

    def run(n, m):
        # block counts vary per case: dynamic extents, one compile per window kind
        tensors = [from_dlpack(t).mark_layout_dynamic(leading_dim=t.dim() - 1) for t in (ranges, first, needs)]
        tensors += [from_dlpack(t) for t in (vals, coords)]
        args = (*tensors, sq, sk, max(wl, 0), max(wr, 0), n, m)
        if "fn" not in compiled:
            compiled["fn"] = cute.compile(probe, *args, options="--gpu-arch sm_90a")
        compiled["fn"](*args)

    run(0, 0)
    vis = visible_mask(sq, sk, wl, wr, "cpu")
    padded = torch.zeros(m_blocks * tm, n_blocks * tn, dtype=torch.bool)
    padded[:sq, :sk] = vis
    tiles = padded.view(m_blocks, tm, n_blocks, tn).permute(2, 0, 1, 3)  # (n, m, rows, keys)
    live = torch.zeros_like(padded)
    live[:sq, :sk] = True
    live = live.view(m_blocks, tm, n_blocks, tn).permute(2, 0, 1, 3)
    visits = torch.zeros(n_blocks, m_blocks, dtype=torch.bool)
    for n in range(n_blocks):
        m_min, m_max = ranges[n].tolist()
        visits[n, max(m_min, 0) : max(m_max, 0)] = True
        seen = tiles[n].flatten(1).any(1)
        assert not (seen & ~visits[n]).any(), f"key block {n} skips a query block with visible pairs"
    for m in range(m_blocks):
        blocks = visits[:, m].nonzero().flatten()
        if len(blocks) == 0:
            continue
        assert torch.equal(blocks, torch.arange(blocks[0], blocks[-1] + 1)), (
            f"query block {m}: key blocks not contiguous"
        )
        assert int(first[m]) == int(blocks[0]), f"query block {m}: first_n_block {int(first[m])} != {int(blocks[0])}"
    for n in range(n_blocks):
        for m in range(m_blocks):
            if not visits[n, m]:
                continue
            if not tiles[n, m].all():
                assert needs[n, m], f"tile (n {n}, m {m}) has invisible pairs but is not masked"
            if needs[n, m]:
                run(n, m)
                keys, rows = coords[..., 0].long(), coords[..., 1].long()
                expect = tiles[n, m][rows, keys]
                assert torch.equal(vals == 1, expect), f"tile (n {n}, m {m}): P^T zeroed wrongly"


def _operand_probe(kernel):
    from attnkit.kernels.cute.common.layouts import acc_view_as_operand_a

    tn, tm = kernel.tile_n, kernel.tile_m

    @cute.jit
    def probe(out: cute.Tensor):  # (256, n_elem, 6) int32
        mma_sdp, mma_dv, mma_dk, _ = kernel.make_tiled_mmas()
        for t in cutlass.range(256):
            c = acc_view_as_operand_a(mma_sdp.get_slice(t).partition_C(cute.make_identity_tensor((tn, tm))))
            a_dv = mma_dv.get_slice(t).partition_A(cute.make_identity_tensor((tn, tm)))
            a_dk = mma_dk.get_slice(t).partition_A(cute.make_identity_tensor((tn, tm)))
            for i in cutlass.range_constexpr(cute.size(a_dv)):
                out[t, i, 0] = c[i][0]
                out[t, i, 1] = c[i][1]
                out[t, i, 2] = a_dv[i][0]
                out[t, i, 3] = a_dv[i][1]
                out[t, i, 4] = a_dk[i][0]
                out[t, i, 5] = a_dk[i][1]

    return probe


@pytest.mark.parametrize("head_dim, tile_m", [(64, 64), (128, 64), (64, 128), (128, 80)])
def test_p_and_ds_stay_in_registers_with_the_dv_and_dk_operand_layouts(head_dim, tile_m):
    """P^T and dS^T leave the S^T / dP^T wgmma as accumulators and enter dV += P^T dO and dK += dS^T Q as
    register A operands: thread t's element i must be the same (key, query) on both sides."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, False, True, tile_m=tile_m)
    out = torch.zeros(256, kernel.tile_n * kernel.tile_m // 256, 6, dtype=torch.int32)
    cute.compile(_operand_probe(kernel), from_dlpack(out), options="--gpu-arch sm_90a")(from_dlpack(out))
    assert torch.equal(out[..., :2], out[..., 2:4]), "P^T element != dV A-operand element"
    assert torch.equal(out[..., :2], out[..., 4:6]), "dS^T element != dK A-operand element"
    assert len({tuple(x) for x in out[..., :2].reshape(-1, 2).tolist()}) == kernel.tile_n * kernel.tile_m


def _ds_store_probe(kernel):
    @cute.jit
    def probe(out: cute.Tensor):  # (256, n, 5) int32: source (key, query), destination (key, query) and offset
        tiled_mma_sdp = kernel.make_tiled_mmas()[0]
        layout = kernel.sds_layout()
        plain = cute.make_tensor(
            cute.make_ptr(kernel.dtype, 0, cute.AddressSpace.smem, assumed_align=1024), layout.outer
        )
        shape = (kernel.tile_n, kernel.tile_m)
        for t in cutlass.range(256):
            _, thr_copy = kernel.make_ds_store(tiled_mma_sdp, t)
            src = thr_copy.retile(tiled_mma_sdp.get_slice(t).partition_C(cute.make_identity_tensor(shape)))
            dst = thr_copy.partition_D(cute.make_identity_tensor(shape))
            dst_smem = thr_copy.partition_D(kernel.ds_store_view(plain)[None, None, 0])
            for i in cutlass.range(cute.size(dst), unroll_full=True):
                out[t, i, 0] = src[i][0]
                out[t, i, 1] = src[i][1]
                out[t, i, 2] = dst[i][0]
                out[t, i, 3] = dst[i][1]
                out[t, i, 4] = cute.crd2idx(i, dst_smem.layout)

    return probe


@pytest.mark.parametrize("head_dim, tile_m", [(64, 64), (128, 64), (256, 64), (128, 80)])
def test_ds_stmatrix_store_writes_each_accumulator_element_where_the_tile_holds_it(head_dim, tile_m):
    """dS^T (P^T) goes to smem by stmatrix, a warp-wide exchange: each instruction of a warp must write exactly the
    (key, query) elements its 32 threads hold, every element of the tile once, each thread's 8 elements one row's 8
    consecutive queries at a 16-byte aligned offset (which the 16-byte granular swizzle keeps contiguous); with 80
    queries dS itself, keys contiguous, by the transposing stmatrix: 8 consecutive keys of one query."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionBwdSm90(cutlass.BFloat16, head_dim, head_dim, 2, False, True, tile_m=tile_m)
    assert kernel.ds_stmatrix
    per_thread = kernel.tile_n * kernel.tile_m // 256
    out = torch.zeros(256, per_thread, 5, dtype=torch.int32)
    cute.compile(_ds_store_probe(kernel), from_dlpack(out), options="--gpu-arch sm_90a")(from_dlpack(out))
    src, dst, offset = out[..., 0:2], out[..., 2:4], out[..., 4]
    every = {(k, q) for k in range(kernel.tile_n) for q in range(kernel.tile_m)}
    assert sorted(map(tuple, dst.reshape(-1, 2).tolist())) == sorted(every), "every element written once"
    # src: the accumulator's own (key, query) of each register the copy reads, in the copy's order
    assert sorted(map(tuple, src.reshape(-1, 2).tolist())) == sorted(every)
    instructions = per_thread // 8
    for warp in range(8):
        lanes = slice(32 * warp, 32 * (warp + 1))
        for a in range(instructions):
            vals = slice(8 * a, 8 * (a + 1))
            held = sorted(map(tuple, src[lanes, vals].reshape(-1, 2).tolist()))
            written = sorted(map(tuple, dst[lanes, vals].reshape(-1, 2).tolist()))
            assert held == written, f"warp {warp}, stmatrix {a}: writes other elements than its threads hold"
    rows = dst.view(256, instructions, 8, 2)
    # dS^T: a row is 8 queries of one key; dS (dq_transposed, transposing stmatrix): 8 keys of one query
    fixed, runs_along = (1, 0) if kernel.dq_transposed else (0, 1)
    assert (rows[..., fixed] == rows[..., :1, fixed]).all(), "a thread's 8 elements share one smem row"
    assert torch.equal(rows[..., runs_along] - rows[..., :1, runs_along], torch.arange(8).expand_as(rows[..., 0]))
    runs = offset.view(256, instructions, 8)
    assert (runs[..., :1] % 8 == 0).all() and torch.equal(runs - runs[..., :1], torch.arange(8).expand_as(runs))


def _dq_packing_probe(main, post):
    from attnkit.kernels.cute.common.packed import GROUP, packed_offset

    # the dQ accumulator's (row, column) are (query, d), or (d, query) where dQ^T is computed
    shape = (main.head_dim, main.tile_m) if main.dq_transposed else (main.tile_m, main.head_dim)
    row, col = (1, 0) if main.dq_transposed else (0, 1)

    @cute.jit
    def probe(out: cute.Tensor):  # (256, elements, 5) int32: (query, d) written, offset, (query, d) read back
        tiled_mma_dq = main.make_tiled_mmas()[3]
        for t in cutlass.range(256):
            written = tiled_mma_dq.get_slice(t).partition_C(cute.make_identity_tensor(shape))
            read = post.thr_mma(t).partition_C(cute.make_identity_tensor(shape))
            groups = cute.size(written) // GROUP
            for e in cutlass.range(cute.size(written), unroll_full=True):
                out[t, e, 0] = written[e][row]
                out[t, e, 1] = written[e][col]
                out[t, e, 2] = packed_offset(t // 128, e // GROUP, t % 128, groups) + e % GROUP
                out[t, e, 3] = read[e][row]
                out[t, e, 4] = read[e][col]

    return probe


@pytest.mark.parametrize("d, tile_m", [(64, 64), (64, 128), (96, 64), (128, 64), (128, 80), (192, 64), (256, 64)])
def test_dq_tiles_are_packed_in_register_order_and_read_back_where_they_belong(d, tile_m):
    """dQaccum's (tile_m, d) tiles (and the bulk reduce-add's smem staging) keep the dQ accumulators in register
    order: element 4g + j of thread 128 wg + lane at float 4 (128 (wg groups + g) + lane) + j. Every element of the
    tile once; each group 16 aligned bytes and a warp's 32 groups 512 contiguous bytes (one 16-byte store or vector
    atomic each, no bank conflicts, whole sectors); and the postprocess thread that loads an offset puts it at the
    (row, column) the main kernel's thread computed there."""
    from cutlass.cute.runtime import from_dlpack

    cfg = bwd.choose_config(torch.bfloat16, d, d, False, True, tile_m=tile_m)
    assert cfg.dq_packed
    main = cfg.make_kernel()
    post = bwd.BwdPostprocessConfig("bf16", d, tile_m=tile_m).make_kernel()
    assert main.tile_m == post.tile_m == tile_m
    per_thread = tile_m * d // 256
    out = torch.zeros(256, per_thread, 5, dtype=torch.int32)
    cute.compile(_dq_packing_probe(main, post), from_dlpack(out), options="--gpu-arch sm_90a")(from_dlpack(out))
    row, col, offset = out[..., 0].long(), out[..., 1].long(), out[..., 2].long()
    assert torch.equal(out[..., 3:5], out[..., 0:2]), "the postprocess reads an element back at another (row, col)"
    assert sorted((row * d + col).flatten().tolist()) == list(range(tile_m * d)), "every (row, col) once"
    assert sorted(offset.flatten().tolist()) == list(range(tile_m * d)), "every offset of the tile once"
    groups = offset.view(256, per_thread // 4, 4)
    assert (groups[..., 0] % 4 == 0).all() and torch.equal(groups - groups[..., :1], torch.arange(4).expand_as(groups))
    starts = groups[..., 0].view(8, 32, -1)  # (warp, lane, group)
    assert torch.equal(starts - starts[:, :1], 4 * torch.arange(32).view(1, 32, 1).expand_as(starts))
    # the warpgroups' halves one after the other: each reduce-add is one contiguous range
    assert (offset[:128] < tile_m * d // 2).all() and (offset[128:] >= tile_m * d // 2).all()


def test_every_shipped_backward_has_its_postprocess_shipped():
    """The launcher reads dQaccum back with BwdPostprocessConfig(dtype, d, arch, tile_m, dq_packed): precompile must
    build that one for every shipped main config (the packed and the (row, column) layouts differ)."""
    shipped = set(bwd.shipped_configs("sm_90a"))
    for cfg in shipped:
        if isinstance(cfg, bwd.BwdConfig):
            post = bwd.BwdPostprocessConfig(cfg.dtype, cfg.head_dim, cfg.arch, cfg.tile_m, cfg.dq_packed)
            assert post in shipped, (cfg, post)
    unpacked = [c for c in shipped if isinstance(c, bwd.BwdConfig) and not c.dq_packed]
    assert unpacked and all(c.bias_rank and not c.bias_mma and not c.dq_tma_reduce for c in unpacked)


def test_default_dq_mode_follows_the_h100_timings():
    """dQ atomics where the H100 timed them ahead of the TMA reduce-add (d = 128, no mask, no bias; 1.05x in the
    2026-11-27 16:39 run, bench/RESULTS.md); the reduce-add where they tied (causal) or lost (d = 64), and
    wherever no run compared them (windows, other head dims)."""
    b16 = torch.bfloat16
    assert not bwd.choose_config(b16, 128, 128, False, False).dq_tma_reduce
    assert not bwd.choose_config(torch.float16, 128, 128, False, False).dq_tma_reduce
    assert bwd.choose_config(b16, 128, 128, False, True).dq_tma_reduce
    assert bwd.choose_config(b16, 128, 128, True, False).dq_tma_reduce
    assert bwd.choose_config(b16, 64, 64, False, False).dq_tma_reduce
    assert bwd.choose_config(b16, 128, 128, False, False, dq_tma_reduce=True).dq_tma_reduce  # an explicit mode holds
    assert bwd.variant_configs(False, 128)["default"] == bwd.variant_configs(False, 128)["atomics"]


def test_dq_reduce_add_can_be_switched_off(monkeypatch):
    """gpu_check's fallback when the TMA reduce-add fails its smoke test: the default dQ mode becomes the atomics
    (and d = 64 its 64 query rows per step); an explicit mode is kept."""
    assert bwd.choose_config(torch.bfloat16, 64, 64, False, True).dq_tma_reduce
    monkeypatch.setenv(bwd.DQ_TMA_REDUCE_ENV, "0")
    cfg = bwd.choose_config(torch.bfloat16, 64, 64, False, True)
    assert not cfg.dq_tma_reduce and cfg.tile_m == 64
    assert bwd.choose_config(torch.bfloat16, 64, 64, False, True, dq_tma_reduce=True).dq_tma_reduce
    assert bwd.choose_config(torch.bfloat16, 64, 64, False, True, tile_m=128).dq_tma_reduce  # it needs the reduce
    variants = bwd.variant_configs(True, 64)
    assert "TMA reduce-add" not in variants and not any(c.dq_tma_reduce for c in variants.values() if c.tile_m == 64)


@cute.jit
def _pairs_probe(g: cute.Tensor, num_rows: Int32):  # (128, 128) bf16 standing in for dK
    from attnkit.kernels.cute.common import sm90
    from attnkit.kernels.cute.common.layouts import store_acc_pairs

    mma = sm90.make_tiled_mma(cutlass.BFloat16, "K", "K", 128, num_warpgroups=2)
    for t in cutlass.range(256):
        thr = mma.get_slice(t)
        tCcC = thr.partition_C(cute.make_identity_tensor((128, 128)))
        frag = cute.make_rmem_tensor(thr.partition_shape_C((128, 128)), cutlass.BFloat16)
        for i in cutlass.range_constexpr(cute.size(frag)):
            frag[i] = (tCcC[i][0] * 128 + tCcC[i][1]).to(Float32).to(cutlass.BFloat16)
        store_acc_pairs(frag, thr.partition_C(g), tCcC, num_rows)


def test_dk_dv_epilogue_stores_column_pairs_and_drops_rows_past_the_keys():
    """layouts.store_acc_pairs, the dK / dV epilogue (one 4-byte store per pair of columns): every element of a row
    below num_rows lands at its (row, column), rows past it are left alone."""
    from cutlass.cute.runtime import from_dlpack

    g = torch.full((128, 128), -1.0, dtype=torch.bfloat16)
    cute.compile(_pairs_probe, from_dlpack(g, assumed_align=16), 100, options="--gpu-arch sm_90a")(
        from_dlpack(g, assumed_align=16), 100
    )
    expected = torch.arange(128 * 128, dtype=torch.float32).view(128, 128).to(torch.bfloat16)
    assert torch.equal(g[:100], expected[:100])
    assert (g[100:] == -1).all()


def test_dk_dv_epilogue_stores_four_bytes_at_a_time(cache_dir):
    cfg = bwd.choose_config(torch.bfloat16, 128, 128, False, True)
    bwd.compile_config(cfg)
    sass = precompile.sass_of(bwd.cache().cubin(cfg))
    assert "STG.E.U16" not in sass and re.search(r"STG\.E ", sass), "dK / dV stored 2 bytes at a time"
