"""The forward's bias as a K-slice of S (``FwdConfig.bias_slice``), on the CPU: which configs take it, the key
factors' layout the launcher builds, and the arithmetic of ``AttentionFwdSm90.split_query_factors`` replayed in
PyTorch (the kernel's own numerics run on the GPU: test_cute_sm90_fwd_compile's bias-slice cases and the
``cute-fwd-bias-slice`` smoke group)."""

from __future__ import annotations

import math

import pytest
import torch
from attnkit.cute import attention_fwd as fwd
from attnkit.reference.attention import attention_forward
from numerics import assert_2x

LN2 = math.log(2.0)


@pytest.mark.parametrize("rank", [1, 5, 6, 8, 10])
@pytest.mark.parametrize("window_left, causal", [(False, False), (False, True), (True, True)])
def test_bf16_factors_of_rank_up_to_10_take_the_slice(rank, window_left, causal):
    cfg = fwd.choose_config(torch.bfloat16, 128, 128, window_left, causal, bias_rank=rank, bias_mma=True)
    assert cfg.bias_slice and cfg.bias_mma
    # three pieces of width bias_rank // 3 >= rank: one k16 step up to rank 5, two up to 10
    assert cfg.bias_rank == (16 if rank <= 5 else 32) and cfg.bias_rank // 3 >= rank


@pytest.mark.parametrize(
    "dtype, head_dim, window_left, rank, bias_mma",
    [
        (torch.float16, 128, False, 8, True),  # fp16 factors divided by the scale could overflow
        (torch.bfloat16, 128, False, 11, True),  # the slice would take three k16 steps where the wgmma takes one
        (torch.bfloat16, 128, False, 8, False),  # float32 factors: FMAs
        (torch.bfloat16, 64, False, 8, True),  # three consumer warpgroups: spilled with the slice
    ],
)
def test_the_others_keep_the_separate_bias_wgmma(dtype, head_dim, window_left, rank, bias_mma):
    cfg = fwd.choose_config(dtype, head_dim, head_dim, window_left, True, bias_rank=rank, bias_mma=bias_mma)
    assert not cfg.bias_slice
    if bias_mma:
        assert cfg.bias_rank == 16 * math.ceil(rank / 16)


def test_the_switch_turns_the_slice_off(monkeypatch):
    monkeypatch.setenv(fwd.BIAS_SLICE_ENV, "0")
    cfg = fwd.choose_config(torch.bfloat16, 128, 128, False, True, bias_rank=8, bias_mma=True)
    assert not cfg.bias_slice and cfg.bias_rank == 16
    assert not fwd.config_for(torch.bfloat16, 500, 4, 2, 128, 128, -1, 0, 8, True).bias_slice


def test_key_factors_stand_at_three_columns():
    kf = torch.randn(2, 5, 3, 7, dtype=torch.bfloat16)
    out = fwd.sliced_key_factor(kf[:, :, :1].expand(2, 5, 3, 7), 32, torch.bfloat16)
    assert out.shape == (2, 5, 3, 32) and out.is_contiguous()
    for piece in range(3):
        assert torch.equal(out[..., 10 * piece : 10 * piece + 7], kf[:, :, :1].expand(2, 5, 3, 7))
        assert not out[..., 10 * piece + 7 : 10 * (piece + 1)].any()
    assert not out[..., 30:].any()


def _split_query_factors(qf: torch.Tensor, width: int, softmax_scale: float, pieces: int = 3) -> torch.Tensor:
    """What the kernel leaves in smem: [hi | mid | lo | 0] of x = Qf * (1 / (scale_log2 * ln 2)) in float32, each
    piece rounded to nearest in qf's dtype (cvt.rn), at columns 0, p, 2p (p = width // 3)."""
    p = width // 3
    scale_log2 = torch.tensor(softmax_scale * math.log2(math.e), dtype=torch.float32)
    inv_scale = torch.tensor(1.0, dtype=torch.float32) / (scale_log2 * torch.tensor(LN2, dtype=torch.float32))
    rest = qf.float() * inv_scale
    out = qf.new_zeros(*qf.shape[:-1], width)
    for i in range(pieces):
        piece = rest.to(qf.dtype)
        out[..., i * p : i * p + qf.shape[-1]] = piece
        rest = rest - piece.float()
    return out


