"""One attention launch of attnkit's CuTe kernel or of FA4's sm90 kernel, for Nsight Compute (scripts/gpu_profile.sh).

    python scripts/gpu_profile.py {cute,fa4} [--causal] [--backward] [--n 8192] [--d 128]

B * N = 16384 tokens, H * D = 2048, bf16 (the benchmark's shapes). Warm-up calls first (compiles, caches), then
one call between torch.cuda.profiler.start() and stop(): ncu runs with ``--profile-from-start off``, so only that
call's kernels are profiled (the forward kernel; with ``--backward`` the backward's preprocess, main kernel and
postprocess, after an unprofiled forward).
"""

from __future__ import annotations

import argparse
import math

import torch

TOKENS = 16384
HIDDEN = 2048


def forward_call(method: str, q, k, v, causal: bool):
    if method == "cute":
        from attnkit.cute import attention_fwd as fwd

        kw = dict(softmax_scale=1.0 / math.sqrt(q.shape[-1]), window_left=-1, window_right=0 if causal else -1)
        return lambda: fwd.attention_fwd(q, k, v, None, None, **kw)
    from flash_attn.cute.interface import flash_attn_func

    return lambda: flash_attn_func(q, k, v, causal=causal)


def backward_call(method: str, q, k, v, causal: bool):
    """The backward of one forward (kept), its gradient only."""
    if method == "cute":
        from attnkit.cute import attention_bwd as bwd
        from attnkit.cute import attention_fwd as fwd

        kw = dict(softmax_scale=1.0 / math.sqrt(q.shape[-1]), window_left=-1, window_right=0 if causal else -1)
        out, lse = fwd.attention_fwd(q, k, v, None, None, **kw)
        dout = torch.randn_like(out)
        return lambda: bwd.attention_bwd(dout, q, k, v, out, lse, None, None, **kw)
    from flash_attn.cute.interface import flash_attn_func

    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = flash_attn_func(q, k, v, causal=causal)
    out = out[0] if isinstance(out, tuple) else out
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=["cute", "fa4"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--d", type=int, default=128)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    heads = HIDDEN // args.d
    batch = max(1, TOKENS // args.n)
    q, k, v = (torch.randn(batch, args.n, heads, args.d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    make = backward_call if args.backward else forward_call
    call = make(args.method, q, k, v, args.causal)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"gpu_profile: {args.method} B{batch} H{heads} N{args.n} D{args.d}{' causal' if args.causal else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
