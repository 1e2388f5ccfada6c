"""The torch.library custom ops, one per kernel boundary, with fake (meta) impls and autograd.

Every op takes the concrete backend name (resolved by the public API before tracing) and runs that backend;
on CPU with backend="reference" this is the PyTorch reference, so `torch.library.opcheck` runs here.
Optional outputs that an op cannot return as None (factor gradients without a bias, the initial-state
gradient without an initial state) come back as empty tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends


def _stat_dtype(x: Tensor) -> torch.dtype:
    """lse and linear-attention states: float32, float64 only for float64 inputs (the reference)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _like(x: Tensor) -> Tensor:
    """A contiguous buffer of x's shape, dtype and device: what the real ops return, whatever x's strides."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _contiguous(*tensors):
    """Outputs are contiguous, as the fake impls promise (a no-op for what kernels write)."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _zero_size_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    b, sq, h, _ = q.shape
    out = q.new_zeros(b, sq, h, v.shape[3])
    lse = torch.full((b, h, sq), float("-inf"), dtype=_stat_dtype(q), device=q.device)
    return out, lse


@torch.library.custom_op("attnkit::attention_fwd", mutates_args=())
def attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_factor: Tensor | None,
    k_factor: Tensor | None,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if q.numel() == 0 or k.numel() == 0:
        return _zero_size_attention(q, k, v)
    out, lse = backends.get(backend).attention_fwd(
        q,
        k,
        v,
        q_factor,
        k_factor,
        softmax_scale=softmax_scale,
        window_left=window_left,
        window_right=window_right,
    )
    return _contiguous(out, lse)


@attention_fwd.register_fake
def _(q, k, v, q_factor, k_factor, softmax_scale, window_left, window_right, backend):
    b, sq, h, _ = q.shape
    out = q.new_empty(b, sq, h, v.shape[3])
    lse = q.new_empty(b, h, sq, dtype=_stat_dtype(q))
    return out, lse


@torch.library.custom_op("attnkit::attention_bwd", mutates_args=())
def attention_bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    q_factor: Tensor | None,
    k_factor: Tensor | None,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if q.numel() == 0 or k.numel() == 0:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dqf = None if q_factor is None else torch.zeros_like(q_factor)
        dkf = None if k_factor is None else torch.zeros_like(k_factor)
    else:
        dq, dk, dv, dqf, dkf = backends.get(backend).attention_bwd(
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
        )
    dqf = q.new_empty(0) if dqf is None else dqf
    dkf = q.new_empty(0) if dkf is None else dkf
    return _contiguous(dq, dk, dv, dqf, dkf)


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, q_factor, k_factor, softmax_scale, window_left, window_right, backend):
    dqf = q.new_empty(0) if q_factor is None else _like(q_factor)
    dkf = q.new_empty(0) if k_factor is None else _like(k_factor)
    return _like(q), _like(k), _like(v), dqf, dkf


def _attention_setup(ctx, inputs, output):
    q, k, v, q_factor, k_factor, softmax_scale, window_left, window_right, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_factor, k_factor)
    ctx.args = (softmax_scale, window_left, window_right, backend)
    ctx.has_bias = q_factor is not None
    ctx.mark_non_differentiable(lse)


def _attention_backward(ctx, dout, _dlse):
    q, k, v, out, lse, q_factor, k_factor = ctx.saved_tensors
    softmax_scale, window_left, window_right, backend = ctx.args
    dq, dk, dv, dqf, dkf = attention_bwd(
        dout.contiguous(),
        q,
        k,
        v,
        out,
        lse,
        q_factor,
        k_factor,
        softmax_scale,
        window_left,
        window_right,
        backend,
    )
    if not ctx.has_bias:
        dqf = dkf = None
    return dq, dk, dv, dqf, dkf, None, None, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op("attnkit::lightning_fwd", mutates_args=())
def lightning_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    initial_state: Tensor | None,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if q.numel() == 0 or v.numel() == 0:
        b, _, h, d = q.shape
        state = (
            torch.zeros(b, h, d, v.shape[3], dtype=_stat_dtype(q), device=q.device)
            if initial_state is None
            else initial_state.to(_stat_dtype(q)).clone()
        )
        return q.new_zeros(v.shape), state
    o, state = backends.get(backend).lightning_fwd(q, k, v, slopes, scale=scale, initial_state=initial_state)
    return _contiguous(o, state.to(_stat_dtype(q)))


@lightning_fwd.register_fake
def _(q, k, v, slopes, initial_state, scale, backend):
    b, _, h, d = q.shape
    return _like(v), q.new_empty(b, h, d, v.shape[3], dtype=_stat_dtype(q))


@torch.library.custom_op("attnkit::lightning_bwd", mutates_args=())
def lightning_bwd(
    do: Tensor,
    dfinal_state: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    initial_state: Tensor | None,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if q.numel() == 0 or v.numel() == 0:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dinit = None
        if initial_state is not None:
            dinit = torch.zeros_like(initial_state) if dfinal_state is None else dfinal_state.clone()
    else:
        dq, dk, dv, dinit = backends.get(backend).lightning_bwd(
            do, dfinal_state, q, k, v, slopes, scale=scale, initial_state=initial_state
        )
    dinit = q.new_empty(0) if dinit is None else dinit.to(initial_state.dtype)
    return _contiguous(dq, dk, dv, dinit)


@lightning_bwd.register_fake
def _(do, dfinal_state, q, k, v, slopes, initial_state, scale, backend):
    dinit = q.new_empty(0) if initial_state is None else _like(initial_state)
    return _like(q), _like(k), _like(v), dinit


def _lightning_setup(ctx, inputs, output):
    q, k, v, slopes, initial_state, scale, backend = inputs
    ctx.save_for_backward(q, k, v, slopes, initial_state)
    ctx.args = (scale, backend)
    ctx.has_initial_state = initial_state is not None


def _lightning_backward(ctx, do, dfinal_state):
    q, k, v, slopes, initial_state = ctx.saved_tensors
    scale, backend = ctx.args
    if do is None:
        do = torch.zeros_like(v)
    dq, dk, dv, dinit = lightning_bwd(do.contiguous(), dfinal_state, q, k, v, slopes, initial_state, scale, backend)
    return dq, dk, dv, None, dinit if ctx.has_initial_state else None, None, None


lightning_fwd.register_autograd(_lightning_backward, setup_context=_lightning_setup)


@torch.library.custom_op("attnkit::lightning_step", mutates_args=())
def lightning_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Tensor,
    state: Tensor,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    o, new_state = backends.get(backend).lightning_step(q, k, v, slopes, state, scale=scale)
    return _contiguous(o, new_state.to(_stat_dtype(q)))


@lightning_step.register_fake
def _(q, k, v, slopes, state, scale, backend):
    return _like(v), state.new_empty(state.shape, dtype=_stat_dtype(q))


def _step_setup(ctx, inputs, output):
    q, k, v, slopes, state, scale, backend = inputs
    ctx.save_for_backward(q, k, v, slopes, state)
    ctx.args = (scale, backend)


def _step_backward(ctx, do, dnew_state):
    q, k, v, slopes, state = ctx.saved_tensors
    scale, backend = ctx.args
    if do is None:
        do = torch.zeros_like(v)
    # One decode step is the sequence op at length 1, so its gradient is that op's backward.
    dq, dk, dv, dstate = lightning_bwd(do.contiguous(), dnew_state, q, k, v, slopes, state, scale, backend)
    return dq, dk, dv, None, dstate, None, None


lightning_step.register_autograd(_step_backward, setup_context=_step_setup)
