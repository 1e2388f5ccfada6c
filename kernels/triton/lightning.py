"""Lightning Attention-2 in Triton: the chunked decayed recurrence, its segment prefix, and the decode step.

One chunk kernel serves the forward and every backward product, because each is the recurrence
`state_t = λ·state_{t-1} + k_tᵀ v_t, o_t = q_t·state_t` run on permuted operands, forward or reversed in time
(see python/attnkit/reference/lightning.py). Per block of CHUNK tokens, with τ the block-local time
(τ = j forward, CHUNK-1-j reversed):

    o     = out_scale·[ ((Q Kᵀ) ⊙ M)·state_scale V + λ^{τ+1-SHIFT} ⊙ (Q·state) ]      M_ts = λ^{τ_t-τ_s}, τ_t ≥ τ_s
    state = λ^n·state + state_scale·λ^SHIFT·Kᵀ (V ⊙ λ^{n-1-τ})                        n = valid tokens in the block

Row decays multiply float32 results or V's rows, so that Q and K reach the tensor cores as loaded; scales and
SHIFT's λ stay in float32.

SHIFT=0 carries the state after the block's last token (forward: final state out). SHIFT=1 carries it decayed
once more, λ·state; the reversed backward uses it so that dS_final enters undecayed at T-1 and the carry left
after token 0 is λ·G_0 = d_initial_state, with no division by a decay anywhere. Decays are exp2(n·log2λ) with
n >= 0 (clamped in the lanes that `where` discards): they underflow to 0 and never overflow.

Grid of the chunk kernel: (B·H·DV/BLOCK_V, segments). One segment walks the whole sequence with the state on
chip (the fused strategy); several segments are the split strategy: a state-only pass per segment
(WRITE_O=False), `lightning_prefix_kernel` over the segments, then an output pass seeded per segment.
`lightning_bwd_dkdv_kernel` is an output pass for dk and dv together, holding the whole (D, E) reverse-time
state so that both come from one read of q, k, v, dO.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def lightning_chunk_kernel(
    Q,  # (B, T, H, DK)
    K,  # (B, T, H, DK)
    V,  # (B, T, H, DV)
    OUT,  # (B, T, H, DV), written when WRITE_O
    SLOPES,  # (H,)  λ = exp(-slope)
    SEED,  # (B, H, segments, DK, DV) float32: the carry entering each segment, read when HAS_SEED
    STATE_OUT,  # (B, H, segments, DK, DV) float32: the carry leaving each segment, written when STORE_STATE
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_sb,
    stride_sh,
    stride_sg,
    stride_sk,
    stride_sv,
    stride_fb,
    stride_fh,
    stride_fg,
    stride_fk,
    stride_fv,
    T,
    H,
    n_blocks,
    blocks_per_segment,
    out_scale,
    state_scale,
    DK: tl.constexpr,
    DV: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_V: tl.constexpr,
    REVERSE: tl.constexpr,
    SHIFT: tl.constexpr,
    WRITE_O: tl.constexpr,
    HAS_SEED: tl.constexpr,
    STORE_STATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n_vtiles: tl.constexpr = DV // BLOCK_V
    pid = tl.program_id(0)
    segment = tl.program_id(1)
    bh = pid // n_vtiles
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, DK)
    offs_v = (pid % n_vtiles) * BLOCK_V + tl.arange(0, BLOCK_V)
    tau = (CHUNK - 1 - offs_c) if REVERSE else offs_c
    log2_decay = -tl.load(SLOPES + h).to(tl.float32) * LOG2E
    dtype = Q.dtype.element_ty

    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    o_base = OUT + b * stride_ob + h * stride_oh

    # The intra-block decay mask and the per-row decays do not depend on the block (but for its length n).
    diff = tau[:, None] - tau[None, :]
    intra_decay = tl.where(diff >= 0, tl.exp2(tl.maximum(diff, 0).to(tl.float32) * log2_decay), 0.0) * state_scale
    q_decay = tl.exp2((tau + 1 - SHIFT).to(tl.float32) * log2_decay)
    shift_decay = tl.exp2(SHIFT * log2_decay)

    if HAS_SEED:
        seed_ptr = SEED + b * stride_sb + h * stride_sh + segment * stride_sg
        state = tl.load(seed_ptr + offs_k[:, None] * stride_sk + offs_v[None, :] * stride_sv)
    else:
        state = tl.zeros((DK, BLOCK_V), dtype=tl.float32)

    block_lo = segment * blocks_per_segment
    block_hi = tl.minimum(block_lo + blocks_per_segment, n_blocks)
    for i in range(block_lo, block_hi):
        # 1. Rows of this block (blocks run from the end when REVERSE; the ragged block is always last).
        n = tl.minimum(T - i * CHUNK, CHUNK)
        start = (T - (i + 1) * CHUNK) if REVERSE else i * CHUNK
        rows = (start + offs_c).to(tl.int64)
        valid = (rows >= 0) & (rows < T)
        kt = tl.load(k_base + rows[None, :] * stride_kt + offs_k[:, None], mask=valid[None, :], other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vt + offs_v[None, :], mask=valid[:, None], other=0.0)

        # 2. Output: intra-block masked product plus the carried state's contribution.
        if WRITE_O:
            q = tl.load(q_base + rows[:, None] * stride_qt + offs_k[None, :], mask=valid[:, None], other=0.0)
            scores = tl.dot(q, kt, input_precision=DOT_PRECISION) * intra_decay
            o = tl.dot(scores.to(dtype), v, input_precision=DOT_PRECISION)
            inter = tl.dot(q, state.to(dtype), input_precision=DOT_PRECISION)
            o += inter * q_decay[:, None]
            o_ptr = o_base + rows[:, None] * stride_ot + offs_v[None, :]
            tl.store(o_ptr, (o * out_scale).to(OUT.dtype.element_ty), mask=valid[:, None])

        # 3. State update; padded rows get weight 0.
        k_decay = tl.where(valid, tl.exp2(tl.maximum(n - 1 - tau, 0).to(tl.float32) * log2_decay), 0.0)
        v_decayed = (v * k_decay[:, None]).to(dtype)
        update = tl.dot(kt, v_decayed, input_precision=DOT_PRECISION)
        state = (state * tl.exp2((n - SHIFT).to(tl.float32) * log2_decay) + update * state_scale) * shift_decay

    if STORE_STATE:
        out_ptr = STATE_OUT + b * stride_fb + h * stride_fh + segment * stride_fg
        tl.store(out_ptr + offs_k[:, None] * stride_fk + offs_v[None, :] * stride_fv, state)


@triton.jit
def lightning_bwd_dkdv_kernel(
    Q,  # (B, T, H, D)
    K,  # (B, T, H, D)
    V,  # (B, T, H, E)
    DO,  # (B, T, H, E)
    DK,  # (B, T, H, D)
    DV,  # (B, T, H, E)
    SLOPES,  # (H,)
    SEED,  # (B, H, segments, D, E) float32: λ·G entering each segment (dS_final for the first), when HAS_SEED
    STATE_OUT,  # (B, H, segments, D, E) float32: λ·G leaving each segment (d_initial_state), when STORE_STATE
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dkb,
    stride_dkt,
    stride_dkh,
    stride_dvb,
    stride_dvt,
    stride_dvh,
    stride_sb,
    stride_sh,
    stride_sg,
    stride_sk,
    stride_sv,
    stride_fb,
    stride_fh,
    stride_fg,
    stride_fk,
    stride_fv,
    T,
    H,
    n_blocks,
    blocks_per_segment,
    scale,
    D: tl.constexpr,
    E: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_SEED: tl.constexpr,
    STORE_STATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dk and dv from one reverse-time pass over the whole (D, E) state G, carried as λ·G:

    dv = ((K Qᵀ) ⊙ M)·scale·dO + λ^τ ⊙ (K·λG),   dk = ((V dOᵀ) ⊙ M)·scale·Q + λ^τ ⊙ (V·(λG)ᵀ)
    """
    bh = tl.program_id(0)
    segment = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, E)
    tau = CHUNK - 1 - offs_c
    log2_decay = -tl.load(SLOPES + h).to(tl.float32) * LOG2E
    decay = tl.exp2(log2_decay)
    dtype = Q.dtype.element_ty
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    dk_base = DK + b * stride_dkb + h * stride_dkh
    dv_base = DV + b * stride_dvb + h * stride_dvh

    diff = tau[:, None] - tau[None, :]
    intra_decay = tl.where(diff >= 0, tl.exp2(tl.maximum(diff, 0).to(tl.float32) * log2_decay), 0.0) * scale
    row_decay = tl.exp2(tau.to(tl.float32) * log2_decay)

    if HAS_SEED:
        seed_ptr = SEED + b * stride_sb + h * stride_sh + segment * stride_sg
        carry = tl.load(seed_ptr + offs_d[:, None] * stride_sk + offs_e[None, :] * stride_sv)
    else:
        carry = tl.zeros((D, E), dtype=tl.float32)

    block_lo = segment * blocks_per_segment
    block_hi = tl.minimum(block_lo + blocks_per_segment, n_blocks)
    for i in range(block_lo, block_hi):
        # 1. Rows of this block, blocks taken from the end of the sequence.
        n = tl.minimum(T - i * CHUNK, CHUNK)
        rows = (T - (i + 1) * CHUNK + offs_c).to(tl.int64)
        valid = rows >= 0
        q = tl.load(q_base + rows[:, None] * stride_qt + offs_d[None, :], mask=valid[:, None], other=0.0)
        k = tl.load(k_base + rows[:, None] * stride_kt + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vt + offs_e[None, :], mask=valid[:, None], other=0.0)
        do = tl.load(do_base + rows[:, None] * stride_dot + offs_e[None, :], mask=valid[:, None], other=0.0)
        carry_lp = carry.to(dtype)

        # 2. dv from the key side, dk from the value side, both against the same carry.
        kq = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * intra_decay
        dv = tl.dot(kq.to(dtype), do, input_precision=DOT_PRECISION)
        dv += tl.dot(k, carry_lp, input_precision=DOT_PRECISION) * row_decay[:, None]
        vdo = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION) * intra_decay
        dk = tl.dot(vdo.to(dtype), q, input_precision=DOT_PRECISION)
        dk += tl.dot(v, tl.trans(carry_lp), input_precision=DOT_PRECISION) * row_decay[:, None]
        tl.store(dk_base + rows[:, None] * stride_dkt + offs_d[None, :], dk.to(dtype), mask=valid[:, None])
        tl.store(dv_base + rows[:, None] * stride_dvt + offs_e[None, :], dv.to(dtype), mask=valid[:, None])

        # 3. λ·G ← λ·(λ^{n-1}·λG + scale·Σ λ^{n-1-τ} q_τᵀ dO_τ); padded rows get weight 0.
        q_decay = tl.where(valid, tl.exp2(tl.maximum(n - 1 - tau, 0).to(tl.float32) * log2_decay), 0.0)
        update = tl.dot(tl.trans(q), (do * q_decay[:, None]).to(dtype), input_precision=DOT_PRECISION)
        carry = (carry * tl.exp2((n - 1).to(tl.float32) * log2_decay) + update * scale) * decay

    if STORE_STATE:
        out_ptr = STATE_OUT + b * stride_fb + h * stride_fh + segment * stride_fg
        tl.store(out_ptr + offs_d[:, None] * stride_fk + offs_e[None, :] * stride_fv, carry)


