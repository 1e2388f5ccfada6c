"""Lightning Attention-2 references: recurrence vs a dense formula, chunked == recurrent, the backward vs autograd,
and the public functions' state carry and decode step."""

import attnkit
import pytest
import torch
from attnkit import reference

F64 = torch.float64


def make(b=2, s=9, h=3, d=4, e=5, dtype=F64, requires_grad=False):
    q = torch.randn(b, s, h, d, dtype=dtype)
    k = torch.randn(b, s, h, d, dtype=dtype)
    v = torch.randn(b, s, h, e, dtype=dtype)
    slopes = torch.rand(h, dtype=dtype) * 0.5 + 0.05
    return [x.requires_grad_(requires_grad) for x in (q, k, v)] + [slopes]


def dense_lightning(q, k, v, slopes, scale, initial_state=None):
    """o_t = scale·(λ^{t+1} q_t S_init + Σ_{s≤t} λ^{t−s} (q_t·k_s) v_s); final = λ^S S_init + Σ_s λ^{S−1−s} k_sᵀ v_s."""
    b, s, h, d = q.shape
    e = v.shape[-1]
    t = torch.arange(s, dtype=F64)
    lam = torch.exp(-slopes.double())  # (H,)
    age = t[:, None] - t[None, :]
    decay = torch.where(age >= 0, lam[:, None, None] ** age.clamp(min=0), 0.0)  # (H, S, S)
    scores = torch.einsum("bthd,bshd->bhts", q.double(), k.double()) * decay
    o = torch.einsum("bhts,bshe->bthe", scores, v.double())
    final = torch.einsum("hs,bshd,bshe->bhde", lam[:, None] ** (s - 1 - t)[None, :], k.double(), v.double())
    if initial_state is not None:
        init = initial_state.double()
        o = o + torch.einsum("ht,bthd,bhde->bthe", lam[:, None] ** (t + 1)[None, :], q.double(), init)
        final = final + lam[None, :, None, None] ** s * init
    elif s == 0:
        final = torch.zeros(b, h, d, e, dtype=F64)
    return o * scale, final


