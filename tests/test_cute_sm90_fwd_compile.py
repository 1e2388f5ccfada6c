"""CuTe-DSL sm90 attention forward, on the CPU: every shipped config compiles for sm_90a and its SASS has
wgmma (HGMMA), TMA loads/stores (UTMALDG/UTMASTG) and no local memory (LDL/STL); the compile cache hits
in memory and on disk; the launcher's runtime tensors marshal like the fake tensors the kernel was built
on; and the kernel's own mask, tile order, P-operand layout, float32 bias and online softmax run as host
code against brute-force references. The numerics test at the end needs an H100 (gpu/sm90 markers)."""

from __future__ import annotations

import dataclasses
import math
import re
import time

import pytest
import torch

pytest.importorskip("cutlass")

import cute_gpu_cases  # noqa: E402
import cutlass  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from attnkit import precompile  # noqa: E402
from attnkit.cute import attention_fwd as fwd  # noqa: E402
from attnkit.cute import compile_cache  # noqa: E402
from attnkit.cute.tensors import prepare_factor  # noqa: E402
from attnkit.kernels.cute.attention.sm90_fwd import AttentionFwdSm90  # noqa: E402
from attnkit.kernels.cute.common import sm90  # noqa: E402
from attnkit.kernels.cute.common.barriers import NamedBarrierFwd  # noqa: E402
from attnkit.kernels.cute.common.layouts import acc_view_as_operand_a  # noqa: E402
from attnkit.kernels.cute.common.mask import AttentionMask  # noqa: E402
from attnkit.kernels.cute.common.softmax import OnlineSoftmax  # noqa: E402
from attnkit.kernels.cute.common.tile_scheduler import PersistentTileScheduler  # noqa: E402
from attnkit.reference.attention import visible_mask  # noqa: E402
from cutlass import Float32, Int32  # noqa: E402


def _sass(cfg) -> str:
    cubin = fwd.cache().cubin(cfg)
    assert cubin is not None, "the compile cache keeps the cubin of every config it compiled or loaded"
    return precompile.sass_of(cubin)


def _assert_one_exp2_per_score(cfg, sass: str) -> None:
    """The main loop's body issues one MUFU.EX2 per score a thread holds (its two rows of tile_n / 4 columns,
    less the FMA-pipe polynomial share) plus the two rows' rescale factors: no exp2 computed twice."""
    loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
    assert loop, "no main loop with wgmma and exp2 found"
    mufu_cols = sum(1 for c in range(cfg.tile_n // 4) if c % 8 >= cfg.poly_exp2_per_8)
    issued = sum(1 for t in loop if precompile.opcode(t) == "MUFU.EX2")
    assert issued == 2 * mufu_cols + 2, f"{issued} MUFU.EX2 per tile, expected {2 * mufu_cols + 2}"


@pytest.mark.parametrize("cfg", fwd.shipped_configs("sm_90a"), ids=precompile.config_name)
def test_shipped_config_compiles_to_clean_sass(cache_dir, cfg):
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    counts = precompile.sass_summary(sass)
    assert counts["HGMMA"] > 0, counts
    assert counts["UTMALDG"] > 0, counts
    assert counts["UTMASTG"] > 0, counts
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts}"
    assert not counts["serialized"], "ptxas serialized the wgmmas"
    _assert_one_exp2_per_score(cfg, sass)


_VARIANTS = [c for c in precompile.configs_of(fwd, "sm_90a", variants=True) if c not in fwd.shipped_configs("sm_90a")]


@pytest.mark.parametrize("cfg", _VARIANTS, ids=precompile.config_name)
def test_benchmark_variant_compiles_to_clean_sass(cache_dir, cfg):
    """bench/bench_variants.py's switches (lazy rescale off, FMA exp2, no ping-pong, no intra-WG overlap) build."""
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    counts = precompile.sass_summary(sass)
    assert counts["HGMMA"] > 0 and counts["UTMALDG"] > 0, counts
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts}"
    assert not counts["serialized"], "ptxas serialized the wgmmas"
    _assert_one_exp2_per_score(cfg, sass)


def test_176_key_tiles_are_a_non_causal_d128_variant():
    """FA3's non-causal d = 128 tile: 176 keys per block, O over Q (Q + 2 x (K + V) = 208 KiB leaves no room for O)."""
    cfg = fwd.variant_configs(False, 128)[fwd.WIDE_KEY_TILE_VARIANT]
    assert (cfg.tile_n, cfg.o_aliases_q, cfg.num_stages) == (176, True, 2)
    assert cfg.make_kernel().smem_bytes() <= fwd.SMEM_CAPACITY
    assert fwd.WIDE_KEY_TILE_VARIANT not in fwd.variant_configs(True, 128)
    for wrong in (
        fwd.choose_config(torch.bfloat16, 64, 64, False, False),
        fwd.choose_config(torch.bfloat16, 128, 128, False, False, bias_rank=8),
    ):
        with pytest.raises(ValueError, match="176"):
            fwd.wide_key_tiles(wrong)


def test_forward_launcher_rejects_a_config_that_disagrees_with_the_inputs():
    q = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    wrong = fwd.choose_config(torch.bfloat16, 128, 128, False, False)
    with pytest.raises(ValueError, match="head_dim"):
        fwd.attention_fwd(q, q, q, None, None, softmax_scale=0.1, window_left=-1, window_right=-1, config=wrong)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("rank, bias_mma", [(48, True), (64, True), (64, False)])
def test_every_bias_rank_compiles_without_spills(cache_dir, head_dim, rank, bias_mma):
    cfg = fwd.choose_config(torch.bfloat16, head_dim, head_dim, False, True, bias_rank=rank, bias_mma=bias_mma)
    fwd.compile_fwd(cfg)
    counts = precompile.sass_summary(_sass(cfg))
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts} ({cfg})"
    assert not counts["serialized"], "ptxas serialized the wgmmas"


def _slot_of_main_loop(cfg) -> tuple[list[str], list[int], list[int], int]:
    """The forward's main loop, the indices of its HGMMAs before the ping-pong slot and inside it (BAR.SYNC to
    BAR.ARV), and where the slot starts."""
    fwd.compile_fwd(cfg)
    loop = precompile.innermost_loop(_sass(cfg), ("HGMMA", "MUFU.EX2"))
    ops = [precompile.opcode(t) for t in loop]
    slot_start = next(i for i, op in enumerate(ops) if op.startswith("BAR.SYNC"))
    slot_end = next(i for i, op in enumerate(ops) if i > slot_start and op.startswith("BAR.ARV"))
    hgmma = [i for i, op in enumerate(ops) if op.startswith("HGMMA")]
    return loop, [i for i in hgmma if i < slot_start], [i for i in hgmma if slot_start < i < slot_end], slot_start


@pytest.mark.parametrize("rank, causal", [(0, False), (8, False), (8, True), (48, False)])
def test_wgmma_bias_runs_outside_the_pingpong_slot(cache_dir, monkeypatch, rank, causal):
    """Without the bias slice, the wgmma bias (Qf Kf^T, waited for and scaled) goes before the warpgroup's ping-pong
    barrier, not inside its slot, where its latency held both warpgroups' GEMMs up (1.24x the no-bias time on the
    H100): in the main loop, the slot holds S = Q K^T accumulating onto the bias and P V, nothing else."""
    monkeypatch.setenv(fwd.BIAS_SLICE_ENV, "0")
    cfg = fwd.choose_config(torch.bfloat16, 128, 128, False, causal, bias_rank=rank, bias_mma=rank > 0)
    assert not cfg.bias_slice
    loop, before, in_slot, slot_start = _slot_of_main_loop(cfg)
    qk_k_steps, pv_k_steps = 128 // 16, 128 // 16
    assert len(in_slot) == qk_k_steps + pv_k_steps, [loop[i] for i in in_slot]
    zero_init = [i for i in in_slot if ", RZ, !UPT" in loop[i]]
    # S = Q K^T starts from zero without a bias, accumulates onto it with one
    assert zero_init == ([] if rank else in_slot[:1]), [loop[i] for i in zero_init]
    if rank:
        bias_k_steps = cfg.bias_rank // 16
        assert len(before) == bias_k_steps and ", RZ, !UPT" in loop[before[0]], [loop[i] for i in before]
        waits = [i for i in range(before[-1], slot_start) if loop[i].split()[0] == "WARPGROUP.DEPBAR.LE"]
        assert waits and "0x0" in loop[waits[0]], "the bias wgmma is waited for before the slot"
    else:
        assert not before


