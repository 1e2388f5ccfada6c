"""Spill audit of the CuTe sm90 kernels over what users can reach, on the CPU (no GPU needed):

    python scripts/spill_audit.py [--jobs 2] [--out audit.tsv] [--ranks ends|all] [--where EXPR] [--limit N]

The CPU tests check the shipped configs (``attnkit.precompile``) for local memory; this walks the inputs
``attnkit.attention(..., backend="cute")`` accepts instead, through the launchers' own ``config_for``: both dtypes,
every (head_dim, head_dim_v) pair, four mask kinds (none, causal, a sliding window, a left bound only), no bias /
float32 factors / factors in the input dtype (the ends of their padded ranks, or every one with ``--ranks all``),
the forward with one head per tile and with each GQA group size it packs, and the backward's three modes (the
launcher's dQ mode, deterministic, query heads split over CTAs). Each distinct config is compiled for sm_90a (into a
disk cache of its own, ``$ATTNKIT_CACHE_DIR`` or a temporary directory) and its SASS counted: one line per config as
it finishes, the backward first, those with local-memory loads or stores (LDL / STL), serialized wgmmas
(``precompile.wgmma_serialized``) or a failed compile listed at the end. About two seconds per config per core: the
default walk, 6692 configs, takes about an hour and three quarters on 2 cores. Ctrl-C (SIGINT) stops it and its
workers within seconds, the queued configs dropped; killing only this process otherwise leaves its worker processes
compiling."""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time

import torch

HEAD_DIMS = (64, 96, 128, 192, 256)
# the GQA group sizes the forward packs per tile (attention_fwd.pack_gqa_for: those that divide its 128 rows)
PACKED_GROUPS = (2, 4, 8, 16, 32, 64, 128)
# (window_left, window_right): none, causal, a sliding window, a left bound only
MASKS = ((-1, -1), (-1, 0), (64, 16), (64, -1))


def bias_kinds(ranks: str) -> list[tuple[int, bool]]:
    """(rank, factors in the input dtype): none, then float32 factors' padded ranks and the 16-bit ones' (5 and 10: the
    bf16 forward's bias slice, 16 and 32 wide; 16 and above: the separate bias wgmma)."""
    if ranks == "all":
        f32, half = list(range(4, 65, 4)), [5, 10, 16, 32, 48, 64]
    else:
        f32, half = [4, 8, 64], [5, 10, 16, 48, 64]
    return [(0, False)] + [(r, False) for r in f32] + [(r, True) for r in half]


def reachable(ranks: str = "ends") -> list:
    """The distinct main-kernel configs, backward then forward, bf16 then fp16."""
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    out: list = []
    seen: set = set()
    for dtype in (torch.bfloat16, torch.float16):
        for kind in ("bwd", "fwd"):
            for d in HEAD_DIMS:
                for dv in HEAD_DIMS:
                    for wl, wr in MASKS:
                        for rank, half in bias_kinds(ranks):
                            if kind == "fwd":
                                # one head per tile, and every GQA group size the launcher packs per tile (short
                                # queries, no bias; a group that divides the 128-row tile)
                                cfgs = [
                                    fwd.config_for(dtype, seqlen_q, 16 * group, 16, d, dv, wl, wr, rank, half)
                                    for group, seqlen_q in ((1, 4096), *((g, 1) for g in PACKED_GROUPS))
                                ]
                            else:
                                cfgs = [
                                    bwd.config_for(
                                        dtype, 1, 512, 16, 1, d, dv, wl, wr, rank, half, sm_count=sm_count,
                                        deterministic=deterministic,
                                    )[0]
                                    for deterministic, sm_count in ((False, None), (True, None), (False, 132))
                                ]  # fmt: skip
                            for cfg in cfgs:
                                if cfg not in seen:
                                    seen.add(cfg)
                                    out.append(cfg)

    # within a dtype and a direction, where registers are scarcest first (a stopped audit has then looked at the
    # likeliest spills): d = 128 (dK and dV of 64 key rows in a warpgroup's registers; above, 64-row key blocks split
    # them along d), then the wider heads, then a bias, the deterministic mode, windows, higher ranks
    def scarcity(c):
        widest = max(c.head_dim, c.head_dim_v)
        flags = (c.bias_rank > 0, getattr(c, "deterministic", False), c.window_left, c.window_right)
        return (widest != 128, -widest, *(not f for f in flags), -c.bias_rank)

    return sorted(out, key=lambda c: (c.dtype != "bf16", type(c).__name__ != "BwdConfig", scarcity(c)))


