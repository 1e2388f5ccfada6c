"""The bias as a K-slice of the score wgmma's group, forward (``FwdConfig.bias_slice``) and backward
(``BwdConfig.bias_slice``), on the CPU: which configs take it, the factors' layout the launchers build, and the
arithmetic of the kernels' splits replayed in PyTorch (the kernels' own numerics run on the GPU: the compile tests'
bias-slice cases and the ``cute-fwd-bias-slice`` / ``cute-bwd-bias-slice`` smoke groups)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from attnkit.cute import attention_bwd as bwd
from attnkit.cute import attention_fwd as fwd
from attnkit.kernels.cute.attention.sm90_bwd import SLICE_PIECE_COLS, SLICE_WIDTH
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


def pieces_at(f: torch.Tensor, inv_scale: torch.Tensor, cols, width: int) -> torch.Tensor:
    """The kernels' split_in_three replayed: the pieces of x = f * inv_scale in float32 (hi, mid, lo, ...: each the
    rest rounded to nearest in f's dtype, cvt.rn), one at each of ``cols``, zeros elsewhere, ``width`` wide."""
    rest = f.float() * inv_scale
    out = f.new_zeros(*f.shape[:-1], width)
    for col in cols:
        piece = rest.to(f.dtype)
        out[..., col : col + f.shape[-1]] = piece
        rest = rest - piece.float()
    return out


def _split_query_factors(qf: torch.Tensor, width: int, softmax_scale: float, pieces: int = 3) -> torch.Tensor:
    """What the forward leaves in smem: [hi | mid | lo | 0] of x = Qf * (1 / (scale_log2 * ln 2)) at columns 0, p,
    2p (p = width // 3)."""
    p = width // 3
    scale_log2 = torch.tensor(softmax_scale * math.log2(math.e), dtype=torch.float32)
    inv_scale = torch.tensor(1.0, dtype=torch.float32) / (scale_log2 * torch.tensor(LN2, dtype=torch.float32))
    return pieces_at(qf, inv_scale, range(0, pieces * p, p), width)


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


# The backward's S^T bias as a K-slice of its own wgmma group (BwdConfig.bias_slice): the key factors split into three
# pieces of Kf / scale by the kernel's split warp at columns 0, 16 and 24, the query factors there by the launcher.


@pytest.mark.parametrize("rank", [1, 5, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window_left, causal", [(False, False), (False, True), (True, True)])
def test_backward_takes_the_slice_for_bf16_factors_of_rank_up_to_8(rank, head_dim, window_left, causal):
    cfg = bwd.choose_config(
        torch.bfloat16, head_dim, head_dim, window_left, causal, bias_rank=rank, bias_mma=True
    )  # fmt: skip
    kernel = cfg.make_kernel()
    assert cfg.bias_slice and kernel.bias_slice and cfg.bias_rank == 16 and kernel.qf_width == 32
    assert kernel.smem_bytes() <= bwd.SMEM_CAPACITY


@pytest.mark.parametrize(
    "dtype, head_dim, rank, bias_mma",
    [
        (torch.float16, 128, 8, True),  # fp16 factors divided by the scale could overflow
        (torch.bfloat16, 128, 9, True),  # three pieces of 9 do not fit the two k16 steps
        (torch.bfloat16, 128, 16, True),
        (torch.bfloat16, 128, 8, False),  # float32 factors: FMAs
        (torch.bfloat16, 192, 8, True),  # 64-row key blocks: float32 factor gradients
        (torch.bfloat16, 96, 8, True),  # d = 96 with a mask: spilled with the slice (outside the main loop)
    ],
)
def test_the_other_backward_bias_configs_keep_the_separate_wgmma(dtype, head_dim, rank, bias_mma):
    cfg = bwd.choose_config(dtype, head_dim, head_dim, False, True, bias_rank=rank, bias_mma=bias_mma)
    assert not cfg.bias_slice and not cfg.make_kernel().bias_slice


def test_where_the_backward_slice_spilled_it_is_off():
    """The SASS audit of the slice's 108 configs (2026-11-28): d = dv = 96 with any mask and d = 128 / dv = 96 causal
    spilled registers outside the main loop with it and not without it; d = 128 / dv = 96 with a left bound did not."""

    def sliced(d, dv, wl, wr):
        return bwd.choose_config(torch.bfloat16, d, dv, wl, wr, bias_rank=8, bias_mma=True).bias_slice

    assert sliced(96, 96, False, False) and not sliced(96, 96, False, True) and not sliced(96, 96, True, True)
    assert not sliced(96, 96, True, False) and not sliced(128, 96, False, True)
    assert sliced(128, 96, True, True) and sliced(128, 96, False, False) and sliced(96, 128, False, True)


def test_the_backward_switches_turn_the_slice_off(monkeypatch):
    args = (torch.bfloat16, 128, 128, False, True)
    monkeypatch.setenv(bwd.BIAS_SLICE_ENV, "0")
    assert not bwd.choose_config(*args, bias_rank=8, bias_mma=True).bias_slice
    monkeypatch.delenv(bwd.BIAS_SLICE_ENV)
    sliced = bwd.choose_config(*args, bias_rank=8, bias_mma=True)
    with bwd.bias_slices_off():
        # the twin the GPU tests and the precompile build for gpu_check's fallback
        assert bwd.choose_config(*args, bias_rank=8, bias_mma=True) == bwd.without_bias_slice(sliced)
    assert bwd.BIAS_SLICE_ENV not in os.environ and sliced.bias_slice
    # the factor gradients on FMAs (gpu_check's fallback for the tensor-core ones) take the separate wgmma too
    monkeypatch.setenv(bwd.TC_FACTOR_GRADS_ENV, "0")
    assert not bwd.choose_config(*args, bias_rank=8, bias_mma=True).bias_slice


def test_query_factors_stand_at_the_pieces_columns():
    qf = torch.randn(2, 5, 1, 7, dtype=torch.bfloat16)
    out = bwd.sliced_query_factor(qf.expand(2, 5, 3, 7), torch.bfloat16)
    assert out.shape == (2, 5, 3, 32) and out.is_contiguous()
    for col in SLICE_PIECE_COLS:
        assert torch.equal(out[..., col : col + 7], qf.expand(2, 5, 3, 7))
    assert not out[..., 7:16].any() and not out[..., 23:24].any() and not out[..., 31:].any()
    with pytest.raises(ValueError, match="rank <= 8"):
        bwd.sliced_query_factor(torch.zeros(1, 2, 1, 9), torch.bfloat16)


def split_key_factors(kf: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """What the backward's split warp leaves in sKs: the pieces of x = Kf * (1 / scale) at SLICE_PIECE_COLS."""
    inv_scale = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(softmax_scale, dtype=torch.float32)
    return pieces_at(kf, inv_scale, SLICE_PIECE_COLS, SLICE_WIDTH)


def _k16_steps(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b^T as wgmma k16 steps: each step's 16 products summed exactly, added to a float32 accumulator."""
    out = torch.zeros(a.shape[:-1] + (b.shape[-2],), dtype=torch.float32) if acc is None else acc
    for k0 in range(0, a.shape[-1], 16):
        step = a[..., k0 : k0 + 16].double() @ b[..., k0 : k0 + 16].double().transpose(-1, -2)
        out = (out.double() + step).float()
    return out


@pytest.mark.parametrize("factor_scale", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("rank", [1, 5, 8])
def test_backward_slice_logits_keep_the_2x_rule_against_the_separate_wgmma(rank, factor_scale):
    """The slice's S^T (K Q^T from zero, then the pieces against Qf) is within 2x the error of the path it replaces
    (Kf Qf^T in one float32 step, times float32 1 / scale, then K Q^T onto it), against float64: the logits the
    backward's P and dS come from."""
    torch.manual_seed(rank)
    s, d = 256, 128
    scale = d**-0.5
    q, k = (torch.randn(s, d).to(torch.bfloat16) for _ in range(2))
    qf = (torch.randn(s, rank) * factor_scale).to(torch.bfloat16)
    kf = (torch.randn(s, rank) * factor_scale).to(torch.bfloat16)
    exact = k.double() @ q.double().T + (kf.double() @ qf.double().T) / scale
    sliced = _k16_steps(split_key_factors(kf, scale), bwd.sliced_query_factor(qf, torch.bfloat16), _k16_steps(k, q))
    pad = torch.nn.functional.pad
    apart = _k16_steps(pad(kf, (0, 16 - rank)), pad(qf, (0, 16 - rank)))
    inv_scale = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    apart = _k16_steps(k, q, apart * inv_scale)
    assert_2x("S^T", sliced, exact, apart)
    # the pieces: their sum is Kf / scale to 2^-22 relative
    pieces = split_key_factors(kf, scale).double()
    total = sum(pieces[..., c : c + rank] for c in SLICE_PIECE_COLS)
    x = kf.double() / scale
    assert ((total - x).abs() <= x.abs() * 2.0**-22 + 1e-30).all()
