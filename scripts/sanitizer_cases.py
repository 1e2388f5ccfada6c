"""Small shapes through the attnkit backends, forward and backward, for compute-sanitizer (gpu_check.sh).

    python scripts/sanitizer_cases.py [--backends triton,cute] [--tiny] [--no-wide] [--variants with|without|only]

``--tiny``: one short causal case per backend (racecheck is slow); ``--no-wide``: leave out the head dims above 128
(their backward failed its smoke test). The CuTe backend also runs the backward and forward variants that passed
their smoke tests (``cute_bwd_variants``, ``cute_fwd_variants``). Exit status 1 if a case raised.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import attnkit
import torch

failures = []


def case(name, fn):
    try:
        fn()
        torch.cuda.synchronize()
        print(f"{name}: ran", flush=True)
    except attnkit.BackendUnavailableError as e:
        print(f"{name}: unavailable ({e})", flush=True)
    except Exception as e:
        print(f"{name}: raised {type(e).__name__}: {e}", flush=True)
        failures.append(name)


def attention(backend, sq, sk, h, hkv, d, causal, window, rank, backward=True):
    def run():
        def leaf(*shape):
            return torch.randn(*shape, device="cuda", dtype=torch.bfloat16).requires_grad_()

        q, k, v = leaf(2, sq, h, d), leaf(2, sk, hkv, d), leaf(2, sk, hkv, d)
        bias = attnkit.LowRankBias(leaf(2, sq, h, rank), leaf(2, sk, h, rank)) if rank else None
        out = attnkit.attention(q, k, v, causal=causal, window=window, bias=bias, backend=backend)
        if backward:
            out.backward(torch.randn_like(out))

    return run


def lightning(backend):
    def run():
        def leaf(*shape):
            return (0.3 * torch.randn(*shape, device="cuda", dtype=torch.bfloat16)).requires_grad_()

        slopes = attnkit.lightning.slopes(2, device="cuda")
        state = torch.randn(2, 2, 64, 64, device="cuda").requires_grad_()
        q, k, v = leaf(2, 77, 2, 64), leaf(2, 77, 2, 64), leaf(2, 77, 2, 64)
        o, final = attnkit.lightning_attention(
            q, k, v, slopes, initial_state=state, output_final_state=True, backend=backend
        )
        (o.float().sum() + final.sum()).backward()
        with torch.no_grad():
            attnkit.lightning_attention_step(q[:, :1], k[:, :1], v[:, :1], slopes, state.detach(), backend=backend)

    return run


def cute_bwd_variant(sq, sk, d, causal, **flags):
    """The CuTe backward launcher with a benchmark variant's flags (the public API runs the defaults only)."""

    def run():
        from attnkit.cute import attention_bwd as bwd
        from attnkit.reference.attention import attention_forward

        q, k, v = (torch.randn(1, s, 2, d, device="cuda", dtype=torch.bfloat16) for s in (sq, sk, sk))
        kw = dict(softmax_scale=d**-0.5, window_left=-1, window_right=0 if causal else -1)
        out, lse = attention_forward(q, k, v, None, None, compute_dtype=torch.bfloat16, **kw)
        bwd.attention_bwd(torch.randn_like(out), q, k, v, out, lse, None, None, **kw, **flags)

    return run


def cute_fwd_variant(b, sq, sk, h, d, causal, variant):
    """The CuTe forward launcher with a benchmark variant's config (``variant`` maps the launcher's config to it)."""

    def run():
        from attnkit.cute import attention_fwd as fwd

        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for s in (sq, sk, sk))
        wr = 0 if causal else -1
        cfg = variant(fwd.config_for(torch.bfloat16, sq, h, h, d, d, -1, wr))
        fwd.attention_fwd(q, k, v, None, None, softmax_scale=d**-0.5, window_left=-1, window_right=wr, config=cfg)

    return run


def cute_fwd_variants() -> list:
    """(name, case) of the forward variants that passed gpu_check's smoke test and pass data in shared memory in a
    new way: the dynamic schedule's tile handoff, with more tiles (160, each with keys) than an H100 has SMs so that
    tiles taken from the counter run a mainloop after the handoff."""
    import dataclasses

    from attnkit.cute import attention_fwd as fwd

    found = []
    if fwd.dynamic_schedule_enabled():
        dynamic = partial(dataclasses.replace, dynamic_schedule=True)
        found.append(("cute fwd dynamic schedule", cute_fwd_variant(2, 256, 256, 40, 128, True, dynamic)))
    return found


def cute_bwd_variants() -> list:
    """(name, case) of the backward variants that passed gpu_check's smoke test: the 80-row steps, the producer
    warp's dQ reduce-add (its named barriers hand one smem buffer back and forth), three Q / dO stages, the rotated
    query-block walk, lse2 and D loaded while the score wgmmas run."""
    from attnkit.cute import attention_bwd as bwd

    found = []
    if bwd.rows_80_enabled():
        found.append(("cute bwd 80 query rows", cute_bwd_variant(170, 200, 128, False, tile_m=80, dq_tma_reduce=False)))
    if bwd.reduce_warp_enabled():
        flags = dict(dq_tma_reduce=True, dq_reduce_warp=True)
        found.append(("cute bwd dQ reduce warp", cute_bwd_variant(200, 200, 128, True, **flags)))
        if bwd.rows_80_enabled():
            # causal: the non-causal 80-row variant adds dQ by atomics (no reduce-add to issue from a warp)
            found.append(("cute bwd 80 rows, reduce warp", cute_bwd_variant(170, 170, 128, True, tile_m=80, **flags)))
    if bwd.three_stages_enabled():
        found.append(("cute bwd 3 Q / dO stages", cute_bwd_variant(300, 300, 128, True, num_stages=3)))
    if bwd.rotation_enabled():
        flags = dict(rotate_query_blocks=True, dq_tma_reduce=False)
        found.append(("cute bwd rotated query blocks", cute_bwd_variant(300, 300, 128, False, **flags)))
    if bwd.early_stats_enabled():
        found.append(("cute bwd lse2 and D loaded early", cute_bwd_variant(200, 300, 128, True, early_stats=True)))
    return found


# (sq, sk, h, hkv, d, causal, window, rank)
SHAPES = [
    (77, 77, 2, 2, 64, True, (-1, -1), 0),
    (33, 100, 4, 2, 128, True, (-1, -1), 4),
    (65, 65, 2, 1, 64, False, (16, 0), 0),
    (100, 100, 2, 2, 128, False, (-1, -1), 8),
    (70, 90, 2, 1, 256, True, (-1, -1), 0),  # wide heads: the backward's 64-row key blocks
]
# racecheck: d = 64 takes the forward's 192-row tiles (three consumer warpgroups), d = 128 its 128-row ones
TINY = [(130, 130, 1, 1, 64, True, (-1, -1), 0), (70, 70, 1, 1, 128, True, (-1, -1), 0)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="triton,cute")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--no-wide", action="store_true")
    p.add_argument("--no-cute-bwd", action="store_true", help="the CuTe attention forward only")
    p.add_argument(
        "--variants",
        choices=["with", "without", "only"],
        default="with",
        help="the CuTe variants (cute_bwd_variants, cute_fwd_variants) besides the shapes, not at all, or alone",
    )
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    for backend in backends:
        for s in (TINY if args.tiny else SHAPES) if args.variants != "only" else []:
            if args.no_wide and s[4] > 128:
                continue
            backward = not (args.no_cute_bwd and backend == "cute")
            case(f"attention {backend} {s}", attention(backend, *s, backward=backward))
        if backend == "cute" and not args.no_cute_bwd and args.variants != "without":
            for name, fn in cute_bwd_variants():
                case(name, fn)
        if backend == "cute" and args.variants != "without":
            for name, fn in cute_fwd_variants():
                case(name, fn)
    if "triton" in backends and not args.tiny and args.variants != "only":
        case("lightning triton", lightning("triton"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
