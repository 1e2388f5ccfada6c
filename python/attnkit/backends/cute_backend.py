"""CuTe-DSL kernels (kernels/cute) behind the ops. Today: softmax attention (with FlashBias) on sm90.

backend="auto" chooses these kernels only for the classes of call a GPU run has verified and timed faster than
Triton (dispatch.AUTO_CUTE).
"""

from __future__ import annotations

import torch

from ..dispatch import device_arch

_OPS_BY_ARCH = {"sm90": frozenset({"attention"}), "sm100": frozenset()}


def unavailable(op: str, device) -> str | None:
    if device.type != "cuda":
        return f"it runs CUDA tensors on sm90/sm100 GPUs, got a {device.type} tensor"
    arch = device_arch(device.index if device.index is not None else torch.cuda.current_device())
    if op not in _OPS_BY_ARCH.get(arch, frozenset()):
        return f"no CuTe kernel for {op} on {arch} yet (use backend='triton')"
    try:
        import cutlass  # noqa: F401
    except ImportError as e:
        return f"nvidia-cutlass-dsl is not installed ({e})"
    return None


def attention_fwd(q, k, v, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    from ..cute.attention_fwd import attention_fwd as launch

    return launch(
        q, k, v, q_factor, k_factor, softmax_scale=softmax_scale, window_left=window_left, window_right=window_right
    )


def attention_bwd(dout, q, k, v, out, lse, q_factor, k_factor, *, softmax_scale, window_left, window_right):
    """Under ``torch.use_deterministic_algorithms(True)`` the launcher's deterministic mode: dQ (and the query-factor
    gradients) added in a fixed key-block order, no dK / dV atomics, bitwise reproducible (0.54x to 0.66x the default's
    speed at d = 128 on the H100); else the default, whose float32 adds of dQ come in any order."""
    from ..cute.attention_bwd import attention_bwd as launch

    return launch(
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
        deterministic=torch.are_deterministic_algorithms_enabled(),
    )


def _no_kernel(*args, **kwargs):
    raise NotImplementedError("backend='cute' has no Lightning Attention kernel yet; use backend='triton'")


lightning_fwd = lightning_bwd = lightning_step = _no_kernel
