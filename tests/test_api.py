"""Every input check of the public functions (validation.py), backend dispatch (dispatch.py) and backend limits
(backends/limits.py): each failure has the right exception type and names the argument."""

import contextlib
import functools

import attnkit
import pytest
import torch
from attnkit import dispatch
from attnkit.backends import limits

LRB = attnkit.LowRankBias


def qkv(b=2, sq=4, sk=6, h=4, hkv=2, d=8, dv=8, dtype=torch.float32, device="cpu"):
    return (
        torch.randn(b, sq, h, d, dtype=dtype, device=device),
        torch.randn(b, sk, hkv, d, dtype=dtype, device=device),
        torch.randn(b, sk, hkv, dv, dtype=dtype, device=device),
    )


def lqkv(b=2, s=5, h=3, d=4, e=6, dtype=torch.float32):
    return (
        torch.randn(b, s, h, d, dtype=dtype),
        torch.randn(b, s, h, d, dtype=dtype),
        torch.randn(b, s, h, e, dtype=dtype),
    )


def noncontiguous_last(x):
    return torch.cat([x, x], dim=-1)[..., ::2]


@contextlib.contextmanager
def raises(exc, *words):
    """pytest.raises that also checks that every word appears in the message."""
    with pytest.raises(exc) as info:
        yield info
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


# attention: q, k, v


def _swap(args, i, x):
    args = list(args)
    args[i] = x
    return args


@pytest.mark.parametrize("i,name", [(0, "q"), (1, "k"), (2, "v")])
def test_attention_not_a_tensor(i, name):
    with raises(TypeError, name, "torch.Tensor"):
        attnkit.attention(*_swap(qkv(), i, [[1.0]]))


@pytest.mark.parametrize("i,name", [(0, "q"), (1, "k"), (2, "v")])
def test_attention_wrong_ndim(i, name):
    x = qkv()[i]
    with raises(ValueError, name, "4 dimensions"):
        attnkit.attention(*_swap(qkv(), i, x[0]))
    with raises(ValueError, name, "4 dimensions"):
        attnkit.attention(*_swap(qkv(), i, x[None]))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_attention_unsupported_dtype(dtype):
    q, k, v = qkv()
    with raises(TypeError, "q", "dtype"):
        attnkit.attention(q.to(dtype), k.to(dtype), v.to(dtype))


@pytest.mark.parametrize("i,name", [(1, "k"), (2, "v")])
def test_attention_dtype_mismatch(i, name):
    args = qkv()
    with raises(TypeError, name, "q", "must match"):
        attnkit.attention(*_swap(args, i, args[i].double()))


@pytest.mark.parametrize("i,name", [(1, "k"), (2, "v")])
def test_attention_device_mismatch(i, name):
    args = qkv()
    with raises(ValueError, name, "meta", "cpu"):
        attnkit.attention(*_swap(args, i, args[i].to("meta")))


@pytest.mark.parametrize("i,name", [(0, "q"), (1, "k"), (2, "v")])
def test_attention_last_dim_not_contiguous(i, name):
    args = qkv()
    with raises(ValueError, name, "contiguous"):
        attnkit.attention(*_swap(args, i, noncontiguous_last(args[i])))


def test_attention_other_strides_accepted():
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv())
    assert not q.is_contiguous()
    torch.testing.assert_close(attnkit.attention(q, k, v), attnkit.attention(*(x.contiguous() for x in (q, k, v))))


def test_attention_batch_mismatch():
    q, k, v = qkv()
    with raises(ValueError, "batch", "q 2", "k 1"):
        attnkit.attention(q, k[:1], v)
    with raises(ValueError, "batch", "v 1"):
        attnkit.attention(q, k, v[:1])


def test_attention_seqlen_mismatch():
    q, k, v = qkv()
    with raises(ValueError, "k and v", "sequence length"):
        attnkit.attention(q, k, v[:, :3])


def test_attention_kv_heads_mismatch():
    q, k, v = qkv()
    with raises(ValueError, "k and v", "heads"):
        attnkit.attention(q, k, v[:, :, :1])


@pytest.mark.parametrize("h,hkv", [(4, 3), (2, 4), (3, 2)])
def test_attention_gqa_divisibility(h, hkv):
    q, k, v = qkv(h=h, hkv=hkv)
    with raises(ValueError, f"q heads ({h})", f"k/v heads ({hkv})"):
        attnkit.attention(q, k, v)


def test_attention_zero_kv_heads():
    q, k, v = qkv(hkv=0)
    with raises(ValueError, "k/v heads (0)"):
        attnkit.attention(q, k, v)


def test_attention_head_dim_mismatch():
    q, k, v = qkv()
    with raises(ValueError, "q and k head dims", "8", "5"):
        attnkit.attention(q, k[..., :5].contiguous(), v)


