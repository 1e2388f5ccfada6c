"""Output allocation for kernel launchers. Tests set `poison(True)` so that every buffer a kernel should fill
starts as NaN: an element the kernel forgets to write then fails the comparison instead of passing by luck."""

from __future__ import annotations

import contextlib

import torch

_POISON = False


def empty(*shape, dtype, device) -> torch.Tensor:
    if _POISON:
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(*shape, dtype=dtype, device=device)


@contextlib.contextmanager
def poisoned():
    """Within this block, `empty` returns NaN-filled buffers."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous
