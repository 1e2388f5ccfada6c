"""One run of each kernel on small shapes, judged against the float64 reference, with a diagnosis.

    python scripts/gpu_smoke.py GROUP [--case SUBSTRING]   (GROUP: a key of GROUPS below)

``scripts/gpu_check.sh`` runs each group in its own process under a timeout before the test suite, so a
kernel that hangs costs one group's timeout instead of the whole device call, and the suite can leave
that group out. ``cute-fwd`` runs every forward with 128-row tiles (two consumer warpgroups) and
``cute-fwd-192`` the head-dim-64 inputs that take 192 rows by default, so that a fault in the three-warpgroup
kernel leaves the rest of the forward in the run (gpu_check then sets ``ATTNKIT_SM90_FWD_192_ROWS=0``); likewise
``cute-bwd`` (dQ by atomics) and ``cute-bwd-reduce`` (the default TMA reduce-add, ``ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0``
after a failure), ``cute-bwd-80`` (the 80-row steps) and ``cute-bwd-reduce-warp`` (dQ's reduce-add from a producer
warp) and ``cute-fwd-split`` (the forward's interior key blocks in a loop without mask code), benchmark variants
whose failure leaves only them out (``ATTNKIT_SM90_BWD_80_ROWS=0``, ``ATTNKIT_SM90_BWD_DQ_REDUCE_WARP=0``,
``ATTNKIT_SM90_FWD_SPLIT_LOOPS=0``), and a failing backward leaves the forward in the benchmark.
``cute-bwd-3-stages`` (three Q / dO stages at d = 128, ``ATTNKIT_SM90_BWD_3_STAGES=0``) and ``cute-bwd-rotate``
(each key block's walk over the query blocks from a rotated start, ``ATTNKIT_SM90_BWD_ROTATE=0``) and
``cute-bwd-early-stats`` (lse2 and D loaded while the score wgmmas run, ``ATTNKIT_SM90_BWD_EARLY_STATS=0``) are three
more.
``cute-fwd-bias-slice`` runs the launcher's bias as a K-slice of S (bf16 factors of rank <= 10), which the other
forward groups leave off; its failure turns it off (``ATTNKIT_SM90_FWD_BIAS_SLICE=0``). Likewise
``cute-bwd-bias-stmatrix``: the backward's dS^T by stmatrix in the bias configs above d = 64 that have it
(``ATTNKIT_SM90_BWD_BIAS_STMATRIX=0``), and ``cute-bwd-bias-slice``: the backward's S^T bias as a K-slice of its
wgmma group (``ATTNKIT_SM90_BWD_BIAS_SLICE=0``). ``cute-tvm-ffi``
runs forward and backward cases through the opt-in TVM-FFI host path (``ATTNKIT_CUTE_TVM_FFI=1``), whose kernels
the precompile does not build (they compile in the group's own process). Each
case prints ``start`` before it runs (the last one printed is the one that hung) and
then ``ok`` or ``WRONG`` per output, where WRONG names the worst element, the NaN count and the 64-row
query (or key) blocks whose error breaks the acceptance rule of ``tests/numerics.py`` (2x the error of
the same computation at the kernel's precision, plus a rounding floor). Exit status 1 if any case is
wrong or raised.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cute_gpu_cases import (  # noqa: E402
    BWD_3_STAGES_CASES,
    DQ_FLAGS,
    EARLY_STATS_CASES,
    ROTATED_CASES,
    dynamic_schedule,
    split_loops,
    wide_key_tiles,
)
from numerics import max_err  # noqa: E402

BLOCK = 64


def verdict(name: str, got: torch.Tensor, ref64: torch.Tensor, ref_lp: torch.Tensor, seq_dim: int) -> bool:
    """Print ok / WRONG for one output; WRONG says where. ``seq_dim``: the dim the 64-row blocks run along."""
    floor = torch.finfo(got.dtype).eps * max(ref64.abs().max().item() if ref64.numel() else 0.0, 1e-3)
    nans = int(torch.isnan(got).sum())
    err, base = max_err(got.nan_to_num(0.0), ref64), max_err(ref_lp, ref64)
    bound = 2 * base + floor
    if nans == 0 and err <= bound:
        print(f"    {name}: ok (error {err:.2e}, bound {bound:.2e})", flush=True)
        return True
    diff = (got.double() - ref64.double()).abs()
    diff[torch.isnan(diff)] = float("inf")
    worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    per_row = diff.movedim(seq_dim, 0).reshape(diff.shape[seq_dim], -1).amax(1)
    blocks = per_row.split(BLOCK)
    bad = [i for i, b in enumerate(blocks) if b.max() > bound]
    shown = ", ".join(str(i) for i in bad[:12]) + (" …" if len(bad) > 12 else "")
    print(
        f"    {name}: WRONG (error {err:.2e} > bound {bound:.2e}; NaN {nans}/{got.numel()}; worst at {worst}: "
        f"{got[worst].item():.4g} vs {ref64[worst].item():.4g}; bad {BLOCK}-row blocks along dim {seq_dim}: "
        f"{len(bad)}/{len(blocks)} [{shown}])",
        flush=True,
    )
    return False


def inputs(b, sq, sk, h, hkv, d, rank, dtype, dv=None, factor_scale=0.5):
    g = torch.Generator(device="cuda").manual_seed(sq * 7919 + sk * 31 + d)

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dt)

    q, k, v = rnd(b, sq, h, d), rnd(b, sk, hkv, d), rnd(b, sk, hkv, dv or d)
    qf = kf = None
    if rank:
        # rank < 0: factors in the input dtype (tensor-core bias); rank > 0: float32 factors
        fdt = dtype if rank < 0 else torch.float32
        qf = rnd(b, sq, 1, abs(rank), dt=fdt, scale=factor_scale)
        kf = rnd(1, sk, h, abs(rank), dt=fdt, scale=factor_scale)
    return q, k, v, qf, kf


def poison(nbytes: int) -> None:
    """Leave freed NaN blocks in the caching allocator: outputs that are never written read NaN."""
    blocks = [torch.full((nbytes // 4 + 1,), float("nan"), device="cuda") for _ in range(4)]
    del blocks


def cute_fwd_case(
    b, sq, sk, h, hkv, d, wl, wr, rank, dtype=torch.bfloat16, l2_budget=None, variant=None, persistent=None, dv=None,
    factor_scale=0.5,
):  # fmt: skip
    from attnkit.cute import attention_fwd as fwd
    from attnkit.cute import schedule
    from attnkit.reference.attention import attention_forward

    def run():
        q, k, v, qf, kf = inputs(b, sq, sk, h, hkv, d, rank, dtype, dv, factor_scale)
        kw = dict(softmax_scale=1.0 / math.sqrt(d), window_left=wl, window_right=wr)
        poison(b * max(sq, sk) * h * max(d, dv or d) * 4)
        with schedule.section_bytes(l2_budget), schedule.persistent(persistent):
            out, lse = fwd.attention_fwd(q, k, v, qf, kf, **kw, config=run.config() if variant else None)
            torch.cuda.synchronize()
        out64, lse64 = attention_forward(q, k, v, qf, kf, compute_dtype=torch.float64, **kw)
        out_lp, lse_lp = attention_forward(q, k, v, qf, kf, compute_dtype=dtype, **kw)
        ok = verdict("out", out, out64, out_lp, seq_dim=1)
        empty = torch.isneginf(lse64)
        if not torch.equal(torch.isneginf(lse), empty):
            print(f"    lse: WRONG (-inf at {int(torch.isneginf(lse).sum())} rows, expected {int(empty.sum())})")
            ok = False
        fin = ~empty
        finite = [torch.where(fin, x, 0.0) for x in (lse, lse64, lse_lp)]
        return verdict("lse", *finite, seq_dim=2) and ok

    # the config the case runs (a CPU test checks that gpu_check's precompile builds it): the launcher's, or a
    # benchmark variant of it
    def config():
        cfg = fwd.config_for(dtype, sq, h, hkv, d, dv or d, wl, wr, abs(rank), rank < 0)
        return variant(cfg) if variant else cfg

    run.config = config
    return run


def cute_bwd_case(
    b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode="default", dtype=torch.bfloat16, l2_budget=None, dv=None, tile_m=None,
    num_stages=None, rotate=False, early_stats=False,
):  # fmt: skip
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import schedule
    from attnkit.reference.attention import attention_backward, attention_forward

    def run():
        q, k, v, qf, kf = inputs(b, sq, sk, h, hkv, d, rank, dtype, dv)
        dout = torch.randn(b, sq, h, dv or d, device="cuda").to(dtype)
        kw = dict(softmax_scale=1.0 / math.sqrt(d), window_left=wl, window_right=wr)
        ins = [q, k, v, qf, kf]
        ins64 = [None if x is None else x.double() for x in ins]
        out_lp, lse_lp = attention_forward(*ins, compute_dtype=dtype, **kw)
        out64, lse64 = attention_forward(*ins64, compute_dtype=torch.float64, **kw)
        poison(4 * b * max(sq, sk) * h * d * 4)
        with schedule.section_bytes(l2_budget):
            got = bwd.attention_bwd(
                dout, q, k, v, out_lp, lse_lp, qf, kf, **kw, **DQ_FLAGS[dq_mode], tile_m=tile_m, num_stages=num_stages,
                rotate_query_blocks=rotate, early_stats=early_stats,
            )  # fmt: skip
            torch.cuda.synchronize()
        ref64 = attention_backward(
            dout.double(), *ins64[:3], out64, lse64, *ins64[3:], compute_dtype=torch.float64, **kw
        )
        ref_lp = attention_backward(dout, q, k, v, out_lp, lse_lp, qf, kf, compute_dtype=dtype, **kw)
        ok = True
        for name, g, r64, rlp in zip(("dq", "dk", "dv", "dq_factor", "dk_factor"), got, ref64, ref_lp, strict=True):
            if g is not None:
                ok &= verdict(name, g, r64, rlp, seq_dim=1)
        return ok

    # on an H100 SXM (132 SMs), as tests/cute_gpu_cases.py assumes
    run.config = lambda: bwd.config_for(
        dtype, b, sk, h, hkv, d, dv or d, wl, wr, abs(rank), rank < 0, 132, **DQ_FLAGS[dq_mode], tile_m=tile_m,
        num_stages=num_stages, rotate_query_blocks=rotate, early_stats=early_stats,
    )[0]  # fmt: skip
    return run


def triton_case(causal: bool, rank: int, d: int = 128):
    import attnkit
    from attnkit.reference.attention import attention_backward, attention_forward

    def run():
        dtype = torch.bfloat16
        b, s, h, hkv = 2, 300, 4, 2
        q, k, v, qf, kf = inputs(b, s, s, h, hkv, d, rank, dtype)
        bias = attnkit.LowRankBias(qf, kf) if rank else None
        leaves = [x.requires_grad_() for x in (q, k, v)]
        out = attnkit.attention(*leaves, causal=causal, bias=bias, backend="triton")
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)
        wr = 0 if causal else -1
        kw = dict(softmax_scale=1.0 / math.sqrt(d), window_left=-1, window_right=wr)
        ins = [q.detach(), k.detach(), v.detach(), qf, kf]
        ins64 = [None if x is None else x.double() for x in ins]
        out64, lse64 = attention_forward(*ins64, compute_dtype=torch.float64, **kw)
        out_lp, lse_lp = attention_forward(*ins, compute_dtype=dtype, **kw)
        ok = verdict("out", out.detach(), out64, out_lp, seq_dim=1)
        ref64 = attention_backward(
            dout.double(), *ins64[:3], out64, lse64, *ins64[3:], compute_dtype=torch.float64, **kw
        )
        ref_lp = attention_backward(dout, *ins[:3], out_lp, lse_lp, *ins[3:], compute_dtype=dtype, **kw)
        for name, g, r64, rlp in zip(("dq", "dk", "dv"), grads, ref64, ref_lp, strict=False):
            ok &= verdict(name, g, r64, rlp, seq_dim=1)
        return ok

    return run


# (b, sq, sk, h, hkv, d, window_left, window_right, rank); rank < 0: factors in the input dtype
GROUPS = {
    "cute-fwd": {
        "d64 full": cute_fwd_case(2, 300, 300, 4, 4, 64, -1, -1, 0),
        "d128 causal gqa": cute_fwd_case(2, 300, 300, 4, 2, 128, -1, 0, 0),
        "d128 causal sq<sk": cute_fwd_case(1, 77, 1000, 4, 2, 128, -1, 0, 0),
        "d128 causal sq>sk (empty rows)": cute_fwd_case(1, 1000, 77, 2, 2, 128, -1, 0, 0),
        "d128 window": cute_fwd_case(1, 500, 500, 2, 2, 128, 64, 16, 0),
        "d128 fp16 full": cute_fwd_case(1, 333, 333, 2, 2, 128, -1, -1, 0, dtype=torch.float16),
        "d128 float32 bias r8 causal": cute_fwd_case(1, 300, 300, 2, 2, 128, -1, 0, 8),
        "d64 bf16 bias r24 (wgmma)": cute_fwd_case(1, 333, 1000, 2, 2, 64, -1, -1, -24),
        "d128 bf16 bias r8 causal (wgmma)": cute_fwd_case(2, 700, 700, 4, 2, 128, -1, 0, -8),
        "d96 full": cute_fwd_case(1, 300, 300, 2, 2, 96, -1, -1, 0),
        # causal forwards launch one CTA per tile (attnkit.cute.schedule.forward_ctas); persistent is a variant
        "d128 causal, 8-head L2 sections": cute_fwd_case(
            4, 2048, 2048, 8, 2, 128, -1, 0, 0, l2_budget=2 * 2048 * 256 * 2
        ),
        "d128 causal persistent, 8-head L2 sections": cute_fwd_case(
            4, 2048, 2048, 8, 2, 128, -1, 0, 0, l2_budget=2 * 2048 * 256 * 2, persistent=True
        ),
        "d128 full persistent": cute_fwd_case(4, 2048, 2048, 8, 8, 128, -1, -1, 0),
        "d128 decode, 8 heads per K/V head packed": cute_fwd_case(2, 1, 1000, 8, 1, 128, -1, 0, 0),
        "d64 short causal, 4 heads packed": cute_fwd_case(1, 50, 300, 8, 2, 64, -1, 0, 0),
        "d128 short window, 16 heads packed": cute_fwd_case(1, 60, 333, 16, 1, 128, 64, 16, 0),
    },
    # head dims above 128: key tiles of 112 / 80 / 64, O over Q (a group of its own: not benchmarked, so a failure
    # here only leaves the wide sanitizer cases out)
    "cute-fwd-wide": {
        "d192 full": cute_fwd_case(1, 300, 300, 2, 2, 192, -1, -1, 0),
        "d192 causal gqa": cute_fwd_case(1, 333, 1000, 2, 1, 192, -1, 0, 0),
        "d256 full (O over Q)": cute_fwd_case(1, 256, 256, 2, 2, 256, -1, -1, 0),
        "d256 window": cute_fwd_case(1, 500, 700, 2, 2, 256, 64, 16, 0),
    },
    # d = 64 without a left window or float32 factors: 192-row tiles, three consumer warpgroups in round robin
    "cute-fwd-192": {
        "d64 full": cute_fwd_case(2, 300, 300, 4, 4, 64, -1, -1, 0),
        "d64 causal sq<sk gqa": cute_fwd_case(1, 77, 1000, 4, 2, 64, -1, 0, 0),
        "d64 causal sq>sk (empty rows)": cute_fwd_case(1, 1000, 77, 2, 2, 64, -1, 0, 0),
        "d64 fp16 causal persistent": cute_fwd_case(
            4, 2048, 2048, 8, 8, 64, -1, 0, 0, dtype=torch.float16, persistent=True
        ),
        "d64 bf16 bias r24 (wgmma)": cute_fwd_case(1, 333, 1000, 2, 2, 64, -1, -1, -24),
    },
    # the split mainloop (interior key blocks in a loop without mask code; a benchmark variant): a group of its own,
    # so that its failure only leaves it out (ATTNKIT_SM90_FWD_SPLIT_LOOPS=0)
    "cute-fwd-split": {
        "d128 full, seqlen_k tail": cute_fwd_case(2, 300, 333, 4, 4, 128, -1, -1, 0, variant=split_loops),
        "d128 causal gqa": cute_fwd_case(2, 1000, 1000, 4, 2, 128, -1, 0, 0, variant=split_loops),
        "d128 causal sq<sk": cute_fwd_case(1, 77, 1000, 4, 2, 128, -1, 0, 0, variant=split_loops),
        "d128 causal sq>sk (empty rows)": cute_fwd_case(1, 1000, 77, 2, 2, 128, -1, 0, 0, variant=split_loops),
        "d128 window": cute_fwd_case(1, 1000, 1200, 2, 2, 128, 300, 16, 0, variant=split_loops),
        "d64 causal (192-row tiles)": cute_fwd_case(1, 2048, 2048, 4, 4, 64, -1, 0, 0, variant=split_loops),
        "d128 short window, 16 heads packed": cute_fwd_case(1, 60, 333, 16, 1, 128, 64, 16, 0, variant=split_loops),
        "d128 bf16 bias r8 causal (wgmma)": cute_fwd_case(1, 700, 700, 4, 2, 128, -1, 0, -8, variant=split_loops),
        "d64 float32 bias r3 window": cute_fwd_case(1, 333, 1000, 2, 2, 64, 64, 16, 3, variant=split_loops),
        # the launcher's own configs that take the split mainloop (attention_fwd._serialized_in_one_loop): in
        # this group, because ATTNKIT_SM90_FWD_SPLIT_LOOPS=0 gives them one loop again
        "d192 dv64 window (default split)": cute_fwd_case(1, 500, 700, 2, 2, 192, 64, 16, 0, dv=64),
        "d192 dv64 window, 8 heads packed (default split)": cute_fwd_case(1, 40, 333, 16, 2, 192, 64, 16, 0, dv=64),
        "d256 dv128 bf16 bias r16 causal (default split)": cute_fwd_case(1, 300, 500, 2, 1, 256, -1, 0, -16, dv=128),
        "d256 dv96 bf16 bias r48 causal sq>sk (default split)": cute_fwd_case(
            1, 400, 300, 2, 2, 256, -1, 0, -48, dv=96
        ),
        "d256 dv128 causal, 4 heads packed (default split)": cute_fwd_case(2, 3, 500, 8, 2, 256, -1, 0, 0, dv=128),
    },
    # the launcher's bias as a K-slice of S (bf16 factors of rank <= 10, FwdConfig.bias_slice): a group of its own,
    # whose failure gives those configs the separate bias wgmma again (ATTNKIT_SM90_FWD_BIAS_SLICE=0); the other
    # forward groups run with it off. Ranks 1 and 5 (one k16 step), 6 to 10 (two), factors of magnitude 2 too
    "cute-fwd-bias-slice": {
        "d128 bias r8 causal gqa": cute_fwd_case(2, 700, 700, 4, 2, 128, -1, 0, -8),
        "d128 bias r1 full, seqlen_k tail": cute_fwd_case(2, 300, 333, 4, 4, 128, -1, -1, -1),
        "d128 bias r5 window": cute_fwd_case(1, 1000, 1200, 2, 2, 128, 300, 16, -5),
        "d128 bias r10 causal sq>sk (empty rows)": cute_fwd_case(1, 1000, 77, 2, 2, 128, -1, 0, -10),
        "d128 bias r8 full, factors of magnitude 2": cute_fwd_case(
            1, 500, 500, 2, 2, 128, -1, -1, -8, factor_scale=2.0
        ),
        "d96 bias r6 full": cute_fwd_case(1, 300, 300, 2, 2, 96, -1, -1, -6),
        "d64 bias r8 window (two warpgroups)": cute_fwd_case(1, 333, 1000, 2, 2, 64, 64, 16, -8),
        "d256 bias r8 causal": cute_fwd_case(1, 300, 500, 2, 1, 256, -1, 0, -8),
        "d128 bias r8 causal persistent": cute_fwd_case(4, 2048, 2048, 8, 8, 128, -1, 0, -8, persistent=True),
    },
    # FA3's non-causal key tile at d = 128 (176 keys, O over Q; a benchmark variant): a group of its own, so that its
    # failure only leaves it out (ATTNKIT_SM90_FWD_176_KEYS=0)
    "cute-fwd-176": {
        "d128 full, seqlen_k tail": cute_fwd_case(2, 300, 333, 4, 4, 128, -1, -1, 0, variant=wide_key_tiles),
        "d128 full gqa, several tiles per CTA": cute_fwd_case(
            4, 2048, 2048, 8, 2, 128, -1, -1, 0, variant=wide_key_tiles
        ),
        "d128 full sq<sk gqa": cute_fwd_case(1, 77, 1000, 4, 2, 128, -1, -1, 0, variant=wide_key_tiles),
    },
    # FA3's dynamic persistent schedule (CTAs take tiles from a global counter; a benchmark variant): a group of its
    # own, so that its failure (or hang) only leaves it out (ATTNKIT_SM90_FWD_DYNAMIC=0)
    "cute-fwd-dynamic": {
        "d128 causal, 8-head L2 sections": cute_fwd_case(
            4, 2048, 2048, 8, 2, 128, -1, 0, 0, l2_budget=2 * 2048 * 256 * 2, variant=dynamic_schedule
        ),
        "d64 causal (192-row tiles)": cute_fwd_case(2, 2048, 2048, 16, 16, 64, -1, 0, 0, variant=dynamic_schedule),
        "d128 window sq<sk": cute_fwd_case(2, 2048, 3000, 8, 8, 128, 500, 0, 0, variant=dynamic_schedule),
        "d128 causal, fewer tiles than SMs": cute_fwd_case(2, 77, 1000, 4, 2, 128, -1, 0, 0, variant=dynamic_schedule),
    },
    # the launcher's default dQ mode, the TMA reduce-add (and d = 64's 128 query rows per step): a group of its own,
    # so that its failure leaves the backward in the run with dQ by atomics (ATTNKIT_SM90_BWD_DQ_TMA_REDUCE=0)
    "cute-bwd-reduce": {
        "d64 full (128 query rows per step)": cute_bwd_case(2, 300, 300, 4, 4, 64, -1, -1, 0),
        "d64 window (128 query rows per step)": cute_bwd_case(1, 333, 1000, 4, 2, 64, 64, 16, 0),
        "d128 causal gqa": cute_bwd_case(2, 300, 300, 4, 2, 128, -1, 0, 0),
        "d96 full mqa": cute_bwd_case(1, 300, 300, 4, 1, 96, -1, -1, 0),
        "d128 causal dq tma reduce": cute_bwd_case(1, 500, 500, 2, 2, 128, -1, 0, 0, dq_mode="tma_reduce"),
        "d192 causal gqa (wide)": cute_bwd_case(2, 300, 300, 4, 2, 192, -1, 0, 0),
        "d256 dv128 causal dq tma reduce, one P/dS buffer (wide)": cute_bwd_case(
            1, 333, 500, 2, 2, 256, -1, 0, 0, dq_mode="tma_reduce", dv=128
        ),
    },
    # every other backward case with dQ by atomics where the default would take the TMA reduce-add
    "cute-bwd": {
        "d64 full": cute_bwd_case(2, 300, 300, 4, 4, 64, -1, -1, 0),
        "d128 causal gqa": cute_bwd_case(2, 300, 300, 4, 2, 128, -1, 0, 0),
        "d128 causal sq<sk": cute_bwd_case(1, 77, 1000, 4, 2, 128, -1, 0, 0),
        "d96 full mqa": cute_bwd_case(1, 300, 300, 4, 1, 96, -1, -1, 0),
        "d64 window": cute_bwd_case(1, 333, 1000, 4, 2, 64, 64, 16, 0),
        "d64 causal dq atomics (64 query rows per step)": cute_bwd_case(
            1, 333, 1000, 4, 2, 64, -1, 0, 0, dq_mode="atomics"
        ),
        "d128 float32 bias r8 causal": cute_bwd_case(1, 500, 700, 4, 4, 128, -1, 0, 8),
        "d128 causal dq atomics": cute_bwd_case(1, 500, 500, 2, 2, 128, -1, 0, 0, dq_mode="atomics"),
        "d128 causal deterministic": cute_bwd_case(1, 500, 500, 2, 2, 128, -1, 0, 0, dq_mode="deterministic"),
        "d128 fp16 full": cute_bwd_case(1, 333, 333, 2, 2, 128, -1, -1, 0, dtype=torch.float16),
        "d128 dv64 causal": cute_bwd_case(2, 300, 400, 4, 2, 128, -1, 0, 0, dv=64),
        "d128 causal MQA, 16 query heads split over CTAs": cute_bwd_case(1, 512, 512, 16, 1, 128, -1, 0, 0),
        "d64 GQA bias r8, heads split over CTAs": cute_bwd_case(1, 300, 300, 8, 2, 64, -1, -1, 8),
        "d128 causal deterministic, 2-head L2 sections": cute_bwd_case(
            2, 1024, 1024, 8, 4, 128, -1, 0, 8, dq_mode="deterministic", l2_budget=2 * 2 * 1024 * 520
        ),
    },
    # 80 query rows per step at d = 128, dQ computed transposed (a benchmark variant, FA4's non-causal tile): a group
    # of its own, so that its failure only leaves the 80-row variants out (ATTNKIT_SM90_BWD_80_ROWS=0)
    "cute-bwd-80": {
        "d128 full gqa, dQ atomics": cute_bwd_case(2, 1000, 1000, 4, 2, 128, -1, -1, 0, dq_mode="atomics", tile_m=80),
        # causal: the non-causal 80-row variant takes the atomics (the default's dQ mode there since 2026-11-27)
        "d128 causal gqa, dQ reduce-add": cute_bwd_case(
            2, 1000, 1000, 4, 2, 128, -1, 0, 0, dq_mode="tma_reduce", tile_m=80
        ),
        "d128 causal sq<sk": cute_bwd_case(1, 77, 1000, 4, 2, 128, -1, 0, 0, dq_mode="atomics", tile_m=80),
        "d128 window sq>sk dv64": cute_bwd_case(
            1, 1000, 333, 2, 2, 128, 64, 16, 0, dq_mode="atomics", dv=64, tile_m=80
        ),
        "d128 causal deterministic": cute_bwd_case(
            1, 500, 500, 2, 2, 128, -1, 0, 0, dq_mode="deterministic", tile_m=80
        ),
    },
    # dQ's reduce-add issued by a producer warp (a benchmark variant, FA3 / FA4's way): a group of its own, so that its
    # failure (or hang) only leaves those variants out (ATTNKIT_SM90_BWD_DQ_REDUCE_WARP=0)
    "cute-bwd-reduce-warp": {
        "d128 full": cute_bwd_case(2, 1000, 1000, 4, 4, 128, -1, -1, 0, dq_mode="reduce_warp"),
        "d128 causal gqa, 2 query heads per CTA": cute_bwd_case(
            2, 300, 300, 4, 2, 128, -1, 0, 0, dq_mode="reduce_warp"
        ),
        "d64 window (128 query rows per step)": cute_bwd_case(1, 333, 1000, 4, 2, 64, 64, 16, 0, dq_mode="reduce_warp"),
        "d128 causal MQA, query heads split over CTAs": cute_bwd_case(
            1, 512, 512, 16, 1, 128, -1, 0, 0, dq_mode="reduce_warp"
        ),
        "d128 sq>sk (empty query blocks)": cute_bwd_case(1, 1000, 77, 2, 2, 128, -1, 0, 0, dq_mode="reduce_warp"),
    },
    # three Q / dO stages at d = 128 (a benchmark variant): a group of its own, so that its failure only leaves that
    # variant out (ATTNKIT_SM90_BWD_3_STAGES=0)
    "cute-bwd-3-stages": {
        f"d128 {name}": cute_bwd_case(b, sq, sk, h, hkv, 128, wl, wr, 0, dq_mode=mode, num_stages=3)
        for name, (b, sq, sk, h, hkv, wl, wr, mode) in zip(
            (
                "full gqa (dQ atomics)",
                "causal (dQ reduce-add)",
                "causal sq<sk, fewer query blocks than stages",
                "window sq>sk",
                "causal MQA, query heads split over CTAs",
                "causal deterministic",
            ),
            BWD_3_STAGES_CASES[:6],
            strict=True,
        )
    },
    # each key block's walk over the query blocks from a rotated start (a benchmark variant): a group of its own, so
    # that its failure only leaves that variant out (ATTNKIT_SM90_BWD_ROTATE=0)
    "cute-bwd-rotate": {
        f"d{d} {name}": cute_bwd_case(b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode=mode, rotate=True)
        for name, (b, sq, sk, h, hkv, d, wl, wr, rank, mode) in zip(
            (
                "full gqa (dQ atomics)",
                "causal (dQ reduce-add)",
                "full gqa (128 query rows per step)",
                "causal sq<sk, fewer query blocks than key blocks",
                "causal MQA, query heads split over CTAs",
                "full, bf16 bias r8 (wgmma)",
                "window sq>sk",
            ),
            ROTATED_CASES[:7],
            strict=True,
        )
    },
    # lse2 and D loaded while S^T's and dP^T's wgmmas run (a benchmark variant): a group of its own, so that its
    # failure only leaves that variant out (ATTNKIT_SM90_BWD_EARLY_STATS=0)
    "cute-bwd-early-stats": {
        f"d{d} {name}": cute_bwd_case(b, sq, sk, h, hkv, d, wl, wr, rank, dq_mode=mode, dtype=dtype, early_stats=True)
        for name, (b, sq, sk, h, hkv, d, wl, wr, rank, dtype, mode) in zip(
            (
                "full gqa (dQ atomics)",
                "causal (dQ reduce-add)",
                "causal sq<sk, fewer query blocks than key blocks",
                "fp16 window sq>sk (64 query rows per step)",
                "causal MQA, query heads split over CTAs",
                "causal, bf16 bias r16 (gradients on the tensor cores)",
                "fp16 window",
            ),
            EARLY_STATS_CASES[:7],
            strict=True,
        )
    },
    # wide heads: 64-row key blocks both warpgroups share, P^T / dS^T through smem (a group of its own, so that a
    # failure here leaves only tests/test_cute_sm90_bwd_wide.py out)
    "cute-bwd-wide": {
        "d256 full": cute_bwd_case(1, 300, 300, 2, 2, 256, -1, -1, 0),
        "d192 causal gqa": cute_bwd_case(2, 300, 300, 4, 2, 192, -1, 0, 0),
        "d256 dv128 causal": cute_bwd_case(1, 300, 500, 2, 2, 256, -1, 0, 0, dv=128),
        "d256 window deterministic": cute_bwd_case(1, 500, 500, 2, 2, 256, 64, 16, 0, dq_mode="deterministic"),
        "d256 float32 bias r8 causal, one Q/dO stage": cute_bwd_case(1, 300, 400, 2, 2, 256, -1, 0, 8),
        "d128 dv256 causal": cute_bwd_case(1, 300, 400, 4, 2, 128, -1, 0, 0, dv=256),
    },
    # the 16-bit factors' gradients on the tensor cores (rank <= 16, d <= 128), dQ by atomics: a group of its own, so
    # that its failure moves them to float32 FMAs (ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0) and leaves the rest in the run
    "cute-bwd-bias-tc": {
        "d128 bf16 bias r8 causal (wgmma)": cute_bwd_case(1, 500, 700, 4, 4, 128, -1, 0, -8),
        "d128 fp16 bias r8 causal (wgmma)": cute_bwd_case(1, 500, 700, 4, 4, 128, -1, 0, -8, dtype=torch.float16),
        # the factor gradients' wgmmas between dQ's and dK's, dQf split along the keys (factor_grads_under_dk)
        "d128 bf16 bias r16 gqa (wgmma)": cute_bwd_case(1, 300, 500, 4, 2, 128, -1, -1, -16),
        "d64 bf16 bias r8 window (wgmma)": cute_bwd_case(1, 333, 1000, 4, 2, 64, 64, 16, -8),
        "d64 bf16 bias r16 gqa, dQ reduce-add (wgmma)": cute_bwd_case(
            1, 300, 500, 4, 2, 64, -1, -1, -16, dq_mode="tma_reduce"
        ),
        "d96 bf16 bias r16 causal (wgmma)": cute_bwd_case(1, 300, 500, 4, 2, 96, -1, 0, -16),
        # 136 CTAs, each walking 4 query heads: dKf summed per head in smem, the slot cleared between heads
        "d128 bf16 bias r16 gqa, 4 heads per CTA (wgmma)": cute_bwd_case(2, 200, 4300, 8, 2, 128, -1, -1, -16),
        "d128 bf16 bias r8 causal deterministic": cute_bwd_case(
            1, 500, 700, 4, 4, 128, -1, 0, -8, dq_mode="deterministic"
        ),
    },
    # dS^T by stmatrix in the bias configs the SASS audit gave it (d = 96, and d = 128 with a mask and tensor-core
    # factor gradients or in the deterministic mode; AttentionBwdSm90.ds_stmatrix): a group of its own, whose failure
    # gives them the 4-byte stores again (ATTNKIT_SM90_BWD_BIAS_STMATRIX=0); the other backward groups run without it
    "cute-bwd-bias-stmatrix": {
        "d128 bf16 bias r8 causal (wgmma)": cute_bwd_case(2, 500, 700, 4, 4, 128, -1, 0, -8),
        "d128 fp16 bias r8 causal (wgmma)": cute_bwd_case(2, 500, 700, 4, 4, 128, -1, 0, -8, dtype=torch.float16),
        "d96 bf16 bias r16 causal (wgmma)": cute_bwd_case(1, 300, 500, 4, 2, 96, -1, 0, -16),
        "d128 bf16 bias r8 causal deterministic (wgmma)": cute_bwd_case(
            2, 500, 700, 4, 4, 128, -1, 0, -8, dq_mode="deterministic"
        ),
        "d128 float32 bias r8 causal deterministic": cute_bwd_case(
            2, 500, 700, 4, 4, 128, -1, 0, 8, dq_mode="deterministic"
        ),
    },
    # S^T's bias as a K-slice of its wgmma group (bf16 factors of rank <= 8, d <= 128; BwdConfig.bias_slice: the key
    # factors split by a producer warp, dS^T by stmatrix at d = 128 with it): a group of its own, whose failure gives
    # them the separate bias wgmma again (ATTNKIT_SM90_BWD_BIAS_SLICE=0); the other backward groups run without it
    "cute-bwd-bias-slice": {
        "d128 bf16 bias r8 gqa (slice)": cute_bwd_case(2, 700, 700, 4, 2, 128, -1, -1, -8),
        "d128 bf16 bias r8 causal (slice)": cute_bwd_case(2, 500, 700, 4, 4, 128, -1, 0, -8),
        "d128 bf16 bias r1 causal sq>sk (slice)": cute_bwd_case(1, 1000, 77, 2, 2, 128, -1, 0, -1),
        "d64 bf16 bias r8 window (slice)": cute_bwd_case(1, 333, 1000, 4, 2, 64, 64, 16, -8),
        "d128 bf16 bias r8 gqa, 4 heads per CTA (slice)": cute_bwd_case(2, 200, 4300, 8, 2, 128, -1, -1, -8),
        "d128 bf16 bias r8 causal MQA, heads split over CTAs (slice)": cute_bwd_case(
            1, 512, 512, 16, 1, 128, -1, 0, -8
        ),
        "d128 bf16 bias r5 causal deterministic (slice)": cute_bwd_case(
            1, 500, 700, 4, 4, 128, -1, 0, -5, dq_mode="deterministic"
        ),
    },
    # the host path through TVM-FFI (ATTNKIT_CUTE_TVM_FFI=1, opt-in): kernels compiled for it, called with the torch
    # tensors; forward and backward cases of the groups above, with and without a bias and operands that are None
    "cute-tvm-ffi": {
        "fwd d128 causal gqa": cute_fwd_case(2, 300, 300, 4, 2, 128, -1, 0, 0),
        "fwd d64 bf16 bias r24 (wgmma)": cute_fwd_case(1, 333, 1000, 2, 2, 64, -1, -1, -24),
        "fwd d128 float32 bias r8 causal": cute_fwd_case(1, 300, 300, 2, 2, 128, -1, 0, 8),
        "bwd d128 causal gqa": cute_bwd_case(2, 300, 300, 4, 2, 128, -1, 0, 0),
        "bwd d128 float32 bias r8 causal": cute_bwd_case(1, 500, 700, 4, 4, 128, -1, 0, 8),
        "bwd d128 bf16 bias r8 causal deterministic": cute_bwd_case(
            1, 500, 700, 4, 4, 128, -1, 0, -8, dq_mode="deterministic"
        ),
        "bwd d128 causal MQA, 16 query heads split over CTAs": cute_bwd_case(1, 512, 512, 16, 1, 128, -1, 0, 0),
    },
    "triton": {
        "attention d128 causal": triton_case(True, 0),
        "attention d64 full bias r8": triton_case(False, 8, d=64),
    },
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("group", choices=sorted(GROUPS))
    p.add_argument("--case", default="", help="only the cases whose name contains this")
    args = p.parse_args(argv)
    from attnkit.cute.attention_bwd import BIAS_SLICE_ENV as BWD_BIAS_SLICE_ENV
    from attnkit.cute.attention_bwd import (
        BIAS_STMATRIX_ENV,
        DQ_TMA_REDUCE_ENV,
        EARLY_STATS_ENV,
        REDUCE_WARP_ENV,
        ROTATE_ENV,
        ROWS_80_ENV,
        TC_FACTOR_GRADS_ENV,
        THREE_STAGES_ENV,
    )
    from attnkit.cute.attention_fwd import (
        BIAS_SLICE_ENV,
        DYNAMIC_ENV,
        SPLIT_LOOPS_ENV,
        WIDE_KEY_TILE_ENV,
        WIDE_TILE_ENV,
    )
    from attnkit.cute.tensors import TVM_FFI_ENV

    # each group runs its own kernels, whatever gpu_check's fallbacks have set
    env = {"cute-fwd": [(WIDE_TILE_ENV, "0"), (BIAS_SLICE_ENV, "0")], "cute-fwd-192": [(WIDE_TILE_ENV, None)]}
    env |= {"cute-fwd-split": [(SPLIT_LOOPS_ENV, None), (BIAS_SLICE_ENV, "0")]}
    env |= {"cute-fwd-176": [(WIDE_KEY_TILE_ENV, None)], "cute-fwd-bias-slice": [(BIAS_SLICE_ENV, None)]}
    env |= {"cute-fwd-dynamic": [(DYNAMIC_ENV, None)]}
    env |= {"cute-bwd": [(DQ_TMA_REDUCE_ENV, "0")], "cute-bwd-wide": [(DQ_TMA_REDUCE_ENV, "0")]}
    env |= {"cute-bwd-reduce": [(DQ_TMA_REDUCE_ENV, None)]}
    env |= {"cute-bwd-bias-tc": [(DQ_TMA_REDUCE_ENV, "0"), (TC_FACTOR_GRADS_ENV, None)]}
    env |= {"cute-bwd-80": [(DQ_TMA_REDUCE_ENV, None), (ROWS_80_ENV, None)]}
    env |= {"cute-bwd-reduce-warp": [(DQ_TMA_REDUCE_ENV, None), (REDUCE_WARP_ENV, None)]}
    env |= {"cute-bwd-3-stages": [(DQ_TMA_REDUCE_ENV, None), (THREE_STAGES_ENV, None)]}
    env |= {"cute-bwd-rotate": [(DQ_TMA_REDUCE_ENV, None), (ROTATE_ENV, None)]}
    env |= {"cute-bwd-early-stats": [(DQ_TMA_REDUCE_ENV, None), (EARLY_STATS_ENV, None)]}
    env |= {"cute-tvm-ffi": [(TVM_FFI_ENV, "1")]}
    env |= {"cute-bwd-bias-stmatrix": [(DQ_TMA_REDUCE_ENV, "0"), (BIAS_STMATRIX_ENV, None)]}
    variants = ("cute-bwd-80", "cute-bwd-reduce-warp", "cute-bwd-3-stages", "cute-bwd-rotate", "cute-bwd-early-stats")
    for group in ("cute-bwd", "cute-bwd-reduce", "cute-bwd-bias-tc", *variants):
        env[group] = env.get(group, []) + [(BIAS_STMATRIX_ENV, "0")]
    env["cute-bwd-wide"] = env.get("cute-bwd-wide", []) + [(BIAS_STMATRIX_ENV, "0")]
    env["cute-tvm-ffi"] = env["cute-tvm-ffi"] + [(BIAS_STMATRIX_ENV, "0")]
    env["cute-bwd-bias-slice"] = [(BWD_BIAS_SLICE_ENV, None), (BIAS_STMATRIX_ENV, None)]
    for group in GROUPS:
        if group.startswith("cute-bwd") and group != "cute-bwd-bias-slice" or group == "cute-tvm-ffi":
            env[group] = env.get(group, []) + [(BWD_BIAS_SLICE_ENV, "0")]
    for name, value in env.get(args.group, []):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device", flush=True)
        return 2
    if args.group == "cute-tvm-ffi":
        from attnkit.cute.tensors import tvm_ffi_enabled

        if not tvm_ffi_enabled():  # read before the group set it: the cases would run the default path
            print("gpu_smoke: the TVM-FFI switch is off in this process", flush=True)
            return 1
    failed = []
    for name, run in GROUPS[args.group].items():
        if args.case not in name:
            continue
        print(f"start {args.group}: {name}", flush=True)
        start = time.perf_counter()
        try:
            ok = run()
        except Exception:
            print("    raised:\n" + "".join("      " + line for line in traceback.format_exc().splitlines(True)))
            ok = False
        print(f"  {'ok' if ok else 'WRONG'} {name} ({time.perf_counter() - start:.1f} s)", flush=True)
        if not ok:
            failed.append(name)
    print(f"{args.group}: {len(failed)} wrong" + (f" ({', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
