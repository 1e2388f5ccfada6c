"""Softmax attention, bf16, forward and backward: attnkit ('triton', 'cute') against cuDNN (torch SDPA), FA4
(`flash_attn.cute`), FA2 (torch SDPA) and FlexAttention (compiled), on the shapes of BASELINES.md:
B·N = 16384 tokens, H·D = 2048, D ∈ {64, 128}, N ∈ {1024, 4096, 8192, 16384}, causal and not (``--d`` also takes
96, 192 and 256: H = 2048 // D).

The forward is timed with inputs that require grad (the training forward, the same graph the backward uses);
the backward is `torch.autograd.grad` of that one forward with retain_graph. FLOPs from attnkit.perf (exact
visible pairs; backward 2.5× forward); % of the measured bf16 matmul ceiling. Every peer is optional.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import time
from collections.abc import Callable

import attnkit
import common
import torch
import torch.nn.functional as F
from attnkit import perf

TOKENS = 16384
HIDDEN = 2048
HEAD_DIMS = (64, 128)
SEQLENS = (1024, 4096, 8192, 16384)
# the quick run (gpu_check): N8192 D128 both ways, then the shape of issue 4's 700 TFLOP/s target, then D = 64, in
# order of importance (a measurement that would start past the time budget is skipped)
QUICK = ((128, 8192, False), (128, 8192, True), (128, 16384, False), (64, 8192, False))
OURS = common.our_backends(("triton", "cute"))
# the host table's row of the CuTe backend called through TVM-FFI (cute.tensors.TVM_FFI_ENV, opt-in); gpu_check leaves
# it out when its smoke group fails
TVM_FFI = "cute-tvm-ffi"
PEERS = ("cuDNN", "FA4", "FA2", "Flex")
# --quick: the peers the targets name (a lent GPU's quick run spends its seconds on them, not on FA2 and on
# FlexAttention's torch.compile)
QUICK_METHODS = (*OURS, "cuDNN", "FA4")


def attnkit_method(backend: str) -> Callable:
    def call(q, k, v, causal):
        return lambda: attnkit.attention(q, k, v, causal=causal, backend=backend)

    return call


def sdpa_method(backend_name: str) -> Callable:
    def call(q, k, v, causal):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # FA layout viewed as (B, H, N, D), no copy

        def fwd():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        return fwd

    return call


def fa4_method(q, k, v, causal):
    from flash_attn.cute.interface import flash_attn_func

    def fwd():
        out = flash_attn_func(q, k, v, causal=causal)
        return out[0] if isinstance(out, tuple) else out

    return fwd


def causal_block_mask(n_q: int, n_k: int):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = n_k - n_q

    def mask(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return create_block_mask(mask, None, None, n_q, n_k, device="cuda")


def flex_method(q, k, v, causal):
    flex = common.compiled_flex()
    block_mask = causal_block_mask(q.shape[1], k.shape[1]) if causal else None
    # Flex gets its own (B, H, N, D) contiguous leaves, made outside the timed region.
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))

    def fwd():
        return flex(qt, kt, vt, block_mask=block_mask)

    fwd.grad_inputs = (qt, kt, vt)
    return fwd


METHODS: dict[str, Callable] = {
    "triton": attnkit_method("triton"),
    "cute": attnkit_method("cute"),
    "cuDNN": sdpa_method("CUDNN_ATTENTION"),
    "FA4": fa4_method,
    "FA2": sdpa_method("FLASH_ATTENTION"),
    "Flex": flex_method,
}
LABELS = {
    "triton": "attnkit triton",
    "cute": "attnkit cute",
    TVM_FFI: "attnkit cute, TVM-FFI",
    "cuDNN": "cuDNN (SDPA)",
    "FA4": "FA4 cute",
    "FA2": "FA2 (SDPA)",
    "Flex": "FlexAttention",
}


def shapes(args) -> list[tuple[int, int, bool]]:
    if args.d or args.n or args.causal != "both":
        dims = args.d or list(HEAD_DIMS)
        lens = args.n or list(SEQLENS)
        causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
        return [(d, n, c) for d in dims for n in lens for c in causals]
    if args.quick:
        return list(QUICK)
    return [(d, n, c) for d in (128, 64) for n in SEQLENS for c in (False, True)]


def make_inputs(batch: int, seqlen: int, heads: int, head_dim: int):
    def one():
        return torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16).requires_grad_()

    return one(), one(), one()


def bench_method(
    name: str, q, k, v, causal: bool, budget: common.Budget, backward: bool
) -> tuple[common.Result, common.Result]:
    ours = name in OURS
    prefix = "error" if ours else "n/a"
    if budget.expired():
        skipped = common.Result(note="skipped (time budget)")
        return skipped, skipped
    try:
        fwd = METHODS[name](q, k, v, causal)
    except ImportError as e:
        missing = common.Result(note=f"n/a: {common.short_error(e)}")
        return missing, missing
    except Exception as e:
        failed = common.Result(note=f"{prefix}: {common.short_error(e)}")
        return failed, failed
    fwd_result = common.measure(fwd, budget, error_prefix=prefix)
    if backward and ours and common.backward_skipped(name):
        return fwd_result, common.Result(note=common.BACKWARD_SKIPPED)
    if not backward or not fwd_result.ok:
        return fwd_result, fwd_result
    inputs = getattr(fwd, "grad_inputs", (q, k, v))
    try:
        out = fwd()
        dout = torch.randn_like(out)
    except Exception as e:
        return fwd_result, common.Result(note=f"{prefix}: {common.short_error(e)}")

    def bwd():
        return torch.autograd.grad(out, inputs, dout, retain_graph=True)

    bwd_result = common.measure(bwd, budget, error_prefix=prefix)
    if bwd_result.ok or budget.expired():
        return fwd_result, bwd_result
    retained_error = bwd_result.note

    def both():  # no retain_graph: time forward+backward and subtract the forward
        return torch.autograd.grad(fwd(), inputs, dout)

    both_result = common.measure(both, budget, error_prefix=prefix)
    if not both_result.ok:
        return fwd_result, common.Result(note=retained_error)
    return fwd_result, common.Result(ms=max(both_result.ms - fwd_result.ms, 1e-6), derived=True)


@contextlib.contextmanager
def tvm_ffi_switched_on():
    """The CuTe launchers on their TVM-FFI path inside the block (the switch is read once per process otherwise; the
    compile cache keeps both kinds of kernel apart)."""
    from attnkit.cute import tensors

    old = os.environ.get(tensors.TVM_FFI_ENV)
    os.environ[tensors.TVM_FFI_ENV] = "1"
    tensors.tvm_ffi_enabled.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(tensors.TVM_FFI_ENV, None)
        else:
            os.environ[tensors.TVM_FFI_ENV] = old
        tensors.tvm_ffi_enabled.cache_clear()


# host time per call: a shape whose kernels take a few microseconds, so that back-to-back calls are bound by the
# host (argument checks, tensor conversion, launch); each method's mean over HOST_CALLS calls after one warm call
HOST_SHAPE = (1, 256, 2, 128)  # B, N, H, D
HOST_CALLS = 200


def host_us_per_call(fn: Callable[[], object], calls: int = HOST_CALLS) -> float:
    """Mean host microseconds per call of ``fn`` issued back to back (the GPU drains the queue afterwards)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def host_table(methods: list[str], budget: common.Budget) -> common.Table:
    """Forward calls under no_grad at HOST_SHAPE: what each method costs the CPU per call (for small shapes and
    many layers this, not the kernel, is the time)."""
    b, n, h, d = HOST_SHAPE
    table = common.Table("attention forward, host time per call, bf16", "µs per call", "")
    shape = f"B{b} H{h} N{n} D{d}"
    q, k, v = make_inputs(b, n, h, d)
    rows = list(methods)
    if "cute" in rows:
        rows[rows.index("cute") + 1 : rows.index("cute") + 1] = common.our_backends((TVM_FFI,))
    for name in rows:
        if budget.expired():
            result = common.Result(note="skipped (time budget)")
        elif name == TVM_FFI and importlib.util.find_spec("tvm_ffi") is None:
            result = common.Result(note="n/a: apache-tvm-ffi is not installed")
        else:
            try:
                switch = tvm_ffi_switched_on() if name == TVM_FFI else contextlib.nullcontext()
                with switch:
                    fwd = METHODS["cute" if name == TVM_FFI else name](q, k, v, False)
                    with torch.no_grad():
                        result = common.Result(ms=host_us_per_call(fwd) / 1000)
            except ImportError as e:
                result = common.Result(note=f"n/a: {common.short_error(e)}")
            except Exception as e:
                prefix = "error" if name in (*OURS, TVM_FFI) else "n/a"
                result = common.Result(note=f"{prefix}: {common.short_error(e)}")
            finally:
                common.release()
        table.add(shape, LABELS[name], name in (*OURS, TVM_FFI), result, rate=lambda ms: ms * 1000)
    table.notes.append(
        f"host µs per call: {HOST_CALLS} forward calls without grad issued back to back, wall time over calls "
        "(the GPU work per call is a few µs); vs X above 1 means attnkit costs the host less"
    )
    return table


