"""Lightning Attention-2 helpers."""

from __future__ import annotations

import math

import torch


def slopes(num_heads: int, device=None) -> torch.Tensor:
    """The standard ALiBi slopes (Press et al.), float32 (H,): a geometric sequence starting at 2^(-8/n) for
    the nearest power of two n ≤ H, interleaved with the next power's odd terms when H is not a power of 2.
    Used as decay rates: λ_h = exp(−slopes[h])."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    values = power_of_two(closest)
    if closest != num_heads:
        values += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(values, dtype=torch.float32, device=device)
