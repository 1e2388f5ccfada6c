"""Triton Lightning Attention-2 against the float64 reference: forward (both strategies), backward, decode step.

On the CPU these run in Triton's interpreter (fp16/fp32, tiny shapes, 16-token blocks so that 17 and 50 tokens
give ragged and multi-block sequences); the `gpu` tests repeat them in bf16 at larger shapes."""

from __future__ import annotations

import attnkit
import pytest
import torch
from attnkit import reference
from attnkit.backends import alloc
from numerics import assert_2x

triton_lightning = pytest.importorskip("attnkit.backends.triton_lightning")

F64 = torch.float64
SCALE = 0.3  # not a power of two, so that where the scale is rounded matters
STRATEGIES = ("fused", "split")


@pytest.fixture(params=STRATEGIES)
def strategy(request, monkeypatch):
    monkeypatch.setattr(triton_lightning, "STRATEGY_OVERRIDE", request.param)
    return request.param


def _inputs(b, s, h, d, e, dtype, device="cpu", with_state=True, slopes=None):
    q = torch.randn(b, s, h, d, device=device).to(dtype)
    k = torch.randn(b, s, h, d, device=device).to(dtype)
    v = torch.randn(b, s, h, e, device=device).to(dtype)
    if slopes is None:
        slopes = torch.linspace(0.05, 1.0, h, device=device)
    state = torch.randn(b, h, d, e, device=device) if with_state else None
    return q, k, v, slopes.to(device), state


def _d(x):
    return None if x is None else x.to(F64)


def _check_forward(q, k, v, slopes, init):
    with alloc.poisoned():
        o, final = attnkit.lightning_attention(
            q, k, v, slopes, scale=SCALE, initial_state=init, output_final_state=True, backend="triton"
        )
    o64, f64 = reference.lightning_forward(
        _d(q), _d(k), _d(v), slopes, scale=SCALE, initial_state=_d(init), compute_dtype=F64
    )
    o_lp, f_lp = reference.lightning_forward(q, k, v, slopes, scale=SCALE, initial_state=init, compute_dtype=q.dtype)
    assert o.dtype == q.dtype and final.dtype == torch.float32
    assert_2x("o", o, o64, o_lp)
    assert_2x("final_state", final, f64, f_lp)


def _check_backward(q, k, v, slopes, init, with_dfinal):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    init_leaf = None if init is None else init.clone().requires_grad_()
    do = torch.randn(v.shape, device=q.device).to(q.dtype)
    b, _, h, d = q.shape
    dfin = torch.randn(b, h, d, v.shape[3], device=q.device) if with_dfinal else None
    with alloc.poisoned():
        o, final = attnkit.lightning_attention(
            *leaves, slopes, scale=SCALE, initial_state=init_leaf, output_final_state=True, backend="triton"
        )
        outputs, grads_in = [o], [do]
        if dfin is not None:
            outputs.append(final)
            grads_in.append(dfin)
        wrt = leaves + ([init_leaf] if init_leaf is not None else [])
        grads = torch.autograd.grad(outputs, wrt, grads_in)
    ref64 = reference.lightning_backward(
        _d(do), _d(dfin), _d(q), _d(k), _d(v), slopes, scale=SCALE, initial_state=_d(init), compute_dtype=F64
    )
    ref_lp = reference.lightning_backward(
        do, dfin, q, k, v, slopes, scale=SCALE, initial_state=init, compute_dtype=q.dtype
    )
    names = ("dq", "dk", "dv", "d_initial_state")[: len(grads)]
    assert (ref64[3] is None) == (init is None)
    for name, got, r64, rlp in zip(names, grads, ref64[: len(grads)], ref_lp[: len(grads)], strict=True):
        assert_2x(name, got, r64, rlp)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("d, e", [(32, 32), (32, 64), (64, 32)])
@pytest.mark.parametrize("s", [1, 17, 50])
@pytest.mark.parametrize("with_state", [False, True])
def test_forward(strategy, s, d, e, dtype, with_state):
    _check_forward(*_inputs(2, s, 2, d, e, dtype, with_state=with_state))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("d, e", [(32, 64), (64, 32)])
