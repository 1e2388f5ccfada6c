"""The TVM-FFI host path of the CuTe launchers (ATTNKIT_CUTE_TVM_FFI=1, ``cute.tensors.tvm_ffi_enabled``) on the CPU.

Its kernels compile with --enable-tvm-ffi, go through the disk cache and come back as TVM-FFI functions. TVM-FFI
checks a call's arguments in C against the compiled signature: the arity first, then each argument in order. A
call with CPU tensors therefore gets as far as the device check of its first tensor, and the error prints the
whole signature; every argument the launcher passed is checked against it here (tensor dtype and rank, None where
the config has no such operand, float32 / int32 scalars, and no stream: the kernel takes torch's current one).
Nothing here runs a kernel: that needs a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("tvm_ffi")

from attnkit.cute import attention_bwd as bwd  # noqa: E402
from attnkit.cute import attention_fwd as fwd  # noqa: E402
from attnkit.cute import tensors  # noqa: E402

DEVICE_ERROR = "expected device_type=cuda"


@pytest.fixture
def tvm_ffi(cache_dir, monkeypatch):
    monkeypatch.setenv(tensors.TVM_FFI_ENV, "1")
    tensors.tvm_ffi_enabled.cache_clear()
    monkeypatch.setattr(fwd, "_sm_count", lambda device: 132)
    yield
    tensors.tvm_ffi_enabled.cache_clear()


def _signature(message: str) -> list[tuple[str, str]]:
    """(name, type) per parameter of the signature a TVM-FFI argument error prints."""
    params = message.split("`__call__(", 1)[1].rsplit(")`", 1)[0]
    return re.findall(r"(\w+): (Tensor\(\[[^\]]*\], \w+\)|\w+)", params)


_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", torch.int32: "int32"}


def _check(args: tuple, message: str) -> None:
    assert DEVICE_ERROR in message, message
    signature = _signature(message)
    assert len(signature) == len(args), (signature, args)
    for (name, kind), arg in zip(signature, args, strict=True):
        if isinstance(arg, torch.Tensor):
            dims, dtype = re.fullmatch(r"Tensor\(\[([^\]]*)\], (\w+)\)", kind).groups()
            assert dtype == _DTYPES[arg.dtype], (name, kind, arg.dtype)
            assert len(dims.split(",")) == arg.dim(), (name, kind, tuple(arg.shape))
            assert not arg.requires_grad, name
        elif arg is None:
            assert kind == "None", (name, kind)
        elif isinstance(arg, float):
            assert kind == "float32", (name, kind)
        else:
            assert isinstance(arg, int) and kind == "int32", (name, kind, arg)


class _Spy:
    """Stands in for a launcher module's compile function: each compiled kernel is called for real (with CPU
    tensors it stops at the device check) and its arguments and error message are kept. The kernel called is the
    one the disk cache gives back: a freshly compiled TVM-FFI function initializes itself only where the DSL's
    target arch is the one it was compiled for (a GPU process; here the suite may have imported CuTe for sm_100a
    first), while the exported function loads anywhere."""

    def __init__(self, module):
        self.compile_fn = module.compile_config
        self.cache = module.cache()
        self.calls: list[tuple[object, tuple, str]] = []

    def __call__(self, cfg):
        self.compile_fn(cfg)
        if self.cache.records[cfg].source != "disk":
            self.cache.clear_memory()
            self.compile_fn(cfg)
        assert self.cache.records[cfg].source == "disk", self.cache.records[cfg]
        kernel = self.compile_fn(cfg)
        assert type(kernel).__module__.startswith("tvm_ffi"), type(kernel)

        def call(*args):
            with pytest.raises(ValueError, match=DEVICE_ERROR) as err:
                kernel(*args)
            self.calls.append((cfg, args, str(err.value)))

        return call


def _inputs(sq=100, sk=120, h=4, hkv=2, d=64, rank=0, factor_dtype=torch.bfloat16):
    q = torch.randn(2, sq, h, d, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, sk, hkv, d, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, sk, hkv, d, dtype=torch.bfloat16, requires_grad=True)
    qf = kf = None
    if rank:
        qf = torch.randn(2, sq, 1, rank).to(factor_dtype)
        kf = torch.randn(1, sk, h, rank).to(factor_dtype)
    return q, k, v, qf, kf


FWD_CASES = {
    "plain": dict(),
    "causal": dict(window_right=0),
    "bias-wgmma": dict(rank=8),
    "bias-fp32": dict(rank=4, factor_dtype=torch.float32),
    "dynamic-schedule": dict(window_right=0, dynamic=True),
}


@pytest.mark.parametrize("case", list(FWD_CASES))
def test_forward_arguments_match_the_tvm_ffi_signature(tvm_ffi, monkeypatch, case):
    opts = dict(FWD_CASES[case])
    dynamic = opts.pop("dynamic", False)
    window_right = opts.pop("window_right", -1)
    q, k, v, qf, kf = _inputs(**opts)
    spy = _Spy(fwd)
    monkeypatch.setattr(fwd, "compile_fwd", spy)
    config = fwd.variant_configs(True, 64)[fwd.DYNAMIC_VARIANT] if dynamic else None
    fwd.attention_fwd(q, k, v, qf, kf, softmax_scale=0.125, window_left=-1, window_right=window_right, config=config)
    ((cfg, args, message),) = spy.calls
    assert cfg.dynamic_schedule == dynamic
    _check(args, message)


BWD_CASES = {
    "plain": dict(),
    "causal-deterministic": dict(window_right=0, deterministic=True),
    "bias-wgmma": dict(rank=8),
    "bias-fp32": dict(rank=4, factor_dtype=torch.float32),
}


@pytest.mark.parametrize("case", list(BWD_CASES))
def test_backward_arguments_match_the_tvm_ffi_signatures(tvm_ffi, monkeypatch, case):
    opts = dict(BWD_CASES[case])
    deterministic = opts.pop("deterministic", False)
    window_right = opts.pop("window_right", -1)
    q, k, v, qf, kf = _inputs(**opts)
    out = torch.randn_like(q)
    lse = torch.randn(2, 4, 100)
    spy = _Spy(bwd)
    monkeypatch.setattr(bwd, "compile_config", spy)
    bwd.attention_bwd(
        out, q, k, v, out, lse, qf, kf,
        softmax_scale=0.125, window_left=-1, window_right=window_right, deterministic=deterministic,
    )  # fmt: skip
    kinds = [type(cfg).__name__ for cfg, _, _ in spy.calls]
    assert kinds == ["BwdPreprocessConfig", "BwdConfig", "BwdPostprocessConfig"]
    for _, args, message in spy.calls:
        _check(args, message)


def test_tvm_ffi_kernels_round_trip_through_the_disk_cache(tvm_ffi):
    cfg = fwd.choose_config(torch.bfloat16, 64, 64, False, True)
    fwd.compile_fwd(cfg)
    cubin = fwd.cache().cubin(cfg)
    fwd.cache().clear_memory()
    loaded = fwd.compile_fwd(cfg)
    assert fwd.cache().records[cfg].source == "disk"
    assert type(loaded).__module__.startswith("tvm_ffi"), type(loaded)
    assert cubin is not None and fwd.cache().cubin(cfg) == cubin


def test_the_switch_is_off_by_default(monkeypatch):
    monkeypatch.delenv(tensors.TVM_FFI_ENV, raising=False)
    tensors.tvm_ffi_enabled.cache_clear()
    try:
        assert not tensors.tvm_ffi_enabled()
        t = torch.zeros(2, 8, dtype=torch.float16, requires_grad=True)
        assert not isinstance(tensors.launch_tensor(t), torch.Tensor)
    finally:
        tensors.tvm_ffi_enabled.cache_clear()


@pytest.fixture
def tvm_ffi_on_gpu(monkeypatch):
    """The switch on for one GPU test (no CPU stand-ins): ``on()`` flips it mid-test, the default path before."""

    def on():
        monkeypatch.setenv(tensors.TVM_FFI_ENV, "1")
        tensors.tvm_ffi_enabled.cache_clear()

    monkeypatch.delenv(tensors.TVM_FFI_ENV, raising=False)
    tensors.tvm_ffi_enabled.cache_clear()
    yield on
    tensors.tvm_ffi_enabled.cache_clear()


def _forward_backward(q, k, v, dout, causal):
    kw = dict(softmax_scale=q.shape[-1] ** -0.5, window_left=-1, window_right=0 if causal else -1)
    out, lse = fwd.attention_fwd(q, k, v, None, None, **kw)
    # deterministic: the dQ partials in a fixed order, so that two runs agree bit for bit
    dq, dk, dv, _, _ = bwd.attention_bwd(dout, q, k, v, out, lse, None, None, **kw, deterministic=True)
    return out, lse, dq, dk, dv


@pytest.mark.gpu
def test_tvm_ffi_results_equal_the_default_paths_gpu(tvm_ffi_on_gpu):
    """The same kernel code behind both host paths: the results must be identical, not merely close. One case (the
    TVM-FFI kernels are not precompiled: each is a cold compile in gpu_check's test shard)."""
    causal = True
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 333, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]  # GQA, and K/V views with a head stride of their own
    dout = torch.randn_like(q)
    expected = _forward_backward(q, k, v, dout, causal)
    tvm_ffi_on_gpu()
    got = _forward_backward(q, k, v, dout, causal)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, expected, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.gpu
def test_tvm_ffi_kernels_launch_on_torchs_current_stream_gpu(tvm_ffi_on_gpu):
    """A CUDA graph records what is launched on its capture stream: a kernel launched on any other stream fails the
    capture or is missing from the replay, whose output then keeps the first inputs' values."""
    tvm_ffi_on_gpu()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kw = dict(softmax_scale=128**-0.5, window_left=-1, window_right=0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fwd.attention_fwd(q, k, v, None, None, **kw)  # compiled and loaded outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = fwd.attention_fwd(q, k, v, None, None, **kw)
    q2 = torch.randn_like(q)
    q.copy_(q2)
    graph.replay()
    torch.cuda.synchronize()
    expected_out, expected_lse = fwd.attention_fwd(q2, k, v, None, None, **kw)
    assert torch.equal(out, expected_out) and torch.equal(lse, expected_lse)