def run(args, ceilings: common.Ceilings, budget: common.Budget) -> list[common.Table]:
    # backend="auto" moves to CuTe on sm90 only where it beats attnkit's Triton: that ratio gets its own column
    fwd_table = common.Table("attention forward, bf16", "TFLOP/s", "bf16 matmul", extra_columns=("vs triton",))
    bwd_table = common.Table("attention backward, bf16", "TFLOP/s", "bf16 matmul", extra_columns=("vs triton",))
    chosen = args.methods or (QUICK_METHODS if args.quick else (*OURS, *PEERS))
    methods = [m for m in (*OURS, *PEERS) if m in chosen]
    host = host_table(methods, budget)  # first: a second at most, and the small shapes' story
    for d, n, causal in shapes(args):
        b, h = max(1, TOKENS // n), HIDDEN // d
        shape = f"B{b} H{h} N{n} D{d}{' causal' if causal else ''}"
        flops = perf.attention_fwd_flops(b, h, n, n, d, causal=causal)
        bwd_flops = perf.attention_bwd_flops(b, h, n, n, d, causal=causal)
        q, k, v = make_inputs(b, n, h, d)
        triton_ms = {}
        for name in methods:
            fwd_result, bwd_result = bench_method(name, q, k, v, causal, budget, not args.no_bwd)
            for table, result, work in ((fwd_table, fwd_result, flops), (bwd_table, bwd_result, bwd_flops)):
                if table is bwd_table and args.no_bwd:
                    continue
                if name == "triton" and result.ok:
                    triton_ms[table.title] = result.ms
                versus = {}
                if name == "cute" and result.ok and table.title in triton_ms:
                    versus["vs triton"] = f"{triton_ms[table.title] / result.ms:.2f}×"
                table.add(
                    shape,
                    LABELS[name],
                    name in OURS,
                    result,
                    rate=lambda ms, w=work: perf.tflops(w, ms),
                    pct=lambda ms, w=work: perf.percent_of(perf.tflops(w, ms), ceilings.matmul_tflops),
                    **versus,
                )
        del q, k, v
        common.release()
    note = "FLOPs: 4·B·H·D per visible pair (causal counts N(N+1)/2 pairs); backward 2.5× forward."
    fwd_table.notes.append(note)
    tables = [fwd_table] if args.no_bwd else [fwd_table, bwd_table]
    return tables + [host]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only {QUICK} as (D, N, causal)")
    p.add_argument("--d", type=int, nargs="+", choices=(64, 96, 128, 192, 256), help="head dims (default: 128 and 64)")
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths (default: 1024 4096 8192 16384)")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=(*OURS, *PEERS),
        help=f"default: all; with --quick {' '.join(QUICK_METHODS)} (FA2 and FlexAttention's compile left out)",
    )
    p.add_argument("--no-bwd", action="store_true", help="forward only")
    p.add_argument("--budget-s", type=float, help="skip measurements that would start after this many s")
    return p


def main() -> None:
    common.standalone("attention", run, parser().parse_args())


if __name__ == "__main__":
    main()