@pytest.mark.parametrize(
    "rank, window_left, causal, head_dim",
    [(8, False, False, 128), (8, False, True, 128), (5, False, False, 128), (10, False, True, 96), (6, True, True, 64)],
)
def test_bias_slice_is_part_of_the_score_wgmma_group(cache_dir, rank, window_left, causal, head_dim):
    """With the bias slice (the default for bf16 factors of rank <= 10), the main loop has no wgmma outside the slot
    and no multiply of its own: S's group is Q K^T from zero, then the slice's k16 steps (one up to rank 5, two up to
    10), then P V; as many FMULs as without a bias."""
    cfg = fwd.choose_config(torch.bfloat16, head_dim, head_dim, window_left, causal, bias_rank=rank, bias_mma=True)
    assert cfg.bias_slice and cfg.bias_rank == (16 if rank <= 5 else 32)
    loop, before, in_slot, _ = _slot_of_main_loop(cfg)
    qk_k_steps, pv_k_steps, slice_steps = head_dim // 16, cfg.tile_n // 16, cfg.bias_rank // 16
    assert not before, [loop[i] for i in before]
    assert len(in_slot) == qk_k_steps + slice_steps + pv_k_steps, [loop[i] for i in in_slot]
    zero_init = [i for i in in_slot if ", RZ, !UPT" in loop[i]]
    assert zero_init == in_slot[:1], [loop[i] for i in zero_init]
    plain = fwd.choose_config(torch.bfloat16, head_dim, head_dim, window_left, causal)
    plain_loop = _slot_of_main_loop(plain)[0]
    fmul = [sum(precompile.opcode(t).startswith("FMUL") for t in body) for body in (loop, plain_loop)]
    assert fmul[0] == fmul[1], f"FMULs in the main loop: {fmul[0]} with the bias slice, {fmul[1]} without a bias"
    counts = precompile.sass_summary(_sass(cfg))
    assert counts["LDL"] == 0 and counts["STL"] == 0 and not counts["serialized"], counts