def test_attention_zero_head_dim():
    q, k, v = qkv(d=0)
    with raises(ValueError, "head dim"):
        attnkit.attention(q, k, v)
    q, k, v = qkv(dv=0)
    with raises(ValueError, "head dim"):
        attnkit.attention(q, k, v)


# attention: scalars


@pytest.mark.parametrize("window", [(1,), (1, 2, 3), 4, None, "ab"])
def test_window_not_a_pair(window):
    with raises(TypeError, "window", "pair"):
        attnkit.attention(*qkv(), window=window)


@pytest.mark.parametrize(
    "window,side", [((-2, 0), "left"), ((0, -5), "right"), ((1.5, 0), "left"), ((0, True), "right")]
)
def test_window_bad_values(window, side):
    with raises(ValueError, f"window {side}", ">= -1"):
        attnkit.attention(*qkv(), window=window)


def test_window_list_accepted():
    q, k, v = qkv()
    torch.testing.assert_close(attnkit.attention(q, k, v, window=[2, 0]), attnkit.attention(q, k, v, window=(2, 0)))


@pytest.mark.parametrize("causal", [1, None, "yes", torch.tensor(True)])
def test_causal_not_bool(causal):
    with raises(TypeError, "causal", "bool"):
        attnkit.attention(*qkv(), causal=causal)


@pytest.mark.parametrize("scale", ["0.5", True, torch.tensor(0.5), [0.5]])
def test_softmax_scale_bad_type(scale):
    with raises(TypeError, "softmax_scale"):
        attnkit.attention(*qkv(), softmax_scale=scale)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_softmax_scale_not_finite(scale, backend):
    """A NaN or infinite scale made every backend return an all-NaN out without a word: now an error naming it."""
    with raises(ValueError, "softmax_scale", "finite"):
        attnkit.attention(*qkv(), softmax_scale=scale, backend=backend)


def test_softmax_scale_int_accepted():
    q, k, v = qkv()
    torch.testing.assert_close(
        attnkit.attention(q, k, v, softmax_scale=1), attnkit.attention(q, k, v, softmax_scale=1.0)
    )


# attention: bias


@pytest.mark.parametrize("bias", [torch.zeros(1, 4, 6), (torch.zeros(1, 4, 4, 2), torch.zeros(1, 6, 4, 2)), "alibi"])
def test_bias_wrong_type(bias):
    with raises(TypeError, "bias", "LowRankBias"):
        attnkit.attention(*qkv(), bias=bias)


def good_factors(dtype=torch.float32):
    return torch.randn(2, 4, 4, 3, dtype=dtype), torch.randn(2, 6, 4, 3, dtype=dtype)


