"""The custom ops: torch.library.opcheck of each, and float64 gradcheck of the public functions through them."""

import attnkit
import pytest
import torch
from attnkit import ops

F64 = torch.float64


def rand(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def permuted(b, s, h, d, dtype=F64, grad=True):
    """(B, S, H, D) with the last dim contiguous but S and H swapped in memory, as `x.transpose(1, 2)` gives."""
    return torch.randn(b, h, s, d, dtype=dtype).transpose(1, 2).requires_grad_(grad)


def naive_attention(q, k, v, q_factor, k_factor, scale, left=-1, right=-1):
    b, sq, h, _ = q.shape
    sk = k.shape[1]
    group = h // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if q_factor is not None:
        s = s + torch.einsum("bqhr,bkhr->bhqk", q_factor.expand(b, sq, h, -1), k_factor.expand(b, sk, h, -1))
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        keep &= j >= i - left
    if right >= 0:
        keep &= j <= i + right
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


# opcheck: every op, with and without its optional inputs.


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (2, 1)])
def test_opcheck_attention_fwd(bias, window):
    q, k, v = rand(2, 5, 4, 8), rand(2, 7, 2, 8), rand(2, 7, 2, 6)
    qf, kf = (rand(1, 5, 4, 2), rand(2, 7, 1, 2)) if bias else (None, None)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, qf, kf, 0.35, *window, "reference"))


@pytest.mark.parametrize("bias", [None, F64, torch.float32])
def test_opcheck_attention_bwd(bias):
    """The backward ops have no autograd of their own (no double backward), so their inputs need no grad."""
    q, k, v = rand(2, 6, 4, 8, grad=False), rand(2, 4, 1, 8, grad=False), rand(2, 4, 1, 5, grad=False)
    qf, kf = (None, None)
    if bias is not None:
        qf, kf = rand(2, 6, 1, 3, dtype=bias, grad=False), rand(1, 4, 4, 3, dtype=bias, grad=False)
    out, lse = ops.attention_fwd(q, k, v, qf, kf, 0.35, -1, 0, "reference")
    dout = rand(*out.shape, grad=False)
    torch.library.opcheck(ops.attention_bwd, (dout, q, k, v, out, lse, qf, kf, 0.35, -1, 0, "reference"))


@pytest.mark.parametrize("init", [None, F64, torch.float32])
def test_opcheck_lightning_fwd(init):
    q, k, v = rand(2, 7, 3, 4), rand(2, 7, 3, 4), rand(2, 7, 3, 5)
    state = None if init is None else rand(2, 3, 4, 5, dtype=init)
    torch.library.opcheck(ops.lightning_fwd, (q, k, v, attnkit.lightning.slopes(3), state, 0.5, "reference"))


@pytest.mark.parametrize("init", [None, F64, torch.float32])
@pytest.mark.parametrize("dfinal", [False, True])
def test_opcheck_lightning_bwd(init, dfinal):
    q, k, v = rand(2, 7, 3, 4, grad=False), rand(2, 7, 3, 4, grad=False), rand(2, 7, 3, 5, grad=False)
    state = None if init is None else rand(2, 3, 4, 5, dtype=init, grad=False)
    dfin = rand(2, 3, 4, 5, grad=False) if dfinal else None
    args = (rand(2, 7, 3, 5, grad=False), dfin, q, k, v, attnkit.lightning.slopes(3), state, 0.5, "reference")
    torch.library.opcheck(ops.lightning_bwd, args)


def test_opcheck_lightning_step():
    q, k, v = rand(2, 1, 3, 4), rand(2, 1, 3, 4), rand(2, 1, 3, 5)
    torch.library.opcheck(
        ops.lightning_step, (q, k, v, attnkit.lightning.slopes(3), rand(2, 3, 4, 5), 0.5, "reference")
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_opcheck_low_precision(dtype):
    q, k, v = rand(1, 4, 2, 8, dtype=dtype), rand(1, 4, 2, 8, dtype=dtype), rand(1, 4, 2, 8, dtype=dtype)
    qf, kf = rand(1, 4, 2, 2, dtype=torch.float32), rand(1, 4, 2, 2, dtype=torch.float32)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, qf, kf, 0.35, -1, 0, "reference"))
    state = rand(1, 2, 8, 8, dtype=torch.float32)
    torch.library.opcheck(ops.lightning_fwd, (q, k, v, attnkit.lightning.slopes(2), state, 0.5, "reference"))
    step = (q[:, :1], k[:, :1], v[:, :1], attnkit.lightning.slopes(2), state, 0.5, "reference")
    torch.library.opcheck(ops.lightning_step, step)


