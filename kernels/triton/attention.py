"""FlashAttention-2-style softmax attention with a fused FlashBias (low-rank logit bias), forward and backward.

Supported: tensors in (B, S, H, D) layout with any batch/sequence/head strides and a contiguous last dim; GQA/MQA
(query head h reads key/value head h // group); head dims up to 256, padded to a power of two with masks, and
Dv != D; any sequence lengths; causal and sliding windows aligned bottom-right; a rank-R bias
`q_factor · k_factorᵀ` whose factors broadcast over batch and heads through zero strides.
Not supported: dropout, paged or variable-length (packed) sequences, dense additive masks.

The softmax runs on exp2 with log2(e) folded into the scale: P = exp2(x·c − M), one FMA per logit, with x = q·kᵀ
and c = softmax_scale·log2(e) without a bias, and x = q·kᵀ·softmax_scale + q_factor·k_factorᵀ and c = log2(e) with
one; M is the running row max of x·c, kept as that float32 value, so the rescale factor exp2(M_old − M_new) is
exactly 1 while the max stands. lse = M·ln 2 + ln(rowsum P) is stored as a natural log; the backward forms
P = exp2((s − lse)·log2(e)), whose largest exponent stays exact as in the reference.

Masking: query i sits at key position i + Sk − Sq and sees key j iff (left < 0 or j ≥ i + Sk − Sq − left) and
(right < 0 or j ≤ i + Sk − Sq + right). Each program computes the tile range any of its rows can see, runs the
tiles that every row sees whole without a mask and masks only the boundary tiles (window edges, ragged ends).
A query row that sees no key gets out 0 and lse −inf, and its P is 0 in the backward, so it adds no gradient.

Backward: D = rowsum(dO∘O) (`attention_bwd_preprocess`), then dK/dV per key block, summing over the query heads
of its GQA group (`attention_bwd_dkdv`), then dQ per query block (`attention_bwd_dq`). dQ is a second pass
rather than fp32 atomics: deterministic, no zero-filled accumulator or conversion pass, and safe under CUDA-graph
capture, at the cost of recomputing Q·Kᵀ and dO·Vᵀ once more. The bias factor gradients dq_factor = dS·k_factor
and dk_factor = dSᵀ·q_factor (dS the logit gradient) come out per (batch, head) in float32; the launcher sums
them over the broadcast dims.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# How the bias tile q_factor·k_factorᵀ is computed (the BIAS constexpr).
BIAS_NONE = tl.constexpr(0)
BIAS_HALF = tl.constexpr(1)  # fp16/bf16 factors: tensor-core dot, R padded to >= 16
BIAS_IEEE = tl.constexpr(2)  # float32 factors: float32 dot (position-like factors must stay exact)
BIAS_OUTER = tl.constexpr(3)  # float32 factors, small R: sum of R outer products, no padding to 16


@triton.jit
def _tile_ptrs(base, offs_rows, stride_rows, offs_cols):
    """Pointers to a (rows, cols) tile with unit column stride. Offsets within one (batch, head) slice are int32
    (the launcher checks they fit): int64 tile offsets cost registers that the backward spills."""
    return base + offs_rows[:, None] * stride_rows + offs_cols[None, :]


@triton.jit
def _load_rows(
    base,
    offs_rows,
    stride_rows,
    offs_cols,
    n_rows,
    N_COLS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
):
    """A (rows, BLOCK_COLS) tile with unit column stride; masked to 0 past n_rows (if CHECK_ROWS) and N_COLS."""
    ptrs = _tile_ptrs(base, offs_rows, stride_rows, offs_cols)
    if CHECK_ROWS:
        if N_COLS == BLOCK_COLS:
            x = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_cols[None, :] < N_COLS), other=0.0)
    else:
        if N_COLS == BLOCK_COLS:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_cols[None, :] < N_COLS, other=0.0)
    return x


@triton.jit
def _load_vec(base, offs, n, CHECK: tl.constexpr):
    if CHECK:
        x = tl.load(base + offs, mask=offs < n, other=0.0)
    else:
        x = tl.load(base + offs)
    return x


@triton.jit
def _visible(qi, kj, seqlen_q, seqlen_k, window_left, window_right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Broadcast bool: query qi sees key kj (both in range, inside the bottom-right aligned window)."""
    diag = qi + (seqlen_k - seqlen_q)
    keep = (qi < seqlen_q) & (kj < seqlen_k)
    if HAS_LEFT:
        keep = keep & (kj >= diag - window_left)
    if HAS_RIGHT:
        keep = keep & (kj <= diag + window_right)
    return keep


