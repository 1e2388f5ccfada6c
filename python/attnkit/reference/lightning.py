"""Lightning Attention-2 (causal linear attention with per-head decay) in plain PyTorch.

Per head h with decay λ = exp(-slopes[h]):  S_t = λ·S_{t-1} + k_tᵀ v_t  (S_{-1} = initial state, (D, E)),
o_t = scale · q_t · S_t.  Two forms that tests hold equal: the token-by-token recurrence and the chunked
(tiled) form the kernels use: per block of C tokens, the masked intra-block product ((Q Kᵀ) ∘ M) V with
M_ts = λ^{t-s} (t ≥ s), plus the inter-block term from the carried state.

`compute_dtype` float64/float32 is exact arithmetic in that type; fp16/bf16 emulates a tensor-core kernel
(matmul operands rounded to that dtype, float32 accumulation and state).

The backward needs no new machinery: with G_t the reverse-time state (G_t = λ·G_{t+1} + scale·q_tᵀ dO_t,
G_{T-1} includes dS_final), dk_t = G_t v_t, dv_t = G_tᵀ k_t, dq_t = scale·S_t dO_t, dS_{-1} = λ·G_0; each
is the forward recurrence run on permuted operands, forward or reversed in time.
"""

from __future__ import annotations

import torch


def _dtypes(compute_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    if compute_dtype in (torch.float16, torch.bfloat16):
        return compute_dtype, torch.float32
    return compute_dtype, compute_dtype


def _round(x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    op, acc = _dtypes(compute_dtype)
    return x.to(op).to(acc)


def lightning_recurrent(
    q: torch.Tensor,  # (B, S, H, D)
    k: torch.Tensor,  # (B, S, H, D)
    v: torch.Tensor,  # (B, S, H, E)
    slopes: torch.Tensor,  # (H,)
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,  # (B, H, D, E)
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token by token. Returns o (B, S, H, E) and the final state (B, H, D, E) in the accumulate dtype."""
    b, s, h, d = q.shape
    e = v.shape[-1]
    acc = _dtypes(compute_dtype)[1]
    decay = torch.exp(-slopes.to(acc))[None, :, None, None]
    state = (
        torch.zeros(b, h, d, e, dtype=acc, device=q.device) if initial_state is None else initial_state.to(acc).clone()
    )
    qr, kr, vr = (_round(x, compute_dtype) for x in (q, k, v))
    outs = []
    for t in range(s):
        state = decay * state + kr[:, t, :, :, None] * vr[:, t, :, None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", qr[:, t], _round(state, compute_dtype)) * scale)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(b, 0, h, e, dtype=acc)
    return o.to(out_dtype or q.dtype), state


def lightning_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
    chunk: int = 64,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled form. With reverse=True time runs backwards (the state flows from the last token down)."""
    if reverse:
        o, state = lightning_chunked(
            q.flip(1),
            k.flip(1),
            v.flip(1),
            slopes,
            scale=scale,
            initial_state=initial_state,
            compute_dtype=compute_dtype,
            out_dtype=out_dtype,
            chunk=chunk,
        )
        return o.flip(1), state
    b, s, h, d = q.shape
    e = v.shape[-1]
    acc = _dtypes(compute_dtype)[1]
    log_decay = -slopes.to(acc)  # (H,)
    state = (
        torch.zeros(b, h, d, e, dtype=acc, device=q.device) if initial_state is None else initial_state.to(acc).clone()
    )
    qh, kh, vh = (_round(x, compute_dtype).transpose(1, 2) for x in (q, k, v))  # (B, H, S, ·)
    outs = []
    for start in range(0, s, chunk):
        n = min(chunk, s - start)
        qc, kc, vc = qh[:, :, start : start + n], kh[:, :, start : start + n], vh[:, :, start : start + n]
        t = torch.arange(n, device=q.device, dtype=acc)
        diff = t[:, None] - t[None, :]
        mask = torch.where(
            diff >= 0, torch.exp(log_decay[:, None, None] * diff.clamp(min=0)), torch.zeros((), dtype=acc)
        )  # (H, n, n)
        scores = _round(torch.matmul(qc, kc.transpose(-1, -2)) * mask, compute_dtype)
        intra = torch.matmul(scores, vc)
        q_decay = torch.exp(log_decay[:, None] * (t[None, :] + 1))[..., None]  # (H, n, 1): λ^{t+1}
        inter = torch.matmul(_round(qc * q_decay, compute_dtype), _round(state, compute_dtype))
        outs.append((intra + inter) * scale)
        k_decay = torch.exp(log_decay[:, None] * (n - 1 - t)[None, :])[..., None]  # λ^{n-1-s}
        block_decay = torch.exp(log_decay * n)[None, :, None, None]
        state = block_decay * state + torch.matmul(_round(kc * k_decay, compute_dtype).transpose(-1, -2), vc)
    o = torch.cat(outs, dim=2) if outs else qh.new_zeros(b, h, 0, e)
    return o.transpose(1, 2).to(out_dtype or q.dtype), state


def lightning_forward(q, k, v, slopes, *, scale=1.0, initial_state=None, compute_dtype=torch.float32):
    """Returns o (B, S, H, E) in q.dtype and the final state (B, H, D, E) float32 (float64 if asked)."""
    o, state = lightning_chunked(q, k, v, slopes, scale=scale, initial_state=initial_state, compute_dtype=compute_dtype)
    return o, state.to(torch.float64 if compute_dtype == torch.float64 else torch.float32)


def lightning_backward(
    do: torch.Tensor,  # (B, S, H, E)
    dfinal_state: torch.Tensor | None,  # (B, H, D, E)
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
):
    """Returns (dq, dk, dv, d_initial_state); d_initial_state is float32 (float64 when computing in float64),
    None without an initial state."""
    acc = _dtypes(compute_dtype)[1]
    f = dict(compute_dtype=compute_dtype, out_dtype=acc)
    init_t = None if initial_state is None else initial_state.transpose(-1, -2)
    # dq_t = scale · dO_t S_tᵀ, with S_tᵀ carried by the forward recurrence on (v, k).
    dq, _ = lightning_chunked(do, v, k, slopes, scale=scale, initial_state=init_t, **f)
    # G_tᵀ = λ·G_{t+1}ᵀ + dO_tᵀ (scale·q_t), run reversed in time; dS_final enters below, undecayed at T-1.
    q_scaled = q.to(acc) * scale
    dk, g0_t = lightning_chunked(v, do, q_scaled, slopes, reverse=True, **f)
    dv, _ = lightning_chunked(k, q_scaled, do, slopes, reverse=True, **f)
    log_decay = -slopes.to(acc)
    d_init = None
    if dfinal_state is not None:
        s = q.shape[1]
        age = torch.arange(s - 1, -1, -1, device=q.device, dtype=acc)  # T-1-t
        w = torch.exp(log_decay[None, :] * age[:, None])[None, :, :, None]  # (1, S, H, 1)
        dfin = dfinal_state.to(acc)
        dk = dk + w * torch.einsum("bshe,bhde->bshd", v.to(acc), dfin)
        dv = dv + w * torch.einsum("bshd,bhde->bshe", k.to(acc), dfin)
    if initial_state is not None:
        decay = torch.exp(log_decay)[None, :, None, None]
        d_init = decay * g0_t.transpose(-1, -2)
        if dfinal_state is not None:
            d_init = d_init + torch.exp(log_decay * q.shape[1])[None, :, None, None] * dfinal_state.to(acc)
        d_init = d_init.to(torch.float64 if acc == torch.float64 else torch.float32)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_init