def _audit_one(cfg) -> tuple[str, float, dict | None, int | None, str | None]:
    """Worker: (kind, seconds, SASS counts, registers, error) of one config."""
    os.environ.setdefault("CUTE_DSL_ARCH", cfg.arch)
    from attnkit import precompile

    kind = "fwd" if type(cfg).__name__.startswith("Fwd") else "bwd"
    mod = precompile.load_launchers(kind)[kind]
    start = time.perf_counter()
    try:
        mod.compile_config(cfg)
        cubin = mod.cache().cubin(cfg)
        sass = precompile.sass_of(cubin)
        counts = precompile.sass_summary(sass)
        # of those, the local-memory accesses inside the main loop (the shortest loop with the wgmmas and exp2s)
        loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
        counts["in loop"] = sum(precompile.opcode(t).startswith(("LDL", "STL")) for t in loop)
        regs = precompile.registers_of(cubin)
    except Exception as exc:  # one broken config must not hide the others
        return kind, time.perf_counter() - start, None, None, " | ".join(str(exc).strip().splitlines())[:500]
    return kind, time.perf_counter() - start, counts, regs, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="also write one tab-separated line per config here")
    parser.add_argument("--ranks", choices=("ends", "all"), default="ends")
    parser.add_argument("--where", default=None, help="only configs c for which this Python expression is true")
    parser.add_argument("--limit", type=int, default=None, help="only the first N configs")
    args = parser.parse_args(argv)
    os.environ.setdefault("ATTNKIT_CACHE_DIR", tempfile.mkdtemp(prefix="attnkit-spill-audit-"))
    configs = reachable(args.ranks)
    if args.where:
        configs = [c for c in configs if eval(args.where, {"c": c})]  # noqa: S307 - a CLI filter
    configs = configs[: args.limit]
    print(f"spill audit: {len(configs)} configs, {args.jobs} processes, cache {os.environ['ATTNKIT_CACHE_DIR']}")
    sys.stdout.flush()
    bad: list[str] = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - written as results come
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context)
    try:
        futures = {pool.submit(_audit_one, cfg): cfg for cfg in configs}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            cfg = futures[future]
            kind, seconds, counts, regs, error = future.result()
            if error is not None:
                verdict = f"FAILED {error}"
            else:
                spills = counts["LDL"] + counts["STL"]
                verdict = f"regs={regs} LDL={counts['LDL']} STL={counts['STL']}"
                if spills:
                    verdict += f" SPILLS ({counts['in loop']} in the main loop)"
                if counts["serialized"]:
                    verdict += " WGMMA SERIALIZED"
            line = f"{n:5d} {kind} {seconds:6.2f}s {verdict}  {cfg}"
            print(line, flush=True)
            if out is not None:
                out.write(f"{kind}\t{seconds:.2f}\t{verdict}\t{cfg}\n")
                out.flush()
            if error is not None or "SPILLS" in verdict or "SERIALIZED" in verdict:
                bad.append(line)
    except KeyboardInterrupt:
        # the executor's own exit would wait for every queued config: drop them and stop the workers mid-compile
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in list((getattr(pool, "_processes", None) or {}).values()):
            worker.terminate()
        print(f"spill audit: stopped after {len(bad)} findings", flush=True)
        return 130
    pool.shutdown()
    print(
        f"spill audit: {len(configs)} configs in {time.perf_counter() - start:.0f} s; {len(bad)} spill, serialize "
        "their wgmmas or fail"
    )
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