@pytest.mark.parametrize("s", [1, 17, 50])
@pytest.mark.parametrize("with_state, with_dfinal", [(False, False), (True, False), (True, True), (False, True)])
def test_backward(strategy, s, d, e, dtype, with_state, with_dfinal):
    _check_backward(*_inputs(2, s, 2, d, e, dtype, with_state=with_state), with_dfinal)


@pytest.mark.parametrize("s", [17, 50])
def test_backward_two_pass_dkdv(strategy, s):
    """E = 128: dk and dv from two chunk-kernel passes instead of the fused dk/dv kernel."""
    _check_backward(*_inputs(1, s, 2, 32, 128, torch.float16), with_dfinal=True)


def test_backward_two_pass_dkdv_forced(strategy, monkeypatch):
    monkeypatch.setattr(triton_lightning, "FUSED_DKDV_OVERRIDE", False)
    _check_backward(*_inputs(2, 50, 2, 64, 32, torch.float32), with_dfinal=True)


def test_rule_splits_few_long_sequences():
    """Without an override, one (b, h) pair over four blocks is split (the interpreter counts 4 SMs)."""
    assert triton_lightning.STRATEGY_OVERRIDE is None
    q, k, v, slopes, init = _inputs(1, 50, 1, 32, 32, torch.float32, slopes=torch.tensor([0.3]))
    cfg = triton_lightning._config(32, 32, q.device)
    assert triton_lightning._blocks_per_segment(1, 4, cfg, q.device) == 1
    assert triton_lightning._blocks_per_segment(8, 4, cfg, q.device) == 4
    _check_forward(q, k, v, slopes, init)
    _check_backward(q, k, v, slopes, init, with_dfinal=True)


def test_extreme_decays(strategy):
    """No decay (λ = 1) and a decay that underflows within a block (λ^16 ≈ 1e-42) stay finite and exact."""
    slopes = torch.tensor([0.0, 6.0, 40.0])
    q, k, v, _, init = _inputs(1, 50, 3, 32, 32, torch.float32, slopes=slopes)
    _check_forward(q, k, v, slopes, init)
    _check_backward(q, k, v, slopes, init, with_dfinal=True)


