"""What ``backend="auto"`` should pick on this GPU: attnkit's CuTe kernels against its Triton ones, class by class of
attention call, the forward alone (inference, no grad) and a training step (forward + backward).

``dispatch.AUTO_CUTE`` sends a class to CuTe only where a GPU run has timed it faster than Triton (and the tests
ran it correct). The attention benchmark times a few shapes; this one walks the classes a rule would have to name:
head dims, fp16 against bf16, GQA, masks, sequence lengths down to where the host time shows, a bias. Each CuTe row
says what ``auto`` picks for that call today ("cute" or "triton") and Triton's time over CuTe's (above 1:
CuTe is faster). Widening a rule is a decision made from these tables (bench/RESULTS.md), not by this script.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import attnkit
import common
import torch
from attnkit import dispatch, perf

OURS = common.our_backends(("triton", "cute"))
LABELS = {"triton": "attnkit triton", "cute": "attnkit cute"}


@dataclass(frozen=True)
class Case:
    """One class of call, at a shape of the class."""

    batch: int
    seqlen_q: int
    seqlen_k: int
    heads: int
    heads_kv: int
    head_dim: int
    head_dim_v: int
    window: tuple[int, int] = (-1, -1)
    dtype: torch.dtype = torch.bfloat16
    bias_rank: int = 0
    bias_dtype: torch.dtype = torch.bfloat16  # bf16 factors: the tensor-core K-slice; float32: the FMA path

    def label(self) -> str:
        dims = f"D{self.head_dim}" + (f" Dv{self.head_dim_v}" if self.head_dim_v != self.head_dim else "")
        heads = f"H{self.heads}" + (f" Hkv{self.heads_kv}" if self.heads_kv != self.heads else "")
        n = f"N{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"Nq{self.seqlen_q} Nk{self.seqlen_k}"
        mask = {(-1, -1): "", (-1, 0): " causal"}.get(self.window, f" window{self.window}")
        dtype = "" if self.dtype == torch.bfloat16 else f" {str(self.dtype).removeprefix('torch.')}"
        bias = ""
        if self.bias_rank:
            bias = f" bias r{self.bias_rank} {str(self.bias_dtype).removeprefix('torch.')}"
        return f"B{self.batch} {heads} {n} {dims}{mask}{dtype}{bias}"


def case(b, n, h, d, *, hkv=None, nk=None, dv=None, **kw) -> Case:
    return Case(b, n, n if nk is None else nk, h, h if hkv is None else hkv, d, d if dv is None else dv, **kw)


CAUSAL = (-1, 0)
# In order of importance (a measurement past the time budget is skipped): the class the rule covers, causal and
# not, as controls (their kernels already compiled by the attention benchmark), then the classes nearest to it, then
# the rest; at 16384 tokens (B * N) and 2048 model width (H * D), as the attention benchmark's shapes.
CASES = (
    case(2, 8192, 16, 128),
    case(2, 8192, 16, 128, window=CAUSAL),
    case(2, 8192, 16, 128, dtype=torch.float16),
    case(2, 8192, 16, 128, hkv=4),
    case(2, 8192, 32, 64),
    case(4, 4096, 16, 128),
    case(4, 4096, 16, 128, window=CAUSAL),
    case(2, 8192, 16, 128, hkv=4, window=CAUSAL),
    case(2, 8192, 32, 64, window=CAUSAL),
    case(8, 2048, 16, 128),
    case(8, 2048, 16, 128, window=CAUSAL),
    case(16, 1024, 16, 128, window=CAUSAL),
    case(2, 8192, 16, 128, window=(1024, 0)),
    case(2, 8192, 16, 128, bias_rank=8),
    case(2, 8192, 16, 128, bias_rank=2, bias_dtype=torch.float32),
    case(2, 8192, 8, 256),
    case(2, 8192, 8, 256, window=CAUSAL),
    case(2, 8192, 16, 96),
    case(2, 8192, 8, 192, window=CAUSAL),
    case(1, 16384, 16, 128),
    case(64, 1, 16, 128, hkv=2, nk=8192),  # a decode step's shape: one query per sequence
)
# gpu_check's quick run: the controls and the three classes nearest to them (each new class compiles Triton kernels)
QUICK = CASES[:6]


def make_inputs(c: Case, device: str = "cuda"):
    def one(heads: int, seqlen: int, dim: int, dtype: torch.dtype):
        return torch.randn(c.batch, seqlen, heads, dim, device=device, dtype=dtype).requires_grad_()

    q = one(c.heads, c.seqlen_q, c.head_dim, c.dtype)
    k = one(c.heads_kv, c.seqlen_k, c.head_dim, c.dtype)
    v = one(c.heads_kv, c.seqlen_k, c.head_dim_v, c.dtype)
    bias = None
    if c.bias_rank:
        # unit-scale logits: factors of norm about 1 per row
        qf = one(c.heads, c.seqlen_q, c.bias_rank, c.bias_dtype) / c.bias_rank**0.5
        kf = one(c.heads, c.seqlen_k, c.bias_rank, c.bias_dtype) / c.bias_rank**0.5  # H (or 1) heads, as q's
        bias = attnkit.LowRankBias(qf.detach().requires_grad_(), kf.detach().requires_grad_())
    return q, k, v, bias


def auto_picks(c: Case, q, k, v, bias) -> str:
    """The backend ``auto`` takes for this call on this GPU (dispatch.AUTO_CUTE, as the public function asks it)."""
    arch = dispatch.device_arch(q.device.index)
    takes = dispatch.cute_verified(arch, q, k, v, bias, *c.window, c.head_dim**-0.5)
    return dispatch.resolve("auto", "attention", q.device, takes)


def step_methods(backend: str, c: Case, q, k, v, bias) -> tuple[Callable[[], object], Callable[[], object]]:
    """The forward under no_grad, and forward + backward of every input that takes a gradient."""
    leaves = [q, k, v] + ([bias.q_factor, bias.k_factor] if bias is not None else [])

    def call():
        return attnkit.attention(q, k, v, window=c.window, bias=bias, backend=backend)

    def forward():
        with torch.no_grad():
            return call()

    dout = torch.randn(c.batch, c.seqlen_q, c.heads, c.head_dim_v, device=q.device, dtype=c.dtype)

    def train_step():
        return torch.autograd.grad(call(), leaves, dout)

    return forward, train_step


def run(args, ceilings: common.Ceilings, budget: common.Budget) -> list[common.Table]:
    columns = ("auto today", "vs triton")
    fwd_table = common.Table(
        "auto: CuTe against Triton, forward (no grad)", "TFLOP/s", "bf16 matmul", extra_columns=columns
    )
    step_table = common.Table(
        "auto: CuTe against Triton, forward + backward", "TFLOP/s", "bf16 matmul", extra_columns=columns
    )
    for c in QUICK if args.quick else CASES:
        dims = (c.batch, c.heads, c.seqlen_q, c.seqlen_k, c.head_dim, c.head_dim_v)
        work = {"window": c.window, "bias_rank": c.bias_rank}
        flops = perf.attention_fwd_flops(*dims, **work)
        step_flops = flops + perf.attention_bwd_flops(*dims, **work)
        try:
            q, k, v, bias = make_inputs(c)
            picks = auto_picks(c, q, k, v, bias)
        except Exception as e:  # e.g. OOM: the row says so, the next class still runs
            for table in (fwd_table, step_table):
                for name in OURS:
                    table.add(c.label(), LABELS[name], True, common.Result(note=f"error: {common.short_error(e)}"))
            common.release()
            continue
        times: dict[str, dict[str, float]] = {fwd_table.title: {}, step_table.title: {}}
        forward = train_step = None
        for name in OURS:
            try:
                forward, train_step = step_methods(name, c, q, k, v, bias)
            except Exception as e:
                forward = train_step = None
                failure = common.Result(note=f"error: {common.short_error(e)}")
            for table, fn, work_flops in ((fwd_table, forward, flops), (step_table, train_step, step_flops)):
                if fn is None:
                    result = failure
                elif table is step_table and common.backward_skipped(name):
                    result = common.Result(note=common.BACKWARD_SKIPPED)
                else:
                    result = common.measure(fn, budget)
                extras = {}
                if result.ok:
                    times[table.title][name] = result.ms
                if name == "cute":
                    extras["auto today"] = picks
                    if result.ok and "triton" in times[table.title]:
                        extras["vs triton"] = f"{times[table.title]['triton'] / result.ms:.2f}×"
                table.add(
                    c.label(),
                    LABELS[name],
                    True,
                    result,
                    rate=lambda ms, w=work_flops: perf.tflops(w, ms),
                    pct=lambda ms, w=work_flops: perf.percent_of(perf.tflops(w, ms), ceilings.matmul_tflops),
                    **extras,
                )
        # the closures hold the inputs (and dout) too
        del q, k, v, bias, forward, train_step
        common.release()
    note = (
        "vs triton = Triton's time / CuTe's: above 1 means CuTe is faster. auto today: what backend='auto' picks "
        "for that call now (dispatch.AUTO_CUTE). FLOPs: attnkit.perf (exact visible pairs; backward 2.5x forward)."
    )
    step_table.notes.append(note)
    return [fwd_table, step_table]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only the first {len(QUICK)} classes")
    p.add_argument("--budget-s", type=float, help="skip measurements that would start after this many s")
    return p


def main() -> None:
    common.standalone("dispatch", run, parser().parse_args())


if __name__ == "__main__":
    main()
