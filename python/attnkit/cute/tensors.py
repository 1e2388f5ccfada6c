"""Host-side tensor preparation for the CuTe launchers."""

from __future__ import annotations

import torch


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """Last dim contiguous, other strides 16-byte multiples, 16-byte aligned base (TMA rules); else a copy."""
    elems = 16 // t.element_size()
    ok = t.stride(-1) == 1 and all(s % elems == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0
    # a contiguous view at a misaligned offset needs a real copy (contiguous() would return it as is)
    return t if ok else t.clone(memory_format=torch.contiguous_format)