@triton.jit
def _tile_ranges(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Clamps to lo <= full_lo <= full_hi <= hi rounded up to a tile; [lo, full_lo) and [full_hi, hi) are masked."""
    hi = tl.maximum(hi, lo)
    hi_tiles = (hi + BLOCK - 1) // BLOCK * BLOCK
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi_tiles)
    full_hi = tl.maximum(tl.minimum(full_hi, hi_tiles), full_lo)
    return lo, hi, full_lo, full_hi


@triton.jit
def _key_range(
    m0,
    seqlen_q,
    seqlen_k,
    window_left,
    window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Keys [lo, hi) that queries [m0, m0 + BLOCK_M) can see; key tiles in [full_lo, full_hi) are seen whole by
    every valid query of the block. All bounds but hi are multiples of BLOCK_N (clamped before dividing, so
    negative values never meet integer division)."""
    m_last = tl.minimum(m0 + BLOCK_M, seqlen_q) - 1
    shift = seqlen_k - seqlen_q
    lo = m0 * 0
    full_lo = lo
    hi = lo + seqlen_k
    full_hi = lo + seqlen_k // BLOCK_N * BLOCK_N
    if HAS_LEFT:
        lo = tl.maximum(m0 + shift - window_left, 0) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(m_last + shift - window_left, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(hi, m_last + shift + window_right + 1)
        full_hi = tl.minimum(full_hi, tl.maximum(m0 + shift + window_right + 1, 0) // BLOCK_N * BLOCK_N)
    return _tile_ranges(lo, hi, full_lo, full_hi, BLOCK_N)


@triton.jit
def _query_range(
    n0,
    seqlen_q,
    seqlen_k,
    window_left,
    window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):
    """Queries [lo, hi) that can see keys [n0, n0 + BLOCK_N); query tiles in [full_lo, full_hi) see every valid key
    of the block. The mirror image of `_key_range`."""
    n_last = tl.minimum(n0 + BLOCK_N, seqlen_k) - 1
    shift = seqlen_k - seqlen_q
    lo = n0 * 0
    full_lo = lo
    hi = lo + seqlen_q
    full_hi = lo + seqlen_q // BLOCK_M * BLOCK_M
    if HAS_RIGHT:
        lo = tl.maximum(n0 - shift - window_right, 0) // BLOCK_M * BLOCK_M
        full_lo = (tl.maximum(n_last - shift - window_right, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(hi, n_last - shift + window_left + 1)
        full_hi = tl.minimum(full_hi, tl.maximum(n0 - shift + window_left + 1, 0) // BLOCK_M * BLOCK_M)
    return _tile_ranges(lo, hi, full_lo, full_hi, BLOCK_M)


@triton.jit
def _column(x, offs_r, r):
    """Column r of a (rows, BLOCK_R) tile, exactly (a sum with zeros)."""
    return tl.sum(tl.where(offs_r[None, :] == r, x, 0.0), 1)


@triton.jit
def _low_rank(a, b, offs_r, RANK: tl.constexpr, BIAS: tl.constexpr):
    """a (M, BLOCK_R) · b (N, BLOCK_R)ᵀ -> (M, N) float32."""
    if BIAS == BIAS_OUTER:
        out = _column(a, offs_r, 0)[:, None] * _column(b, offs_r, 0)[None, :]
        for r in tl.static_range(1, RANK):
            out += _column(a, offs_r, r)[:, None] * _column(b, offs_r, r)[None, :]
    elif BIAS == BIAS_IEEE:
        out = tl.dot(a, tl.trans(b), input_precision="ieee")
    else:
        out = tl.dot(a, tl.trans(b))
    return out


@triton.jit
def _low_rank_grad(ds, b, offs_r, RANK: tl.constexpr, BIAS: tl.constexpr):
    """ds (M, N) float32 · b (N, BLOCK_R) -> (M, BLOCK_R) float32: one factor's gradient from the logit gradient."""
    if BIAS == BIAS_OUTER:
        g = tl.where(offs_r[None, :] == 0, tl.sum(ds * _column(b, offs_r, 0)[None, :], 1)[:, None], 0.0)
        for r in tl.static_range(1, RANK):
            g += tl.where(offs_r[None, :] == r, tl.sum(ds * _column(b, offs_r, r)[None, :], 1)[:, None], 0.0)
    elif BIAS == BIAS_IEEE:
        g = tl.dot(ds, b, input_precision="ieee")
    else:
        g = tl.dot(ds.to(b.dtype), b)
    return g


@triton.jit
def _fwd_tiles(
    acc, l_i, ms_i, q, qf,
    k_base, v_base, kf_base,  # at (b, key head); kf at (b, query head)
    stride_ks, stride_vs, stride_kfs,
    offs_m, offs_d, offs_dv, offs_r, start, end,
    seqlen_q, seqlen_k, softmax_scale, exp2_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
    BIAS: tl.constexpr, LOGITS_RAW: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_ks, offs_d, seqlen_k, HEAD_DIM, BLOCK_D, MASK)  # (BLOCK_N, BLOCK_D)
        x = tl.dot(q, tl.trans(k))
        if not LOGITS_RAW:
            x = x * softmax_scale
            if BIAS != BIAS_NONE:
                kf = _load_rows(kf_base, offs_n, stride_kfs, offs_r, seqlen_k, RANK, BLOCK_R, MASK)
                x += _low_rank(qf, kf, offs_r, RANK, BIAS)
        if MASK:
            keep = _visible(
                offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, window_left, window_right, HAS_LEFT, HAS_RIGHT
            )
            x = tl.where(keep, x, float("-inf"))
        # The running max is kept in exp2 units, as the float32 value every exp2 subtracts (exp2_scale > 0, so the
        # max commutes with the scaling). The rescale factor's exponent is then a difference of two stored values:
        # exactly 0 while the max stands, so alpha is exactly 1. Written as exp2(m_i * exp2_scale - m_scaled), the
        # GPU build contracts it into an FMA whose result is the rounding error of m_scaled, not 0: alpha = 2^delta
        # on every tile, which leaves out (acc and l_i scale alike) but compounds into lse, a few ulp per dozen
        # tiles (the interpreter does not contract, so only a GPU shows it).
        ms_new = tl.maximum(ms_i, tl.max(x, 1) * exp2_scale)
        if MASK:
            # A row with nothing visible yet keeps max -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
            ms_use = tl.where(ms_new == float("-inf"), 0.0, ms_new)
        else:
            ms_use = ms_new
        p = tl.exp2(x * exp2_scale - ms_use[:, None])  # one FMA per logit
        alpha = tl.exp2(ms_i - ms_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, offs_n, stride_vs, offs_dv, seqlen_k, HEAD_DIM_V, BLOCK_DV, MASK)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        ms_i = ms_new
    return acc, l_i, ms_i


@triton.jit
def attention_fwd(
    Q, K, V, QF, KF, Out, Lse,  # q (b, s_q, h, d), k (b, s_k, h_kv, d), v (b, s_k, h_kv, dv); factors (b, s, h, r)
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_qfb, stride_qfs, stride_qfh,  # zero where q_factor broadcasts
    stride_kfb, stride_kfs, stride_kfh,
    stride_ob, stride_os, stride_oh,  # out (b, s_q, h, dv); lse (b, h, s_q) float32, contiguous
    seqlen_q, seqlen_k, heads, group, softmax_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr, BIAS: tl.constexpr, LOGITS_RAW: tl.constexpr, HAS_LEFT: tl.constexpr,
    HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // group
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_r = tl.arange(0, BLOCK_R)

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qs, offs_d, seqlen_q, HEAD_DIM, BLOCK_D, True)
    qf = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    if BIAS != BIAS_NONE:
        qf = _load_rows(QF + b * stride_qfb + h * stride_qfh, offs_m, stride_qfs, offs_r, seqlen_q, RANK, BLOCK_R, True)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    kf_base = KF + b * stride_kfb + h * stride_kfh

    if LOGITS_RAW:
        # Without a bias (and with softmax_scale > 0) the logits stay q·kᵀ and softmax_scale·log2(e) scales them
        # inside the exp2 (and the running max with them, see _fwd_tiles).
        exp2_scale = softmax_scale * LOG2E
    else:
        exp2_scale = LOG2E
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ms_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running row max of the logits times exp2_scale
    lo, hi, full_lo, full_hi = _key_range(
        m0, seqlen_q, seqlen_k, window_left, window_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    for seg in tl.static_range(3):
        # 0: masked tiles left of the full ones, 1: the full tiles, 2: masked tiles right of them.
        if seg == 0:
            start, end = lo, full_lo
        elif seg == 1:
            start, end = full_lo, full_hi
        else:
            start, end = full_hi, hi
        acc, l_i, ms_i = _fwd_tiles(
            acc, l_i, ms_i, q, qf, k_base, v_base, kf_base, stride_ks, stride_vs, stride_kfs,
            offs_m, offs_d, offs_dv, offs_r, start, end,
            seqlen_q, seqlen_k, softmax_scale, exp2_scale, window_left, window_right,
            HEAD_DIM, HEAD_DIM_V, RANK, BLOCK_N, BLOCK_D, BLOCK_DV, BLOCK_R,
            BIAS, LOGITS_RAW, seg != 1, HAS_LEFT, HAS_RIGHT,
        )  # fmt: skip

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    # l_i sums 2^(x * exp2_scale - ms_i), so ln(sum e^x) = ms_i * ln 2 + ln(l_i), whether or not the exp2 arguments
    # were contracted into FMAs.
    lse = tl.where(empty, float("-inf"), ms_i * LN2 + tl.log(l_safe))
    o_ptrs = _tile_ptrs(Out + b * stride_ob + h * stride_oh, offs_m, stride_os, offs_dv)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < seqlen_q) & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + (b * heads + h) * seqlen_q + offs_m, lse, mask=offs_m < seqlen_q)


@triton.jit
def attention_bwd_preprocess(
    Out, DO, Delta,  # out, dout (b, s_q, h, dv); delta (b, h, s_q) float32, contiguous
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    seqlen_q, heads,
    HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    o = _load_rows(
        Out + b * stride_ob + h * stride_oh, offs_m, stride_os, offs_dv, seqlen_q, HEAD_DIM_V, BLOCK_DV, True
    )
    do = _load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, stride_dos, offs_dv, seqlen_q, HEAD_DIM_V, BLOCK_DV, True
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + (b * heads + h) * seqlen_q + offs_m, delta, mask=offs_m < seqlen_q)


@triton.jit
def _dkdv_tiles(
    dk, dv, dkf, k, v, kf,
    q_base, do_base, qf_base, lse_base, delta_base,  # at (b, query head)
    stride_qs, stride_dos, stride_qfs,
    offs_n, offs_d, offs_dv, offs_r, start, end,
    seqlen_q, seqlen_k, softmax_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
    BIAS: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, offs_m, stride_qs, offs_d, seqlen_q, HEAD_DIM, BLOCK_D, MASK)  # (BLOCK_M, BLOCK_D)
        s = tl.dot(k, tl.trans(q)) * softmax_scale  # (BLOCK_N, BLOCK_M): keys on rows
        if BIAS != BIAS_NONE:
            qf = _load_rows(qf_base, offs_m, stride_qfs, offs_r, seqlen_q, RANK, BLOCK_R, MASK)
            s += _low_rank(kf, qf, offs_r, RANK, BIAS)
        lse = _load_vec(lse_base, offs_m, seqlen_q, MASK)
        # s − lse before the log2(e) scaling: the exponent of the largest P stays exact, as in the reference.
        p = tl.exp2((s - lse[None, :]) * LOG2E)
        if MASK:
            # where, not a multiply: masked entries (and rows with lse -inf) may hold inf before this.
            keep = _visible(
                offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, window_left, window_right, HAS_LEFT, HAS_RIGHT
            )
            p = tl.where(keep, p, 0.0)
        do = _load_rows(do_base, offs_m, stride_dos, offs_dv, seqlen_q, HEAD_DIM_V, BLOCK_DV, MASK)
        dv = tl.dot(p.to(do.dtype), do, dv)
        dp = tl.dot(v, tl.trans(do))
        delta = _load_vec(delta_base, offs_m, seqlen_q, MASK)
        ds = p * (dp - delta[None, :])
        dk = tl.dot(ds.to(q.dtype), q, dk)
        if BIAS != BIAS_NONE:
            dkf += _low_rank_grad(ds, qf, offs_r, RANK, BIAS)
    return dk, dv, dkf


@triton.jit
def attention_bwd_dkdv(
    Q, K, V, QF, KF, DO, Lse, Delta, DK, DV, DKF,  # dk, dv like k, v; dkf (b, s_k, h, r) float32 per query head
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_qfb, stride_qfs, stride_qfh,
    stride_kfb, stride_kfs, stride_kfh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_dkfb, stride_dkfs, stride_dkfh,
    seqlen_q, seqlen_k, heads, group, softmax_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr, BIAS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    h_kv = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_r = tl.arange(0, BLOCK_R)

    k = _load_rows(K + b * stride_kb + h_kv * stride_kh, offs_n, stride_ks, offs_d, seqlen_k, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(
        V + b * stride_vb + h_kv * stride_vh, offs_n, stride_vs, offs_dv, seqlen_k, HEAD_DIM_V, BLOCK_DV, True
    )
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    lo, hi, full_lo, full_hi = _query_range(
        n0, seqlen_q, seqlen_k, window_left, window_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    for g in range(group):
        h = h_kv * group + g
        kf = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
        if BIAS != BIAS_NONE:
            kf = _load_rows(
                KF + b * stride_kfb + h * stride_kfh, offs_n, stride_kfs, offs_r, seqlen_k, RANK, BLOCK_R, True
            )
        dkf = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
        row = (b * heads + h) * seqlen_q
        for seg in tl.static_range(3):
            if seg == 0:
                start, end = lo, full_lo
            elif seg == 1:
                start, end = full_lo, full_hi
            else:
                start, end = full_hi, hi
            dk, dv, dkf = _dkdv_tiles(
                dk, dv, dkf, k, v, kf,
                Q + b * stride_qb + h * stride_qh, DO + b * stride_dob + h * stride_doh,
                QF + b * stride_qfb + h * stride_qfh, Lse + row, Delta + row,
                stride_qs, stride_dos, stride_qfs,
                offs_n, offs_d, offs_dv, offs_r, start, end,
                seqlen_q, seqlen_k, softmax_scale, window_left, window_right,
                HEAD_DIM, HEAD_DIM_V, RANK, BLOCK_M, BLOCK_D, BLOCK_DV, BLOCK_R,
                BIAS, seg != 1, HAS_LEFT, HAS_RIGHT,
            )  # fmt: skip
        if BIAS != BIAS_NONE:
            dkf_ptrs = _tile_ptrs(DKF + b * stride_dkfb + h * stride_dkfh, offs_n, stride_dkfs, offs_r)
            tl.store(dkf_ptrs, dkf, mask=(offs_n[:, None] < seqlen_k) & (offs_r[None, :] < RANK))

    dk = dk * softmax_scale
    dk_ptrs = _tile_ptrs(DK + b * stride_dkb + h_kv * stride_dkh, offs_n, stride_dks, offs_d)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=(offs_n[:, None] < seqlen_k) & (offs_d[None, :] < HEAD_DIM))
    dv_ptrs = _tile_ptrs(DV + b * stride_dvb + h_kv * stride_dvh, offs_n, stride_dvs, offs_dv)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=(offs_n[:, None] < seqlen_k) & (offs_dv[None, :] < HEAD_DIM_V))


@triton.jit
def _dq_tiles(
    dq, dqf, q, do, qf, lse, delta,
    k_base, v_base, kf_base,
    stride_ks, stride_vs, stride_kfs,
    offs_m, offs_d, offs_dv, offs_r, start, end,
    seqlen_q, seqlen_k, softmax_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
    BIAS: tl.constexpr, MASK: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_ks, offs_d, seqlen_k, HEAD_DIM, BLOCK_D, MASK)
        s = tl.dot(q, tl.trans(k)) * softmax_scale  # (BLOCK_M, BLOCK_N)
        if BIAS != BIAS_NONE:
            kf = _load_rows(kf_base, offs_n, stride_kfs, offs_r, seqlen_k, RANK, BLOCK_R, MASK)
            s += _low_rank(qf, kf, offs_r, RANK, BIAS)
        p = tl.exp2((s - lse[:, None]) * LOG2E)
        if MASK:
            keep = _visible(
                offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, window_left, window_right, HAS_LEFT, HAS_RIGHT
            )
            p = tl.where(keep, p, 0.0)
        v = _load_rows(v_base, offs_n, stride_vs, offs_dv, seqlen_k, HEAD_DIM_V, BLOCK_DV, MASK)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
        if BIAS != BIAS_NONE:
            dqf += _low_rank_grad(ds, kf, offs_r, RANK, BIAS)
    return dq, dqf


@triton.jit
def attention_bwd_dq(
    Q, K, V, QF, KF, DO, Lse, Delta, DQ, DQF,  # dq like q; dqf (b, s_q, h, r) float32
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_qfb, stride_qfs, stride_qfh,
    stride_kfb, stride_kfs, stride_kfh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_dqfb, stride_dqfs, stride_dqfh,
    seqlen_q, seqlen_k, heads, group, softmax_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, RANK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr, BIAS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h_kv = h // group
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_r = tl.arange(0, BLOCK_R)

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qs, offs_d, seqlen_q, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, stride_dos, offs_dv, seqlen_q, HEAD_DIM_V, BLOCK_DV, True
    )
    row = (b * heads + h) * seqlen_q
    lse = _load_vec(Lse + row, offs_m, seqlen_q, True)
    delta = _load_vec(Delta + row, offs_m, seqlen_q, True)
    qf = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    if BIAS != BIAS_NONE:
        qf = _load_rows(QF + b * stride_qfb + h * stride_qfh, offs_m, stride_qfs, offs_r, seqlen_q, RANK, BLOCK_R, True)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    kf_base = KF + b * stride_kfb + h * stride_kfh

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dqf = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    lo, hi, full_lo, full_hi = _key_range(
        m0, seqlen_q, seqlen_k, window_left, window_right, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT
    )
    for seg in tl.static_range(3):
        if seg == 0:
            start, end = lo, full_lo
        elif seg == 1:
            start, end = full_lo, full_hi
        else:
            start, end = full_hi, hi
        dq, dqf = _dq_tiles(
            dq, dqf, q, do, qf, lse, delta, k_base, v_base, kf_base, stride_ks, stride_vs, stride_kfs,
            offs_m, offs_d, offs_dv, offs_r, start, end,
            seqlen_q, seqlen_k, softmax_scale, window_left, window_right,
            HEAD_DIM, HEAD_DIM_V, RANK, BLOCK_N, BLOCK_D, BLOCK_DV, BLOCK_R,
            BIAS, seg != 1, HAS_LEFT, HAS_RIGHT,
        )  # fmt: skip

    dq = dq * softmax_scale
    dq_ptrs = _tile_ptrs(DQ + b * stride_dqb + h * stride_dqh, offs_m, stride_dqs, offs_d)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM))
    if BIAS != BIAS_NONE:
        dqf_ptrs = _tile_ptrs(DQF + b * stride_dqfb + h * stride_dqfh, offs_m, stride_dqfs, offs_r)
        tl.store(dqf_ptrs, dqf, mask=(offs_m[:, None] < seqlen_q) & (offs_r[None, :] < RANK))