def _emulated_forward(q, k, v, qf, kf, softmax_scale, pieces=3):
    """The kernel's S for the bias slice (Q K^T, then the slice's k16 steps, each step's 16 products summed
    exactly and added to a float32 accumulator), then softmax and P V in float64: the lse and out that S gives."""
    width = 16 * math.ceil(3 * qf.shape[-1] / 16)
    qs = _split_query_factors(qf, width, softmax_scale, pieces).expand(*q.shape[:-1], width)
    ks = fwd.sliced_key_factor(kf, width, kf.dtype).expand(*k.shape[:-1], width)
    a = torch.cat([q, qs], -1).transpose(1, 2).double()
    b = torch.cat([k, ks], -1).transpose(1, 2).double()
    acc = torch.zeros(a.shape[:-1] + (b.shape[-2],), dtype=torch.float32)
    for k0 in range(0, a.shape[-1], 16):
        acc = (acc.double() + a[..., k0 : k0 + 16] @ b[..., k0 : k0 + 16].transpose(-1, -2)).float()
    s2 = acc.double() * float(torch.tensor(softmax_scale * math.log2(math.e), dtype=torch.float32))
    lse2 = torch.logsumexp(s2 * LN2, -1) / LN2
    p = torch.exp2(s2 - lse2[..., None])
    out = (p @ v.transpose(1, 2).double()).transpose(1, 2)
    return out, (lse2 * LN2).float()


@pytest.mark.parametrize("factor_scale", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("rank", [3, 8, 10])
def test_three_pieces_keep_the_2x_rule(rank, factor_scale):
    """hi + mid + lo equal Qf / scale to float32 precision, so the slice's logits are as accurate as the separate
    wgmma's float32 product and multiply: lse within 2x the error of the reference at bf16 precision (float32
    logits from bf16 operands), against float64."""
    torch.manual_seed(rank)
    b, s, h, d = 1, 256, 2, 128
    q, k, v = (torch.randn(b, s, h, d).to(torch.bfloat16) for _ in range(3))
    qf = (torch.randn(b, s, 1, rank) * factor_scale).to(torch.bfloat16)
    kf = (torch.randn(1, s, h, rank) * factor_scale).to(torch.bfloat16)
    scale = d**-0.5
    out, lse = _emulated_forward(q, k, v, qf, kf, scale)
    out64, lse64 = attention_forward(q, k, v, qf, kf, softmax_scale=scale, compute_dtype=torch.float64)
    _, lse_lp = attention_forward(q, k, v, qf, kf, softmax_scale=scale, compute_dtype=torch.bfloat16)
    assert_2x("lse", lse, lse64, lse_lp)
    # the pieces themselves: their sum is x to 2^-24 relative (float32's rounding of the product)
    x = qf.float().double() / scale
    split = _split_query_factors(qf, 32, scale).double()
    total = split[..., :10] + split[..., 10:20] + split[..., 20:30]
    assert ((total[..., :rank] - x).abs() <= x.abs() * 2.0**-22 + 1e-30).all()
    assert out.shape == out64.shape


def test_two_pieces_would_not():
    """Why three: two bf16 pieces carry 16 bits of Qf / scale, and the lse error breaks the rule."""
    torch.manual_seed(0)
    b, s, h, d, rank = 1, 256, 2, 128, 8
    q, k, v = (torch.randn(b, s, h, d).to(torch.bfloat16) for _ in range(3))
    qf = torch.randn(b, s, 1, rank).to(torch.bfloat16)
    kf = torch.randn(1, s, h, rank).to(torch.bfloat16)
    scale = d**-0.5
    _, lse = _emulated_forward(q, k, v, qf, kf, scale, pieces=2)
    _, lse64 = attention_forward(q, k, v, qf, kf, softmax_scale=scale, compute_dtype=torch.float64)
    _, lse_lp = attention_forward(q, k, v, qf, kf, softmax_scale=scale, compute_dtype=torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_2x("lse", lse, lse64, lse_lp)


@pytest.mark.parametrize("dtype, rank", [(torch.float16, 8), (torch.bfloat16, 16)])
def test_the_launcher_refuses_the_slice_outside_its_inputs(dtype, rank):
    """A benchmark's config with the slice on is refused for fp16 factors or ranks above 10 (their pieces would not
    fit, or could overflow), before anything is compiled."""
    sliced = fwd.choose_config(torch.bfloat16, 128, 128, False, False, bias_rank=8, bias_mma=True)
    q = torch.zeros(1, 8, 2, 128, dtype=dtype)
    qf = torch.zeros(1, 8, 2, rank, dtype=dtype)
    with pytest.raises(ValueError, match="bias_slice"):
        fwd.attention_fwd(q, q, q, qf, qf, softmax_scale=0.1, window_left=-1, window_right=-1, config=sliced)
