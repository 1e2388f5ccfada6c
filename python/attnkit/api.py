"""The public functions: validate, resolve the backend, call the custom op."""

from __future__ import annotations

import math

import torch

from . import dispatch, ops
from .backends import limits
from .bias import LowRankBias
from .dispatch import resolve
from .validation import check_attention, check_lightning, check_window


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    bias: LowRankBias | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Softmax attention, FlashAttention layout.

    q (B, Sq, H, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv); GQA/MQA when H % Hkv == 0 (K/V are not repeated).
    `causal` and `window=(left, right)` align bottom-right when Sq != Sk (query i sits at key position
    i + Sk − Sq); -1 is unbounded, and causal means right = 0. `bias` adds q_factor·k_factorᵀ to the logits
    (after softmax_scale, default D**-0.5). Returns out (B, Sq, H, Dv) in q's dtype, and with return_lse also
    lse (B, H, Sq) float32, -inf on rows that see no key (whose out is 0). lse carries no gradient.
    """
    check_attention(q, k, v, bias)
    window_left, window_right = check_window(window)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal:
        window_right = 0
    if softmax_scale is None:
        softmax_scale = q.shape[3] ** -0.5
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale):
        # every logit would be nan or ±inf: an all-NaN out, not an error, from every backend
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    takes_cute = False
    if backend == "auto" and q.device.type == "cuda":
        arch = dispatch.device_arch(q.device.index)
        takes_cute = dispatch.cute_verified(arch, q, k, v, bias, window_left, window_right, softmax_scale)
    name = resolve(backend, "attention", q.device, takes_cute)
    q_factor = None if bias is None else bias.q_factor
    k_factor = None if bias is None else bias.k_factor
    limits.validate_attention(name, q, k, v, bias, float(softmax_scale))
    out, lse = ops.attention_fwd(q, k, v, q_factor, k_factor, float(softmax_scale), window_left, window_right, name)
    return (out, lse) if return_lse else out


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
):
    """Lightning Attention-2: causal linear attention with per-head decay λ_h = exp(−slopes[h]).

    q, k (B, S, H, D), v (B, S, H, E); S_t = λ·S_{t−1} + k_tᵀ v_t from `initial_state` (B, H, D, E) float32
    (zeros when None); o_t = scale·q_t·S_t. Returns (o (B, S, H, E), final state or None). Gradients flow to
    q, k, v and initial_state (not to slopes).
    """
    check_lightning(q, k, v, slopes, initial_state)
    scale = _check_scale(scale)
    name = resolve(backend, "lightning", q.device)
    limits.validate_lightning(name, q, k, v)
    o, final_state = ops.lightning_fwd(q, k, v, slopes, initial_state, scale, name)
    return o, (final_state if output_final_state else None)


def lightning_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float = 1.0,
    backend: str = "auto",
):
    """One decode token: q, k (B, 1, H, D), v (B, 1, H, E), state (B, H, D, E) float32.
    Returns (o (B, 1, H, E), new_state); `state` is left untouched."""
    if state is None:
        raise ValueError("state is required for a decode step (use zeros for the first token)")
    check_lightning(q, k, v, slopes, state, state_name="state", decode=True)
    scale = _check_scale(scale)
    name = resolve(backend, "lightning_step", q.device)
    limits.validate_lightning(name, q, k, v)
    return ops.lightning_step(q, k, v, slopes, state, scale, name)