def test_opcheck_zero_length():
    q, k, v = rand(2, 3, 2, 4), rand(2, 0, 2, 4), rand(2, 0, 2, 4)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, None, None, 0.5, -1, -1, "reference"))
    q, k, v = rand(2, 0, 2, 4), rand(2, 0, 2, 4), rand(2, 0, 2, 4)
    torch.library.opcheck(ops.lightning_fwd, (q, k, v, attnkit.lightning.slopes(2), rand(2, 2, 4, 4), 1.0, "reference"))


def test_opcheck_attention_fwd_permuted_inputs():
    q, k, v = permuted(2, 5, 4, 8), permuted(2, 6, 2, 8), permuted(2, 6, 2, 8)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, None, None, 0.35, -1, -1, "reference"))


def test_opcheck_attention_bwd_permuted_inputs():
    q, k, v = permuted(2, 5, 4, 8), permuted(2, 6, 2, 8), permuted(2, 6, 2, 8)
    out, lse = ops.attention_fwd(q, k, v, None, None, 0.35, -1, -1, "reference")
    args = (rand(*out.shape), q, k, v, out.detach(), lse.detach(), None, None, 0.35, -1, -1, "reference")
    torch.library.opcheck(ops.attention_bwd, args, test_utils=("test_faketensor",))


def test_opcheck_lightning_fwd_permuted_inputs():
    q, k, v = permuted(2, 5, 3, 4), permuted(2, 5, 3, 4), permuted(2, 5, 3, 4)
    args = (q, k, v, attnkit.lightning.slopes(3), None, 1.0, "reference")
    torch.library.opcheck(ops.lightning_fwd, args, test_utils=("test_faketensor",))


def test_opcheck_lightning_bwd_permuted_inputs():
    q, k, v = permuted(2, 5, 3, 4), permuted(2, 5, 3, 4), permuted(2, 5, 3, 4)
    args = (rand(2, 5, 3, 4), None, q, k, v, attnkit.lightning.slopes(3), None, 1.0, "reference")
    torch.library.opcheck(ops.lightning_bwd, args, test_utils=("test_faketensor",))


def test_opcheck_lightning_step_permuted_state():
    q, k, v = rand(2, 1, 3, 4), rand(2, 1, 3, 4), rand(2, 1, 3, 4)
    state = torch.randn(3, 2, 4, 4, dtype=F64).transpose(0, 1)  # (B, H, D, E), last dim contiguous
    args = (q, k, v, attnkit.lightning.slopes(3), state, 1.0, "reference")
    torch.library.opcheck(ops.lightning_step, args, test_utils=("test_faketensor",))


@pytest.mark.parametrize("q_dtype,state_dtype", [(F64, torch.float32), (torch.float32, F64)])
def test_opcheck_lightning_step_state_dtype(q_dtype, state_dtype):
    q, k, v = rand(2, 1, 3, 4, dtype=q_dtype), rand(2, 1, 3, 4, dtype=q_dtype), rand(2, 1, 3, 5, dtype=q_dtype)
    args = (q, k, v, attnkit.lightning.slopes(3), rand(2, 3, 4, 5, dtype=state_dtype), 1.0, "reference")
    torch.library.opcheck(ops.lightning_step, args, test_utils=("test_faketensor",))


# gradcheck of the public functions (float64, backend="auto" resolves to the reference on the CPU).

