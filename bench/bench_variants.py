"""What each switch of the CuTe sm90 attention kernels is worth, bf16, D = 128, 16,384 tokens, H = 16: the forward
with each FA-style technique turned off (or on) against the default config, non-causal with FA3's 176-key tiles (and
at D = 64, H = 32, 128-row tiles against the default 192), its schedule (persistent, or one CTA per tile) against
the other one, the backward with each way dQ reaches its float32 buffer (also at D = 64, H = 32, with 64 query rows
per step against the default 128), and for causal shapes the L2-sectioned tile order against one section of every
head. With 8 query heads per K/V head (Hkv = 2), the forward packed (the group's heads share each tile) and not: at
full length, where the default does not pack, and for 64 queries against the full length (a chunk of decoding),
where it does. Last, the causal forward's schedules at N = 1024 and 2048, where the tiles are short.

Kernels are called through their launchers (attnkit.cute.attention_fwd / attention_bwd) with the variant's
config, so only the kernel differs; the configs are `variant_configs` of those modules, which `python -m
attnkit.precompile --variants` compiles ahead. In the tables `vs default` is the default's time over the
variant's: above 1 means the variant is faster and the default should change.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial

import common
import torch
from attnkit import perf

TOKENS = 16384
HEADS = 16
HEAD_DIM = 128
SEQLENS = (4096, 8192)
QUICK = (8192,)
ONE_SECTION = 1 << 60
# the causal order's L2 section budget (attnkit.cute.schedule, default 32 MiB): one section of every head, half and
# twice the default
SECTION_VARIANTS = {"one L2 section": ONE_SECTION, "L2 sections of 16 MiB": 16 << 20, "L2 sections of 64 MiB": 64 << 20}


# the forward's CTAs (attnkit.cute.schedule.forward_ctas): the default is persistent without a causal mask and one
# CTA per tile with it; each variant is the other one
SCHEDULE_VARIANTS = {False: {"one tile per CTA": False}, True: {"persistent (static)": True}}


def _with_schedule(fn: Callable[[], object], persistent: bool) -> Callable[[], object]:
    """fn with the forward persistent (True) or one CTA per tile (False)."""
    from attnkit.cute import schedule

    def call():
        with schedule.persistent(persistent):
            return fn()

    return call


# the variants the H100 runs timed (bench/RESULTS.md, 2026-11-27, 12:06 and 16:39 UTC): each shape times them after
# those not yet measured, so that a short budget leaves these out first
MEASURED = (
    "lazy rescale (threshold 8)",
    "poly exp2 on 2 of 8",
    "no ping-pong",
    "no intra-WG overlap",
    "128 query rows per tile",
    "one L2 section",
    "atomics",
    "TMA reduce-add",
    "deterministic",
    "64 query rows per step",
    # the second run's
    "interior blocks in their own loop",
    "key tiles of 176, O over Q",
    "one tile per CTA",
    "persistent (dynamic)",
    "persistent (static)",
    "pack GQA (8 heads)",
    "one head per tile",
    "L2 sections of 16 MiB",
    "L2 sections of 64 MiB",
    "80 query rows per step",
    "80 query rows, dQ atomics",
    "dQ after dK",
    "default, dQ reduce warp",
    "80 query rows per step, dQ reduce warp",
    "64 query rows per step, dQ reduce warp",
)


def _unmeasured_first(calls: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """The default, then the variants not yet measured, then MEASURED ones (each group in its order)."""
    return dict(sorted(calls.items(), key=lambda item: (item[0] != "default", item[0] in MEASURED)))


# the causal forward's schedules where the tiles are short (B * N = 16k tokens): one CTA per tile pays its prologue
# and epilogue per tile, the persistent schedules do not
SHORT_SCHEDULE_SEQLENS = (1024, 2048)

GROUP = 8
SHORT_Q = 64


def _inputs(
    batch: int,
    seqlen: int,
    kv_heads: int = HEADS,
    seqlen_q: int | None = None,
    head_dim: int = HEAD_DIM,
    heads: int = HEADS,
):
    def one(n, h):
        return torch.randn(batch, n, h, head_dim, device="cuda", dtype=torch.bfloat16)

    return one(seqlen_q or seqlen, heads), one(seqlen, kv_heads), one(seqlen, kv_heads)


def _with_sections(fn: Callable[[], object], nbytes: int) -> Callable[[], object]:
    """fn with the launchers' L2 section budget replaced."""
    from attnkit.cute import schedule

    def call():
        with schedule.section_bytes(nbytes):
            return fn()

    return call


