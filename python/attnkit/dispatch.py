"""Backend choice: `auto` picks per device; an explicit backend is used as asked or raises, never falls back.

The GPU arch is read once per device, with one override: ATTNKIT_ARCH=sm90|sm100|other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import backends

BACKENDS = ("auto", "cute", "triton", "reference")


def deterministic_backward(q, k, v, bias) -> bool:
    """Whether this call's backward has to be deterministic: ``torch.use_deterministic_algorithms(True)`` (warn-only
    too) while a gradient is recorded for an input. The Triton backward always is (dQ in a pass of its own); the CuTe
    one then adds dQ in a fixed key-block order (``cute_backend.attention_bwd``)."""
    if not (torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled()):
        return False
    for t in (q, k, v) if bias is None else (q, k, v, bias.q_factor, bias.k_factor):
        if t.requires_grad:
            return True
    return False


def _known_at_least(n, bound: int) -> bool:
    """``n >= bound`` for a plain length; for a symbolic one (torch.compile with a dynamic length, torch.export)
    only where its range proves it (``Dim(min=bound)``, ``mark_dynamic(min=bound)``), else False: a guard here would
    specialize the graph on the comparison, or break an export whose range reaches below ``bound``. In an ``if``,
    which torch.compile folds to a constant."""
    if statically_known_true(n >= bound):
        return True
    return False


@dataclass(frozen=True)
class CuteRule:
    """A class of attention calls whose CuTe kernels ran correct on a GPU of ``arch`` and were timed faster than the
    Triton ones there, forward and backward (``evidence``: where and when). What a field leaves out stays on Triton."""

    arch: str
    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[tuple[int, int], ...]  # (head_dim, head_dim_v)
    masks: tuple[str, ...]  # "none", "causal" (right bound 0, left unbounded), "window" (any other bound)
    gqa: bool  # fewer K/V heads than query heads too
    bias: bool  # a LowRankBias too
    min_seqlen: int  # both sequence lengths at least this
    evidence: str
    # calls whose backward must be deterministic (torch.use_deterministic_algorithms) too: the CuTe backward's
    # ordered dQ mode was timed slower than Triton's backward at d = 128 on the H100 (bench/RESULTS.md, 16:39 UTC)
    deterministic: bool = False
    # the kernels the run of ``evidence`` checked, pinned: (description, precompile.instruction_digest of its SASS)
    # for each of precompile.auto_kernels(rule). A CPU test compiles them and compares, so that no change to a
    # kernel reaches auto's users before a GPU run has checked it (``python -m attnkit.precompile --auto`` prints
    # both; repin only with that run recorded in bench/RESULTS.md and ``evidence``)
    kernels: tuple[tuple[str, str], ...] = ()

    def covers(self, q, k, v, bias, window_left: int, window_right: int, softmax_scale: float) -> bool:
        """Whether this call is of the class. Traced by torch.compile, the answer is a constant: each comparison of
        a head count or head dim is a branch of its own (a guard where they are symbolic), and the sequence lengths,
        the dims compiled code most often leaves dynamic, go through ``_known_at_least`` (no guard at all)."""
        if q.dtype not in self.dtypes or (bias is not None and not self.bias) or not softmax_scale > 0:
            return False  # a non-positive scale: the CuTe forward does not take it (backends.limits)
        if not self.deterministic and deterministic_backward(q, k, v, bias):
            return False
        if window_left == -1 and window_right == -1:
            mask = "none"
        elif window_left == -1 and window_right == 0:
            mask = "causal"
        else:
            mask = "window"
        if mask not in self.masks:
            return False
        if not self.gqa and k.shape[2] != q.shape[2]:
            return False
        if not (_known_at_least(q.shape[1], self.min_seqlen) and _known_at_least(k.shape[1], self.min_seqlen)):
            return False
        for head_dim, head_dim_v in self.head_dims:
            if q.shape[3] == head_dim and v.shape[3] == head_dim_v:
                return True
        return False


# `auto` sends an attention call on a GPU to CuTe only where a rule for its arch covers it; everything else goes to
# Triton. Widen a rule only with a GPU run's correctness and timing (bench/RESULTS.md) behind it.
AUTO_CUTE: tuple[CuteRule, ...] = (
    CuteRule(
        arch="sm90",
        dtypes=(torch.bfloat16,),
        head_dims=((128, 128),),
        masks=("none", "causal"),
        gqa=False,
        bias=False,
        # the shortest the H100 timed CuTe against Triton (B2 H16 N8192); shorter calls have fewer tiles, where the
        # launchers' host time can show, and stay on Triton until a run times them. Longer ones, other batch and
        # head counts and Sq != Sk run the same kernels over more or fewer tiles: not timed themselves
        min_seqlen=8192,
        evidence=(
            "H100 80GB HBM3, runs of 2026-11-27 12:06 UTC (ebc98c2) and 16:39 UTC (6a29e05), bench/RESULTS.md: every "
            "smoke case correct against the float64 reference, no CuTe GPU test failed (the suite reached 94 % of its "
            "tests; the d > 128 backward's last cases unrun); B2 H16 N8192 D128 bf16, Triton's time over CuTe's: "
            "forward 1.31x and 1.37x, causal 1.17x and 1.28x; backward 1.41x and 1.50x, causal 1.53x and 1.51x. "
            "The kernels below are those runs' (their SASS at 6a29e05 and now compared instruction for instruction, "
            "2026-11-28); the non-causal backward's is the dQ-atomics one the 16:39 run tested and timed as a variant "
            "(1.05x its reduce-add default then). Since 6a29e05 the launchers' host code was refactored (each tensor "
            "converted once): CPU-tested, not rerun on a GPU"
        ),
        kernels=(
            ("bwd main bf16 d128/128 causal", "c3f30008d9e4ce28"),
            ("bwd main bf16 d128/128 none", "855c8479ca345b8e"),
            ("bwd post bf16 d128/128 causal", "e937372bf56b6951"),
            ("bwd post bf16 d128/128 none", "e937372bf56b6951"),
            ("bwd pre bf16 d128/128 causal", "bc36484962b185ed"),
            ("bwd pre bf16 d128/128 none", "bc36484962b185ed"),
            ("fwd bf16 d128/128 causal", "80265cfed2ed208e"),
            ("fwd bf16 d128/128 none", "00c97419e0737881"),
        ),
    ),
)

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


def cute_verified(arch: str, q, k, v, bias, window_left: int, window_right: int, softmax_scale: float) -> bool:
    """Whether a rule of ``AUTO_CUTE`` for ``arch`` covers this attention call (inputs already through
    ``validation.check_attention``)."""
    for rule in AUTO_CUTE:
        if rule.arch == arch and rule.covers(q, k, v, bias, window_left, window_right, softmax_scale):
            return True
    return False


@torch._dynamo.assume_constant_result
def resolve(backend: str, op: str, device: torch.device, takes_cute: bool = False) -> str:
    """The concrete backend name for `op` on `device`; raises if an explicit one cannot run there. ``auto`` on a GPU
    takes CuTe where ``takes_cute`` (``cute_verified`` of these inputs on the device's arch) and CuTe is installed,
    else Triton. A constant to torch.compile: it depends only on its arguments and the machine."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "reference"
        if takes_cute and backends.unavailable("cute", op, device) is None:
            return "cute"
        if backends.unavailable("triton", op, device) is None:
            return "triton"
        return "reference"
    reason = backends.unavailable(backend, op, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={backend!r} is unavailable for {op}: {reason}")
    return backend
