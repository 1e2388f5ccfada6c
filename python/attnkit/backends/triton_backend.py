"""Triton kernels (kernels/triton) behind the ops: any CUDA GPU, or CPU tensors under TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import triton  # noqa: F401  (an ImportError here marks the backend unavailable)

from .triton_attention import attention_bwd, attention_fwd
from .triton_lightning import lightning_bwd, lightning_fwd, lightning_step

__all__ = ["attention_bwd", "attention_fwd", "lightning_bwd", "lightning_fwd", "lightning_step", "unavailable"]


def unavailable(op: str, device) -> str | None:
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"it runs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a {device.type} tensor"
