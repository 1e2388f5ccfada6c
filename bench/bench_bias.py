"""Attention with an additive bias, bf16, forward and forward+backward, with the peak extra memory.

- Learned rank-8 bias φq·φkᵀ (B2 H16 N8192 D128; N4096 too without --quick): attnkit FlashBias ('triton',
  'cute'; factors bf16, with gradients) against the same attnkit kernel without bias, SDPA with the dense bias
  as attn_mask (the dense bias a leaf with a gradient), the concat trick ([q·s, φq], [k, φk], zero-padded V)
  through SDPA, FlexAttention with a score_mod reading the precomputed dense bias (no bias gradient), and
  cuDNN with no bias (the floor).
  The CuTe rank-8 forward takes the bias as a K-slice of S by default (FwdConfig.bias_slice); a second row times
  the separate bias wgmma it replaced (ATTNKIT_SM90_FWD_BIAS_SLICE=0), in the same call.
- ALiBi, causal (B1 H16 D128, N16384; N8192 too without --quick): attnkit with `attnkit.bias.alibi` (exact
  rank-2 float32 factors) against FlexAttention computing ALiBi in its score_mod, SDPA with the dense masked
  bias (without --quick) and cuDNN causal with no bias (the floor).

TFLOP/s counts the attention FLOPs only (no bias term), the same for every method, so it ranks like time.
Peak extra memory: torch.cuda.max_memory_allocated over one forward+backward, including the method's set-up
(the dense bias, the block mask, the factors), minus what was allocated before.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable

import attnkit
import common
import torch
import torch.nn.functional as F
from attnkit import perf

RANK = 8
HEADS = 16
HEAD_DIM = 128
LOWRANK_SHAPES = ((2, 8192), (2, 4096))
ALIBI_SEQLENS = (16384, 8192)
OURS = common.our_backends(("triton", "cute"))


def causal_block_mask(n: int):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, n, n, device="cuda")


def bhnd(*xs):
    """(B, N, H, D) leaves → (B, H, N, D) contiguous leaves with gradients, for Flex (outside the timing)."""
    return tuple(x.detach().transpose(1, 2).contiguous().requires_grad_() for x in xs)


class Case:
    """One shape's inputs: q, k, v (B, N, H, D) bf16 leaves with gradients, plus rank-R factors."""

    def __init__(self, batch: int, seqlen: int, rank: int):
        def leaf(*shape, scale=1.0):
            return (torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * scale).requires_grad_()

        self.batch, self.seqlen = batch, seqlen
        self.q = leaf(batch, seqlen, HEADS, HEAD_DIM)
        self.k = leaf(batch, seqlen, HEADS, HEAD_DIM)
        self.v = leaf(batch, seqlen, HEADS, HEAD_DIM)
        self.q_factor = leaf(batch, seqlen, HEADS, rank, scale=0.5) if rank else None
        self.k_factor = leaf(batch, seqlen, HEADS, rank, scale=0.5) if rank else None

    def dense_bias(self, requires_grad: bool) -> torch.Tensor:
        """q_factor·k_factorᵀ as a (B, H, N, N) bf16 tensor."""
        with torch.no_grad():
            dense = torch.einsum("bihr,bjhr->bhij", self.q_factor, self.k_factor)
        return dense.requires_grad_(requires_grad)


# A method: setup(case) -> (forward callable returning out, tensors to differentiate).
Setup = Callable[["Case"], tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]]


