"""Softmax attention with an optional low-rank bias, in plain PyTorch: the judge for every backend.

`compute_dtype` chooses the arithmetic: float64 is the judge; float32 is the accurate reference; passing the
input dtype (fp16/bf16) emulates a tensor-core kernel (matmul operands in the input dtype, float32 softmax and
accumulation, P rounded to the input dtype before P·V), which is what the 2x error rule compares against.
Memory is O(Sq·Sk): this is for tests and CPU use, not for speed.
"""

from __future__ import annotations

import torch

from ..broadcast import sum_to


def visible_mask(seqlen_q: int, seqlen_k: int, window_left: int, window_right: int, device) -> torch.Tensor:
    """(Sq, Sk) bool: query i sees key j, windows bottom-right aligned (-1 = unbounded)."""
    i = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    keep = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        keep &= j >= i - window_left
    if window_right >= 0:
        keep &= j <= i + window_right
    return keep


def _matmul_dtype(compute_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(operand dtype, accumulate dtype) for the requested compute precision."""
    if compute_dtype in (torch.float16, torch.bfloat16):
        return compute_dtype, torch.float32
    return compute_dtype, compute_dtype


def _mm(a: torch.Tensor, b: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """a @ b with operands rounded to the operand dtype and the product in the accumulate dtype."""
    op, acc = _matmul_dtype(compute_dtype)
    return torch.matmul(a.to(op).to(acc), b.to(op).to(acc))


def _bias_logits(q_factor, k_factor, heads: int, compute_dtype: torch.dtype) -> torch.Tensor | None:
    """(B|1, H, Sq, Sk) bias = q_factor·k_factorᵀ; float32 factors keep float32 arithmetic."""
    if q_factor is None:
        return None
    acc = torch.float64 if compute_dtype == torch.float64 else torch.float32
    if q_factor.dtype in (torch.float16, torch.bfloat16) and compute_dtype in (torch.float16, torch.bfloat16):
        op = q_factor.dtype
    else:
        op = acc
    qf = q_factor.to(op).to(acc).transpose(1, 2)  # (B|1, H|1, Sq, R)
    kf = k_factor.to(op).to(acc).transpose(1, 2)  # (B|1, H|1, Sk, R)
    bias = torch.matmul(qf, kf.transpose(-1, -2))
    return bias.expand(bias.shape[0], heads, bias.shape[2], bias.shape[3])


def _logits(q, k, q_factor, k_factor, softmax_scale, compute_dtype):
    """(B, H, Sq, Sk) logits in the accumulate dtype; K is indexed per query head (GQA) without copies."""
    b, sq, h, d = q.shape
    hkv = k.shape[2]
    group = h // hkv
    acc = _matmul_dtype(compute_dtype)[1]
    qg = q.transpose(1, 2).reshape(b, hkv, group, sq, d)
    kt = k.transpose(1, 2)[:, :, None].transpose(-1, -2)  # (B, Hkv, 1, D, Sk)
    s = _mm(qg, kt, compute_dtype).reshape(b, h, sq, -1) * softmax_scale
    bias = _bias_logits(q_factor, k_factor, h, compute_dtype)
    if bias is not None:
        s = s + bias.to(acc)
    return s


def attention_forward(
    q: torch.Tensor,  # (B, Sq, H, D)
    k: torch.Tensor,  # (B, Sk, Hkv, D)
    v: torch.Tensor,  # (B, Sk, Hkv, Dv)
    q_factor: torch.Tensor | None,  # (B|1, Sq, H|1, R)
    k_factor: torch.Tensor | None,  # (B|1, Sk, H|1, R)
    *,
    softmax_scale: float,
    window_left: int = -1,
    window_right: int = -1,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (B, Sq, H, Dv) in out_dtype (default q.dtype) and lse (B, H, Sq), natural log, float32
    (float64 when computing in float64)."""
    b, sq, h, _ = q.shape
    sk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = h // hkv
    acc = _matmul_dtype(compute_dtype)[1]
    s = _logits(q, k, q_factor, k_factor, softmax_scale, compute_dtype)
    keep = visible_mask(sq, sk, window_left, window_right, q.device)
    s = s.masked_fill(~keep, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    empty = torch.isneginf(row_max)
    row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    p = torch.exp(s - row_max)
    row_sum = p.sum(dim=-1, keepdim=True)
    lse = torch.where(empty, torch.full_like(row_max, float("-inf")), row_max + torch.log(row_sum))
    p = p / torch.where(empty, torch.ones_like(row_sum), row_sum)
    vg = v.transpose(1, 2)[:, :, None]  # (B, Hkv, 1, Sk, Dv)
    out = _mm(p.reshape(b, hkv, group, sq, sk), vg, compute_dtype).reshape(b, h, sq, dv)
    out = out.to(acc).transpose(1, 2).to(out_dtype or q.dtype)
    return out, lse.squeeze(-1).to(torch.float64 if acc == torch.float64 else torch.float32)


def attention_backward(
    dout: torch.Tensor,  # (B, Sq, H, Dv)
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,  # (B, Sq, H, Dv)
    lse: torch.Tensor,  # (B, H, Sq)
    q_factor: torch.Tensor | None,
    k_factor: torch.Tensor | None,
    *,
    softmax_scale: float,
    window_left: int = -1,
    window_right: int = -1,
    compute_dtype: torch.dtype = torch.float32,
):
    """Returns (dq, dk, dv, dq_factor, dk_factor) in the dtypes of their inputs; factor grads are None without bias.

    P is recomputed from lse as the kernels do: dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)).
    """
    b, sq, h, d = q.shape
    sk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    group = h // hkv
    acc = _matmul_dtype(compute_dtype)[1]
    s = _logits(q, k, q_factor, k_factor, softmax_scale, compute_dtype)
    keep = visible_mask(sq, sk, window_left, window_right, q.device)
    lse_acc = lse.to(acc)[..., None]
    p = torch.exp(s - torch.where(torch.isneginf(lse_acc), torch.zeros_like(lse_acc), lse_acc))
    p = p.masked_fill(~keep | torch.isneginf(lse_acc), 0.0)  # (B, H, Sq, Sk)
    do_h = dout.transpose(1, 2)  # (B, H, Sq, Dv)
    delta = (do_h.to(acc) * out.transpose(1, 2).to(acc)).sum(-1, keepdim=True)
    pg = p.reshape(b, hkv, group, sq, sk)
    dog = do_h.reshape(b, hkv, group, sq, dv)
    dv_ = _mm(pg.transpose(-1, -2), dog, compute_dtype).sum(2)  # (B, Hkv, Sk, Dv)
    vt = v.transpose(1, 2)[:, :, None].transpose(-1, -2)  # (B, Hkv, 1, Dv, Sk)
    dp = _mm(dog, vt, compute_dtype).reshape(b, h, sq, sk)
    ds = p * (dp - delta)  # gradient of the logits
    dsg = ds.reshape(b, hkv, group, sq, sk)
    kg = k.transpose(1, 2)[:, :, None]  # (B, Hkv, 1, Sk, D)
    dq = _mm(dsg, kg, compute_dtype).reshape(b, h, sq, d) * softmax_scale
    qg = q.transpose(1, 2).reshape(b, hkv, group, sq, d)
    dk = (_mm(dsg.transpose(-1, -2), qg, compute_dtype) * softmax_scale).sum(2)  # (B, Hkv, Sk, D)
    dq_factor = dk_factor = None
    if q_factor is not None:
        fdt = torch.float64 if compute_dtype == torch.float64 else torch.float32
        ds_f = ds.to(fdt)
        qf = q_factor.to(fdt).transpose(1, 2)  # (B|1, H|1, Sq, R)
        kf = k_factor.to(fdt).transpose(1, 2)  # (B|1, H|1, Sk, R)
        dqf = torch.matmul(ds_f, kf).transpose(1, 2)  # (B, Sq, H, R)
        dkf = torch.matmul(ds_f.transpose(-1, -2), qf).transpose(1, 2)  # (B, Sk, H, R)
        dq_factor = sum_to(dqf, q_factor.shape).to(q_factor.dtype)
        dk_factor = sum_to(dkf, k_factor.shape).to(k_factor.dtype)
    return (
        dq.transpose(1, 2).to(q.dtype),
        dk.transpose(1, 2).to(k.dtype),
        dv_.transpose(1, 2).to(v.dtype),
        dq_factor,
        dk_factor,
    )
