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


def prepare_factor(f: torch.Tensor, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """A bias factor for the kernels: in ``dtype``, contiguous, the rank zero-padded to ``rank`` (exact: padded
    terms are 0 * 0). Factors of another 16-bit dtype than q are widened exactly to float32, where their
    products are exact, as on the tensor cores. Contiguity also removes broadcast (stride-0) views."""
    f = f.to(dtype).contiguous()
    if f.shape[-1] != rank:
        f = torch.nn.functional.pad(f, (0, rank - f.shape[-1]))
    return tma_ready(f)


def to_cute(t: torch.Tensor, align: int | None = None):
    """The runtime twin of the launchers' fake tensors: every extent and non-unit stride dynamic, the base
    ``align`` bytes aligned (16 for 16-bit data, else 4, by default). Detached: DLPack refuses tensors that
    require grad, which the autograd ops hand their CuTe backend."""
    from cutlass.cute.runtime import from_dlpack

    if align is None:
        align = 16 if t.element_size() == 2 else 4
    return from_dlpack(t.detach(), assumed_align=align).mark_layout_dynamic(leading_dim=t.dim() - 1)
