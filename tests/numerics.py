"""The acceptance rule for kernels: error against the float64 reference within 2x the error of the same
computation done by the PyTorch reference at the kernel's precision, plus a rounding floor."""

from __future__ import annotations

import torch


def max_err(x: torch.Tensor, ref64: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return (x.double() - ref64.double()).abs().max().item()


def assert_2x(name: str, got: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor, dtype=None) -> None:
    """got: the kernel's result; ref64: float64 reference; ref_lowp: reference at the kernel's precision."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in the result (an element was never written?)"
    dtype = dtype or got.dtype
    floor = torch.finfo(dtype).eps * max(ref64.abs().max().item() if ref64.numel() else 0.0, 1e-3)
    err, base = max_err(got, ref64), max_err(ref_lowp, ref64)
    assert err <= 2 * base + floor, (
        f"{name}: error {err:.3e} > 2 x {base:.3e} (reference at kernel precision) + {floor:.1e}; "
        + _worst(got, ref64, ref_lowp)
    )


def _worst(got: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor) -> str:
    """Where the largest error is, with the three values there, and how many elements exceed the bound's base."""
    diff = (got.double() - ref64.double()).abs()
    flat = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), got.shape))
    base = max_err(ref_lowp, ref64)
    over = int((diff > 2 * base).sum())
    return (
        f"worst at {index}: got {got.reshape(-1)[flat].item():.9g}, float64 {ref64.reshape(-1)[flat].item():.9g}, "
        f"reference at kernel precision {ref_lowp.reshape(-1)[flat].item():.9g}; {over} of {got.numel()} elements "
        f"off by more than 2 x {base:.3e}; mean signed error {(got.double() - ref64.double()).mean().item():.3e}"
    )