@pytest.mark.parametrize("which", ["q_factor", "k_factor"])
def test_bias_factor_not_a_tensor(which):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf, which: 1.0}
    with raises(TypeError, f"bias.{which}", "torch.Tensor"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


@pytest.mark.parametrize("which", ["q_factor", "k_factor"])
def test_bias_factor_wrong_rank_tensor(which):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf}
    factors[which] = factors[which][0]
    with raises(ValueError, f"bias.{which}", "4 dimensions"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


@pytest.mark.parametrize("which", ["q_factor", "k_factor"])
def test_bias_factor_int_dtype(which):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf}
    factors[which] = factors[which].to(torch.int64)
    with raises(TypeError, f"bias.{which}", "dtype"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


def test_bias_factor_dtypes_differ():
    qf, kf = good_factors()
    with raises(TypeError, "bias factors", "share a dtype"):
        attnkit.attention(*qkv(), bias=LRB(qf, kf.double()))


@pytest.mark.parametrize("which", ["q_factor", "k_factor"])
def test_bias_factor_device_mismatch(which):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf}
    factors[which] = factors[which].to("meta")
    with raises(ValueError, f"bias.{which}", "meta"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


@pytest.mark.parametrize("which", ["q_factor", "k_factor"])
def test_bias_factor_last_dim_not_contiguous(which):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf}
    factors[which] = noncontiguous_last(factors[which])
    with raises(ValueError, f"bias.{which}", "contiguous"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


@pytest.mark.parametrize(
    "which,shape",
    [
        ("q_factor", (3, 4, 4, 3)),  # batch neither B nor 1
        ("q_factor", (2, 6, 4, 3)),  # Sk instead of Sq
        ("q_factor", (2, 4, 2, 3)),  # heads neither H nor 1 (Hkv is not accepted)
        ("k_factor", (3, 6, 4, 3)),
        ("k_factor", (2, 4, 4, 3)),  # Sq instead of Sk
        ("k_factor", (2, 6, 2, 3)),
    ],
)
def test_bias_factor_shapes(which, shape):
    qf, kf = good_factors()
    factors = {"q_factor": qf, "k_factor": kf, which: torch.randn(*shape)}
    with raises(ValueError, f"bias.{which}", "must have shape"):
        attnkit.attention(*qkv(), bias=LRB(**factors))


def test_bias_factor_ranks():
    qf, kf = good_factors()
    with raises(ValueError, "bias factors", "rank", "3 and 2"):
        attnkit.attention(*qkv(), bias=LRB(qf, kf[..., :2].contiguous()))
    with raises(ValueError, "bias factors", "positive rank"):
        attnkit.attention(*qkv(), bias=LRB(qf[..., :0], kf[..., :0]))


@pytest.mark.parametrize("factor_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_bias_factor_dtype_may_differ_from_q(factor_dtype):
    qf, kf = good_factors(factor_dtype)
    out = attnkit.attention(*qkv(), bias=LRB(qf, kf))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# lightning


def test_lightning_qkv_checks():
    q, k, v = lqkv()
    slopes = attnkit.lightning.slopes(3)
    with raises(TypeError, "q", "torch.Tensor"):
        attnkit.lightning_attention(None, k, v, slopes)
    with raises(ValueError, "v", "4 dimensions"):
        attnkit.lightning_attention(q, k, v[0], slopes)
    with raises(TypeError, "k", "dtype"):
        attnkit.lightning_attention(q, k.double(), v, slopes)
    with raises(TypeError, "q", "dtype"):
        attnkit.lightning_attention(q.int(), k.int(), v.int(), slopes)
    with raises(ValueError, "v", "meta"):
        attnkit.lightning_attention(q, k, v.to("meta"), slopes)
    with raises(ValueError, "k", "contiguous"):
        attnkit.lightning_attention(q, noncontiguous_last(k), v, slopes)


@pytest.mark.parametrize("shape", [(2, 5, 3, 5), (2, 4, 3, 4), (1, 5, 3, 4), (2, 5, 1, 4)])
def test_lightning_k_shape(shape):
    q, _, v = lqkv()
    with raises(ValueError, "k must have the shape of q"):
        attnkit.lightning_attention(q, torch.randn(*shape), v, attnkit.lightning.slopes(3))


@pytest.mark.parametrize("shape", [(2, 4, 3, 6), (1, 5, 3, 6), (2, 5, 2, 6)])
def test_lightning_v_shape(shape):
    q, k, _ = lqkv()
    with raises(ValueError, "v must have shape"):
        attnkit.lightning_attention(q, k, torch.randn(*shape), attnkit.lightning.slopes(3))


def test_lightning_slopes_checks():
    q, k, v = lqkv()
    with raises(TypeError, "slopes", "torch.Tensor"):
        attnkit.lightning_attention(q, k, v, [0.5, 0.25, 0.125])
    with raises(ValueError, "slopes", "(3,)"):
        attnkit.lightning_attention(q, k, v, attnkit.lightning.slopes(4))
    with raises(ValueError, "slopes", "(3,)"):
        attnkit.lightning_attention(q, k, v, attnkit.lightning.slopes(3)[None])
    with raises(TypeError, "slopes", "float"):
        attnkit.lightning_attention(q, k, v, torch.ones(3, dtype=torch.int64))
    with raises(ValueError, "slopes", "meta"):
        attnkit.lightning_attention(q, k, v, attnkit.lightning.slopes(3, device="meta"))


def test_lightning_initial_state_checks():
    q, k, v = lqkv()
    slopes = attnkit.lightning.slopes(3)
    with raises(TypeError, "initial_state", "torch.Tensor"):
        attnkit.lightning_attention(q, k, v, slopes, initial_state=1.0)
    with raises(ValueError, "initial_state", "4 dimensions"):
        attnkit.lightning_attention(q, k, v, slopes, initial_state=torch.zeros(3, 4, 6))
    for dtype in (torch.float16, torch.bfloat16, torch.int32):
        with raises(TypeError, "initial_state", "dtype"):
            attnkit.lightning_attention(q, k, v, slopes, initial_state=torch.zeros(2, 3, 4, 6, dtype=dtype))
    for shape in [(2, 3, 6, 4), (1, 3, 4, 6), (2, 2, 4, 6), (2, 3, 4, 5)]:
        with raises(ValueError, "initial_state", "(2, 3, 4, 6)"):
            attnkit.lightning_attention(q, k, v, slopes, initial_state=torch.zeros(*shape))
    with raises(ValueError, "initial_state", "meta"):
        attnkit.lightning_attention(q, k, v, slopes, initial_state=torch.zeros(2, 3, 4, 6, device="meta"))
    with raises(ValueError, "initial_state", "contiguous"):
        attnkit.lightning_attention(q, k, v, slopes, initial_state=noncontiguous_last(torch.zeros(2, 3, 4, 6)))


@pytest.mark.parametrize("scale", ["1", None, True, torch.tensor(1.0)])
def test_lightning_scale_bad_type(scale):
    q, k, v = lqkv()
    slopes = attnkit.lightning.slopes(3)
    with raises(TypeError, "scale"):
        attnkit.lightning_attention(q, k, v, slopes, scale=scale)
    with raises(TypeError, "scale"):
        attnkit.lightning_attention_step(q[:, :1], k[:, :1], v[:, :1], slopes, torch.zeros(2, 3, 4, 6), scale=scale)


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_lightning_scale_not_finite(scale):
    q, k, v = lqkv()
    slopes = attnkit.lightning.slopes(3)
    with raises(ValueError, "scale", "finite"):
        attnkit.lightning_attention(q, k, v, slopes, scale=scale)
    with raises(ValueError, "scale", "finite"):
        attnkit.lightning_attention_step(q[:, :1], k[:, :1], v[:, :1], slopes, torch.zeros(2, 3, 4, 6), scale=scale)


def test_decode_step_checks():
    q, k, v = lqkv(s=1)
    slopes = attnkit.lightning.slopes(3)
    state = torch.zeros(2, 3, 4, 6)
    with raises(ValueError, "state", "required"):
        attnkit.lightning_attention_step(q, k, v, slopes, None)
    q2, k2, v2 = lqkv(s=2)
    with raises(ValueError, "q, k, v", "sequence length 1", "got 2"):
        attnkit.lightning_attention_step(q2, k2, v2, slopes, state)
    with raises(ValueError, "q, k, v", "sequence length 1", "got 0"):
        attnkit.lightning_attention_step(q[:, :0], k[:, :0], v[:, :0], slopes, state)
    with raises(ValueError, "state", "(2, 3, 4, 6)"):
        attnkit.lightning_attention_step(q, k, v, slopes, torch.zeros(2, 3, 6, 4))
    with raises(TypeError, "state", "dtype"):
        attnkit.lightning_attention_step(q, k, v, slopes, state.half())
    with raises(ValueError, "slopes"):
        attnkit.lightning_attention_step(q, k, v, attnkit.lightning.slopes(2), state)


# dispatch


@pytest.mark.parametrize("backend", ["torch", "Reference", "", None, "flash"])
def test_unknown_backend(backend):
    q, k, v = qkv()
    with raises(ValueError, "backend must be one of"):
        attnkit.attention(q, k, v, backend=backend)
    lq, lk, lv = lqkv()
    with raises(ValueError, "backend must be one of"):
        attnkit.lightning_attention(lq, lk, lv, attnkit.lightning.slopes(3), backend=backend)
    with raises(ValueError, "backend must be one of"):
        attnkit.lightning_attention_step(
            lq[:, :1], lk[:, :1], lv[:, :1], attnkit.lightning.slopes(3), torch.zeros(2, 3, 4, 6), backend=backend
        )


def _call_all(backend):
    """A callable per op that runs its public function once with the given backend."""
    q, k, v = qkv(dtype=torch.float16, d=64, dv=64)
    lq, lk, lv = lqkv(d=64, e=64, dtype=torch.float16)
    slopes = attnkit.lightning.slopes(3)
    state = torch.zeros(2, 3, 64, 64)
    return {
        "attention": lambda: attnkit.attention(q, k, v, backend=backend),
        "lightning": lambda: attnkit.lightning_attention(lq, lk, lv, slopes, backend=backend),
        "lightning_step": lambda: attnkit.lightning_attention_step(
            lq[:, :1], lk[:, :1], lv[:, :1], slopes, state, backend=backend
        ),
    }


@pytest.mark.parametrize("op", ["attention", "lightning", "lightning_step"])
def test_cute_unavailable_on_cpu(op):
    with raises(attnkit.BackendUnavailableError, "backend='cute'", op):
        _call_all("cute")[op]()


@pytest.mark.parametrize("op", ["attention", "lightning", "lightning_step"])
def test_triton_unavailable_on_cpu_without_interpreter(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with raises(attnkit.BackendUnavailableError, "backend='triton'", op):
        _call_all("triton")[op]()


def test_backend_unavailable_error_is_runtime_error():
    assert issubclass(attnkit.BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("op", ["attention", "lightning", "lightning_step"])
def test_auto_on_non_cuda_is_reference(op, device):
    assert dispatch.resolve("auto", op, torch.device(device)) == "reference"
    assert dispatch.resolve("reference", op, torch.device(device)) == "reference"


def test_cute_unavailable_on_meta():
    with raises(attnkit.BackendUnavailableError, "backend='cute'", "meta"):
        dispatch.resolve("cute", "attention", torch.device("meta"))


def test_auto_reference_matches_explicit_reference():
    q, k, v = qkv()
    torch.testing.assert_close(
        attnkit.attention(q, k, v, backend="auto"), attnkit.attention(q, k, v, backend="reference")
    )


def test_device_arch_override(monkeypatch):
    monkeypatch.setattr(dispatch, "_ARCH", {})
    monkeypatch.setenv("ATTNKIT_ARCH", "sm100")
    assert dispatch.device_arch(3) == "sm100"
    monkeypatch.setenv("ATTNKIT_ARCH", "sm90")
    assert dispatch.device_arch(3) == "sm100", "the arch is read once per device"
    assert dispatch.device_arch(4) == "sm90"


@pytest.mark.parametrize(
    "takes_cute,unavailable,want",
    [
        (True, set(), "cute"),
        (True, {"cute"}, "triton"),
        (False, set(), "triton"),
        (True, {"cute", "triton"}, "reference"),
        (False, {"triton"}, "reference"),
    ],
)
def test_auto_on_cuda(monkeypatch, takes_cute, unavailable, want):
    """auto on a CUDA device: cute where the inputs' class is verified there (and cute is installed), then triton,
    then the reference."""
    monkeypatch.setattr(
        dispatch.backends, "unavailable", lambda name, op, device: "no" if name in unavailable else None
    )
    assert dispatch.resolve("auto", "attention", torch.device("cuda", 0), takes_cute) == want


def test_auto_never_takes_cute_off_the_gpu(monkeypatch):
    monkeypatch.setattr(dispatch.backends, "unavailable", lambda name, op, device: None)
    assert dispatch.resolve("auto", "attention", torch.device("cpu"), True) == "reference"


def verified_call(**changes):
    """The class of call the sm90 rule was measured on (meta tensors), with ``changes``."""
    case = dict(dtype=torch.bfloat16, sq=8192, sk=8192, h=16, hkv=16, d=128, dv=128, window=(-1, -1), bias=False)
    case.update(changes)
    q = torch.empty(1, case["sq"], case["h"], case["d"], dtype=case["dtype"], device="meta")
    k = torch.empty(1, case["sk"], case["hkv"], case["d"], dtype=case["dtype"], device="meta")
    v = torch.empty(1, case["sk"], case["hkv"], case["dv"], dtype=case["dtype"], device="meta")
    bias = LRB(
        torch.empty(1, case["sq"], case["h"], 8, device="meta"),
        torch.empty(1, case["sk"], case["hkv"], 8, device="meta"),
    )
    return q, k, v, bias if case["bias"] else None, *case["window"], changes.get("scale", 128**-0.5)


@pytest.mark.parametrize(
    "changes,want",
    [
        ({}, True),
        ({"window": (-1, 0)}, True),
        ({"sq": 16384, "sk": 32768}, True),
        ({"dtype": torch.float16}, False),  # not timed against Triton yet
        ({"d": 64, "dv": 64}, False),
        ({"dv": 64}, False),
        ({"window": (256, 0)}, False),
        ({"window": (-1, 3)}, False),
        ({"hkv": 4}, False),
        ({"bias": True}, False),
        ({"sq": 8191}, False),
        ({"sk": 4096}, False),
        ({"scale": -0.1}, False),  # the CuTe forward takes positive scales only
    ],
)
def test_cute_verified_covers_what_the_h100_measured(changes, want):
    """auto's CuTe class on sm90: bf16, d = dv = 128, no mask or causal, one K/V head per query head, no bias, both
    lengths >= 8192 (dispatch.AUTO_CUTE's evidence); nothing on other archs."""
    call = verified_call(**changes)
    assert dispatch.cute_verified("sm90", *call) is want
    assert dispatch.cute_verified("sm100", *call) is False
    assert dispatch.cute_verified("other", *call) is False


@contextlib.contextmanager
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_training_stays_on_triton():
    """Under torch.use_deterministic_algorithms(True) a call that records a gradient goes to Triton (the CuTe
    backward's ordered mode was timed slower than Triton's at d = 128); inference still takes CuTe."""
    q, k, v, _, wl, wr, scale = verified_call()
    grad_q = q.detach().requires_grad_()
    assert dispatch.cute_verified("sm90", grad_q, k, v, None, wl, wr, scale)
    with deterministic_algorithms():
        assert not dispatch.deterministic_backward(q, k, v, None)
        assert dispatch.cute_verified("sm90", q, k, v, None, wl, wr, scale)
        assert dispatch.deterministic_backward(grad_q, k, v, None)
        assert not dispatch.cute_verified("sm90", grad_q, k, v, None, wl, wr, scale)
        with torch.no_grad():
            assert dispatch.cute_verified("sm90", grad_q, k, v, None, wl, wr, scale)
    # a factor that takes a gradient counts too
    factor = torch.empty(1, 8192, 16, 8, device="meta", requires_grad=True)
    with deterministic_algorithms():
        assert dispatch.deterministic_backward(q, k, v, LRB(factor, factor.detach()))


def test_cute_backward_is_deterministic_under_deterministic_algorithms(monkeypatch):
    """backend='cute' under torch.use_deterministic_algorithms(True) runs the backward's ordered dQ mode."""
    pytest.importorskip("cutlass")
    from attnkit.backends import cute_backend
    from attnkit.cute import attention_bwd

    seen = []
    monkeypatch.setattr(attention_bwd, "attention_bwd", lambda *a, **kw: seen.append(kw["deterministic"]))
    args = (None,) * 8
    kw = dict(softmax_scale=0.1, window_left=-1, window_right=0)
    cute_backend.attention_bwd(*args, **kw)
    with deterministic_algorithms():
        cute_backend.attention_bwd(*args, **kw)
    assert seen == [False, True]


def test_every_cute_class_passes_the_cute_limits():
    """What auto sends to CuTe, CuTe accepts (else auto would raise where Triton runs)."""
    for rule in dispatch.AUTO_CUTE:
        lim = limits.LIMITS["cute"]
        assert set(rule.dtypes) <= set(lim.dtypes)
        assert all(d in lim.attention_head_dims and dv in lim.attention_value_dims for d, dv in rule.head_dims)
        assert set(rule.masks) <= {"none", "causal", "window"} and rule.arch in ("sm90", "sm100")
        assert rule.evidence and rule.min_seqlen > 0


@torch._dynamo.assume_constant_result
def _chosen(takes_cute: bool) -> float:
    """A stand-in for resolve (a constant function of its arguments to torch.compile): 2 for CuTe, 3 for Triton."""
    return 2.0 if takes_cute else 3.0


def _auto_factor(q, k, v, qf, kf, window=(-1, 0), scale=None):
    bias = None if qf is None else LRB(qf, kf)
    scale = q.shape[3] ** -0.5 if scale is None else scale
    return q * _chosen(dispatch.cute_verified("sm90", q, k, v, bias, *window, scale))


def _compile_inputs(sq=8192, sk=None, d=128, hkv=2):
    q = torch.ones(1, sq, 2, d, dtype=torch.bfloat16)
    k = torch.ones(1, sq if sk is None else sk, hkv, d, dtype=torch.bfloat16)
    return q, k, k


@pytest.mark.parametrize(
    "inputs,window,scale,bias,want",
    [
        (dict(), (-1, 0), None, False, 2.0),
        (dict(sq=9000, sk=8192), (-1, 0), None, False, 2.0),
        (dict(sq=100), (-1, 0), None, False, 3.0),
        (dict(d=64), (-1, 0), None, False, 3.0),
        (dict(hkv=1), (-1, 0), None, False, 3.0),
        (dict(), (256, 0), None, False, 3.0),
        (dict(), (-1, -1), 0.1, False, 2.0),
        (dict(), (-1, 0), None, True, 3.0),
    ],
)
def test_cute_verified_is_a_constant_under_torch_compile(inputs, window, scale, bias, want):
    """Traced by torch.compile (fullgraph), the choice is a Python bool that resolve (a constant function) takes:
    no graph break, whatever the scale (derived from a shape or given) or the bias."""
    q, k, v = _compile_inputs(**inputs)
    factors = (torch.ones(1, q.shape[1], 2, 4), torch.ones(1, k.shape[1], 2, 4)) if bias else (None, None)
    torch._dynamo.reset()
    fn = functools.partial(_auto_factor, window=window, scale=scale)
    assert torch.compile(fn, fullgraph=True, backend="eager")(q, k, v, *factors).float().unique().tolist() == [want]
    torch._dynamo.reset()


@pytest.mark.parametrize("how", ["dynamic", "mark_dynamic", "mark_dynamic_long", "export", "export_long"])
def test_symbolic_sequence_lengths_take_cute_only_where_their_range_proves_the_class(how):
    """A dynamic sequence length is not guarded on (a guard would break an export or a mark_dynamic range reaching
    below 8192): auto takes CuTe only where the length's range proves it long enough, else Triton."""
    q, k, v = _compile_inputs()
    low = 8192 if how.endswith("long") else 2
    torch._dynamo.reset()
    if how == "dynamic":
        out = torch.compile(_auto_factor, fullgraph=True, dynamic=True, backend="eager")(q, k, v, None, None)
    elif how.startswith("mark_dynamic"):
        for t in (q, k, v):
            torch._dynamo.mark_dynamic(t, 1, min=low, max=65536)
        out = torch.compile(_auto_factor, fullgraph=True, backend="eager")(q, k, v, None, None)
    else:

        class Attention(torch.nn.Module):
            def forward(self, q, k, v):
                return _auto_factor(q, k, v, None, None)

        seqlen = torch.export.Dim("seqlen", min=low, max=65536)
        shapes = {name: {1: seqlen} for name in ("q", "k", "v")}
        out = torch.export.export(Attention(), (q, k, v), dynamic_shapes=shapes).module()(q, k, v)
    torch._dynamo.reset()
    assert out.float().unique().tolist() == [2.0 if low == 8192 else 3.0]


def test_explicit_backend_never_falls_back(monkeypatch):
    monkeypatch.setattr(dispatch.backends, "unavailable", lambda name, op, device: "not here")
    for backend in ("cute", "triton", "reference"):
        with raises(attnkit.BackendUnavailableError, f"backend={backend!r}", "not here"):
            dispatch.resolve(backend, "attention", torch.device("cpu"))


# backend limits (checked directly: on the CPU the fast backends are not reachable through the API)


def half_qkv(d=64, dv=64, dtype=torch.float16, device="meta", h=4, hkv=2):
    return qkv(d=d, dv=dv, dtype=dtype, device=device, h=h, hkv=hkv)


@pytest.mark.parametrize("backend", ["triton", "cute"])
def test_limits_accept_supported(backend):
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = half_qkv(dtype=dtype)
        factors = good_factors(torch.float32)
        limits.validate_attention(backend, q, k, v, LRB(*(f.to("meta") for f in factors)))
    if backend == "triton":
        q, k, v = lqkv(d=64, e=128, dtype=torch.float16)
        limits.validate_lightning("triton", q.to("meta"), k.to("meta"), v.to("meta"))
        limits.validate_attention("triton", *half_qkv(dtype=torch.float32, device="cpu"), None)


def test_limits_reference_accepts_anything():
    limits.validate_attention("reference", *qkv(d=3, dv=5, dtype=torch.float64), LRB(*good_factors(torch.float64)))
    limits.validate_lightning("reference", *lqkv(d=3, e=7, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["triton", "cute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_limits_gpu_dtypes(backend, dtype):
    q, k, v = half_qkv(dtype=dtype)
    with raises(TypeError, "q", f"backend={backend!r}", "on a GPU"):
        limits.validate_attention(backend, q, k, v, None)


@pytest.mark.parametrize(
    "backend,dtype", [("triton", torch.bfloat16), ("triton", torch.float64), ("cute", torch.float16)]
)
def test_limits_cpu_dtypes(backend, dtype):
    q, k, v = half_qkv(dtype=dtype, device="cpu")
    with raises(TypeError, "q", f"backend={backend!r}", "on the CPU"):
        limits.validate_attention(backend, q, k, v, None)


def test_limits_dtype_names_the_tensor():
    q, k, v = half_qkv()
    with raises(TypeError, "v has dtype"):
        limits.validate_attention("triton", q, k, v.float(), None)
    with raises(TypeError, "k has dtype"):
        limits.validate_lightning("triton", q, k.float(), v)


@pytest.mark.parametrize("backend,d", [("triton", 48), ("triton", 16), ("cute", 32), ("cute", 512)])
def test_limits_attention_head_dim(backend, d):
    with raises(ValueError, "head dim of q/k", f"= {d}", f"backend={backend!r}"):
        limits.validate_attention(backend, *half_qkv(d=d), None)


@pytest.mark.parametrize("backend,dv", [("triton", 40), ("cute", 32)])
def test_limits_attention_value_dim(backend, dv):
    with raises(ValueError, "head dim of v", f"= {dv}"):
        limits.validate_attention(backend, *half_qkv(dv=dv), None)


@pytest.mark.parametrize("d,dv", [(128, 64), (64, 128), (96, 128), (192, 192), (256, 256), (128, 256)])
def test_limits_cute_takes_every_forward_head_dim_pair(d, dv):
    """The CuTe backward has a kernel for every head-dim pair the forward takes (64-row key blocks above 128), so
    validation does not depend on whether gradients are wanted."""
    limits.validate_attention("cute", *half_qkv(d=d, dv=dv), None)


def test_limits_name_the_dtypes_a_backend_takes():
    with raises(TypeError, "q has dtype torch.float32", "backend='cute' takes float16, bfloat16 on a GPU"):
        limits.validate_attention("cute", *half_qkv(dtype=torch.float32), None)
    with raises(TypeError, "q has dtype torch.float16", "backend='cute' takes no dtype on the CPU"):
        limits.validate_attention("cute", *half_qkv(device="cpu"), None)
    with raises(TypeError, "q has dtype torch.bfloat16", "backend='triton' takes float16, float32 on the CPU"):
        limits.validate_attention("triton", *half_qkv(dtype=torch.bfloat16, device="cpu"), None)


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_limits_cute_positive_scale(scale):
    with raises(ValueError, "softmax_scale", "backend='cute'"):
        limits.validate_attention("cute", *half_qkv(), None, softmax_scale=scale)
    limits.validate_attention("triton", *half_qkv(), None, softmax_scale=scale)


@pytest.mark.parametrize("rank", [65, 128])
def test_limits_bias_rank(rank):
    q, k, v = half_qkv()
    qf, kf = torch.empty(2, 4, 4, rank, device="meta"), torch.empty(2, 6, 4, rank, device="meta")
    with raises(ValueError, "bias rank", f"R = {rank}"):
        limits.validate_attention("triton", q, k, v, LRB(qf, kf))


def test_limits_bias_float64_factors():
    q, k, v = half_qkv()
    qf, kf = (f.to("meta") for f in good_factors(torch.float64))
    with raises(TypeError, "bias factors", "float64"):
        limits.validate_attention("cute", q, k, v, LRB(qf, kf))


@pytest.mark.parametrize("d,e,name", [(48, 64, "head dim D"), (64, 96, "head dim E"), (16, 64, "head dim D")])
def test_limits_lightning_dims(d, e, name):
    q, k, v = (x.to("meta") for x in lqkv(d=d, e=e, dtype=torch.float16))
    with raises(ValueError, name, "backend='triton'"):
        limits.validate_lightning("triton", q, k, v)


def test_limits_cute_has_no_lightning():
    q, k, v = (x.to("meta") for x in lqkv(d=64, e=64, dtype=torch.float16))
    with raises(ValueError, "head dim D", "backend='cute'"):
        limits.validate_lightning("cute", q, k, v)


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("causal", [False, True])
def test_auto_takes_cute_in_its_class_on_an_h100(monkeypatch, causal):
    """On sm90, auto runs the CuTe kernels for the class AUTO_CUTE covers, forward and backward, with the results of
    backend='cute'; one step outside it (one K/V head: MQA) goes to Triton."""
    pytest.importorskip("cutlass")
    from attnkit.backends import cute_backend, triton_backend

    ran = []
    for name, module in (("cute", cute_backend), ("triton", triton_backend)):
        for fn in ("attention_fwd", "attention_bwd"):
            real = getattr(module, fn)
            monkeypatch.setattr(module, fn, lambda *a, _r=real, _n=(name, fn), **kw: ran.append(_n) or _r(*a, **kw))

    def fwd_bwd(backend, heads_kv=2, backward=True):
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (
            torch.randn(1, 8192, heads, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(
                backward
            )
            for heads in (2, heads_kv, heads_kv)
        )
        out = attnkit.attention(q, k, v, causal=causal, backend=backend)
        if not backward:
            return (out,)
        out.backward(torch.ones_like(out))
        return out, q.grad, k.grad, v.grad

    auto, cute = fwd_bwd("auto"), fwd_bwd("cute")
    assert ran == [("cute", "attention_fwd"), ("cute", "attention_bwd")] * 2
    assert torch.equal(auto[0], cute[0])
    for a, c in zip(auto[1:], cute[1:], strict=True):  # dQ by atomics: the order of float32 adds may differ
        torch.testing.assert_close(a, c, atol=2e-2, rtol=2e-2)
    ran.clear()
    fwd_bwd("auto", heads_kv=1, backward=False)  # the forward alone: one Triton kernel to compile
    assert ran == [("triton", "attention_fwd")]


@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("biased", [False, True], ids=["causal", "bf16-factors-window"])
def test_deterministic_algorithms_make_the_cute_backward_reproducible(biased):
    """Through the public function: backend='cute' under torch.use_deterministic_algorithms(True) gives the same
    gradients bit for bit, call after call (also with 16-bit factors broadcast over the heads, whose gradients the
    tensor cores take, and a left window); auto sends a training call of its CuTe class to Triton then."""
    pytest.importorskip("cutlass")

    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(1, 1500, 4, 128), (1, 1500, 2, 128), (1, 1500, 2, 128)]
    if biased:
        shapes += [(1, 1500, 1, 8), (1, 1500, 1, 8)]
    inputs = [torch.randn(s, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.5 for s in shapes]
    dout = torch.randn(shapes[0], device="cuda", dtype=torch.bfloat16, generator=gen)
    window = (256, 0) if biased else (-1, 0)

    def grads(backend):
        leaves = [t.clone().requires_grad_() for t in inputs]
        bias = LRB(*leaves[3:]) if biased else None
        out = attnkit.attention(*leaves[:3], window=window, bias=bias, backend=backend)
        return torch.autograd.grad(out, leaves, dout)

    with deterministic_algorithms():
        first = grads("cute")
        for _ in range(3):
            assert all(torch.equal(a, b) for a, b in zip(first, grads("cute"), strict=True))
        # a call of auto's CuTe class, but recording a gradient: auto's choice on this device (no kernel run)
        long = [torch.empty(1, 8192, 2, 128, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
        arch = dispatch.device_arch(torch.cuda.current_device())
        takes_cute = dispatch.cute_verified(arch, *long, None, -1, -1, 128**-0.5)
        assert dispatch.resolve("auto", "attention", long[0].device, takes_cute) == "triton"
        with torch.no_grad():
            takes_cute = dispatch.cute_verified(arch, *long, None, -1, -1, 128**-0.5)
        assert dispatch.resolve("auto", "attention", long[0].device, takes_cute) == "cute"