@triton.jit
def lightning_prefix_kernel(
    BUF,  # (B, H, segments, DK, DV) float32: in, each segment's local carry; out, the carry entering it
    SEED,  # (B, H, DK, DV) float32, read when HAS_SEED
    FINAL,  # (B, H, DK, DV) float32, written when STORE_FINAL
    SLOPES,  # (H,)
    stride_bb,
    stride_bh,
    stride_bg,
    stride_bk,
    stride_bv,
    stride_sb,
    stride_sh,
    stride_sk,
    stride_sv,
    stride_fb,
    stride_fh,
    stride_fk,
    stride_fv,
    T,
    H,
    n_segments,
    segment_len,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_SEED: tl.constexpr,
    STORE_FINAL: tl.constexpr,
):
    n_vtiles: tl.constexpr = DV // BLOCK_V
    pid = tl.program_id(0)
    bh = pid // n_vtiles
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_k = tl.arange(0, DK)
    offs_v = (pid % n_vtiles) * BLOCK_V + tl.arange(0, BLOCK_V)
    log2_decay = -tl.load(SLOPES + h).to(tl.float32) * LOG2E

    if HAS_SEED:
        seed_ptr = SEED + b * stride_sb + h * stride_sh
        carry = tl.load(seed_ptr + offs_k[:, None] * stride_sk + offs_v[None, :] * stride_sv)
    else:
        carry = tl.zeros((DK, BLOCK_V), dtype=tl.float32)
    buf_ptr = BUF + b * stride_bb + h * stride_bh + offs_k[:, None] * stride_bk + offs_v[None, :] * stride_bv
    for j in range(n_segments):
        local = tl.load(buf_ptr + j * stride_bg)
        tl.store(buf_ptr + j * stride_bg, carry)
        length = tl.minimum(T - j * segment_len, segment_len)
        carry = carry * tl.exp2(length.to(tl.float32) * log2_decay) + local
    if STORE_FINAL:
        final_ptr = FINAL + b * stride_fb + h * stride_fh
        tl.store(final_ptr + offs_k[:, None] * stride_fk + offs_v[None, :] * stride_fv, carry)


