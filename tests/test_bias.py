"""FlashBias builders (ALiBi, squared distance, truncated SVD) and the ALiBi slopes."""

import math

import attnkit
import pytest
import torch
from attnkit import bias as B

F64 = torch.float64


def dense(lrb: attnkit.LowRankBias) -> torch.Tensor:
    """(B|1, H|1, Sq, Sk) from the factors, in float64."""
    return torch.einsum("bqhr,bkhr->bhqk", lrb.q_factor.double(), lrb.k_factor.double())


def paper_slopes(n: int) -> list[float]:
    """ALiBi (Press et al., 2022): for a power of two n, 2^(-8/n), 2^(-16/n), ...; otherwise the slopes of the
    largest power of two below n followed by every other slope of twice that power."""

    def pow2(m):
        return [2 ** (-8 * (i + 1) / m) for i in range(m)]

    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + pow2(2 * c)[0::2][: n - c]


# alibi


@pytest.mark.parametrize("sq,sk", [(6, 6), (3, 8), (8, 3), (1, 9), (0, 4)])
def test_alibi_reproduces_dense(sq, sk):
    slopes = torch.tensor([0.5, 0.125, 2.0**-7], dtype=F64)
    lrb = B.alibi(slopes, sq, sk)
    assert lrb.q_factor.shape == (1, sq, 3, 2) and lrb.k_factor.shape == (1, sk, 1, 2)
    assert lrb.q_factor.dtype == lrb.k_factor.dtype == F64
    i = torch.arange(sq, dtype=F64)[:, None] + (sk - sq)
    j = torch.arange(sk, dtype=F64)[None, :]
    want = slopes[:, None, None] * (j - i)
    torch.testing.assert_close(dense(lrb)[0], want, rtol=0, atol=1e-15 * max(sk, 1))


def test_alibi_is_negative_distance_on_causal_keys():
    slopes = attnkit.lightning.slopes(8).double()
    sq, sk = 5, 9
    got = dense(B.alibi(slopes, sq, sk))[0]
    for i in range(sq):
        pos = i + sk - sq
        for j in range(pos + 1):
            want = -slopes * abs(pos - j)
            torch.testing.assert_close(got[:, i, j], want, rtol=0, atol=1e-15)


def test_alibi_float32_slopes_give_float32_factors_exact_at_16k():
    """Position factors stay exact: the float32 product of float32 factors matches float64 to float32 rounding."""
    slopes = attnkit.lightning.slopes(4)
    lrb = B.alibi(slopes, 4, 16384)
    assert lrb.q_factor.dtype == lrb.k_factor.dtype == torch.float32
    got = torch.einsum("bqhr,bkhr->bhqk", lrb.q_factor, lrb.k_factor)[0]
    j = torch.arange(16384, dtype=F64)
    want = slopes.double()[:, None, None] * (j - torch.arange(16380, 16384, dtype=F64)[:, None])
    err = (got.double() - want).abs().max().item()
    assert err <= 16384 * 0.5 * 2.0**-23 * 2, err


def test_alibi_in_attention_matches_dense_alibi():
    h, sq, sk = 4, 5, 7
    slopes = attnkit.lightning.slopes(h).double()
    q, k, v = (
        torch.randn(2, sq, h, 8, dtype=F64),
        torch.randn(2, sk, h, 8, dtype=F64),
        torch.randn(2, sk, h, 8, dtype=F64),
    )
    out = attnkit.attention(q, k, v, causal=True, bias=B.alibi(slopes, sq, sk))
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * 8**-0.5 - slopes[:, None, None] * (i - j).abs()
    p = torch.softmax(logits.masked_fill(j > i, float("-inf")), dim=-1)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", p, v), rtol=1e-12, atol=1e-12)