def forward_variants(q, k, v, causal: bool, schedules_only: bool = False) -> dict[str, Callable[[], object]]:
    """MHA inputs: every switch; GQA inputs (8 query heads per K/V head): packed against one head per tile.
    ``schedules_only``: the default against the other schedules (persistent, one CTA per tile, dynamic)."""
    from attnkit.cute import attention_fwd as fwd

    head_dim = q.shape[3]
    kw = dict(softmax_scale=1.0 / math.sqrt(head_dim), window_left=-1, window_right=0 if causal else -1)
    variants = fwd.variant_configs(causal, head_dim)
    if q.shape[2] == k.shape[2]:
        sections = list(SECTION_VARIANTS) if causal and head_dim == HEAD_DIM else []
        names = [n for n in variants if not n.startswith("pack GQA")] + list(SCHEDULE_VARIANTS[causal]) + sections
        if schedules_only:
            names = [n for n in names if n in ("default", fwd.DYNAMIC_VARIANT, *SCHEDULE_VARIANTS[causal])]
    else:
        # whichever the launcher picks for this shape is the default; the other one is the variant
        packs = fwd.pack_gqa_for(q.shape[2] // k.shape[2], q.shape[1], 0) > 1
        names = ["default", "one head per tile" if packs else "pack GQA (8 heads)"]
        variants["one head per tile"] = variants["default"]
        variants["default"] = None
    calls = {}
    for name in names:
        if name in SECTION_VARIANTS:
            calls[name] = _with_sections(calls["default"], SECTION_VARIANTS[name])
        elif name in SCHEDULE_VARIANTS[causal]:
            calls[name] = _with_schedule(calls["default"], SCHEDULE_VARIANTS[causal][name])
        else:
            calls[name] = lambda cfg=variants[name]: fwd.attention_fwd(q, k, v, None, None, **kw, config=cfg)
    return _unmeasured_first(calls)


def backward_variants(q, k, v, causal: bool) -> dict[str, Callable[[], object]]:
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    head_dim = q.shape[3]
    kw = dict(softmax_scale=1.0 / math.sqrt(head_dim), window_left=-1, window_right=0 if causal else -1)
    out, lse = fwd.attention_fwd(q, k, v, None, None, **kw)
    dout = torch.randn_like(out)
    flags = {
        "default": {},
        "atomics": {"dq_tma_reduce": False},
        "TMA reduce-add": {"dq_tma_reduce": True},
        "deterministic": {"deterministic": True},
    }
    flags["64 query rows per step"] = {"tile_m": 64}
    flags["80 query rows per step"] = {"tile_m": 80}
    flags["80 query rows, dQ atomics"] = {"tile_m": 80, "dq_tma_reduce": False}
    flags["dQ after dK"] = {"dq_under_dk": False}
    # each reduce-add variant with the reduce-add issued by a producer warp
    for name in list(flags):
        flags[f"{name}, dQ reduce warp"] = {**flags[name], "dq_reduce_warp": True}
    flags[bwd.THREE_STAGES_VARIANT] = {"num_stages": 3}
    flags[bwd.EARLY_STATS_VARIANT] = {"early_stats": True}
    flags[bwd.ROTATED_VARIANT] = {"rotate_query_blocks": True}
    variants = bwd.variant_configs(causal, head_dim)
    assert set(variants) <= set(flags), "bench and launcher variants disagree"
    # the launcher's variants for this shape (no 64-row one where the default takes 64; no reduce-add after it
    # failed gpu_check's smoke test)
    flags = {name: f for name, f in flags.items() if name in variants}
    calls = {
        name: (lambda f=f: bwd.attention_bwd(dout, q, k, v, out, lse, None, None, **kw, **f))
        for name, f in flags.items()
    }
    if causal:
        for name, nbytes in SECTION_VARIANTS.items():
            calls[name] = _with_sections(calls["default"], nbytes)
    return _unmeasured_first(calls)


def _time_variants(table: common.Table, shape: str, make: Callable[[], dict], flops: float, ceilings, budget) -> None:
    """One row per variant ``make()`` returns, each against the default; one error row if the kernel fails."""
    try:
        calls = make()
    except Exception as e:  # the kernel itself fails: one row says why
        table.add(shape, "cute", True, common.Result(note=f"error: {common.short_error(e)}"))
        return
    for name, fn in calls.items():
        table.add(
            shape,
            name,
            name != "default",  # the default is the column every variant is compared with
            common.measure(fn, budget),
            rate=lambda ms, w=flops: perf.tflops(w, ms),
            pct=lambda ms, w=flops: perf.percent_of(perf.tflops(w, ms), ceilings.matmul_tflops),
        )


def run(args, ceilings: common.Ceilings, budget: common.Budget) -> list[common.Table]:
    if "cute" not in common.our_backends(("cute",)):
        return []
    fwd_table = common.Table("CuTe sm90 forward variants, bf16", "TFLOP/s", "bf16 matmul")
    bwd_table = common.Table("CuTe sm90 backward variants, bf16", "TFLOP/s", "bf16 matmul")
    for n in QUICK if args.quick else SEQLENS:
        for causal in (False, True):
            b = max(1, TOKENS // n)
            tag = " causal" if causal else ""
            q, k, v = _inputs(b, n)
            dims = (b, HEADS, n, n, HEAD_DIM)
            shape = f"B{b} H{HEADS} N{n} D{HEAD_DIM}{tag}"
            flops = perf.attention_fwd_flops(*dims, causal=causal)
            _time_variants(fwd_table, shape, partial(forward_variants, q, k, v, causal), flops, ceilings, budget)
            flops = perf.attention_bwd_flops(*dims, causal=causal)
            if not common.backward_skipped("cute"):
                _time_variants(bwd_table, shape, partial(backward_variants, q, k, v, causal), flops, ceilings, budget)
            del q, k, v
            common.release()
            for seqlen_q in (n, SHORT_Q):
                kv_heads = HEADS // GROUP
                shape = f"B{b} H{HEADS} Hkv{kv_heads} Nq{seqlen_q} Nk{n} D{HEAD_DIM}{tag}"
                flops = perf.attention_fwd_flops(b, HEADS, seqlen_q, n, HEAD_DIM, causal=causal)
                q, k, v = _inputs(b, n, kv_heads, seqlen_q)
                _time_variants(fwd_table, shape, partial(forward_variants, q, k, v, causal), flops, ceilings, budget)
                del q, k, v
                common.release()
            # D = 64 (H = 32, the same hidden size): the forward's tile rows, the backward's query rows per step
            heads = HEADS * HEAD_DIM // 64
            q, k, v = _inputs(b, n, heads, head_dim=64, heads=heads)
            shape = f"B{b} H{heads} N{n} D64{tag}"
            flops = perf.attention_fwd_flops(b, heads, n, n, 64, causal=causal)
            _time_variants(fwd_table, shape, partial(forward_variants, q, k, v, causal), flops, ceilings, budget)
            flops = perf.attention_bwd_flops(b, heads, n, n, 64, causal=causal)
            if not common.backward_skipped("cute"):
                _time_variants(bwd_table, shape, partial(backward_variants, q, k, v, causal), flops, ceilings, budget)
            del q, k, v
            common.release()
    # last, so that a short budget drops them first
    for n in SHORT_SCHEDULE_SEQLENS:
        b = TOKENS // n
        q, k, v = _inputs(b, n)
        shape = f"B{b} H{HEADS} N{n} D{HEAD_DIM} causal"
        flops = perf.attention_fwd_flops(b, HEADS, n, n, HEAD_DIM, causal=True)
        make = partial(forward_variants, q, k, v, True, schedules_only=True)
        _time_variants(fwd_table, shape, make, flops, ceilings, budget)
        del q, k, v
        common.release()
    fwd_table.notes.append(
        "forward at D = 64: the default takes 192-row tiles (three consumer warpgroups, "
        "attention_fwd.wide_tile_fits), the variant 128."
    )
    bwd_table.notes.append(
        "backward: the main kernel with its preprocess and postprocess, lse and O given; the default dQ mode is "
        "the TMA reduce-add where it costs no pipeline stage, and at D = 64 the default takes 128 query rows per "
        "step (attention_bwd.choose_config); at D = 128 the 80-row variants are FA4's non-causal tile (dQ computed "
        "transposed), and '3 Q / dO stages' keeps three query blocks in flight instead of two; 'lse2 and D read "
        "while S^T and dP^T run' loads them before the wgmmas' wait, as FA4 does (the default reads them after it, "
        "the order of the H100 runs of 2026-11-27); 'query blocks from a rotated start' starts each key block's "
        "walk over the query blocks at its own place (the default: every key block from the first)."
    )
    return [fwd_table, bwd_table]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only N in {QUICK}")
    p.add_argument("--budget-s", type=float, help="skip measurements that would start after this many s")
    return p


def main() -> None:
    common.standalone("variants", run, parser().parse_args())


if __name__ == "__main__":
    main()
