"""The backends behind the ops. Each module exposes `unavailable(op, device) -> str | None`, optional
`validate_<op>(...)` checks for what it does not support, and the op functions:

- attention_fwd(q, k, v, q_factor, k_factor, *, softmax_scale, window_left, window_right) -> (out, lse)
- attention_bwd(dout, q, k, v, out, lse, q_factor, k_factor, *, softmax_scale, window_left, window_right)
  -> (dq, dk, dv, dq_factor, dk_factor)
- lightning_fwd(q, k, v, slopes, *, scale, initial_state) -> (o, final_state)
- lightning_bwd(do, dfinal_state, q, k, v, slopes, *, scale, initial_state) -> (dq, dk, dv, d_initial_state)
- lightning_step(q, k, v, slopes, state, *, scale) -> (o, new_state)

Modules are imported lazily so that a missing triton or cutlass only matters to whoever asks for it.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "reference": "attnkit.backends.reference_backend",
    "triton": "attnkit.backends.triton_backend",
    "cute": "attnkit.backends.cute_backend",
}


def get(name: str):
    return importlib.import_module(_MODULES[name])


def unavailable(name: str, op: str, device) -> str | None:
    """Why backend `name` cannot run `op` on `device`, or None when it can."""
    try:
        module = get(name)
    except ImportError as e:
        return f"it could not be imported ({e})"
    return module.unavailable(op, device)
