"""Host time of the CuTe launchers' own Python per call, on any machine (no GPU): the compiled kernels and the CUDA
queries are stubbed out, so what is timed is the argument checks, config choice, allocations and the conversion of
every tensor argument before the kernel call, plus, separately, CuTe's marshalling of one forward call's arguments
(``generate_execution_args`` of the compiled function).

    python bench/host_launcher.py [--calls 500]

B1 H2 N256 D128 bf16 CPU tensors (the shape of bench_attention's host table). The TVM-FFI path
(ATTNKIT_CUTE_TVM_FFI=1) cannot be timed this way: its argument checks run inside the call, which needs a GPU; the
benchmark's host table times it there.
"""

from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import torch

SHAPE = (1, 256, 2, 128)  # B, N, H, D


def _per_call_us(fn, calls: int) -> float:
    for _ in range(max(calls // 10, 1)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


class _Stream:
    cuda_stream = 0


def launcher_us(calls: int) -> dict[str, float]:
    """µs of Python per forward and per backward launcher call, the kernels stubbed."""
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    def stub(cfg):
        return lambda *args: None

    q = torch.randn(*SHAPE, dtype=torch.bfloat16)
    kw = dict(softmax_scale=SHAPE[3] ** -0.5, window_left=-1, window_right=-1)
    with (
        mock.patch.object(fwd, "compile_fwd", stub),
        mock.patch.object(bwd, "compile_config", stub),
        mock.patch.object(fwd, "_sm_count", lambda device: 132),
        mock.patch.object(torch.cuda, "current_stream", lambda device=None: _Stream()),
    ):
        out, lse = fwd.attention_fwd(q, q, q, None, None, **kw)
        return {
            "forward": _per_call_us(lambda: fwd.attention_fwd(q, q, q, None, None, **kw), calls),
            "backward": _per_call_us(lambda: bwd.attention_bwd(out, q, q, q, out, lse, None, None, **kw), calls),
        }


def marshalling_us(calls: int) -> float:
    """µs CuTe's compiled forward spends turning one call's arguments into its C arguments (compiles the kernel
    for sm_90a first, or loads it from the disk cache)."""
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    import cuda.bindings.driver as cuda
    from attnkit.cute import attention_fwd as fwd
    from attnkit.cute.tensors import to_cute

    b, n, h, d = SHAPE
    cfg = fwd.config_for(torch.bfloat16, n, h, h, d, d, -1, -1, 0, False)
    kernel = fwd.compile_fwd(cfg)
    q = torch.randn(*SHAPE, dtype=torch.bfloat16)
    lse = torch.empty(b, h, n)
    args = (*(to_cute(q) for _ in range(4)), to_cute(lse, 4), None, None, None, 0.1, 0, 0, 132, 1, cuda.CUstream(0))
    return _per_call_us(lambda: kernel.execution_args.generate_execution_args(args, {}), calls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args(argv)
    times = launcher_us(args.calls)
    times["forward kernel's argument marshalling"] = marshalling_us(args.calls)
    b, n, h, d = SHAPE
    print(f"CuTe launcher host time, B{b} H{h} N{n} D{d} bf16, kernels stubbed, mean of {args.calls} calls:")
    for name, us in times.items():
        print(f"  {name}: {us:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
