"""CPU demo of the three ops (`scripts/run` without a GPU): each runs forward and backward through the public
API, is checked against the float64 reference, and is timed; the Triton kernels also run, at a tiny size,
under Triton's CPU interpreter. `python -m attnkit.demo [--skip-triton]`."""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import torch  # noqa: E402

import attnkit  # noqa: E402
from attnkit import reference  # noqa: E402


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def _timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3, result


def _attention_case(backend: str, dtype, b, s, h, hkv, d, use_bias: bool):
    q = torch.randn(b, s, h, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, s, hkv, d, dtype=dtype, requires_grad=True)
    v = torch.randn(b, s, hkv, d, dtype=dtype, requires_grad=True)
    bias = attnkit.bias.alibi(attnkit.lightning.slopes(h), s, s) if use_bias else None

    def step():
        out = attnkit.attention(q, k, v, causal=True, bias=bias, backend=backend)
        (dq,) = torch.autograd.grad(out, q, torch.ones_like(out))
        return out, dq

    ms, (out, _) = _timed(step, 3)
    want, _ = reference.attention_forward(
        q.detach().double(),
        k.detach().double(),
        v.detach().double(),
        None if bias is None else bias.q_factor.double(),
        None if bias is None else bias.k_factor.double(),
        softmax_scale=d**-0.5,
        window_right=0,
        compute_dtype=torch.float64,
    )
    return ms, _rel_err(out, want)


def _lightning_case(backend: str, dtype, b, s, h, d):
    q, k, v = (torch.randn(b, s, h, d, dtype=dtype) * 0.5 for _ in range(3))
    for x in (q, k, v):
        x.requires_grad_(True)
    slopes = attnkit.lightning.slopes(h)

    def step():
        o, state = attnkit.lightning_attention(q, k, v, slopes, output_final_state=True, backend=backend)
        (dq,) = torch.autograd.grad(o, q, torch.ones_like(o))
        return o, state

    ms, (o, _) = _timed(step, 3)
    want, _ = reference.lightning_forward(
        q.detach().double(),
        k.detach().double(),
        v.detach().double(),
        slopes.double(),
        compute_dtype=torch.float64,
    )
    return ms, _rel_err(o, want)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-triton", action="store_true", help="skip the Triton interpreter runs")
    args = parser.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    torch.manual_seed(0)
    cases = [
        (
            "attention causal, GQA",
            "reference",
            lambda: _attention_case("reference", torch.float32, 2, 512, 8, 2, 64, False),
        ),
        (
            "attention + ALiBi (FlashBias)",
            "reference",
            lambda: _attention_case("reference", torch.float32, 2, 512, 8, 8, 64, True),
        ),
        ("lightning attention-2", "reference", lambda: _lightning_case("reference", torch.float32, 2, 1024, 8, 64)),
    ]
    if not args.skip_triton:
        cases += [
            (
                "attention causal, GQA",
                "triton (CPU interpreter)",
                lambda: _attention_case("triton", torch.float16, 1, 64, 2, 1, 32, False),
            ),
            (
                "attention + ALiBi (FlashBias)",
                "triton (CPU interpreter)",
                lambda: _attention_case("triton", torch.float16, 1, 64, 2, 2, 32, True),
            ),
            (
                "lightning attention-2",
                "triton (CPU interpreter)",
                lambda: _lightning_case("triton", torch.float16, 1, 64, 2, 32),
            ),
        ]
    rows = []
    progress = tqdm(cases, desc="attnkit demo", unit="case") if tqdm else cases
    for name, backend, run in progress:
        try:
            ms, err = run()
            rows.append((name, backend, f"{ms:9.2f}", f"{err:.2e}", "ok" if err < 2e-2 else "CHECK"))
        except Exception as e:  # a backend that cannot run here is reported, not hidden
            rows.append((name, backend, "-", "-", f"error: {type(e).__name__}: {e}"[:80]))
    widths = [max(len(r[i]) for r in rows + [("op", "backend", "fwd+bwd ms", "max rel err", "")]) for i in range(5)]
    header = ("op", "backend", "fwd+bwd ms", "max rel err", "")
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\ntorch {torch.__version__}, CPU threads {torch.get_num_threads()}; errors vs the float64 reference.")
    print("On a CUDA GPU, scripts/run runs the benchmarks in bench/ instead.")
    return 0 if all(r[4] == "ok" for r in rows) else 1


if __name__ == "__main__":
    if "triton" in sys.modules and os.environ.get("ATTNKIT_DEMO_REEXEC") != "1":
        # `python -m attnkit.demo` imports the attnkit package first, which imports triton (through
        # torch._dynamo) before the variable above is set, and triton reads it then: start again with it set
        os.environ["ATTNKIT_DEMO_REEXEC"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "attnkit.demo", *sys.argv[1:]])
    raise SystemExit(main())
