"""Lightning attention (causal linear attention with per-head decay), bf16, D = E = 128, H = 16, 65,536 tokens,
N ∈ {2048, 8192, 32768} (B = 65536 / N): forward and forward+backward of attnkit 'triton' against fla's
`chunk_simple_gla` (g_gamma = −slopes: the same fixed per-head decay) and OpenNLPLab's lightning-attn
(`lightning_attn_func`, in its (B, H, N, D) layout); without --quick, cuDNN causal softmax attention on the
same tokens for scale. Decode step (B64 H16 D128, float32 state read and written once): attnkit against fla's
`fused_recurrent_simple_gla`, as effective TB/s.

Slopes s_h = 2^(−8(h+1)/H) (`attnkit.lightning.slopes`), λ_h = exp(−s_h), scale 1. Rates: tokens/s, and % of
the measured copy bandwidth for the memory floor (attnkit.perf: q, k, v read and o written forward; q, k, v,
do read and dq, dk, dv written backward), i.e. how close each method is to being memory-bound.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Callable

import attnkit
import common
import torch
import torch.nn.functional as F
from attnkit import perf

HEADS = 16
DIM = 128
TOKENS = 65536
SEQLENS = (2048, 8192, 32768)
DECODE_BATCH = 64


@functools.cache
def slopes() -> torch.Tensor:
    return attnkit.lightning.slopes(HEADS, device="cuda")


def make_inputs(batch: int, seqlen: int):
    """q, k scaled by D^-0.25 so that scale 1 keeps the outputs of order one; leaves with gradients."""

    def leaf(scale: float):
        x = torch.randn(batch, seqlen, HEADS, DIM, device="cuda", dtype=torch.bfloat16) * scale
        return x.requires_grad_()

    return leaf(DIM**-0.25), leaf(DIM**-0.25), leaf(1.0)


def attnkit_fwd(q, k, v):
    return lambda: attnkit.lightning_attention(q, k, v, slopes(), backend="triton")[0], (q, k, v)


def fla_chunk(q, k, v):
    from fla.ops.simple_gla import chunk_simple_gla

    if "g_gamma" in inspect.signature(chunk_simple_gla).parameters:
        decay = {"g_gamma": -slopes()}
    else:  # an older fla: the same decay as a per-token log gate (B, N, H)
        decay = {"g": (-slopes()).expand(q.shape[0], q.shape[1], HEADS).contiguous()}
    return lambda: chunk_simple_gla(q, k, v, scale=1.0, **decay)[0], (q, k, v)


def lightning_attn(q, k, v):
    from lightning_attn.ops import lightning_attn_func

    s = slopes().reshape(HEADS, 1, 1).contiguous()
    # Its native (B, H, N, D) layout, as separate leaves made outside the timed region.
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    return lambda: lightning_attn_func(qt, kt, vt, s), (qt, kt, vt)


def cudnn_softmax(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def fwd():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    return fwd, (q, k, v)


def methods(quick: bool) -> dict[str, tuple[bool, Callable]]:
    found: dict[str, tuple[bool, Callable]] = {
        "attnkit triton": (True, attnkit_fwd),
        "fla chunk_simple_gla": (False, fla_chunk),
        "lightning-attn": (False, lightning_attn),
    }
    if not quick:
        found["cuDNN softmax causal"] = (False, cudnn_softmax)
    return found


def bench_one(setup: Callable, q, k, v, prefix: str, budget: common.Budget):
    if budget.expired():
        skipped = common.Result(note="skipped (time budget)")
        return skipped, skipped
    try:
        fwd, inputs = setup(q, k, v)
    except Exception as e:
        failed = common.Result(note=f"{prefix}: {common.short_error(e)}")
        return failed, failed
    fwd_result = common.measure(fwd, budget, error_prefix=prefix)
    if not fwd_result.ok:
        return fwd_result, fwd_result
    dout = torch.randn_like(fwd())

    def both():
        return torch.autograd.grad(fwd(), inputs, dout)

    return fwd_result, common.measure(both, budget, error_prefix=prefix)


def bench_decode(table: common.Table, ceilings: common.Ceilings, budget: common.Budget) -> None:
    b = DECODE_BATCH
    shape = f"B{b} H{HEADS} D{DIM} E{DIM}"
    nbytes = perf.decode_step_bytes(b, HEADS, DIM)
    resident = b * HEADS * (DIM * DIM * 4 + 3 * DIM * 2)  # one input set: state, q, k, v

    def make():
        def x(dim):
            return torch.randn(b, 1, HEADS, dim, device="cuda", dtype=torch.bfloat16) * DIM**-0.25

        state = torch.randn(b, HEADS, DIM, DIM, device="cuda", dtype=torch.float32)
        return x(DIM), x(DIM), x(DIM), state

    def ours():
        inputs = common.rotation(make, resident)

        def step():
            q, k, v, state = inputs()
            return attnkit.lightning_attention_step(q, k, v, slopes(), state, backend="triton")

        return step

    def fla():
        from fla.ops.simple_gla import fused_recurrent_simple_gla

        inputs = common.rotation(make, resident)
        g_gamma = -slopes()

        def step():
            q, k, v, state = inputs()
            return fused_recurrent_simple_gla(
                q, k, v, g_gamma=g_gamma, scale=1.0, initial_state=state, output_final_state=True
            )

        return step

    for name, is_ours, setup in (("attnkit triton", True, ours), ("fla fused_recurrent", False, fla)):
        prefix = "error" if is_ours else "n/a"
        try:
            with torch.no_grad():
                fn = setup()
                result = common.measure(fn, budget, error_prefix=prefix)
        except Exception as e:
            result = common.Result(note=f"{prefix}: {common.short_error(e)}")
        table.add(
            shape,
            name,
            is_ours,
            result,
            rate=lambda ms: perf.tbps(nbytes, ms),
            pct=lambda ms: perf.percent_of(perf.tbps(nbytes, ms), ceilings.copy_tbps),
        )
        common.release()


def run(args, ceilings: common.Ceilings, budget: common.Budget) -> list[common.Table]:
    fwd_table = common.Table(f"lightning forward, bf16 D=E={DIM} H{HEADS}", "Mtok/s", "copy (memory floor)")
    both_table = common.Table("lightning forward+backward", "Mtok/s", "copy (memory floor)")
    decode_table = common.Table("lightning decode step, effective", "TB/s", "copy")
    seqlens = args.n or list(SEQLENS)
    main_budget = budget.share(0.85) if not args.no_decode else budget
    for n in seqlens:
        b = max(1, TOKENS // n)
        tokens = b * n
        shape = f"B{b} N{n}"
        fwd_bytes = perf.lightning_fwd_bytes(b, n, HEADS, DIM)
        both_bytes = fwd_bytes + perf.lightning_bwd_bytes(b, n, HEADS, DIM)
        q, k, v = make_inputs(b, n)
        for name, (ours, setup) in methods(args.quick).items():
            fwd_result, both_result = bench_one(setup, q, k, v, "error" if ours else "n/a", main_budget)
            for table, result, nbytes in ((fwd_table, fwd_result, fwd_bytes), (both_table, both_result, both_bytes)):
                table.add(
                    shape,
                    name,
                    ours,
                    result,
                    rate=lambda ms, t=tokens: perf.tokens_per_s(t, ms) / 1e6,
                    pct=lambda ms, w=nbytes: perf.percent_of(perf.tbps(w, ms), ceilings.copy_tbps),
                )
            common.release()
        del q, k, v
        common.release()
    fwd_table.notes.append(
        "% of copy: the memory floor (bytes that must move) at the measured copy bandwidth, over the time taken."
    )
    tables = [fwd_table, both_table]
    if not args.no_decode:
        bench_decode(decode_table, ceilings, budget)
        decode_table.notes.append("bytes: float32 state read + written, q, k, v, o (attnkit.perf.decode_step_bytes).")
        tables.append(decode_table)
    return tables


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="leave out the cuDNN softmax rows")
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths (default: 2048 8192 32768)")
    p.add_argument("--no-decode", action="store_true", help="leave out the decode step")
    p.add_argument("--budget-s", type=float, help="skip measurements that would start after this many s")
    return p


def main() -> None:
    common.standalone("lightning", run, parser().parse_args())


if __name__ == "__main__":
    main()
