"""The attention reference against a naive dense float64 formula, and its hand-written backward against autograd."""

import pytest
import torch
from attnkit import reference

F64 = torch.float64


def dense_mask(sq: int, sk: int, left: int, right: int) -> torch.Tensor:
    """(Sq, Sk) bool, written out element by element: query i sits at key position i + Sk - Sq."""
    keep = torch.zeros(sq, sk, dtype=torch.bool)
    for i in range(sq):
        pos = i + sk - sq
        for j in range(sk):
            keep[i, j] = (left < 0 or j >= pos - left) and (right < 0 or j <= pos + right)
    return keep


def naive_attention(q, k, v, q_factor=None, k_factor=None, *, scale, left=-1, right=-1):
    """Dense float64 attention with K/V repeated per query head. Returns out (B, Sq, H, Dv), lse (B, H, Sq)."""
    b, sq, h, _ = q.shape
    sk = k.shape[1]
    group = h // k.shape[2]
    k, v = k.double().repeat_interleave(group, dim=2), v.double().repeat_interleave(group, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * scale
    if q_factor is not None:
        qf = q_factor.double().expand(b, sq, h, -1)
        kf = k_factor.double().expand(b, sk, h, -1)
        s = s + torch.einsum("bqhr,bkhr->bhqk", qf, kf)
    s = s.masked_fill(~dense_mask(sq, sk, left, right), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


def make(b=2, sq=5, sk=5, h=4, hkv=4, d=8, dv=8, dtype=F64, requires_grad=False):
    q = torch.randn(b, sq, h, d, dtype=dtype)
    k = torch.randn(b, sk, hkv, d, dtype=dtype)
    v = torch.randn(b, sk, hkv, dv, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def make_factors(b, sq, sk, h, r, qshape=(True, True), kshape=(True, True), dtype=F64, requires_grad=False):
    """Factors whose batch and head dims are full (True) or broadcast (False)."""
    qf = torch.randn(b if qshape[0] else 1, sq, h if qshape[1] else 1, r, dtype=dtype)
    kf = torch.randn(b if kshape[0] else 1, sk, h if kshape[1] else 1, r, dtype=dtype)
    return qf.requires_grad_(requires_grad), kf.requires_grad_(requires_grad)


CASES = {
    "full": dict(),
    "causal": dict(right=0),
    "causal_sq_lt_sk": dict(sq=3, sk=7, right=0),
    "causal_sq_gt_sk": dict(sq=7, sk=3, right=0),
    "noncausal_sq_lt_sk": dict(sq=2, sk=6),
    "noncausal_sq_gt_sk": dict(sq=6, sk=2),
    "window": dict(sq=8, sk=8, left=2, right=1),
    "window_left_only": dict(sq=6, sk=9, left=3),
    "window_right_only": dict(sq=9, sk=6, right=2),
    "causal_window": dict(sq=8, sk=8, left=3, right=0),
    "gqa": dict(h=4, hkv=2),
    "mqa_causal": dict(h=4, hkv=1, right=0),
    "dv_ne_d": dict(d=8, dv=5),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_dense(case, bias):
    cfg = dict(CASES[case])
    left, right = cfg.pop("left", -1), cfg.pop("right", -1)
    q, k, v = make(**cfg)
    b, sq, h, d = q.shape
    qf, kf = make_factors(b, sq, k.shape[1], h, 3) if bias else (None, None)
    out, lse = reference.attention_forward(
        q, k, v, qf, kf, softmax_scale=d**-0.5, window_left=left, window_right=right, compute_dtype=F64
    )
    want_out, want_lse = naive_attention(q, k, v, qf, kf, scale=d**-0.5, left=left, right=right)
    assert out.dtype == F64 and lse.dtype == F64
    assert out.shape == want_out.shape and lse.shape == (b, h, sq)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "qshape,kshape",
    [((True, True), (True, True)), ((False, True), (True, False)), ((True, False), (False, False))],
)
def test_forward_broadcast_factors(qshape, kshape):
    q, k, v = make(b=2, sq=4, sk=6, h=4, hkv=2)
    qf, kf = make_factors(2, 4, 6, 4, 2, qshape, kshape)
    out, lse = reference.attention_forward(q, k, v, qf, kf, softmax_scale=0.3, compute_dtype=F64)
    want_out, want_lse = naive_attention(q, k, v, qf, kf, scale=0.3)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_float32_compute_close_to_float64():
    q, k, v = make(dtype=torch.float32)
    qf, kf = make_factors(2, 5, 5, 4, 2, dtype=torch.float32)
    out, lse = reference.attention_forward(q, k, v, qf, kf, softmax_scale=0.25, window_right=0)
    want_out, want_lse = naive_attention(q, k, v, qf, kf, scale=0.25, right=0)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_emulation(dtype):
    q, k, v = make(dtype=dtype)
    out, lse = reference.attention_forward(q, k, v, None, None, softmax_scale=0.3, compute_dtype=dtype)
    want_out, want_lse = naive_attention(q, k, v, scale=0.3)
    assert out.dtype == dtype and lse.dtype == torch.float32
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), want_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), want_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "sq,sk,left,right",
    [(5, 3, -1, 0), (6, 3, 0, 0), (7, 4, 1, 0), (4, 4, -1, -1)],
    ids=["causal_sq_gt_sk", "diagonal_only", "window_sq_gt_sk", "no_empty_rows"],
)
def test_rows_without_keys(sq, sk, left, right):
    """Rows that see no key give out 0 and lse -inf; both the reference backward and autograd give zero grads."""
    q, k, v = make(sq=sq, sk=sk, requires_grad=True)
    out, lse = reference.attention_forward(
        q, k, v, None, None, softmax_scale=0.5, window_left=left, window_right=right, compute_dtype=F64
    )
    keep = dense_mask(q.shape[1], k.shape[1], left, right)
    empty = ~keep.any(dim=1)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    if empty.any():
        assert (out[:, empty] == 0).all()
        assert torch.isneginf(lse[:, :, empty]).all()
    assert torch.isfinite(lse[:, :, ~empty]).all()
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    manual = reference.attention_backward(
        dout,
        q,
        k,
        v,
        out,
        lse,
        None,
        None,
        softmax_scale=0.5,
        window_left=left,
        window_right=right,
        compute_dtype=F64,
    )
    for g, m in zip(grads, manual[:3], strict=True):
        assert torch.isfinite(g).all() and torch.isfinite(m).all()
        torch.testing.assert_close(m, g, rtol=1e-10, atol=1e-12)
    assert (grads[0][:, empty] == 0).all() and (manual[0][:, empty] == 0).all()


