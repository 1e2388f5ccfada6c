"""Backend choice: `auto` picks per device; an explicit backend is used as asked or raises, never falls back.

The GPU arch is read once per device, with one override: ATTNKIT_ARCH=sm90|sm100|other.
"""

from __future__ import annotations

import os

import torch

from . import backends

BACKENDS = ("auto", "cute", "triton", "reference")

# Ops whose CuTe kernel has been verified on a GPU and measured faster than Triton there, per arch.
# `auto` sends these to CuTe; everything else on a GPU goes to Triton. Empty until a device run says so.
AUTO_CUTE_OPS: dict[str, frozenset[str]] = {"sm90": frozenset(), "sm100": frozenset()}

_ARCH: dict[int, str] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs here."""


@torch._dynamo.assume_constant_result
def device_arch(index: int) -> str:
    """'sm90', 'sm100' or 'other' for the CUDA device `index`."""
    if index not in _ARCH:
        override = os.environ.get("ATTNKIT_ARCH")
        if override:
            _ARCH[index] = override
        else:
            major, _ = torch.cuda.get_device_capability(index)
            _ARCH[index] = {9: "sm90", 10: "sm100"}.get(major, "other")
    return _ARCH[index]


@torch._dynamo.assume_constant_result
def resolve(backend: str, op: str, device: torch.device) -> str:
    """The concrete backend name for `op` on `device`; raises if an explicit one cannot run there.
    A constant to torch.compile: it depends only on its arguments and the machine."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "reference"
        arch = device_arch(device.index if device.index is not None else torch.cuda.current_device())
        if op in AUTO_CUTE_OPS.get(arch, frozenset()) and backends.unavailable("cute", op, device) is None:
            return "cute"
        if backends.unavailable("triton", op, device) is None:
            return "triton"
        return "reference"
    reason = backends.unavailable(backend, op, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={backend!r} is unavailable for {op}: {reason}")
    return backend