@pytest.mark.parametrize("with_init", [False, True])
def test_recurrent_matches_dense(with_init):
    q, k, v, slopes = make()
    init = torch.randn(2, 3, 4, 5, dtype=F64) if with_init else None
    o, final = reference.lightning_recurrent(q, k, v, slopes, scale=0.7, initial_state=init, compute_dtype=F64)
    want_o, want_final = dense_lightning(q, k, v, slopes, 0.7, init)
    torch.testing.assert_close(o, want_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, 13, 64])
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_matches_recurrent(chunk, with_init):
    q, k, v, slopes = make(s=13)
    init = torch.randn(2, 3, 4, 5, dtype=F64) if with_init else None
    kw = dict(scale=0.5, initial_state=init, compute_dtype=F64)
    o_r, s_r = reference.lightning_recurrent(q, k, v, slopes, **kw)
    o_c, s_c = reference.lightning_chunked(q, k, v, slopes, chunk=chunk, **kw)
    torch.testing.assert_close(o_c, o_r, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(s_c, s_r, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("chunk", [3, 64])
def test_chunked_reverse_is_flipped_recurrence(chunk):
    q, k, v, slopes = make(s=10)
    o_rev, s_rev = reference.lightning_chunked(q, k, v, slopes, chunk=chunk, reverse=True, compute_dtype=F64)
    o_r, s_r = reference.lightning_recurrent(q.flip(1), k.flip(1), v.flip(1), slopes, compute_dtype=F64)
    torch.testing.assert_close(o_rev, o_r.flip(1), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(s_rev, s_r, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_chunked_close_to_float64(dtype):
    q, k, v, slopes = make(s=20, dtype=dtype)
    slopes = slopes.float()
    o, state = reference.lightning_forward(q, k, v, slopes, scale=0.3, compute_dtype=dtype)
    want_o, want_final = dense_lightning(q, k, v, slopes, 0.3)
    assert o.dtype == dtype and state.dtype == torch.float32
    tol = 8 * torch.finfo(dtype).eps * want_o.abs().max().item()
    torch.testing.assert_close(o.double(), want_o, rtol=0, atol=tol)
    torch.testing.assert_close(state.double(), want_final, rtol=0, atol=8 * torch.finfo(dtype).eps * 20)


def test_zero_length_sequence():
    q, k, v, slopes = make(s=0)
    init = torch.randn(2, 3, 4, 5, dtype=F64)
    for fn in (reference.lightning_recurrent, reference.lightning_chunked):
        o, state = fn(q, k, v, slopes, initial_state=init, compute_dtype=F64)
        assert o.shape == (2, 0, 3, 5)
        torch.testing.assert_close(state, init)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_references_gradcheck(form):
    q, k, v, slopes = make(b=1, s=5, h=2, d=2, e=3, requires_grad=True)
    init = torch.randn(1, 2, 2, 3, dtype=F64, requires_grad=True)
    fn = reference.lightning_recurrent if form == "recurrent" else reference.lightning_chunked
    kw = dict(chunk=2) if form == "chunked" else {}

    def f(q, k, v, init):
        return fn(q, k, v, slopes, scale=0.8, initial_state=init, compute_dtype=F64, **kw)

    assert torch.autograd.gradcheck(f, (q, k, v, init))


@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("with_dfinal", [False, True])
def test_backward_matches_autograd_through_recurrence(with_init, with_dfinal):
    q, k, v, slopes = make(s=11, requires_grad=True)
    init = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True) if with_init else None
    o, final = reference.lightning_recurrent(q, k, v, slopes, scale=0.6, initial_state=init, compute_dtype=F64)
    do = torch.randn_like(o)
    dfinal = torch.randn_like(final) if with_dfinal else None
    inputs = (q, k, v) + ((init,) if with_init else ())
    outputs, grads_out = (o, final), (do, dfinal if with_dfinal else torch.zeros_like(final))
    want = torch.autograd.grad(outputs, inputs, grads_out)
    got = reference.lightning_backward(do, dfinal, q, k, v, slopes, scale=0.6, initial_state=init, compute_dtype=F64)
    for name, g, w in zip(("dq", "dk", "dv", "dinit"), got, want, strict=False):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)
    if not with_init:
        assert got[3] is None


def test_backward_float32_with_float64_state_dtype():
    q, k, v, slopes = make(dtype=torch.float32)
    init = torch.randn(2, 3, 4, 5, dtype=F64)
    do = torch.randn_like(v)
    dq, dk, dv, dinit = reference.lightning_backward(
        do, None, q, k, v, slopes.float(), initial_state=init, compute_dtype=torch.float32
    )
    assert dq.dtype == dk.dtype == dv.dtype == torch.float32 and dinit.dtype == torch.float32


@pytest.mark.parametrize("split", [1, 4, 8])
def test_public_state_carry(split):
    """Two halves with the state passed on equal the whole: outputs and final state, forward and backward."""
    q, k, v, slopes = make(s=9, requires_grad=True)
    init = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    o, final = attnkit.lightning_attention(q, k, v, slopes, scale=0.5, initial_state=init, output_final_state=True)
    o1, mid = attnkit.lightning_attention(
        q[:, :split], k[:, :split], v[:, :split], slopes, scale=0.5, initial_state=init, output_final_state=True
    )
    o2, final2 = attnkit.lightning_attention(
        q[:, split:], k[:, split:], v[:, split:], slopes, scale=0.5, initial_state=mid, output_final_state=True
    )
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final2, final, rtol=1e-12, atol=1e-12)
    do, dfinal = torch.randn_like(o), torch.randn_like(final)
    want = torch.autograd.grad((o, final), (q, k, v, init), (do, dfinal))
    got = torch.autograd.grad((o1, o2, final2), (q, k, v, init), (do[:, :split], do[:, split:], dfinal))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("with_final", [False, True])
def test_public_backward_matches_autograd_through_recurrence(with_init, with_final):
    q, k, v, slopes = make(s=10, requires_grad=True)
    init = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True) if with_init else None
    inputs = (q, k, v) + ((init,) if with_init else ())
    o, final = attnkit.lightning_attention(
        q, k, v, slopes, scale=0.8, initial_state=init, output_final_state=with_final
    )
    o_r, final_r = reference.lightning_recurrent(q, k, v, slopes, scale=0.8, initial_state=init, compute_dtype=F64)
    do = torch.randn_like(o)
    if with_final:
        dfinal = torch.randn_like(final)
        got = torch.autograd.grad((o, final), inputs, (do, dfinal))
        want = torch.autograd.grad((o_r, final_r), inputs, (do, dfinal))
    else:
        assert final is None
        got, want = torch.autograd.grad(o, inputs, do), torch.autograd.grad(o_r, inputs, do)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_public_matches_dense_and_no_final_state_by_default():
    q, k, v, slopes = make(s=7)
    o, final = attnkit.lightning_attention(q, k, v, slopes, scale=0.9)
    assert final is None
    want_o, _ = dense_lightning(q, k, v, slopes, 0.9)
    torch.testing.assert_close(o, want_o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_decode_step_equals_last_row(dtype):
    q, k, v, slopes = make(s=6, dtype=dtype)
    slopes = slopes.float()
    init = torch.randn(2, 3, 4, 5, dtype=torch.float32)
    o, final = attnkit.lightning_attention(q, k, v, slopes, scale=0.4, initial_state=init, output_final_state=True)
    _, prefix = attnkit.lightning_attention(
        q[:, :-1], k[:, :-1], v[:, :-1], slopes, scale=0.4, initial_state=init, output_final_state=True
    )
    saved = prefix.clone()
    o_step, new_state = attnkit.lightning_attention_step(q[:, -1:], k[:, -1:], v[:, -1:], slopes, prefix, scale=0.4)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert o_step.shape == (2, 1, 3, 5) and o_step.dtype == dtype
    torch.testing.assert_close(o_step, o[:, -1:], rtol=tol, atol=tol)
    torch.testing.assert_close(new_state, final, rtol=tol, atol=tol)
    assert torch.equal(prefix, saved), "the decode step must not modify the state in place"
    assert new_state.data_ptr() != prefix.data_ptr()


def test_decode_steps_from_zero_state_rebuild_sequence():
    q, k, v, slopes = make(s=5)
    o, final = attnkit.lightning_attention(q, k, v, slopes, output_final_state=True)
    state = torch.zeros(2, 3, 4, 5, dtype=F64)
    outs = []
    for t in range(5):
        o_t, state = attnkit.lightning_attention_step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], slopes, state)
        outs.append(o_t)
    torch.testing.assert_close(torch.cat(outs, dim=1), o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


def test_decode_step_backward_matches_autograd():
    q, k, v, slopes = make(s=1, requires_grad=True)
    state = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    o, new_state = attnkit.lightning_attention_step(q, k, v, slopes, state, scale=0.3)
    do, dnew = torch.randn_like(o), torch.randn_like(new_state)
    got = torch.autograd.grad((o, new_state), (q, k, v, state), (do, dnew))
    o_r, s_r = reference.lightning_recurrent(q, k, v, slopes, scale=0.3, initial_state=state, compute_dtype=F64)
    want = torch.autograd.grad((o_r, s_r), (q, k, v, state), (do, dnew))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
