"""Host-side tensor preparation for the CuTe launchers."""

from __future__ import annotations

import functools
import os

import torch

# "1": the CuTe kernels are compiled with --enable-tvm-ffi and called with the torch tensors themselves, as FA4
# calls its kernels: argument checks and conversion in C instead of one DLPack conversion per tensor in Python,
# the stream taken from torch's current one. Opt-in (it needs apache-tvm-ffi) until a GPU run has verified it.
TVM_FFI_ENV = "ATTNKIT_CUTE_TVM_FFI"


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


@functools.lru_cache(maxsize=1)
def tvm_ffi_enabled() -> bool:
    """Whether this process compiles and calls the CuTe kernels through TVM-FFI (read once: a compiled kernel and
    the arguments its launcher passes must agree)."""
    if os.environ.get(TVM_FFI_ENV, "0") != "1":
        return False
    try:
        import tvm_ffi  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{TVM_FFI_ENV}=1 needs apache-tvm-ffi (pip install 'attnkit[tvm-ffi]')") from exc
    return True


def launch_tensor(t: torch.Tensor, align: int | None = None):
    """A tensor argument of a compiled kernel: the tensor itself on the TVM-FFI path (detached: the autograd ops
    hand over tensors that require grad), else ``to_cute``."""
    return t.detach() if tvm_ffi_enabled() else to_cute(t, align)


def launch_stream(device: torch.device) -> tuple:
    """The kernel's trailing stream argument: torch's current stream on ``device``; none on the TVM-FFI path, whose
    kernels take torch's current stream themselves."""
    if tvm_ffi_enabled():
        return ()
    import cuda.bindings.driver as cuda

    return (cuda.CUstream(torch.cuda.current_stream(device).cuda_stream),)


def fake_stream():
    """The stream argument of a compile against fake tensors (the environment's stream on the TVM-FFI path)."""
    from cutlass.runtime import make_fake_stream

    return make_fake_stream(use_tvm_ffi_env_stream=True) if tvm_ffi_enabled() else make_fake_stream()