@pytest.mark.parametrize("rank", [5, 10])
def test_the_kernels_split_of_each_row_replayed_on_the_host(rank):
    """AttentionFwdSm90.split_factor_row, the kernel's own code, run for all 256 consumer threads over a host tile
    laid out like the kernel's smem (factors in columns [0, rank), zeros up to the slice's width): every row ends as
    the three pieces at columns 0, p and 2p that test_cute_bias_slice's PyTorch replay expects, in bf16, to the bit."""
    from cutlass.cute.runtime import from_dlpack
    from test_cute_bias_slice import LN2, _split_query_factors

    cfg = fwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=rank, bias_mma=True)
    kernel = cfg.make_kernel()
    assert isinstance(kernel, AttentionFwdSm90) and kernel.bias_slice
    width, scale = cfg.bias_rank, 128**-0.5
    scale_log2 = torch.tensor(scale * math.log2(math.e), dtype=torch.float32)
    inv_scale = float(torch.tensor(1.0, dtype=torch.float32) / (scale_log2 * torch.tensor(LN2, dtype=torch.float32)))
    torch.manual_seed(rank)
    qf = (torch.randn(1, 128, 1, rank) * 3).to(torch.bfloat16)
    tile = torch.nn.functional.pad(qf[0, :, 0], (0, width - rank)).view(torch.int16).contiguous()

    @cute.jit
    def probe(raw: cute.Tensor, inv: Float32):
        t = cute.make_tensor(cute.recast_ptr(raw.iterator, dtype=cutlass.BFloat16), raw.layout)
        for thread in cutlass.range(256, unroll=1):
            kernel.split_factor_row(t, Int32(thread % 128), Int32(thread // 128), inv)

    cute.compile(probe, from_dlpack(tile), Float32(inv_scale))(from_dlpack(tile), Float32(inv_scale))
    expected = _split_query_factors(qf, width, scale)[0, :, 0]
    assert torch.equal(tile.view(torch.bfloat16), expected)


def test_second_compile_hits_memory(cache_dir):
    cfg = fwd.choose_config(torch.bfloat16, 64, 64, False, False)
    first = fwd.compile_fwd(cfg)
    start = time.perf_counter()
    assert fwd.compile_fwd(cfg) is first
    assert time.perf_counter() - start < 0.01


def test_warm_disk_load_is_fast(cache_dir):
    cfg = fwd.choose_config(torch.float16, 64, 64, False, True)
    fwd.compile_fwd(cfg)
    fwd.cache().clear_memory()
    start = time.perf_counter()
    fwd.compile_fwd(cfg)
    seconds = time.perf_counter() - start
    record = fwd.cache().records[cfg]
    assert record.source == "disk"
    assert record.cubin is not None
    assert seconds < 0.1, f"warm load took {seconds:.3f}s"
    entries = list((cache_dir / compile_cache.source_fingerprint()).glob("*.o"))
    assert entries, "the cold compile wrote an object file"


def test_disabled_disk_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ATTNKIT_DISABLE_DISK_CACHE", "1")
    cache = compile_cache.CompileCache("test-disabled")
    cfg = fwd.choose_config(torch.bfloat16, 64, 64, False, False)
    cache.get(cfg, lambda options: _build(cfg, options))
    assert not any(tmp_path.rglob("*.o"))
    assert cache.records[cfg].source == "compile"


def _build(cfg, options):
    import cutlass.cute as cute

    return cute.compile(cfg.make_kernel(), *fwd._fake_args(cfg), options=options)


def test_cache_key_rejects_mutable_configs():
    with pytest.raises(TypeError):
        compile_cache.CompileCache("x").get({"not": "frozen"}, lambda options: None, arch="sm_90a")


def test_three_consumer_warpgroups_where_their_registers_hold():
    """192-row tiles at head dim 64 without a left window bound or float32 factors, one head per tile."""
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (False, True):
            assert fwd.choose_config(dtype, 64, 64, False, causal).num_mma_warpgroups == 3
    assert fwd.choose_config(torch.bfloat16, 64, 64, False, True, bias_rank=8, bias_mma=True).tile_m == 192
    two = [
        fwd.choose_config(torch.bfloat16, 64, 64, True, True),  # sliding window: spilled with 160 registers
        fwd.choose_config(torch.bfloat16, 64, 64, False, True, bias_rank=8),  # float32 factors: spilled
        fwd.choose_config(torch.bfloat16, 64, 64, False, True, pack_gqa=8),
        fwd.choose_config(torch.bfloat16, 96, 96, False, False),  # spilled
        fwd.choose_config(torch.bfloat16, 64, 128, False, False),
        fwd.choose_config(torch.bfloat16, 128, 128, False, False),
    ]
    assert all(cfg.num_mma_warpgroups == 2 and cfg.tile_m == 128 for cfg in two), two
    with pytest.raises(ValueError, match="num_mma_warpgroups"):
        AttentionFwdSm90(cutlass.BFloat16, 64, 64, 128, 2, False, False, num_mma_warpgroups=4)


def test_split_mainloop_needs_the_overlapped_one():
    base = fwd.choose_config(torch.bfloat16, 128, 128, False, True)
    assert not base.split_mask_loops and base.intra_wg_overlap
    assert dataclasses.replace(base, split_mask_loops=True).make_kernel().split_mask_loops
    with pytest.raises(ValueError, match="split_mask_loops"):
        dataclasses.replace(base, split_mask_loops=True, intra_wg_overlap=False).make_kernel()


def test_192_row_tiles_can_be_switched_off(monkeypatch):
    """gpu_check's fallback when the three-warpgroup forward fails its smoke test."""
    assert fwd.choose_config(torch.bfloat16, 64, 64, False, False).num_mma_warpgroups == 3
    monkeypatch.setenv(fwd.WIDE_TILE_ENV, "0")
    assert fwd.choose_config(torch.bfloat16, 64, 64, False, False).num_mma_warpgroups == 2
    assert fwd.config_for(torch.bfloat16, 1000, 4, 4, 64, 64, -1, 0).num_mma_warpgroups == 2
    monkeypatch.undo()
    assert fwd.choose_config(torch.bfloat16, 64, 64, False, False).num_mma_warpgroups == 3


# every kind of input the launcher gives three consumer warpgroups, and their 128-row twins
_WIDE_TILE_CONFIGS = [
    fwd.choose_config(dtype, 64, 64, wl, wr, bias_rank=rank, bias_mma=bias_mma)
    for dtype in (torch.bfloat16, torch.float16)
    for wl, wr in ((False, False), (False, True))
    for rank, bias_mma in ((0, False), (16, True), (48, True), (64, True))
]


@pytest.mark.parametrize("cfg", _WIDE_TILE_CONFIGS, ids=precompile.config_name)
def test_three_consumer_warpgroups_compile_without_spills(cache_dir, cfg):
    assert cfg.num_mma_warpgroups == 3
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    counts = precompile.sass_summary(sass)
    assert counts["HGMMA"] > 0 and counts["UTMASTG"] > 0, counts
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts} ({cfg})"
    assert not counts["serialized"], "ptxas serialized the wgmmas"
    # the producer gives registers back to 32, the consumers take 160 (0xa0): 128 * 32 + 384 * 160 = 65536, the
    # 512 x 128 the CTA launches with (with fewer the consumers' TRY_ALLOC would wait forever)
    assert "USETMAXREG.DEALLOC.CTAPOOL 0x20" in sass and "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xa0" in sass
    assert precompile.registers_of(fwd.cache().cubin(cfg)) == 128


def test_two_consumer_warpgroups_launch_with_the_registers_they_redistribute(cache_dir):
    """384 x 168 at launch = 128 * 24 + 256 * 240 after setmaxnreg (0x18, 0xf0)."""
    cfg = fwd.choose_config(torch.bfloat16, 128, 128, False, True)
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in sass and "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0" in sass
    assert precompile.registers_of(fwd.cache().cubin(cfg)) == 168


# head dims above 128: FA4's key tiles (80, 96, 112, 128) with O over Q where it can be, every window kind
_WIDE_HEAD_CONFIGS = [
    fwd.choose_config(torch.bfloat16, d, dv, wl, wr)
    for d, dv in ((192, 192), (192, 128), (256, 256), (256, 128), (128, 256), (192, 256), (64, 192))
    for wl, wr in ((False, False), (False, True), (True, True))
] + [
    fwd.choose_config(torch.float16, 256, 256, False, True),
    fwd.choose_config(torch.float16, 192, 192, False, True),
    fwd.choose_config(torch.bfloat16, 192, 192, False, True, bias_rank=8),
    fwd.choose_config(torch.bfloat16, 256, 256, False, True, bias_rank=16, bias_mma=True),
    fwd.choose_config(torch.bfloat16, 128, 64, False, True, bias_rank=64),  # 128 keys, O over Q
]


@pytest.mark.parametrize("cfg", _WIDE_HEAD_CONFIGS, ids=precompile.config_name)
def test_wide_head_configs_compile_without_spills(cache_dir, cfg):
    assert cfg.tile_n % 16 == 0  # whole k16 slices of P V
    fwd.compile_fwd(cfg)
    counts = precompile.sass_summary(_sass(cfg))
    assert counts["HGMMA"] > 0 and counts["UTMASTG"] > 0, counts
    assert counts["LDL"] == 0 and counts["STL"] == 0, f"register spills to local memory: {counts} ({cfg})"
    assert not counts["serialized"], "ptxas serialized the wgmmas"


# the bf16 configs the launcher gives the split mainloop: each one's wgmmas were serialized in one loop
_SPLIT_DEFAULT_CONFIGS = (
    [fwd.config_for(torch.bfloat16, sq, 16 * group, 16, 192, 64, 64, 16) for sq, group in ((4096, 1), (1, 8))]
    + [
        fwd.config_for(torch.bfloat16, 4096, 16, 16, 256, dv, -1, 0, rank, True)
        for dv in (64, 96, 128)
        for rank in (16, 48, 64)
    ]
    + [fwd.config_for(torch.bfloat16, 1, 16 * group, 16, 256, 128, -1, 0) for group in (2, 8, 128)]
)


@pytest.mark.parametrize("cfg", _SPLIT_DEFAULT_CONFIGS, ids=precompile.config_name)
def test_split_mainloop_where_one_loop_was_serialized(cache_dir, cfg):
    assert cfg.split_mask_loops
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    counts = precompile.sass_summary(sass)
    assert not counts["serialized"], f"ptxas serialized the wgmmas ({cfg})"
    loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
    assert loop and not any(precompile.opcode(t).startswith(("LDL", "STL")) for t in loop), "a spill in the loop"
    if cfg.head_dim_v == 64 or cfg.pack_gqa > 1:
        assert counts["LDL"] == 0 and counts["STL"] == 0, counts
    else:  # one register spilled at a tile's start or end, outside the main loop (found so, 2026-11-27)
        assert counts["LDL"] + counts["STL"] <= 6, counts


def test_split_mainloop_only_where_it_was_needed(monkeypatch):
    """The fp16 twins of those configs were not serialized, nor their neighbours (a left bound only, dv = 192);
    ATTNKIT_SM90_FWD_SPLIT_LOOPS=0 (gpu_check, when the split mainloop fails its smoke group) gives them one loop."""
    split = lambda *a, **kw: fwd.config_for(*a, **kw).split_mask_loops  # noqa: E731
    assert split(torch.bfloat16, 4096, 16, 16, 192, 64, 64, 16)
    assert not split(torch.float16, 4096, 16, 16, 192, 64, 64, 16)
    assert not split(torch.bfloat16, 4096, 16, 16, 192, 64, 64, -1)
    assert not split(torch.bfloat16, 4096, 16, 16, 192, 64, 64, 16, 8)
    assert split(torch.bfloat16, 4096, 16, 16, 256, 128, -1, 0, 16, True)
    assert not split(torch.float16, 4096, 16, 16, 256, 128, -1, 0, 16, True)
    assert not split(torch.bfloat16, 4096, 16, 16, 256, 192, -1, 0, 16, True)
    assert not split(torch.bfloat16, 4096, 16, 16, 256, 128, -1, 0, 16, False)
    assert not split(torch.bfloat16, 4096, 16, 16, 256, 128, 64, 16, 16, True)
    # d = 256 / dv = 128 causal without a bias: packed GQA heads only
    assert split(torch.bfloat16, 1, 32, 16, 256, 128, -1, 0) and not split(
        torch.bfloat16, 4096, 32, 16, 256, 128, -1, 0
    )
    assert not split(torch.float16, 1, 32, 16, 256, 128, -1, 0)
    monkeypatch.setenv(fwd.SPLIT_LOOPS_ENV, "0")
    assert not split(torch.bfloat16, 4096, 16, 16, 192, 64, 64, 16)
    assert not split(torch.bfloat16, 4096, 16, 16, 256, 128, -1, 0, 16, True)


def test_key_tiles_above_head_dim_128():
    def tile(d, dv, wl=False, **kw):
        cfg = fwd.choose_config(torch.bfloat16, d, dv, wl, True, **kw)
        return cfg.tile_n, cfg.o_aliases_q

    assert tile(192, 192) == (112, True) and tile(192, 128) == (128, True) and tile(192, 192, True) == (96, True)
    assert tile(256, 256) == (80, True) and tile(256, 256, True) == (64, True)
    # O cannot go over a narrower Q: a separate O buffer, with the key tile that leaves room for it
    assert tile(128, 256) == (80, False) and tile(64, 192) == (112, False) and tile(192, 256) == (64, False)
    # the bias factors take the rest: 64-row, then 32-row key tiles
    assert tile(256, 256, bias_rank=64) == (32, True)


def test_smem_model_matches_the_compiled_struct():
    """choose_config fits configs to the 227 KiB by smem_bytes(): it must be the size the launch asks for."""
    for cfg in (
        fwd.choose_config(torch.bfloat16, 128, 128, False, True),
        fwd.choose_config(torch.bfloat16, 64, 64, False, True, bias_rank=8),
        fwd.choose_config(torch.bfloat16, 64, 64, False, False, bias_rank=64, bias_mma=True),
        fwd.choose_config(torch.bfloat16, 256, 256, False, False),
        fwd.choose_config(torch.bfloat16, 192, 192, False, True),
        fwd.choose_config(torch.bfloat16, 128, 256, False, True, bias_rank=8),
        fwd.variant_configs(True, 128)[fwd.DYNAMIC_VARIANT],
        fwd.variant_configs(False, 128)[fwd.WIDE_KEY_TILE_VARIANT],
    ):
        kernel = cfg.make_kernel()
        cute.compile(kernel, *fwd._fake_args(cfg), options="--gpu-arch sm_90a")
        assert kernel.shared_storage.size_in_bytes() == kernel.smem_bytes() <= fwd.SMEM_CAPACITY, cfg


def test_config_choice():
    cfg = fwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=5)
    assert cfg.bias_rank == 8  # zero-padded to a multiple of 4
    assert cfg.make_kernel().smem_bytes() <= fwd.SMEM_CAPACITY
    big = fwd.choose_config(torch.bfloat16, 128, 128, False, False, bias_rank=64)
    assert big.make_kernel().smem_bytes() <= fwd.SMEM_CAPACITY
    with pytest.raises(ValueError):
        fwd.choose_config(torch.bfloat16, 80, 80, False, False)
    with pytest.raises(TypeError):
        fwd.choose_config(torch.float32, 64, 64, False, False)


