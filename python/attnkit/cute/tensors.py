"""Host-side tensor preparation for the CuTe launchers."""

from __future__ import annotations

import torch


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """Last dim contiguous, other strides 16-byte multiples, 16-byte aligned base (TMA rules); else a copy.

    A broadcast dim (stride 0, e.g. from ``expand``) is copied too: TMA strides must be positive.
    """
    elems = 16 // t.element_size()
    strides_ok = all(s > 0 and s % elems == 0 for s in t.stride()[:-1])
    ok = t.stride(-1) == 1 and strides_ok and t.data_ptr() % 16 == 0
    # a contiguous view at a misaligned offset needs a real copy (contiguous() would return it as is)
    return t if ok else t.clone(memory_format=torch.contiguous_format)
