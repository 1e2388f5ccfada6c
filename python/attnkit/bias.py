"""FlashBias: low-rank additive attention biases, `bias[b, h, i, j] = q_factor[b, i, h] · k_factor[b, j, h]`.

Exact builders (ALiBi is rank 2, squared distance is rank d+2) and a truncated-SVD one for any dense bias.
Position-like factors are float32: their product must stay exact to well under one unit at 16k tokens,
which a bf16 or tf32 tensor-core product is not, so kernels multiply float32 factors in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankBias:
    """Adds `q_factor · k_factorᵀ` to the attention logits (after softmax_scale is applied to q·kᵀ).

    q_factor: (B or 1, Sq, H or 1, R); k_factor: (B or 1, Sk, H or 1, R); both get gradients.
    """

    q_factor: torch.Tensor
    k_factor: torch.Tensor


def alibi(slopes: torch.Tensor, seqlen_q: int, seqlen_k: int) -> LowRankBias:
    """Exact rank-2 factors of `slope_h · (j − i − (seqlen_k − seqlen_q))`, float32 (float64 slopes: float64).

    This equals ALiBi's `-slope_h · |i' − j|` on every key that a causal query sees (bottom-right aligned,
    i' = i + seqlen_k − seqlen_q); keys past the diagonal get the linear continuation, as in most ALiBi
    implementations that rely on the causal mask.
    """
    if not isinstance(slopes, torch.Tensor) or slopes.dim() != 1:
        raise ValueError(f"slopes must be a 1-D tensor of per-head slopes, got {getattr(slopes, 'shape', slopes)}")
    if seqlen_q < 0 or seqlen_k < 0:
        raise ValueError(f"sequence lengths must be >= 0, got seqlen_q={seqlen_q}, seqlen_k={seqlen_k}")
    dtype = torch.promote_types(slopes.dtype, torch.float32)
    s = slopes.to(dtype)
    h = s.shape[0]
    i = torch.arange(seqlen_q, dtype=dtype, device=s.device) + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, dtype=dtype, device=s.device)
    # slope·(j − i) = [−slope·i, slope]·[1, j]: both columns are exact integers times one float.
    q_factor = torch.stack([-s[None, :] * i[:, None], s[None, :].expand(seqlen_q, h)], dim=-1)
    k_factor = torch.stack([torch.ones_like(j), j], dim=-1)[:, None, :]
    return LowRankBias(q_factor[None].contiguous(), k_factor[None].contiguous())


def distance(coords_q: torch.Tensor, coords_k: torch.Tensor, weight) -> LowRankBias:
    """Exact factors of `-weight·‖x_i − y_j‖²` for coordinates (B or 1, Sq, d) and (B or 1, Sk, d).

    weight: a float or a (H,) tensor (one weight per head). Rank d + 2:
    −w‖x−y‖² = [−w‖x‖², −w, 2w·x] · [1, ‖y‖², y].
    """
    for name, c in (("coords_q", coords_q), ("coords_k", coords_k)):
        if not isinstance(c, torch.Tensor) or c.dim() != 3:
            raise ValueError(f"{name} must be a (B or 1, S, d) tensor, got {getattr(c, 'shape', c)}")
    if coords_q.shape[-1] != coords_k.shape[-1]:
        raise ValueError(
            f"coords_q and coords_k must share the coordinate dim, got {coords_q.shape[-1]} and {coords_k.shape[-1]}"
        )
    dtype = torch.promote_types(coords_q.dtype, torch.float32)
    x, y = coords_q.to(dtype), coords_k.to(dtype)
    w = torch.as_tensor(weight, dtype=dtype, device=x.device).reshape(-1)  # (H,) or (1,)
    xx = (x * x).sum(-1, keepdim=True)[:, :, None, :]  # (B, Sq, 1, 1)
    wh = w[None, None, :, None]  # (1, 1, H, 1)
    xh = x[:, :, None, :]
    q_factor = torch.cat([-wh * xx, (-wh).expand_as(xx * wh), 2 * wh * xh], dim=-1)
    yy = (y * y).sum(-1, keepdim=True)
    k_factor = torch.cat([torch.ones_like(yy), yy, y], dim=-1)[:, :, None, :]
    return LowRankBias(q_factor.contiguous(), k_factor.contiguous())


def from_dense(bias: torch.Tensor, rank: int) -> tuple[LowRankBias, float]:
    """Truncated SVD of a dense (B or 1, H or 1, Sq, Sk) bias. Returns the factors (float32) and the relative
    Frobenius error ‖bias − q_factor·k_factorᵀ‖ / ‖bias‖."""
    if not isinstance(bias, torch.Tensor) or bias.dim() != 4:
        raise ValueError(f"bias must be a (B or 1, H or 1, Sq, Sk) tensor, got {getattr(bias, 'shape', bias)}")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    dense = bias.to(torch.float64)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    r = min(rank, s.shape[-1])
    root = s[..., :r].sqrt()
    q_factor = (u[..., :r] * root[..., None, :]).transpose(1, 2)  # (B, Sq, H, r)
    k_factor = (vh[..., :r, :].transpose(-1, -2) * root[..., None, :]).transpose(1, 2)  # (B, Sk, H, r)
    approx = torch.matmul(q_factor.transpose(1, 2), k_factor.transpose(1, 2).transpose(-1, -2))
    norm = torch.linalg.vector_norm(dense)
    err = float(torch.linalg.vector_norm(dense - approx) / norm) if norm > 0 else 0.0
    return LowRankBias(q_factor.to(torch.float32).contiguous(), k_factor.to(torch.float32).contiguous()), err
