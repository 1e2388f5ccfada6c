"""What each backend accepts, checked before any kernel runs. Kept free of heavy imports so the public
functions can check inputs (also under torch.compile) without loading triton or cutlass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_head_dim

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Limits:
    dtypes: tuple[torch.dtype, ...]  # q, k, v on a GPU
    cpu_dtypes: tuple[torch.dtype, ...]  # q, k, v on the CPU (Triton's interpreter)
    attention_head_dims: frozenset[int]
    attention_value_dims: frozenset[int]
    bias_ranks: range
    lightning_dims: frozenset[int]
    positive_scale_only: bool = False


LIMITS = {
    "triton": Limits(
        dtypes=_HALF,
        cpu_dtypes=(torch.float16, torch.float32),  # the interpreter's bf16 tl.dot is wrong (triton 3.9)
        attention_head_dims=frozenset({32, 64, 96, 128, 192, 256}),
        attention_value_dims=frozenset({32, 64, 96, 128, 192, 256}),
        bias_ranks=range(1, 65),
        lightning_dims=frozenset({32, 64, 128, 256}),
    ),
    "cute": Limits(
        dtypes=_HALF,
        cpu_dtypes=(),
        attention_head_dims=frozenset({64, 96, 128, 192, 256}),
        attention_value_dims=frozenset({64, 96, 128, 192, 256}),
        bias_ranks=range(1, 65),
        lightning_dims=frozenset(),
        positive_scale_only=True,  # the forward's running max is taken on q·k before scaling
    ),
}


def _check_dtypes(backend: str, lim: Limits, device: torch.device, **tensors) -> None:
    allowed = lim.cpu_dtypes if device.type == "cpu" else lim.dtypes
    for name, x in tensors.items():
        if x.dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed) or "no dtype"
            where = "on the CPU" if device.type == "cpu" else "on a GPU"
            raise TypeError(
                f"{name} has dtype {x.dtype}; backend={backend!r} takes {names} {where} "
                "(backend='reference' takes any float dtype)"
            )


def validate_attention(backend: str, q, k, v, bias, softmax_scale: float = 1.0) -> None:
    lim = LIMITS.get(backend)
    if lim is None:
        return
    _check_dtypes(backend, lim, q.device, q=q, k=k, v=v)
    check_head_dim(backend, "head dim of q/k", q.shape[3], lim.attention_head_dims)
    check_head_dim(backend, "head dim of v", v.shape[3], lim.attention_value_dims)
    if lim.positive_scale_only and not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be > 0 for backend={backend!r}, got {softmax_scale}")
    if bias is not None:
        r = bias.q_factor.shape[3]
        if r not in lim.bias_ranks:
            raise ValueError(
                f"bias rank R = {r} is not supported by backend={backend!r}; "
                f"supported: {lim.bias_ranks.start}..{lim.bias_ranks.stop - 1}"
            )
        if bias.q_factor.dtype == torch.float64:
            raise TypeError(f"bias factors are float64; backend={backend!r} takes float16, bfloat16 or float32")
        if q.device.type == "cpu" and bias.q_factor.dtype not in lim.cpu_dtypes:
            # bf16 factors would meet the interpreter's wrong bf16 tl.dot.
            names = ", ".join(str(d).removeprefix("torch.") for d in lim.cpu_dtypes)
            raise TypeError(f"bias factors are {bias.q_factor.dtype}; backend={backend!r} takes {names} on the CPU")


def validate_lightning(backend: str, q, k, v) -> None:
    lim = LIMITS.get(backend)
    if lim is None:
        return
    _check_dtypes(backend, lim, q.device, q=q, k=k, v=v)
    check_head_dim(backend, "head dim D of q/k", q.shape[3], lim.lightning_dims)
    check_head_dim(backend, "head dim E of v", v.shape[3], lim.lightning_dims)