ATTENTION_CASES = {
    "noncausal": dict(sq=4, sk=4),
    "causal": dict(sq=4, sk=4, causal=True),
    "causal_sq_lt_sk": dict(sq=3, sk=5, causal=True),
    "causal_sq_gt_sk_empty_rows": dict(sq=5, sk=3, causal=True),
    "noncausal_sq_gt_sk": dict(sq=5, sk=2),
    "window": dict(sq=6, sk=6, window=(2, 1)),
    "causal_window": dict(sq=5, sk=7, causal=True, window=(2, -1)),
    "gqa": dict(sq=4, sk=5, h=4, hkv=2),
    "mqa_causal": dict(sq=4, sk=4, h=4, hkv=1, causal=True),
}


@pytest.mark.parametrize("bias", [None, "full", "broadcast"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_gradcheck(case, bias):
    cfg = dict(ATTENTION_CASES[case])
    sq, sk, h, hkv = cfg.pop("sq"), cfg.pop("sk"), cfg.pop("h", 2), cfg.pop("hkv", 2)
    q, k, v = rand(2, sq, h, 3), rand(2, sk, hkv, 3), rand(2, sk, hkv, 2)
    inputs = [q, k, v]
    if bias == "full":
        inputs += [rand(2, sq, h, 2), rand(2, sk, h, 2)]
    elif bias == "broadcast":
        inputs += [rand(1, sq, h, 2), rand(2, sk, 1, 2)]

    def f(q, k, v, *factors):
        lrb = attnkit.LowRankBias(*factors) if factors else None
        return attnkit.attention(q, k, v, bias=lrb, softmax_scale=0.6, **cfg)

    assert torch.autograd.gradcheck(f, tuple(inputs))
    want = naive_attention(q, k, v, *(inputs[3:] or (None, None)), 0.6, *_window(cfg))
    torch.testing.assert_close(f(*inputs), want, rtol=1e-12, atol=1e-12)


def _window(cfg):
    left, right = cfg.get("window", (-1, -1))
    return left, 0 if cfg.get("causal") else right


def test_attention_empty_rows_zero_grads():
    q, k, v = rand(1, 5, 2, 3), rand(1, 2, 2, 3), rand(1, 2, 2, 3)
    qf, kf = rand(1, 5, 2, 2), rand(1, 2, 2, 2)
    out, lse = attnkit.attention(q, k, v, causal=True, bias=attnkit.LowRankBias(qf, kf), return_lse=True)
    assert (out[:, :3] == 0).all() and torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()
    out.sum().backward()
    for x in (q, k, v, qf, kf):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[:, :3] == 0).all() and (qf.grad[:, :3] == 0).all()


def test_attention_float32_factors_with_float64_inputs():
    """Factors may have their own dtype: their grads come back in it and match float64 autograd."""
    q, k, v = rand(2, 4, 2, 3), rand(2, 6, 2, 3), rand(2, 6, 2, 2)
    qf, kf = rand(1, 4, 2, 2, dtype=torch.float32), rand(2, 6, 1, 2, dtype=torch.float32)

    def f(q, k, v):
        return attnkit.attention(q, k, v, causal=True, bias=attnkit.LowRankBias(qf.detach(), kf.detach()))

    assert torch.autograd.gradcheck(f, (q, k, v))
    out = attnkit.attention(q, k, v, causal=True, bias=attnkit.LowRankBias(qf, kf))
    assert out.dtype == F64
    qf64, kf64 = qf.detach().double().requires_grad_(), kf.detach().double().requires_grad_()
    want = naive_attention(q, k, v, qf64, kf64, 3**-0.5, -1, 0)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, qf, kf), dout)
    ref = torch.autograd.grad(want, (q, k, v, qf64, kf64), dout)
    assert got[3].dtype == got[4].dtype == torch.float32
    assert got[3].shape == qf.shape and got[4].shape == kf.shape
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