def lowrank_methods() -> dict[str, tuple[bool, Setup]]:
    def ours(backend: str, with_bias: bool) -> Setup:
        def setup(c: Case):
            bias = attnkit.LowRankBias(c.q_factor, c.k_factor) if with_bias else None
            inputs = (c.q, c.k, c.v, c.q_factor, c.k_factor) if with_bias else (c.q, c.k, c.v)
            return lambda: attnkit.attention(c.q, c.k, c.v, bias=bias, backend=backend), inputs

        return setup

    def sdpa_dense(c: Case):
        bias = c.dense_bias(requires_grad=True)
        qt, kt, vt = (x.transpose(1, 2) for x in (c.q, c.k, c.v))
        return lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias), (c.q, c.k, c.v, bias)

    def sdpa_concat(c: Case):
        scale = HEAD_DIM**-0.5

        def fwd():
            q = torch.cat([c.q * scale, c.q_factor], dim=-1).transpose(1, 2)
            k = torch.cat([c.k, c.k_factor], dim=-1).transpose(1, 2)
            v = F.pad(c.v, (0, RANK)).transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :HEAD_DIM]

        return fwd, (c.q, c.k, c.v, c.q_factor, c.k_factor)

    def flex_dense(c: Case):
        flex = common.compiled_flex()
        bias = c.dense_bias(requires_grad=False)
        qt, kt, vt = bhnd(c.q, c.k, c.v)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, h, q_idx, kv_idx]

        return lambda: flex(qt, kt, vt, score_mod=score_mod), (qt, kt, vt)

    def cudnn(c: Case):
        return sdpa_cudnn(c, causal=False), (c.q, c.k, c.v)

    methods: dict[str, tuple[bool, Setup]] = {}
    for backend in OURS:
        methods[f"attnkit {backend} rank {RANK}"] = (True, ours(backend, True))
        if backend == "cute":
            methods[f"attnkit cute rank {RANK}, bias wgmma apart"] = (True, without_bias_slice(ours(backend, True)))
    for backend in OURS:
        methods[f"attnkit {backend} no bias"] = (False, ours(backend, False))
    methods["SDPA dense bias"] = (False, sdpa_dense)
    methods["SDPA concat"] = (False, sdpa_concat)
    methods["Flex score_mod dense"] = (False, flex_dense)
    methods["cuDNN no bias"] = (False, cudnn)
    return methods


def without_bias_slice(setup: Setup) -> Setup:
    """The same method with the CuTe kernels' bias slices off (ATTNKIT_SM90_FWD_BIAS_SLICE=0 and
    ATTNKIT_SM90_BWD_BIAS_SLICE=0 while ``bench_method`` times it, backward included): the bias wgmma waited for
    alone and multiplied before S and S^T, the default until the slices."""

    def wrapped(c: Case):
        return setup(c)

    wrapped.switched_off = slices_off
    return wrapped


@contextlib.contextmanager
def slices_off():
    from attnkit.cute import attention_bwd, attention_fwd

    with attention_fwd.bias_slices_off(), attention_bwd.bias_slices_off():
        yield


def sdpa_cudnn(c: Case, causal: bool) -> Callable[[], torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (c.q, c.k, c.v))

    def fwd():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    return fwd


def alibi_methods(quick: bool) -> dict[str, tuple[bool, Setup]]:
    def ours(backend: str) -> Setup:
        def setup(c: Case):
            bias = attnkit.bias.alibi(attnkit.lightning.slopes(HEADS, device="cuda"), c.seqlen, c.seqlen)
            fwd = lambda: attnkit.attention(c.q, c.k, c.v, causal=True, bias=bias, backend=backend)  # noqa: E731
            return fwd, (c.q, c.k, c.v)

        return setup

    def flex_alibi(c: Case):
        flex = common.compiled_flex()
        slopes = attnkit.lightning.slopes(HEADS, device="cuda")
        block_mask = causal_block_mask(c.seqlen)
        qt, kt, vt = bhnd(c.q, c.k, c.v)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        return lambda: flex(qt, kt, vt, score_mod=score_mod, block_mask=block_mask), (qt, kt, vt)

    def sdpa_dense(c: Case):
        n = c.seqlen
        slopes = attnkit.lightning.slopes(HEADS, device="cuda")
        pos = torch.arange(n, device="cuda")
        rel = (pos[None, :] - pos[:, None]).to(torch.float32)
        bias = torch.empty(1, HEADS, n, n, device="cuda", dtype=torch.bfloat16)
        for h in range(HEADS):  # one head at a time: the float32 temporaries stay N² instead of H·N²
            bias[0, h] = (slopes[h] * rel).masked_fill_(rel > 0, -math.inf)
        del rel
        qt, kt, vt = (x.transpose(1, 2) for x in (c.q, c.k, c.v))
        return lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias), (c.q, c.k, c.v)

    def cudnn(c: Case):
        return sdpa_cudnn(c, causal=True), (c.q, c.k, c.v)

    methods: dict[str, tuple[bool, Setup]] = {f"attnkit {b} ALiBi": (True, ours(b)) for b in OURS}
    methods["Flex score_mod ALiBi"] = (False, flex_alibi)
    if not quick:
        methods["SDPA dense bias"] = (False, sdpa_dense)
    methods["cuDNN causal no bias"] = (False, cudnn)
    return methods