@triton.jit
def lightning_step_kernel(
    Q,  # (B, 1, H, DK)
    K,  # (B, 1, H, DK)
    V,  # (B, 1, H, DV)
    OUT,  # (B, 1, H, DV)
    SLOPES,  # (H,)
    STATE,  # (B, H, DK, DV) float32, read
    NEW_STATE,  # (B, H, DK, DV) float32, written
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_vb,
    stride_vh,
    stride_ob,
    stride_oh,
    stride_sb,
    stride_sh,
    stride_sk,
    stride_sv,
    stride_nb,
    stride_nh,
    stride_nk,
    stride_nv,
    H,
    scale,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    n_vtiles: tl.constexpr = DV // BLOCK_V
    pid = tl.program_id(0)
    bh = pid // n_vtiles
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_k = tl.arange(0, DK)
    offs_v = (pid % n_vtiles) * BLOCK_V + tl.arange(0, BLOCK_V)
    decay = tl.exp2(-tl.load(SLOPES + h).to(tl.float32) * LOG2E)

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_k).to(tl.float32)
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_k).to(tl.float32)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_v).to(tl.float32)
    state_ptr = STATE + b * stride_sb + h * stride_sh
    state = tl.load(state_ptr + offs_k[:, None] * stride_sk + offs_v[None, :] * stride_sv)
    state = state * decay + k[:, None] * v[None, :]
    new_ptr = NEW_STATE + b * stride_nb + h * stride_nh
    tl.store(new_ptr + offs_k[:, None] * stride_nk + offs_v[None, :] * stride_nv, state)
    o = tl.sum(q[:, None] * state, axis=0) * scale
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_v, o.to(OUT.dtype.element_ty))
