"""The PyTorch reference as a backend: float32 arithmetic (float64 for float64 inputs, whose lse and states
are then float64 too), any device, any float dtype."""

from __future__ import annotations

import torch

from .. import reference


def unavailable(op: str, device) -> str | None:
    return None


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def attention_fwd(q, k, v, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    out, lse = reference.attention_forward(
        q,
        k,
        v,
        q_factor,
        k_factor,
        softmax_scale=softmax_scale,
        window_left=window_left,
        window_right=window_right,
        compute_dtype=_acc(q),
    )
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    return reference.attention_backward(
        dout,
        q,
        k,
        v,
        out,
        lse,
        q_factor,
        k_factor,
        softmax_scale=softmax_scale,
        window_left=window_left,
        window_right=window_right,
        compute_dtype=_acc(q),
    )


def lightning_fwd(q, k, v, slopes, *, scale, initial_state):
    o, state = reference.lightning_forward(
        q, k, v, slopes, scale=scale, initial_state=initial_state, compute_dtype=_acc(q)
    )
    return o, state


def lightning_bwd(do, dfinal_state, q, k, v, slopes, *, scale, initial_state):
    dq, dk, dv, dinit = reference.lightning_backward(
        do, dfinal_state, q, k, v, slopes, scale=scale, initial_state=initial_state, compute_dtype=_acc(q)
    )
    return dq, dk, dv, dinit


def lightning_step(q, k, v, slopes, state, *, scale):
    o, new_state = reference.lightning_recurrent(
        q, k, v, slopes, scale=scale, initial_state=state, compute_dtype=_acc(q)
    )
    return o, new_state
