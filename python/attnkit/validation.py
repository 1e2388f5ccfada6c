"""Input checks shared by the public functions: each failure names the argument and what was expected."""

from __future__ import annotations

import torch

REFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FACTOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, ndim: int, dtypes=REFERENCE_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {x.dtype}; expected one of {names}")
    if x.numel() > 0 and x.stride(-1) != 1 and x.shape[-1] != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {x.stride(-1)}); call .contiguous()")


def check_same(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: bool = True) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")
    if dtype and x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; they must match")


def check_window(window) -> tuple[int, int]:
    if not (isinstance(window, (tuple, list)) and len(window) == 2):
        raise TypeError(f"window must be a pair (left, right), got {window!r}")
    left, right = window
    for side, w in (("left", left), ("right", right)):
        if isinstance(w, bool) or not isinstance(w, int) or w < -1:
            raise ValueError(f"window {side} must be an int >= -1 (-1 = unbounded), got {w!r}")
    return int(left), int(right)


def check_attention(q, k, v, bias) -> None:
    check_tensor("q", q, 4)
    check_tensor("k", k, 4)
    check_tensor("v", v, 4)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    b, sq, h, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same sequence length, got {k.shape[1]} and {v.shape[1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of heads, got {k.shape[2]} and {v.shape[2]}")
    hkv = k.shape[2]
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({hkv}) for GQA/MQA")
    if k.shape[3] != d:
        raise ValueError(f"q and k head dims differ: {d} and {k.shape[3]}")
    if d == 0 or v.shape[3] == 0:
        raise ValueError("head dim must be positive")
    if bias is None:
        return
    from .bias import LowRankBias

    if not isinstance(bias, LowRankBias):
        raise TypeError(f"bias must be an attnkit.LowRankBias, got {type(bias).__name__}")
    qf, kf = bias.q_factor, bias.k_factor
    check_tensor("bias.q_factor", qf, 4, FACTOR_DTYPES)
    check_tensor("bias.k_factor", kf, 4, FACTOR_DTYPES)
    check_same("bias.q_factor", qf, "q", q, dtype=False)
    check_same("bias.k_factor", kf, "q", q, dtype=False)
    if qf.dtype != kf.dtype:
        raise TypeError(f"bias factors must share a dtype, got {qf.dtype} and {kf.dtype}")
    sk = k.shape[1]
    for name, f, s in (("bias.q_factor", qf, sq), ("bias.k_factor", kf, sk)):
        if f.shape[0] not in (1, b) or f.shape[1] != s or f.shape[2] not in (1, h):
            raise ValueError(f"{name} must have shape ({b} or 1, {s}, {h} or 1, R), got {tuple(f.shape)}")
    if qf.shape[3] != kf.shape[3] or qf.shape[3] == 0:
        raise ValueError(f"bias factors must share a positive rank R, got {qf.shape[3]} and {kf.shape[3]}")


def check_lightning(q, k, v, slopes, state, state_name: str = "initial_state", decode: bool = False) -> None:
    check_tensor("q", q, 4)
    check_tensor("k", k, 4)
    check_tensor("v", v, 4)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    b, s, h, d = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape ({b}, {s}, {h}, E), got {tuple(v.shape)}")
    if decode and s != 1:
        raise ValueError(f"q, k, v must hold one token (sequence length 1) for a decode step, got {s}")
    if not isinstance(slopes, torch.Tensor):
        raise TypeError(f"slopes must be a torch.Tensor, got {type(slopes).__name__}")
    if slopes.dim() != 1 or slopes.shape[0] != h:
        raise ValueError(f"slopes must have shape ({h},), got {tuple(slopes.shape)}")
    if not slopes.dtype.is_floating_point:
        raise TypeError(f"slopes must be a float tensor, got {slopes.dtype}")
    check_same("slopes", slopes, "q", q, dtype=False)
    if state is None:
        return
    check_tensor(state_name, state, 4, (torch.float32, torch.float64))
    check_same(state_name, state, "q", q, dtype=False)
    e = v.shape[3]
    if tuple(state.shape) != (b, h, d, e):
        raise ValueError(f"{state_name} must have shape ({b}, {h}, {d}, {e}), got {tuple(state.shape)}")


def check_head_dim(backend: str, name: str, value: int, supported) -> None:
    if value not in supported:
        raise ValueError(f"{name} = {value} is not supported by backend={backend!r}; supported: {sorted(supported)}")