def test_strided_inputs(strategy):
    """(B, S, H, ·) views of (B, H, S, ·) storage and a state sliced out of a larger buffer."""
    b, s, h, d, e = 2, 33, 2, 32, 32
    q, k = (torch.randn(b, h, s, d).transpose(1, 2) for _ in range(2))
    v = torch.randn(b, h, s, e).transpose(1, 2)
    init = torch.randn(b, h, d, 2 * e)[..., :e]
    slopes = torch.tensor([0.1, 0.7])
    _check_forward(q, k, v, slopes, init)
    _check_backward(q, k, v, slopes, init, with_dfinal=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("d, e", [(32, 32), (64, 32), (32, 64)])
def test_step_matches_full_call(d, e, dtype):
    q, k, v, slopes, init = _inputs(2, 9, 2, d, e, dtype)
    with alloc.poisoned():
        o_full, final = attnkit.lightning_attention(
            q, k, v, slopes, scale=SCALE, initial_state=init, output_final_state=True, backend="triton"
        )
        _, state = attnkit.lightning_attention(
            q[:, :-1],
            k[:, :-1],
            v[:, :-1],
            slopes,
            scale=SCALE,
            initial_state=init,
            output_final_state=True,
            backend="triton",
        )
        state_before = state.clone()
        o_step, new_state = attnkit.lightning_attention_step(
            q[:, -1:], k[:, -1:], v[:, -1:], slopes, state, scale=SCALE, backend="triton"
        )
    assert torch.equal(state, state_before), "the step wrote its input state"
    assert o_step.shape == (2, 1, 2, e) and new_state.dtype == torch.float32
    # The full call rounds decayed values to the input dtype for its tensor-core update; the step stays in float32.
    tol = dict(atol=2e-2, rtol=2e-3) if dtype == torch.float16 else dict(atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(o_step, o_full[:, -1:], **tol)
    torch.testing.assert_close(new_state, final, **tol)
    args = (q[:, -1:], k[:, -1:], v[:, -1:], slopes)
    o64, s64 = reference.lightning_recurrent(
        *map(_d, args[:3]), slopes, scale=SCALE, initial_state=_d(state), compute_dtype=F64
    )
    o_lp, s_lp = reference.lightning_recurrent(*args, scale=SCALE, initial_state=state, compute_dtype=dtype)
    assert_2x("step o", o_step, o64, o_lp)
    assert_2x("step state", new_state, s64, s_lp)


def test_opcheck():
    """The custom ops run the Triton launchers consistently with their fake impls and autograd registration."""
    from attnkit import ops

    q, k, v, slopes, init = _inputs(1, 20, 2, 32, 32, torch.float32)
    q, k, v, init = (x.requires_grad_() for x in (q, k, v, init))
    torch.library.opcheck(ops.lightning_fwd, (q, k, v, slopes, init, SCALE, "triton"))
    detached = [x.detach() for x in (q, k, v)]
    do, dfin = torch.randn_like(detached[2]), torch.randn_like(init.detach())
    torch.library.opcheck(ops.lightning_bwd, (do, dfin, *detached, slopes, init.detach(), SCALE, "triton"))
    step = [x[:, :1].detach().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(ops.lightning_step, (*step, slopes, init, SCALE, "triton"))


def _sm90_variants():
    """(label, kernel, pointer types, constexprs, float args, num_warps, num_stages) as the launchers use them."""
    cuda = torch.device("cuda")
    bf16 = "*bf16"
    for d, e, reverse, write_o in [
        (128, 128, False, True),
        (128, 128, True, True),
        (256, 64, False, True),
        (64, 256, True, False),
    ]:
        cfg = triton_lightning._config(d, e, cuda)
        constexprs = dict(DK=d, DV=e, CHUNK=cfg.chunk, BLOCK_V=cfg.block_v, REVERSE=reverse, SHIFT=int(reverse))
        constexprs |= dict(WRITE_O=write_o, HAS_SEED=True, STORE_STATE=not write_o, DOT_PRECISION="tf32")
        pointers = dict(Q=bf16, K=bf16, V=bf16, OUT=bf16, SLOPES="*fp32", SEED="*fp32", STATE_OUT="*fp32")
        floats = ("out_scale", "state_scale")
        yield f"chunk {d}x{e} reverse={reverse}", "lightning_chunk_kernel", pointers, constexprs, floats, cfg
    for d, e in [(128, 128), (64, 64)]:
        cfg = triton_lightning._dkdv_config(d, e, cuda)
        constexprs = dict(D=d, E=e, CHUNK=cfg.chunk, HAS_SEED=True, STORE_STATE=True, DOT_PRECISION="tf32")
        pointers = {n: bf16 for n in ("Q", "K", "V", "DO", "DK", "DV")}
        pointers |= dict(SLOPES="*fp32", SEED="*fp32", STATE_OUT="*fp32")
        yield f"dkdv {d}x{e}", "lightning_bwd_dkdv_kernel", pointers, constexprs, ("scale",), cfg
    cfg = triton_lightning._config(128, 128, cuda)
    constexprs = dict(DK=128, DV=128, BLOCK_V=cfg.block_v, HAS_SEED=True, STORE_FINAL=True)
    pointers = dict(BUF="*fp32", SEED="*fp32", FINAL="*fp32", SLOPES="*fp32")
    yield "prefix", "lightning_prefix_kernel", pointers, constexprs, (), cfg
    step = triton_lightning.ChunkConfig(chunk=1, block_v=32, num_warps=4, num_stages=1, min_blocks_per_segment=1)
    pointers = dict(Q=bf16, K=bf16, V=bf16, OUT=bf16, SLOPES="*fp32", STATE="*fp32", NEW_STATE="*fp32")
    yield "step", "lightning_step_kernel", pointers, dict(DK=128, DV=128, BLOCK_V=32), ("scale",), step


def _compile_sm90_variants() -> None:
    """Compile every variant for sm_90a without a GPU; run in a process without TRITON_INTERPRET."""
    import inspect

    import triton
    from attnkit.kernels.triton import lightning as kernels
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for label, name, pointers, constexprs, floats, cfg in _sm90_variants():
        kernel = getattr(kernels, name)
        params = inspect.signature(kernel.fn).parameters
        signature = {
            n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n in floats else "i32") for n in params
        }
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], label
        print(label, "ok", flush=True)


def test_kernels_compile_for_sm90():
    """What only the compiler sees (constexpr globals, layouts, dot shapes) is checked here without a GPU: the
    interpreter runs kernels as Python. A fresh process, because compiling under TRITON_INTERPRET=1 fails."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    code = "import test_triton_lightning as t; t._compile_sm90_variants()"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tests_dir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, d, e",
    [
        (torch.bfloat16, 64, 64),
        (torch.bfloat16, 128, 128),
        (torch.bfloat16, 256, 64),
        (torch.bfloat16, 64, 256),
        (torch.float16, 128, 128),
    ],
)
@pytest.mark.parametrize("s", [1, 1000])
def test_gpu_forward_backward(strategy, s, d, e, dtype):
    q, k, v, slopes, init = _inputs(2, s, 4, d, e, dtype, device="cuda")
    _check_forward(q, k, v, slopes, init)
    _check_backward(q, k, v, slopes, init, with_dfinal=True)
    _check_backward(q, k, v, slopes, None, with_dfinal=False)


@pytest.mark.gpu
def test_gpu_two_pass_dkdv(strategy, monkeypatch):
    monkeypatch.setattr(triton_lightning, "FUSED_DKDV_OVERRIDE", False)
    q, k, v, slopes, init = _inputs(2, 1000, 4, 128, 128, torch.bfloat16, device="cuda")
    _check_backward(q, k, v, slopes, init, with_dfinal=True)


@pytest.mark.gpu
def test_gpu_rule_and_long_sequence():
    """The rule's own choice (no override) on a few-heads long sequence, which it splits."""
    q, k, v, slopes, init = _inputs(1, 4096, 2, 128, 128, torch.bfloat16, device="cuda")
    _check_forward(q, k, v, slopes, init)
    _check_backward(q, k, v, slopes, init, with_dfinal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("d, e", [(64, 64), (128, 128), (256, 256)])
def test_gpu_step(d, e):
    q, k, v, slopes, state = _inputs(8, 1, 16, d, e, torch.bfloat16, device="cuda")
    with alloc.poisoned():
        o, new_state = attnkit.lightning_attention_step(q, k, v, slopes, state, scale=SCALE, backend="triton")
    o64, s64 = reference.lightning_recurrent(
        _d(q), _d(k), _d(v), slopes, scale=SCALE, initial_state=_d(state), compute_dtype=F64
    )
    o_lp, s_lp = reference.lightning_recurrent(
        q, k, v, slopes, scale=SCALE, initial_state=state, compute_dtype=torch.bfloat16
    )
    assert_2x("step o", o, o64, o_lp)
    assert_2x("step state", new_state, s64, s_lp)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    """The launchers make no host sync: forward, backward and step replay from a CUDA graph."""
    q, k, v, slopes, init = _inputs(2, 300, 4, 64, 64, torch.bfloat16, device="cuda")
    do = torch.randn_like(v)
    dfin = torch.randn_like(init)

    def run():
        o, final = triton_lightning.lightning_fwd(q, k, v, slopes, scale=SCALE, initial_state=init)
        grads = triton_lightning.lightning_bwd(do, dfin, q, k, v, slopes, scale=SCALE, initial_state=init)
        step = triton_lightning.lightning_step(q[:, :1], k[:, :1], v[:, :1], slopes, init, scale=SCALE)
        return (o, final, *grads, *step)

    eager = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