def test_alibi_float32_factors_keep_precision_with_bf16_inputs():
    """bf16 q/k/v with float32 ALiBi factors at 16k keys: the bias term is not rounded to bf16 (which would be off
    by whole units), so the output matches float64 on the same bf16 inputs to bf16 output rounding."""
    h, sq, sk = 2, 4, 16384
    slopes = torch.tensor([2.0**-1, 2.0**-3])
    q, k, v = torch.randn(1, sq, h, 16) * 0.1, torch.randn(1, sk, h, 16) * 0.1, torch.randn(1, sk, h, 16)
    q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
    lrb = B.alibi(slopes, sq, sk)
    out = attnkit.attention(q, k, v, causal=True, bias=lrb)
    assert out.dtype == torch.bfloat16
    i = torch.arange(sq, dtype=F64)[:, None] + sk - sq
    j = torch.arange(sk, dtype=F64)[None, :]
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 0.25 + slopes.double()[:, None, None] * (j - i)
    p = torch.softmax(logits.masked_fill(j > i, float("-inf")), dim=-1)
    want = torch.einsum("bhqk,bkhd->bqhd", p, v.double())
    torch.testing.assert_close(out.double(), want, rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("slopes", [[0.5, 0.25], torch.ones(2, 2), torch.tensor(0.5)])
def test_alibi_bad_slopes(slopes):
    with pytest.raises(ValueError, match="slopes"):
        B.alibi(slopes, 4, 4)


def test_alibi_bad_seqlens():
    with pytest.raises(ValueError, match="seqlen_q=-1"):
        B.alibi(torch.ones(2), -1, 4)
    with pytest.raises(ValueError, match="seqlen_k=-2"):
        B.alibi(torch.ones(2), 4, -2)


# distance


@pytest.mark.parametrize("weight", [0.3, torch.tensor([0.1, 0.7, 2.0], dtype=F64)])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_distance_reproduces_dense(weight, dim):
    x = torch.randn(2, 5, dim, dtype=F64)
    y = torch.randn(2, 7, dim, dtype=F64)
    lrb = B.distance(x, y, weight)
    h = 1 if isinstance(weight, float) else 3
    assert lrb.q_factor.shape == (2, 5, h, dim + 2) and lrb.k_factor.shape == (2, 7, 1, dim + 2)
    assert lrb.q_factor.dtype == F64
    w = torch.as_tensor(weight, dtype=F64).reshape(-1)
    want = -w[None, :, None, None] * torch.cdist(x, y)[:, None] ** 2
    scale = want.abs().max().item()
    torch.testing.assert_close(dense(lrb), want, rtol=0, atol=8 * torch.finfo(F64).eps * max(scale, 1))


def test_distance_broadcast_batch():
    x = torch.randn(1, 4, 2, dtype=F64)
    y = torch.randn(3, 6, 2, dtype=F64)
    lrb = B.distance(x, y, 1.0)
    want = -(torch.cdist(x.expand(3, -1, -1), y) ** 2)[:, None]
    torch.testing.assert_close(dense(lrb), want, rtol=0, atol=1e-13)


def test_distance_in_attention():
    x, y = torch.randn(1, 4, 2, dtype=F64), torch.randn(1, 6, 2, dtype=F64)
    q, k, v = torch.randn(2, 4, 3, 4, dtype=F64), torch.randn(2, 6, 3, 4, dtype=F64), torch.randn(2, 6, 3, 4, dtype=F64)
    out = attnkit.attention(q, k, v, bias=B.distance(x, y, 0.5))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.5 - 0.5 * torch.cdist(x, y)[:, None] ** 2
    want = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_distance_float32_coords_give_float32():
    lrb = B.distance(torch.randn(1, 3, 2), torch.randn(1, 4, 2), 1.0)
    assert lrb.q_factor.dtype == lrb.k_factor.dtype == torch.float32


def test_distance_bad_coords():
    with pytest.raises(ValueError, match="coords_q"):
        B.distance(torch.randn(3, 2), torch.randn(1, 4, 2), 1.0)
    with pytest.raises(ValueError, match="coords_k"):
        B.distance(torch.randn(1, 3, 2), [[0.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="coordinate dim"):
        B.distance(torch.randn(1, 3, 2), torch.randn(1, 4, 3), 1.0)


# from_dense


def test_from_dense_error_falls_with_rank():
    torch.manual_seed(1)
    # A smooth bias (fast singular value decay) plus a little noise: every added rank lowers the error.
    i = torch.linspace(0, 1, 16, dtype=F64)
    smooth = torch.exp(-((i[:, None] - i[None, :]) ** 2) * 4.0)
    bias = (smooth + 0.01 * torch.randn(2, 3, 16, 16, dtype=F64)).contiguous()
    errors = [B.from_dense(bias, r)[1] for r in (1, 2, 4, 8, 12, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-12
    assert errors[0] < 1.0


@pytest.mark.parametrize("shape", [(1, 1, 6, 9), (2, 3, 9, 6), (1, 4, 5, 5)])
def test_from_dense_full_rank_reproduces(shape):
    bias = torch.randn(*shape, dtype=F64)
    lrb, err = B.from_dense(bias, min(shape[-2:]))
    assert err < 1e-12
    assert lrb.q_factor.dtype == lrb.k_factor.dtype == torch.float32
    assert lrb.q_factor.shape == (shape[0], shape[2], shape[1], min(shape[-2:]))
    assert lrb.k_factor.shape == (shape[0], shape[3], shape[1], min(shape[-2:]))
    torch.testing.assert_close(dense(lrb), bias, rtol=0, atol=1e-5)


def test_from_dense_reported_error_is_relative_frobenius():
    bias = torch.randn(1, 2, 8, 8, dtype=F64)
    lrb, err = B.from_dense(bias, 3)
    s = torch.linalg.svdvals(bias)
    want = (s[..., 3:] ** 2).sum().sqrt() / torch.linalg.vector_norm(bias)
    assert err == pytest.approx(want.item(), rel=1e-9)
    approx_err = torch.linalg.vector_norm(dense(lrb) - bias) / torch.linalg.vector_norm(bias)
    assert approx_err.item() == pytest.approx(err, rel=1e-5)


def test_from_dense_rank_above_full_is_clipped():
    bias = torch.randn(1, 1, 4, 6)
    lrb, err = B.from_dense(bias, 10)
    assert lrb.q_factor.shape[-1] == 4 and err < 1e-6


def test_from_dense_zero_bias():
    lrb, err = B.from_dense(torch.zeros(1, 1, 3, 3), 2)
    assert err == 0.0 and (dense(lrb) == 0).all()


def test_from_dense_factors_work_in_attention():
    bias = torch.randn(1, 2, 5, 7, dtype=F64)
    lrb, _ = B.from_dense(bias, 5)
    q, k, v = torch.randn(2, 5, 2, 4, dtype=F64), torch.randn(2, 7, 2, 4, dtype=F64), torch.randn(2, 7, 2, 4, dtype=F64)
    out = attnkit.attention(q, k, v, bias=lrb)
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.5 + bias
    want = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_from_dense_bad_inputs():
    with pytest.raises(ValueError, match="bias"):
        B.from_dense(torch.randn(3, 4, 4), 2)
    with pytest.raises(ValueError, match="rank"):
        B.from_dense(torch.randn(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="rank"):
        B.from_dense(torch.randn(1, 1, 4, 4), 2.0)


def test_low_rank_bias_is_frozen():
    lrb = attnkit.LowRankBias(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
    with pytest.raises(AttributeError):
        lrb.q_factor = torch.ones(1)


# slopes


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 16, 20, 32, 40, 64, 96])
def test_slopes_match_paper(n):
    got = attnkit.lightning.slopes(n)
    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got.double(), torch.tensor(paper_slopes(n), dtype=F64), rtol=1e-7, atol=0)


def test_slopes_known_values():
    assert attnkit.lightning.slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    want12 = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(attnkit.lightning.slopes(12).double(), torch.tensor(want12, dtype=F64))


@pytest.mark.parametrize("n", [0, -1, 2.0, "8"])
def test_slopes_bad_num_heads(n):
    with pytest.raises(ValueError, match="num_heads"):
        attnkit.lightning.slopes(n)