def test_gqa_packing_where_a_tile_would_be_mostly_empty():
    assert fwd.pack_gqa_for(8, 1, 0) == 8  # decoding
    assert fwd.pack_gqa_for(4, 64, 0) == 4
    assert fwd.pack_gqa_for(4, 65, 0) == 1  # a half-full tile or more: one head per tile (not measured yet)
    assert fwd.pack_gqa_for(1, 1, 0) == 1
    assert fwd.pack_gqa_for(6, 1, 0) == 1  # 6 does not divide the 128-row tile
    assert fwd.pack_gqa_for(8, 1, 8) == 1  # no packing with a bias
    with pytest.raises(ValueError, match="pack_gqa"):
        fwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=8, pack_gqa=4).make_kernel()


def test_causal_sections_are_whole_groups_whose_kv_fits_l2():
    # 16k keys, d = 128, bf16: 8 MiB of K/V per head -> four heads in 32 MiB
    assert fwd.heads_per_section(16384, 128, 128, 2, 1, 64) == 4
    for group in (2, 8, 32):
        per = fwd.heads_per_section(16384, 128, 128, 2, group, 256)
        assert per % group == 0 and per >= group
    # K/V larger than the budget: one group per section; short keys: every head in one section
    assert fwd.heads_per_section(1 << 20, 256, 256, 2, 4, 64) == 4
    assert fwd.heads_per_section(128, 64, 64, 2, 1, 48) == 48


def test_causal_forwards_launch_one_cta_per_tile():
    """Persistent (one CTA per SM) where every tile costs the same; one CTA per tile, longest first, where they differ;
    schedule.persistent forces either for the benchmark's variant and restores the choice after."""
    from attnkit.cute import schedule

    assert schedule.forward_ctas(132, longest_first=False) == 132
    assert schedule.forward_ctas(132, longest_first=True) == schedule.ONE_TILE_PER_CTA
    # the kernel's grid is min(tiles, max_ctas), an Int32
    assert schedule.ONE_TILE_PER_CTA == 2**31 - 1
    with schedule.persistent(True):
        assert schedule.forward_ctas(132, longest_first=True) == 132
        with schedule.persistent(False):
            assert schedule.forward_ctas(132, longest_first=False) == schedule.ONE_TILE_PER_CTA
        assert schedule.forward_ctas(132, longest_first=False) == 132
    assert schedule.forward_ctas(132, longest_first=True) == schedule.ONE_TILE_PER_CTA
    # the dynamic schedule is persistent whatever else says
    with schedule.persistent(False):
        assert schedule.forward_ctas(132, longest_first=True, dynamic=True) == 132


def test_exp2_exponent_trick_in_float32_bits():
    """exp2_poly's construction, replayed on float32 bit patterns: clamp at -126, floor(x) from the low bits of
    x + 1.5 * 2^23 rounded down, 2^frac by Horner, then floor(x) << 23 added to the bits of 2^frac."""
    import numpy as np
    from attnkit.kernels.cute.common.fast_exp2 import _ROUND_MAGIC, EXP2_POLY

    x = np.concatenate([np.linspace(-140, 127.9, 200001), [-np.inf, -126.0, -125.5, 0.0, 127.0]]).astype(np.float32)
    xc = np.maximum(x, np.float32(-126.0))
    shifted = np.float32(_ROUND_MAGIC) + np.floor(xc)  # add.rm: one ulp is 1 at 1.5 * 2^23
    frac = xc - (shifted - np.float32(_ROUND_MAGIC))
    for degree, bound in ((3, 8e-5), (4, 3e-6)):
        coeffs = [np.float32(c) for c in EXP2_POLY[degree]]
        p = coeffs[degree]
        for c in reversed(coeffs[:degree]):
            p = (p * frac + c).astype(np.float32)
        bits = (p.view(np.uint32).astype(np.uint64) + (shifted.view(np.uint32).astype(np.uint64) << 23)) % 2**32
        got = bits.astype(np.uint32).view(np.float32).astype(np.float64)
        want = np.exp2(x.astype(np.float64))
        normal = x >= -125
        assert np.all(np.abs(got[normal] / want[normal] - 1) < bound), degree
        # below the normal range (masked scores are -inf): about 2^-126, never inf or NaN
        assert np.all(np.isfinite(got)) and np.all(got[~normal] <= 2.0**-125) and np.all(got >= 0)


def test_exp2_polynomials_meet_their_error_bound():
    from attnkit.kernels.cute.common.fast_exp2 import EXP2_POLY

    x = torch.linspace(0, 1, 10001, dtype=torch.float64)
    for degree, bound in ((3, 8e-5), (4, 3e-6)):
        coeffs = torch.tensor(EXP2_POLY[degree], dtype=torch.float32).double()
        p = sum(c * x**i for i, c in enumerate(coeffs))
        assert ((p / 2**x) - 1).abs().max().item() < bound


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank", cute_gpu_cases.FWD_CASES)
@pytest.mark.parametrize("dtype", cute_gpu_cases.FWD_DTYPES)
def test_numerics_against_float64(b, sq, sk, h, hkv, d, wl, wr, rank, dtype):
    _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, dtype)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank", cute_gpu_cases.FWD_TWO_WG_CASES)
def test_numerics_with_two_consumer_warpgroups_where_the_default_takes_three(b, sq, sk, h, hkv, d, wl, wr, rank):
    """The 128-row variant bench_variants times against the default 192-row tile at head dim 64."""
    cfg = fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0)
    if not fwd.wide_tiles_enabled():
        pytest.skip(f"{fwd.WIDE_TILE_ENV}=0: every forward already takes two consumer warpgroups")
    assert cfg.num_mma_warpgroups == 3
    _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, torch.bfloat16, config=cute_gpu_cases.two_warpgroups(cfg))


