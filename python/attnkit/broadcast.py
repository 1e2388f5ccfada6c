"""Gradients of broadcast inputs: the bias factors may be (1, S, 1, R) against (B, S, H, R) logits."""

from __future__ import annotations

import torch


def sum_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """Sums `grad` over the dimensions where `shape` is 1 and grad is not (same rank, keepdim)."""
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, shape, strict=True)) if s == 1 and g != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad
