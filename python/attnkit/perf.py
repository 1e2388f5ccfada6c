"""Performance formulas shared by the benchmarks and the README: FLOPs, bytes moved and rates.

Pure integer/float arithmetic, no torch. Conventions (the ones `../shared/BASELINES.md` uses):

- Attention forward: 2·D FLOPs per visible (query, key) pair for Q·Kᵀ and 2·Dv for P·V, so 4·B·H·Sq·Sk·D when
  nothing is masked. Visible pairs are counted exactly for causal and sliding windows with the bottom-right
  alignment of `attnkit.attention` (query i sits at key position i + Sk − Sq), so causal is N(N+1)/2 pairs,
  about half. Softmax, scaling and masking are not counted.
- Attention backward: 2.5× the forward matmul FLOPs (five matmuls instead of two).
- Low-rank bias of rank R (FlashBias): 2·R FLOPs per visible pair forward (the q_factor·k_factorᵀ tile); the
  backward counts 3× that (recompute, dq_factor = dS·k_factor, dk_factor = dSᵀ·q_factor).
- Lightning attention, chunked form with chunk C (64 by default): per chunk Q·Kᵀ (2·C²·D), masked P·V (2·C²·E),
  the inter-chunk Q·S (2·C·D·E) and the state update Kᵀ·V (2·C·D·E). The backward counts 2× the forward
  (two gradient products per forward product).
- Bytes moved: what a kernel must read and write at least (inputs once, outputs once), the memory floor.

Rates use decimal units: TFLOP/s = 1e12 FLOP/s, TB/s = 1e12 B/s.
"""

from __future__ import annotations

ATTENTION_BWD_FACTOR = 2.5
BIAS_BWD_FACTOR = 3.0
LIGHTNING_BWD_FACTOR = 2.0
LIGHTNING_CHUNK = 64

_DTYPE_BYTES = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


def dtype_bytes(dtype) -> int:
    """Bytes per element for a dtype given as a name ('bfloat16') or anything whose str ends in it
    (torch.bfloat16); an int is taken as the element size itself."""
    if isinstance(dtype, int):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


def _sum_clamp_prefix(x: int, hi: int) -> int:
    """Σ_{t ≤ x} clamp(t, 0, hi) over integers t (finite: terms below 1 are 0)."""
    if x <= 0:
        return 0
    if x <= hi:
        return x * (x + 1) // 2
    return hi * (hi + 1) // 2 + (x - hi) * hi


def _pairs_upto(seqlen_q: int, seqlen_k: int, c: int) -> int:
    """Number of (i, j), 0 ≤ i < Sq, 0 ≤ j < Sk, with j − i ≤ c."""
    # For row i the count is clamp(i + c + 1, 0, Sk); sum over i = 0..Sq−1.
    return _sum_clamp_prefix(seqlen_q + c, seqlen_k) - _sum_clamp_prefix(c, seqlen_k)


def visible_pairs(seqlen_q: int, seqlen_k: int, *, causal: bool = False, window: tuple[int, int] = (-1, -1)) -> int:
    """Exact number of (query, key) pairs one head computes, bottom-right aligned.

    Query i sees key j when −left ≤ j − (i + Sk − Sq) ≤ right; -1 is unbounded and causal means right = 0.
    """
    if seqlen_q < 0 or seqlen_k < 0:
        raise ValueError(f"sequence lengths must be >= 0, got {seqlen_q}, {seqlen_k}")
    left, right = window
    if causal:
        right = 0
    offset = seqlen_k - seqlen_q
    hi = seqlen_k - 1 if right < 0 else offset + right
    lo = -seqlen_q if left < 0 else offset - left
    hi = min(hi, seqlen_k - 1)
    lo = max(lo, -seqlen_q)
    if hi < lo:
        return 0
    return _pairs_upto(seqlen_q, seqlen_k, hi) - _pairs_upto(seqlen_q, seqlen_k, lo - 1)


def attention_fwd_flops(
    batch: int,
    heads: int,
    seqlen_q: int,
    seqlen_k: int,
    head_dim: int,
    head_dim_v: int | None = None,
    *,
    causal: bool = False,
    window: tuple[int, int] = (-1, -1),
    bias_rank: int = 0,
) -> int:
    """Forward FLOPs: (2·D + 2·Dv + 2·R) per visible pair, times batch and query heads."""
    dv = head_dim if head_dim_v is None else head_dim_v
    pairs = visible_pairs(seqlen_q, seqlen_k, causal=causal, window=window)
    return batch * heads * pairs * (2 * head_dim + 2 * dv + 2 * bias_rank)


def attention_bwd_flops(
    batch: int,
    heads: int,
    seqlen_q: int,
    seqlen_k: int,
    head_dim: int,
    head_dim_v: int | None = None,
    *,
    causal: bool = False,
    window: tuple[int, int] = (-1, -1),
    bias_rank: int = 0,
) -> float:
    """Backward FLOPs: 2.5× the forward attention matmuls plus 3× the forward bias term."""
    dims = (batch, heads, seqlen_q, seqlen_k, head_dim, head_dim_v)
    plain = attention_fwd_flops(*dims, causal=causal, window=window)
    bias = attention_fwd_flops(*dims, causal=causal, window=window, bias_rank=bias_rank) - plain
    return ATTENTION_BWD_FACTOR * plain + BIAS_BWD_FACTOR * bias