# the forward variants bench_variants times, each with its cases: (config from the launcher's, cases, whether
# gpu_check's smoke test left it in, the variable it sets when not)
_FWD_VARIANTS = {
    # FwdConfig.split_mask_loops: interior key blocks in a loop of their own
    "split mainloop": (
        cute_gpu_cases.split_loops,
        cute_gpu_cases.FWD_CASES,
        fwd.split_loops_enabled,
        fwd.SPLIT_LOOPS_ENV,
    ),
    # FA3's dynamic persistent schedule: every tile computed once (NaN-poisoned outputs)
    "dynamic schedule": (
        cute_gpu_cases.dynamic_schedule,
        cute_gpu_cases.FWD_DYNAMIC_CASES,
        fwd.dynamic_schedule_enabled,
        fwd.DYNAMIC_ENV,
    ),
    # FA3's non-causal d = 128 key tile, O over Q
    "176-key tiles": (
        cute_gpu_cases.wide_key_tiles,
        cute_gpu_cases.FWD_WIDE_KEY_TILE_CASES,
        fwd.wide_key_tiles_enabled,
        fwd.WIDE_KEY_TILE_ENV,
    ),
}


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("variant, case", [(v, c) for v, spec in _FWD_VARIANTS.items() for c in spec[1]])
def test_numerics_of_the_forward_variants(variant, case):
    """The same results as the float64 reference, bf16, with each variant's config."""
    make, _, enabled, env = _FWD_VARIANTS[variant]
    if not enabled():
        pytest.skip(f"{env}=0: the {variant} failed gpu_check's smoke test")
    b, sq, sk, h, hkv, d, wl, wr, rank = case
    cfg = make(fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0))
    _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, torch.bfloat16, config=cfg)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank", cute_gpu_cases.FWD_SCHEDULE_CASES)
@pytest.mark.parametrize("persistent", [True, False])
def test_numerics_persistent_and_one_cta_per_tile(b, sq, sk, h, hkv, d, wl, wr, rank, persistent):
    """Both schedules of the forward (the launcher picks one; bench_variants times the other) with more tiles than
    SMs, so that persistent CTAs take several tiles each."""
    from attnkit.cute import schedule

    tiles = b * h * -(-sq // fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr).tile_m)
    assert tiles > torch.cuda.get_device_properties(0).multi_processor_count
    with schedule.persistent(persistent):
        _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("d, dv, wr", cute_gpu_cases.FWD_DV_CASES)
def test_numerics_with_dv_other_than_d(d, dv, wr):
    b, sq, sk, h, hkv = cute_gpu_cases.DV_SHAPE
    _check_forward(b, sq, sk, h, hkv, d, -1, wr, 0, torch.bfloat16, dv=dv)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, dv, wl, wr, rank", cute_gpu_cases.FWD_SPLIT_DEFAULT_CASES)
def test_numerics_of_the_default_split_mainloop(b, sq, sk, h, hkv, d, dv, wl, wr, rank):
    """The launcher's configs with the split mainloop by default; under gpu_check's ATTNKIT_SM90_FWD_SPLIT_LOOPS=0
    the same cases run one loop."""
    cfg = fwd.config_for(torch.bfloat16, sq, h, hkv, d, dv, wl, wr, abs(rank), rank < 0)
    assert cfg.split_mask_loops == fwd.split_loops_enabled()
    _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, torch.bfloat16, dv=dv)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("b, sq, sk, h, hkv, d, wl, wr, rank", cute_gpu_cases.FWD_BIAS_SLICE_CASES)
@pytest.mark.parametrize("bias_slice", [True, False])
def test_numerics_of_the_bias_slice_and_without_it(b, sq, sk, h, hkv, d, wl, wr, rank, bias_slice):
    """The bias as a K-slice of S (query factors split in smem, key factors at three columns) and the separate bias
    wgmma it replaces, on the same inputs; under gpu_check's ATTNKIT_SM90_FWD_BIAS_SLICE=0 only the latter."""

    def make():
        return fwd.config_for(torch.bfloat16, sq, h, hkv, d, d, wl, wr, abs(rank), rank < 0)

    if bias_slice and not fwd.bias_slices_enabled():
        pytest.skip(f"{fwd.BIAS_SLICE_ENV}=0: the bias slice failed gpu_check's smoke test")
    cfg = make() if bias_slice else cute_gpu_cases.without_bias_slice(make)
    assert cfg.bias_slice == bias_slice
    _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, torch.bfloat16, config=cfg)


def _check_forward(b, sq, sk, h, hkv, d, wl, wr, rank, dtype, config=None, dv=None):
    """The CuTe forward on one case against the float64 reference (the 2x rule), out and lse, outputs allocated
    over NaN-poisoned memory, rows with no visible key zero with lse = -inf."""
    from attnkit.reference.attention import attention_forward
    from numerics import assert_2x

    dev = "cuda"
    dv = dv or d
    q, k, v, qf, kf = cute_gpu_cases.make_inputs(b, sq, sk, h, hkv, d, dv, rank, dtype)
    scale = 1.0 / math.sqrt(d)
    kw = dict(softmax_scale=scale, window_left=wl, window_right=wr)
    # poison: the outputs are allocated from the caching allocator's freed NaN blocks
    poison = [
        torch.full((b, sq, h, dv), float("nan"), device=dev, dtype=dtype),
        torch.full((b, h, sq), float("nan"), device=dev),
    ]
    del poison
    out, lse = fwd.attention_fwd(q, k, v, qf, kf, **kw, config=config)
    torch.cuda.synchronize()
    out64, lse64 = attention_forward(q, k, v, qf, kf, compute_dtype=torch.float64, **kw)
    out_lp, lse_lp = attention_forward(q, k, v, qf, kf, compute_dtype=dtype, **kw)
    assert_2x("out", out, out64, out_lp, dtype)
    empty = torch.isneginf(lse64)
    assert torch.equal(torch.isneginf(lse), empty), "rows with no visible key must have lse = -inf"
    if empty.any():
        assert (out[empty.transpose(1, 2)] == 0).all(), "rows with no visible key must output zeros"
    finite = ~empty
    assert_2x("lse", lse[finite], lse64[finite], lse_lp[finite], torch.float32)


# Host-side probes: @cute.jit code without device-only instructions runs on the CPU, so the mask, the
# tile order and the P-in-registers layout of the kernel are checked here exactly, thread by thread.

_TILE_M, _TILE_N = 128, 128
# the arch is otherwise read from CUTE_DSL_ARCH when cutlass is first imported (sm_100a without a GPU)
_HOPPER = "--gpu-arch sm_90a"
_COMPILED_MASK_PROBES = {}


@cute.jit
def mask_probe(
    vals: cute.Tensor,  # (threads, n_elem) float32: 0 or -inf after masking
    coords: cute.Tensor,  # (threads, n_elem, 2) int32: (row, col) within the tile
    info: cute.Tensor,  # (2 + 3 warpgroups,) int32: n_min, n_max, needs_mask per WG, (right, left) per WG
    seqlen_q: Int32,
    seqlen_k: Int32,
    window_left: Int32,
    window_right: Int32,
    m_block: Int32,
    n_block: Int32,
    has_left: cutlass.Constexpr,
    has_right: cutlass.Constexpr,
    pack: cutlass.Constexpr,
    tile_m: cutlass.Constexpr,  # 64 rows per consumer warpgroup, as in the kernel
    tile_n: cutlass.Constexpr,
):
    nwg = tile_m // 64
    tiled_mma = sm90.make_tiled_mma(cutlass.BFloat16, "K", "K", tile_n, num_warpgroups=nwg)
    mask = AttentionMask(seqlen_q, seqlen_k, window_left, window_right, has_left, has_right, tile_n, pack)
    row_start = m_block * tile_m
    n_min, n_max = mask.n_block_range(row_start, row_start + tile_m)
    info[0] = n_min
    info[1] = n_max
    for wg in cutlass.range_constexpr(nwg):
        info[2 + wg] = Int32(mask.tile_needs_mask(row_start + 64 * wg, row_start + 64 * (wg + 1), n_block))
        right, left = mask.boundary_blocks(row_start + 64 * wg, row_start + 64 * (wg + 1), n_min, n_max)
        info[2 + nwg + 2 * wg] = right
        info[3 + nwg + 2 * wg] = left
    acc_shape = tiled_mma.get_slice(0).partition_shape_C((tile_m, tile_n))
    for t in cutlass.range(128 * nwg):
        tScS = tiled_mma.get_slice(t).partition_C(cute.make_identity_tensor((tile_m, tile_n)))
        acc = cute.make_tensor(vals[t, None].iterator, cute.make_layout(acc_shape))
        for i in cutlass.range_constexpr(cute.size(acc)):
            acc[i] = Float32(0.0)
            coords[t, i, 0] = tScS[i][0]
            coords[t, i, 1] = tScS[i][1]
        mask.apply(acc, tScS, row_start, n_block)