def bench_case(
    c: Case,
    shape: str,
    causal: bool,
    methods: dict[str, tuple[bool, Setup]],
    tables: tuple[common.Table, common.Table],
    ceilings: common.Ceilings,
    budget: common.Budget,
) -> None:
    dims = (c.batch, HEADS, c.seqlen, c.seqlen, HEAD_DIM)
    fwd_flops = perf.attention_fwd_flops(*dims, causal=causal)
    both_flops = fwd_flops + perf.attention_bwd_flops(*dims, causal=causal)
    for name, (ours, setup) in methods.items():
        backward = not (name.startswith("attnkit ") and common.backward_skipped(name.split()[1]))
        fwd_result, both_result, memory = bench_method(c, setup, "error" if ours else "n/a", budget, backward)
        for table, result, work, extras in (
            (tables[0], fwd_result, fwd_flops, {}),
            (tables[1], both_result, both_flops, {"peak extra MiB": memory}),
        ):
            table.add(
                shape,
                name,
                ours,
                result,
                rate=lambda ms, w=work: perf.tflops(w, ms),
                pct=lambda ms, w=work: perf.percent_of(perf.tflops(w, ms), ceilings.matmul_tflops),
                **extras,
            )


def bench_method(c: Case, setup: Setup, prefix: str, budget: common.Budget, backward: bool = True):
    """(forward, forward+backward, peak extra MiB) for one method on one case; ``backward=False``: forward only. A
    setup's ``switched_off`` (``without_bias_slice``) is entered around all of it."""
    with getattr(setup, "switched_off", contextlib.nullcontext)():
        fwd_result, both_result = time_method(c, setup, prefix, budget, backward)
        common.release()  # the timing's tensors are gone before the memory is measured
        return fwd_result, both_result, peak_memory(c, setup) if both_result.ok else ""


def time_method(c: Case, setup: Setup, prefix: str, budget: common.Budget, backward: bool = True):
    if budget.expired():
        skipped = common.Result(note="skipped (time budget)")
        return skipped, skipped
    try:
        fwd, inputs = setup(c)
    except Exception as e:
        failed = common.Result(note=f"{prefix}: {common.short_error(e)}")
        return failed, failed
    fwd_result = common.measure(fwd, budget, error_prefix=prefix)
    if not backward:
        return fwd_result, common.Result(note=common.BACKWARD_SKIPPED)
    if not fwd_result.ok:
        return fwd_result, fwd_result
    dout = torch.randn_like(fwd())

    def both():
        return torch.autograd.grad(fwd(), inputs, dout)

    return fwd_result, common.measure(both, budget, error_prefix=prefix)


def peak_memory(c: Case, setup: Setup) -> str:
    def once():
        fwd, inputs = setup(c)
        out = fwd()
        torch.autograd.grad(out, inputs, torch.randn_like(out))

    return common.peak_extra_mib(once)


def run(args, ceilings: common.Ceilings, budget: common.Budget) -> list[common.Table]:
    lowrank = [] if args.alibi_only else LOWRANK_SHAPES[:1] if args.quick else LOWRANK_SHAPES
    alibi = [] if args.lowrank_only else ALIBI_SEQLENS[:1] if args.quick else ALIBI_SEQLENS
    out: list[common.Table] = []
    if lowrank:
        tables = (
            common.Table(f"rank-{RANK} learned bias, forward", "TFLOP/s", "bf16 matmul"),
            common.Table(
                f"rank-{RANK} learned bias, forward+backward",
                "TFLOP/s",
                "bf16 matmul",
                extra_columns=("peak extra MiB",),
            ),
        )
        share = budget.share(0.5) if alibi else budget
        for batch, n in lowrank:
            c = Case(batch, n, RANK)
            shape = f"B{batch} H{HEADS} N{n} D{HEAD_DIM}"
            bench_case(c, shape, False, lowrank_methods(), tables, ceilings, share)
            del c
            common.release()
        out += tables
    if alibi:
        tables = (
            common.Table("ALiBi causal, forward", "TFLOP/s", "bf16 matmul"),
            common.Table("ALiBi causal, forward+backward", "TFLOP/s", "bf16 matmul", extra_columns=("peak extra MiB",)),
        )
        for n in alibi:
            c = Case(1, n, 0)
            shape = f"B1 H{HEADS} N{n} D{HEAD_DIM} causal"
            bench_case(c, shape, True, alibi_methods(args.quick), tables, ceilings, budget)
            del c
            common.release()
        out += tables
    if out:
        out[-1].notes.append("TFLOP/s counts attention FLOPs only (no bias term), equal for every method.")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N8192 for the rank-8 bias, N16384 for ALiBi")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--lowrank-only", action="store_true", help="only the learned rank-8 bias")
    group.add_argument("--alibi-only", action="store_true", help="only ALiBi")
    p.add_argument("--budget-s", type=float, help="skip measurements that would start after this many s")
    return p


def main() -> None:
    common.standalone("bias", run, parser().parse_args())


if __name__ == "__main__":
    main()