def attention_fwd_bytes(
    batch: int,
    heads: int,
    heads_kv: int,
    seqlen_q: int,
    seqlen_k: int,
    head_dim: int,
    head_dim_v: int | None = None,
    *,
    dtype="bfloat16",
    bias_rank: int = 0,
    bias_dtype="float32",
) -> int:
    """Memory floor of the forward: read q, k, v (and the bias factors), write o and the float32 lse."""
    dv = head_dim if head_dim_v is None else head_dim_v
    e = dtype_bytes(dtype)
    q = batch * seqlen_q * heads * head_dim
    kv = batch * seqlen_k * heads_kv * (head_dim + dv)
    o = batch * seqlen_q * heads * dv
    lse = batch * heads * seqlen_q * 4
    factors = batch * (seqlen_q + seqlen_k) * heads * bias_rank * dtype_bytes(bias_dtype)
    return (q + kv + o) * e + lse + factors


def lightning_fwd_flops(
    batch: int, seqlen: int, heads: int, dim_k: int, dim_v: int | None = None, *, chunk: int = LIGHTNING_CHUNK
) -> int:
    """Forward FLOPs of the chunked form (see the module docstring); a ragged last chunk counts as full."""
    e = dim_k if dim_v is None else dim_v
    chunks = -(-seqlen // chunk)
    per_chunk = 2 * chunk * chunk * (dim_k + e) + 4 * chunk * dim_k * e
    return batch * heads * chunks * per_chunk


def lightning_bwd_flops(
    batch: int, seqlen: int, heads: int, dim_k: int, dim_v: int | None = None, *, chunk: int = LIGHTNING_CHUNK
) -> float:
    """Backward FLOPs: 2× the chunked forward."""
    return LIGHTNING_BWD_FACTOR * lightning_fwd_flops(batch, seqlen, heads, dim_k, dim_v, chunk=chunk)


def lightning_fwd_bytes(
    batch: int,
    seqlen: int,
    heads: int,
    dim_k: int,
    dim_v: int | None = None,
    *,
    dtype="bfloat16",
    initial_state: bool = False,
    final_state: bool = False,
) -> int:
    """Memory floor of the forward: read q, k, v, write o; float32 states (B, H, D, E) when read/written."""
    e = dim_k if dim_v is None else dim_v
    tokens = batch * seqlen * heads
    state = batch * heads * dim_k * e * 4
    return tokens * (2 * dim_k + 2 * e) * dtype_bytes(dtype) + state * (int(initial_state) + int(final_state))


def lightning_bwd_bytes(
    batch: int,
    seqlen: int,
    heads: int,
    dim_k: int,
    dim_v: int | None = None,
    *,
    dtype="bfloat16",
    initial_state: bool = False,
) -> int:
    """Memory floor of the backward: read q, k, v, do, write dq, dk, dv (and the initial state and its grad)."""
    e = dim_k if dim_v is None else dim_v
    tokens = batch * seqlen * heads
    state = batch * heads * dim_k * e * 4
    return tokens * (4 * dim_k + 3 * e) * dtype_bytes(dtype) + 2 * state * int(initial_state)


def decode_step_bytes(
    batch: int, heads: int, dim_k: int, dim_v: int | None = None, *, dtype="bfloat16", include_qkvo: bool = True
) -> int:
    """Bytes one decode step moves: the float32 state (B, H, D, E) read and written once, plus q, k, v, o."""
    e = dim_k if dim_v is None else dim_v
    state = 2 * batch * heads * dim_k * e * 4
    qkvo = batch * heads * (2 * dim_k + 2 * e) * dtype_bytes(dtype)
    return state + (qkvo if include_qkvo else 0)


def tflops(flops: float, ms: float) -> float:
    """TFLOP/s for `flops` done in `ms` milliseconds."""
    return flops / (ms * 1e-3) / 1e12


def tbps(nbytes: float, ms: float) -> float:
    """TB/s for `nbytes` moved in `ms` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e12


def tokens_per_s(tokens: float, ms: float) -> float:
    return tokens / (ms * 1e-3)


def percent_of(value: float, ceiling: float) -> float:
    """`value` as a percentage of a measured `ceiling` (same unit)."""
    if ceiling <= 0:
        raise ValueError(f"ceiling must be positive, got {ceiling}")
    return 100.0 * value / ceiling


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m × k)·(k × n) matmul: 2·m·n·k (the ceiling's formula)."""
    return 2 * m * n * k


def copy_bytes(nbytes: int) -> int:
    """Bytes a device-to-device copy of `nbytes` moves: read + write."""
    return 2 * nbytes