@cute.jit
def operand_probe(out: cute.Tensor, tile_n: cutlass.Constexpr, nwg: cutlass.Constexpr):  # (threads, n_elem, 4)
    mma_qk = sm90.make_tiled_mma(cutlass.BFloat16, "K", "K", tile_n, num_warpgroups=nwg)
    mma_pv = sm90.make_tiled_mma(cutlass.BFloat16, "K", "MN", 128, a_in_regs=True, num_warpgroups=nwg)
    for t in cutlass.range(128 * nwg):
        cS = mma_qk.get_slice(t).partition_C(cute.make_identity_tensor((64 * nwg, tile_n)))
        cS_as_A = acc_view_as_operand_a(cS)
        cA = mma_pv.get_slice(t).partition_A(cute.make_identity_tensor((64 * nwg, tile_n)))
        for i in cutlass.range_constexpr(cute.size(cA)):
            out[t, i, 0] = cS_as_A[i][0]
            out[t, i, 1] = cS_as_A[i][1]
            out[t, i, 2] = cA[i][0]
            out[t, i, 3] = cA[i][1]


@cute.jit
def schedule_probe(
    out: cute.Tensor,  # (tiles, 3) int32: (m_block, head, batch) of each tile index
    m_blocks: Int32,
    heads: Int32,
    batch: Int32,
    heads_per_section: Int32,
    longest_first: cutlass.Constexpr,
):
    sched = PersistentTileScheduler(m_blocks, heads, batch, longest_first, heads_per_section)
    for t in cutlass.range(sched.num_tiles()):
        m, h, b = sched.decode(t)
        out[t, 0] = m
        out[t, 1] = h
        out[t, 2] = b


_BIAS_KERNEL = AttentionFwdSm90(cutlass.BFloat16, 128, 128, _TILE_N, 2, False, True, bias_rank=8)


@cute.jit
def bias_probe(
    vals: cute.Tensor,  # (256, n_elem) float32 scores in, scaled + biased scores out
    coords: cute.Tensor,  # (256, n_elem, 2) int32
    sQf: cute.Tensor,  # (128, r) float32
    sKf: cute.Tensor,  # (tile_n, r) float32
    scale_log2: Float32,
):
    tiled_mma = sm90.make_tiled_mma(cutlass.BFloat16, "K", "K", _TILE_N, num_warpgroups=2)
    acc_shape = tiled_mma.get_slice(0).partition_shape_C((_TILE_M, _TILE_N))
    for t in cutlass.range(256):
        tScS = tiled_mma.get_slice(t).partition_C(cute.make_identity_tensor((_TILE_M, _TILE_N)))
        acc = cute.make_tensor(vals[t, None].iterator, cute.make_layout(acc_shape))
        for i in cutlass.range_constexpr(cute.size(acc)):
            coords[t, i, 0] = tScS[i][0]
            coords[t, i, 1] = tScS[i][1]
        _BIAS_KERNEL.add_lowrank_bias(acc, tScS, sQf, sKf, scale_log2)


class _HostSoftmax(OnlineSoftmax):
    """The kernel's online softmax with each thread's two rows standing for whole rows (no quad)."""

    fmax = staticmethod(lambda a, b: cutlass.max(a, b))
    quad_max = staticmethod(lambda x: x)
    quad_sum = staticmethod(lambda x: x)
    rcp = staticmethod(lambda x: Float32(1.0) / x)
    vote_any = staticmethod(lambda p: p)


_SOFTMAX_V, _SOFTMAX_STEPS = 4, 3  # an accumulator of 2 rows x 8 columns, 3 key blocks


@cute.jit
def softmax_probe(
    scores: cute.Tensor,  # (steps, 4 V) float32: S in, P out, in accumulator order
    scales: cute.Tensor,  # (steps, 2) float32: the factor for O returned by each step
    stats: cute.Tensor,  # (2, 2) float32: per row (factor for O, lse)
    scale_log2: Float32,
    threshold: cutlass.Constexpr,
):
    softmax = _HostSoftmax(scale_log2, 2, rescale_threshold=threshold)
    softmax.reset()
    for i in cutlass.range_constexpr(_SOFTMAX_STEPS):
        acc = cute.make_tensor(scores[i, None].iterator, cute.make_layout(((2, 2, _SOFTMAX_V), 1, 1)))
        row_scale = softmax.step(acc, is_first=i == 0)
        for r in cutlass.range_constexpr(2):
            scales[i, r] = row_scale[r]
    out_scale, lse = softmax.finalize()
    for r in cutlass.range_constexpr(2):
        stats[r, 0] = out_scale[r]
        stats[r, 1] = lse[r]


@pytest.fixture(scope="module")
def probes():
    return mask_probe, operand_probe, schedule_probe


_MASK_SHAPES = [(1, 1000), (77, 1000), (1000, 77), (300, 300), (129, 257)]
_MASK_WINDOWS = [(-1, -1), (-1, 0), (100, 0), (64, 16), (5, -1), (0, 0)]


@pytest.mark.parametrize("pack", [1, 4])
@pytest.mark.parametrize("sq, sk", _MASK_SHAPES)
@pytest.mark.parametrize("wl, wr", _MASK_WINDOWS)
def test_mask_and_block_range_match_the_visibility_rule(probes, sq, sk, wl, wr, pack):
    """pack = G: tile row r is query position r // G (the G heads of a GQA group packed per tile)."""
    _check_mask(probes[0], sq, sk, wl, wr, pack, _TILE_M, _TILE_N)


@pytest.mark.parametrize("sq, sk", _MASK_SHAPES)
@pytest.mark.parametrize("wl, wr", [(-1, -1), (-1, 0), (0, 0)])
def test_mask_and_block_range_with_192_row_tiles(probes, sq, sk, wl, wr):
    """Three consumer warpgroups: the tile's key blocks and each warpgroup's boundary test over 192 rows."""
    _check_mask(probes[0], sq, sk, wl, wr, 1, 192, _TILE_N)


@pytest.mark.parametrize("tile_n", [80, 96, 112])
@pytest.mark.parametrize("sq, sk", [(77, 1000), (1000, 77), (129, 257)])
@pytest.mark.parametrize("wl, wr", [(-1, -1), (-1, 0), (64, 16)])
def test_mask_and_block_range_with_key_tiles_above_head_dim_128(probes, sq, sk, wl, wr, tile_n):
    """Key tiles that are not powers of two (head dims 192 and 256): block ranges and masks by division."""
    _check_mask(probes[0], sq, sk, wl, wr, 1, _TILE_M, tile_n)