def test_attention_lse_has_no_grad_and_matches_logsumexp():
    q, k, v = rand(1, 3, 2, 4), rand(1, 5, 2, 4), rand(1, 5, 2, 4)
    out, lse = attnkit.attention(q, k, v, return_lse=True, softmax_scale=0.5)
    assert lse.shape == (1, 2, 3) and not lse.requires_grad
    want = torch.logsumexp(torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.5, dim=-1)
    torch.testing.assert_close(lse, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_attention_low_precision_dtypes(dtype):
    q, k, v = (rand(2, 6, 2, 8, dtype=dtype, grad=False) for _ in range(3))
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    want = naive_attention(q.double(), k.double(), v.double(), None, None, 8**-0.5, -1, 0)
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("sq,sk", [(0, 4), (4, 0)])
def test_attention_zero_length(sq, sk):
    q, k, v = rand(2, sq, 2, 3), rand(2, sk, 2, 3), rand(2, sk, 2, 5)
    qf, kf = rand(1, sq, 2, 2), rand(1, sk, 2, 2)
    out, lse = attnkit.attention(q, k, v, bias=attnkit.LowRankBias(qf, kf), return_lse=True)
    assert out.shape == (2, sq, 2, 5) and lse.shape == (2, 2, sq)
    assert (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    for x in (q, k, v, qf, kf):
        assert x.grad is not None and x.grad.shape == x.shape and (x.grad == 0).all()


def test_attention_empty_batch():
    q, k, v = rand(0, 3, 2, 4), rand(0, 5, 2, 4), rand(0, 5, 2, 6)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == (0, 3, 2, 6) and lse.shape == (0, 2, 3)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_lightning_empty_batch():
    q, k, v = rand(0, 3, 2, 4), rand(0, 3, 2, 4), rand(0, 3, 2, 6)
    o, final = attnkit.lightning_attention(q, k, v, attnkit.lightning.slopes(2), output_final_state=True)
    assert o.shape == (0, 3, 2, 6) and final.shape == (0, 2, 4, 6)
    o.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("final", [False, True])
def test_lightning_gradcheck(init, final):
    q, k, v = rand(1, 5, 2, 3), rand(1, 5, 2, 3), rand(1, 5, 2, 2)
    slopes = attnkit.lightning.slopes(2).double()
    inputs = (q, k, v) + ((rand(1, 2, 3, 2),) if init else ())

    def f(q, k, v, state=None):
        o, fs = attnkit.lightning_attention(q, k, v, slopes, scale=0.7, initial_state=state, output_final_state=final)
        assert (fs is not None) == final
        return (o, fs) if final else o

    assert torch.autograd.gradcheck(f, inputs)


def test_lightning_gradcheck_float32_state_float64_inputs():
    q, k, v = rand(1, 4, 2, 3), rand(1, 4, 2, 3), rand(1, 4, 2, 2)
    state = torch.randn(1, 2, 3, 2)
    slopes = attnkit.lightning.slopes(2)

    def f(q, k, v):
        return attnkit.lightning_attention(q, k, v, slopes, initial_state=state, output_final_state=True)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_lightning_zero_length():
    q, k, v = rand(2, 0, 2, 3), rand(2, 0, 2, 3), rand(2, 0, 2, 4)
    init = rand(2, 2, 3, 4)
    o, final = attnkit.lightning_attention(
        q, k, v, attnkit.lightning.slopes(2), initial_state=init, output_final_state=True
    )
    assert o.shape == (2, 0, 2, 4)
    torch.testing.assert_close(final, init.detach())
    dfinal = torch.randn_like(final)
    (dinit,) = torch.autograd.grad(final, (init,), dfinal)
    torch.testing.assert_close(dinit, dfinal)


def test_decode_step_gradcheck():
    q, k, v = rand(2, 1, 2, 3), rand(2, 1, 2, 3), rand(2, 1, 2, 2)
    state = rand(2, 2, 3, 2)
    slopes = attnkit.lightning.slopes(2).double()

    def f(q, k, v, state):
        return attnkit.lightning_attention_step(q, k, v, slopes, state, scale=1.3)

    assert torch.autograd.gradcheck(f, (q, k, v, state))


def test_meta_tensors_give_shapes():
    q, k, v = (torch.empty(2, 5, 4, 8, device="meta") for _ in range(3))
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    assert out.device.type == "meta" and out.shape == (2, 5, 4, 8) and lse.shape == (2, 4, 5)
    slopes = attnkit.lightning.slopes(4, device="meta")
    o, final = attnkit.lightning_attention(q, k, v, slopes, output_final_state=True)
    assert o.shape == (2, 5, 4, 8) and final.shape == (2, 4, 8, 8) and final.dtype == torch.float32