@pytest.mark.parametrize(
    "case", ["full", "causal_sq_lt_sk", "causal_sq_gt_sk", "window", "gqa", "mqa_causal", "dv_ne_d"]
)
def test_backward_matches_autograd(case):
    cfg = dict(CASES[case])
    left, right = cfg.pop("left", -1), cfg.pop("right", -1)
    q, k, v = make(**cfg, requires_grad=True)
    b, sq, h, d = q.shape
    qf, kf = make_factors(b, sq, k.shape[1], h, 2, (False, True), (True, False), requires_grad=True)
    kw = dict(softmax_scale=0.4, window_left=left, window_right=right, compute_dtype=F64)
    out, lse = reference.attention_forward(q, k, v, qf, kf, **kw)
    dout = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, k, v, qf, kf), dout)
    got = reference.attention_backward(dout, q, k, v, out.detach(), lse.detach(), qf, kf, **kw)
    for name, g, w in zip(("dq", "dk", "dv", "dq_factor", "dk_factor"), got, want, strict=True):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


def test_backward_without_bias_returns_none_factors():
    q, k, v = make()
    out, lse = reference.attention_forward(q, k, v, None, None, softmax_scale=0.3, compute_dtype=F64)
    grads = reference.attention_backward(torch.ones_like(out), q, k, v, out, lse, None, None, softmax_scale=0.3)
    assert grads[3] is None and grads[4] is None


@pytest.mark.parametrize("case", ["causal_sq_gt_sk", "window", "mqa_causal"])
def test_forward_gradcheck(case):
    cfg = dict(CASES[case])
    left, right = cfg.pop("left", -1), cfg.pop("right", -1)
    cfg.update(b=1, h=2, hkv=1 if "mqa" in case else 2, d=3, dv=2)
    q, k, v = make(**cfg, requires_grad=True)
    qf, kf = make_factors(1, q.shape[1], k.shape[1], 2, 2, (True, False), (True, True), requires_grad=True)

    def f(q, k, v, qf, kf):
        return reference.attention_forward(
            q, k, v, qf, kf, softmax_scale=0.7, window_left=left, window_right=right, compute_dtype=F64
        )[0]

    assert torch.autograd.gradcheck(f, (q, k, v, qf, kf))


def test_backward_gradcheck_in_dout():
    """The hand-written backward is linear in dout; a float64 gradcheck of it in dout holds."""
    q, k, v = make(b=1, sq=3, sk=4, h=2, hkv=1, d=3, dv=2)
    out, lse = reference.attention_forward(q, k, v, None, None, softmax_scale=0.5, window_right=0, compute_dtype=F64)
    dout = torch.randn_like(out, requires_grad=True)

    def f(dout):
        return reference.attention_backward(
            dout, q, k, v, out, lse, None, None, softmax_scale=0.5, window_right=0, compute_dtype=F64
        )[:3]

    assert torch.autograd.gradcheck(f, (dout,))


def test_visible_mask_matches_dense():
    for sq, sk, left, right in [(4, 7, -1, 0), (7, 4, 2, 0), (5, 5, 1, 2), (3, 3, -1, -1), (6, 2, 0, 0)]:
        got = reference.visible_mask(sq, sk, left, right, "cpu")
        assert torch.equal(got, dense_mask(sq, sk, left, right)), (sq, sk, left, right)