def _check_mask(mask_probe, sq, sk, wl, wr, pack, tile_m, tile_n):
    from cutlass.cute.runtime import from_dlpack

    nwg = tile_m // 64
    threads = 128 * nwg
    n_elem = tile_m * tile_n // threads
    vals = torch.zeros(threads, n_elem)
    coords = torch.zeros(threads, n_elem, 2, dtype=torch.int32)
    info = torch.zeros(2 + 3 * nwg, dtype=torch.int32)

    def args(m, n):
        return (from_dlpack(vals), from_dlpack(coords), from_dlpack(info), sq, sk, max(wl, 0), max(wr, 0), m, n)

    key = (wl >= 0, wr >= 0, pack, tile_m, tile_n)
    if key not in _COMPILED_MASK_PROBES:
        _COMPILED_MASK_PROBES[key] = cute.compile(mask_probe, *args(0, 0), *key, options=_HOPPER)
    run = _COMPILED_MASK_PROBES[key]
    # one row per (position, head of the group), head fastest
    vis = visible_mask(sq, sk, wl, wr, "cpu").repeat_interleave(pack, dim=0)
    num_key_blocks = math.ceil(sk / tile_n)
    for m in range(math.ceil(pack * sq / tile_m)):
        run(*args(m, 0))
        n_min, n_max = int(info[0]), int(info[1])
        assert 0 <= n_min and n_max <= num_key_blocks
        seen = vis[m * tile_m : (m + 1) * tile_m].any(0).nonzero()
        if len(seen):
            assert n_min <= int(seen.min()) // tile_n and n_max > int(seen.max()) // tile_n
        bounds = [(int(info[2 + nwg + 2 * wg]), int(info[3 + nwg + 2 * wg])) for wg in range(nwg)]
        for n in range(n_min, n_max):
            run(*args(m, n))
            rows = coords[..., 0].long() + m * tile_m
            cols = coords[..., 1].long() + n * tile_n
            live = rows < pack * sq
            expect = torch.zeros_like(live)
            inside = live & (cols < sk)
            expect[inside] = vis[rows[inside], cols[inside]]
            assert torch.equal((vals == 0) & live, expect), f"m_block {m}, n_block {n}"
            for wg in range(nwg):
                part = slice(128 * wg, 128 * (wg + 1))
                # warpgroup wg's threads hold rows 64 wg .. 64 wg + 63 of the tile
                assert ((rows[part] - m * tile_m) // 64 == wg).all()
                if (live[part] & ~expect[part]).any():
                    assert info[2 + wg], f"boundary tile (m {m}, n {n}, warpgroup {wg}) left unmasked"
                    # and the split mainloop's interior loop (no mask code) never takes it: iteration j = n_max-1-n
                    right, left = bounds[wg]
                    j = n_max - 1 - n
                    assert not right <= j < n_max - n_min - left, (
                        f"boundary tile (m {m}, n {n}, warpgroup {wg}) among the interior blocks {bounds[wg]}"
                    )


@pytest.mark.parametrize("tile_n, nwg", [(64, 2), (80, 2), (112, 2), (128, 2), (128, 3)])
def test_p_stays_in_registers_with_the_pv_operand_layout(probes, tile_n, nwg):
    from cutlass.cute.runtime import from_dlpack

    out = torch.zeros(128 * nwg, 64 * tile_n // 128, 4, dtype=torch.int32)
    cute.compile(probes[1], from_dlpack(out), tile_n, nwg, options=_HOPPER)(from_dlpack(out))
    assert torch.equal(out[..., :2], out[..., 2:]), "softmax output element != P·V A-operand element"
    # each warpgroup's threads own 64 rows of the tile, every (row, col) once
    rows, cols = out[..., 0].long(), out[..., 1].long()
    assert torch.equal(rows // 64, torch.arange(128 * nwg).unsqueeze(1).expand_as(rows) // 128)
    assert torch.equal((rows * tile_n + cols).flatten().sort()[0], torch.arange(64 * nwg * tile_n))


@cute.jit
def first_warp_probe(out: cute.Tensor, group_threads: cutlass.Constexpr):  # (threads,) int32
    for t in cutlass.range(cute.size(out)):
        out[t] = Int32(sm90.in_first_warp(t, group_threads))


@pytest.mark.parametrize("threads, group", [(256, 256), (384, 384), (256, 128)])
def test_tma_store_guards_take_whole_warps(threads, group):
    """The O store (group: every consumer thread) and the dQ reduce-add (group: a warpgroup) are issued under
    sm90.in_first_warp: exactly the first warp of each group, all 32 lanes (cute.copy elects one itself)."""
    from cutlass.cute.runtime import from_dlpack

    out = torch.zeros(threads, dtype=torch.int32)
    cute.compile(first_warp_probe, from_dlpack(out), group, options=_HOPPER)(from_dlpack(out))
    lanes = torch.arange(threads)
    assert torch.equal(out.bool(), lanes % group < 32)
    warps = out.view(-1, 32)
    assert torch.equal(warps.all(1), warps.any(1)), "a warp split by the guard"


@pytest.mark.parametrize("longest_first", [False, True])
@pytest.mark.parametrize("heads_per_section", [1, 2, 4, 6, 100])
def test_persistent_schedule_covers_every_tile_once(probes, longest_first, heads_per_section):
    from cutlass.cute.runtime import from_dlpack

    m_blocks, heads, batch = 5, 3, 2
    out = torch.zeros(m_blocks * heads * batch, 3, dtype=torch.int32)
    args = (m_blocks, heads, batch, heads_per_section)
    key = ("schedule", longest_first)
    if key not in _COMPILED_MASK_PROBES:
        _COMPILED_MASK_PROBES[key] = cute.compile(probes[2], from_dlpack(out), *args, longest_first, options=_HOPPER)
    _COMPILED_MASK_PROBES[key](from_dlpack(out), *args)
    assert len({tuple(r) for r in out.tolist()}) == len(out)
    assert out[:, 0].max() == m_blocks - 1 and out[:, 1].max() == heads - 1 and out[:, 2].max() == batch - 1
    if not longest_first:
        return
    # sections of heads_per_section consecutive (batch, head) pairs, in order; last query block first
    # inside each, the section's heads side by side
    bh = out[:, 2] * heads + out[:, 1]
    section = bh // min(heads_per_section, heads * batch)
    assert torch.equal(section, section.sort().values), "sections run one after another"
    for s in section.unique():
        rows = out[section == s]
        assert torch.equal(rows[:, 0], rows[:, 0].sort(descending=True).values), "last query blocks first"
        size = len(rows) // m_blocks
        assert torch.equal(bh[section == s][:size].sort().values, bh[section == s][:size]), "heads in order"


def _packed_view_probe(kernel):
    @cute.jit
    def probe(
        q: cute.Tensor,  # (b, s, h, d) float32
        lse: cute.Tensor,  # (b, h, s) float32
        q_out: cute.Tensor,  # (G * s, d, h / G, b): what the packed view reads at each (tile row, col, head, batch)
        lse_out: cute.Tensor,  # (b, h / G, G * s)
    ):
        packed = kernel.to_packed(q)
        packed_lse = kernel.lse_view(lse)
        for r in cutlass.range(q_out.shape[0]):
            for c in cutlass.range(q_out.shape[1]):
                for h in cutlass.range(q_out.shape[2]):
                    for b in cutlass.range(q_out.shape[3]):
                        q_out[r, c, h, b] = packed[r, c, h, b]
                        lse_out[b, h, r] = packed_lse[b, h, r]

    return probe


@pytest.mark.parametrize("group", [1, 2, 8])
def test_packed_gqa_views_put_the_group_heads_in_the_tile_rows(group):
    """Tile row r of K/V head j reads query position r // G of query head j * G + r % G, for Q, O and lse."""
    from cutlass.cute.runtime import from_dlpack

    kernel = AttentionFwdSm90(cutlass.BFloat16, 64, 64, 128, 2, False, True, pack_gqa=group)
    b, s, h, d = 2, 5, 2 * group, 3
    q = torch.arange(b * s * h * d, dtype=torch.float32).reshape(b, s, h, d)
    lse = torch.arange(b * h * s, dtype=torch.float32).reshape(b, h, s) + 0.5
    q_out = torch.zeros(group * s, d, h // group, b)
    lse_out = torch.zeros(b, h // group, group * s)
    args = [from_dlpack(t) for t in (q, lse, q_out, lse_out)]
    cute.compile(_packed_view_probe(kernel), *args, options=_HOPPER)(*args)
    rows = torch.arange(group * s)
    for j in range(h // group):
        heads = j * group + rows % group
        expect_q = q[:, rows // group, heads, :]  # (b, G * s, d)
        assert torch.equal(q_out[:, :, j, :].permute(2, 0, 1), expect_q)
        assert torch.equal(lse_out[:, j, :], lse[:, heads, rows // group])


def _layout_signature(t) -> str:
    """'(?,?,?,?):(?{i64},?{i64},?{i64},1)' for fake and runtime tensors alike (divisibility dropped)."""
    import re

    text = str(t).replace(" ", "")
    text = re.sub(r"\?\{div=\d+\}", "?", text)
    text = re.sub(r"\?\{i64div=\d+\}", "?{i64}", text)
    shapes = re.findall(r"\((?:[^()]|\([^()]*\))*\)", text)
    return ":".join(shapes[-2:])


@pytest.mark.parametrize("factor_dtype", [None, torch.float32, torch.bfloat16])
def test_runtime_arguments_match_the_compiled_signature(factor_dtype):
    """The launcher's runtime tensors must marshal exactly like the fake tensors the kernel was built on."""
    q = torch.zeros(2, 100, 4, 64, dtype=torch.bfloat16)
    lse = torch.zeros(2, 4, 100)
    rank = 0 if factor_dtype is None else 8
    bias_mma = factor_dtype == torch.bfloat16
    cfg = fwd.choose_config(torch.bfloat16, 64, 64, False, False, bias_rank=rank, bias_mma=bias_mma)
    fakes = fwd._fake_args(cfg)
    runtime = [fwd._to_cute(q)] * 4 + [fwd._to_cute(lse, align=4)]
    if rank:
        factor = prepare_factor(torch.zeros(2, 100, 1, 5), cfg.bias_rank, factor_dtype)
        runtime += [fwd._to_cute(factor)] * 2
    for fake, real in zip(fakes, runtime, strict=False):
        assert _layout_signature(fake) == _layout_signature(real), (str(fake), str(real))
        assert fake.element_type == real.element_type


def test_dynamic_schedule_counter_matches_the_compiled_signature():
    cfg = fwd.variant_configs(True, 128)[fwd.DYNAMIC_VARIANT]
    fake = fwd._fake_args(cfg)[7]
    real = fwd._to_cute(torch.zeros(1, 1, dtype=torch.int32), align=4)
    assert _layout_signature(fake) == _layout_signature(real), (str(fake), str(real))
    assert fake.element_type == real.element_type
    assert fwd._fake_args(fwd.choose_config(torch.bfloat16, 128, 128, False, True))[7] is None


@pytest.mark.parametrize("head_dim", [128, 64])
def test_dynamic_schedule_hands_tiles_over_in_smem(cache_dir, head_dim):
    """FA3's dynamic persistent schedule (common/tile_scheduler.TileHandoff): one atomic per tile on the global
    counter, read (SHFL) only after the tile's loads are issued; the slot passed between the producer warp and the
    consumers on two named barriers of 32 + consumer threads. The launcher's schedules have none of it."""
    cfg = fwd.variant_configs(True, head_dim)[fwd.DYNAMIC_VARIANT]
    assert cfg.dynamic_schedule and cfg.window_right
    kernel = cfg.make_kernel()
    count = hex(32 + kernel.num_mma_threads)
    full, empty = hex(int(NamedBarrierFwd.TileFull)), hex(int(NamedBarrierFwd.TileEmpty))
    fwd.compile_fwd(cfg)
    sass = _sass(cfg)
    assert precompile.sass_summary(sass)["LDL"] == 0
    ops = [(precompile.opcode(t), t) for _, t in precompile._instructions(sass)]
    atomics = [i for i, (op, _) in enumerate(ops) if op.startswith("ATOMG.E.ADD")]
    assert len(atomics) == 1, atomics
    barriers = set(re.findall(r"BAR\.(ARV|SYNC\.DEFER_BLOCKING) (0x[0-9a-f]+), (0x[0-9a-f]+)", sass))
    # producer: waits on empty, arrives on full; consumers: the reverse
    assert {("SYNC.DEFER_BLOCKING", empty, count), ("ARV", full, count)} <= barriers, barriers
    assert {("SYNC.DEFER_BLOCKING", full, count), ("ARV", empty, count)} <= barriers, barriers
    # the claimed tile is first read after the producer's last TMA load of the tile, before it waits on empty
    wait = next(i for i, (_, t) in enumerate(ops) if t.startswith(f"BAR.SYNC.DEFER_BLOCKING {empty}, "))
    loads = [i for i, (op, _) in enumerate(ops) if op.startswith("UTMALDG") and atomics[0] < i < wait]
    shuffle = next(i for i, (op, _) in enumerate(ops) if op == "SHFL.IDX" and i > atomics[0])
    assert loads and loads[-1] < shuffle < wait, (atomics, loads[-1:], shuffle, wait)
    # the slot: written between the producer's wait on empty and its arrival on full; read between the consumers'
    # wait on full and their arrival on empty
    after_wait = [op for op, _ in ops[wait:]]
    arrive_full = wait + next(i for i, (_, t) in enumerate(ops[wait:]) if t.startswith(f"BAR.ARV {full}, "))
    assert any(op == "STS" for op, _ in ops[wait:arrive_full]), after_wait[:12]
    consumer_wait = next(i for i, (_, t) in enumerate(ops) if t.startswith(f"BAR.SYNC.DEFER_BLOCKING {full}, "))
    arrive_empty = consumer_wait + next(i for i, (_, t) in enumerate(ops[consumer_wait:]) if f"BAR.ARV {empty}, " in t)
    assert any(op == "LDS" for op, _ in ops[consumer_wait:arrive_empty]), ops[consumer_wait:arrive_empty]
    default = fwd.choose_config(torch.bfloat16, head_dim, head_dim, False, True)
    fwd.compile_fwd(default)
    plain = _sass(default)
    assert "ATOMG" not in plain
    assert not {b for b in re.findall(r"BAR\.\S+ (0x[0-9a-f]+), ", plain) if b in (full, empty)}


def test_float32_bias_matches_factor_product():
    """Scores leave add_lowrank_bias as scale_log2 * s + log2(e) * qf[row] . kf[col], per thread."""
    from cutlass.cute.runtime import from_dlpack

    qf, kf = torch.randn(_TILE_M, 8), torch.randn(_TILE_N, 8)
    vals = torch.randn(256, _TILE_M * _TILE_N // 256)
    before = vals.clone()
    coords = torch.zeros(256, _TILE_M * _TILE_N // 256, 2, dtype=torch.int32)
    args = (from_dlpack(vals), from_dlpack(coords), from_dlpack(qf), from_dlpack(kf), 0.3)
    cute.compile(bias_probe, *args, options=_HOPPER)(*args)
    rows, cols = coords[..., 0].long(), coords[..., 1].long()
    expect = before * 0.3 + math.log2(math.e) * (qf[rows] * kf[cols]).sum(-1)
    torch.testing.assert_close(vals, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 8.0])
@pytest.mark.parametrize("case", ["plain", "empty_row", "empty_first_block", "late_max_jump"])
def test_online_softmax_reproduces_softmax_and_lse(threshold, case):
    """O = sum_i (O * scale_i + P_i V_i) * out_scale must equal softmax(S) V, lse = logsumexp(S)."""
    from cutlass.cute.runtime import from_dlpack

    steps, cols = _SOFTMAX_STEPS, 2 * _SOFTMAX_V
    s = torch.randn(steps, 2, cols) * 3
    if case == "empty_row":
        s[:, 0] = float("-inf")
    elif case == "empty_first_block":
        s[0, 1] = float("-inf")
        s[1, 1, :3] = float("-inf")
    elif case == "late_max_jump":
        s[2] += 20.0
    # accumulator order: element a + 2 * row + 4 * v holds column 2 v + a
    buf = s.reshape(steps, 2, _SOFTMAX_V, 2).permute(0, 2, 1, 3).reshape(steps, 4 * _SOFTMAX_V).contiguous()
    scales, stats = torch.zeros(steps, 2), torch.zeros(2, 2)
    softmax_scale = 0.7
    args = (from_dlpack(buf), from_dlpack(scales), from_dlpack(stats), softmax_scale * math.log2(math.e))
    cute.compile(softmax_probe, *args, threshold, options=_HOPPER)(*args)

    p = buf.view(steps, _SOFTMAX_V, 2, 2).permute(0, 2, 1, 3).reshape(steps, 2, cols).double()
    assert p.max() <= 2.0**threshold, "P stays below 2^threshold"
    v = torch.randn(steps, cols, 5, dtype=torch.float64)
    o = torch.zeros(2, 5, dtype=torch.float64)
    for i in range(steps):
        o = o * scales[i].double()[:, None] + p[i] @ v[i]
    o = o * stats[:, 0].double()[:, None]
    logits = (s * softmax_scale).double().permute(1, 0, 2).reshape(2, -1)
    torch.testing.assert_close(o, torch.softmax(logits, -1).nan_to_num(0.0) @ v.reshape(-1, 5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats[:, 1].double(), torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
