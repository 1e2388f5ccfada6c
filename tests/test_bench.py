"""The benchmarks' own code on the CPU, with the timings faked: tables, ratios and variant lists must be right
before a device run spends its minutes on them (the kernels themselves are timed only on a GPU)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import attnkit
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import common  # noqa: E402

pytest.importorskip("cutlass")


@pytest.fixture
def fake_gpu(monkeypatch):
    """common.measure returns the ms a callable yields (or the time of a named method); nothing touches CUDA."""
    monkeypatch.setattr(common, "release", lambda: None)

    def measure(fn, budget, *, error_prefix="error"):
        return common.Result(ms=float(fn()))

    monkeypatch.setattr(common, "measure", measure)
    return common.Ceilings(matmul_tflops=800.0, copy_tbps=3.0)


def test_attention_table_has_the_cute_over_triton_ratio(monkeypatch, fake_gpu):
    import bench_attention

    times = {"triton": (2.0, 6.0), "cute": (1.0, 4.0), "cuDNN": (1.5, 5.0)}
    monkeypatch.setattr(bench_attention, "make_inputs", lambda *a: (None, None, None))
    monkeypatch.setattr(
        bench_attention,
        "bench_method",
        lambda name, *a: tuple(common.Result(ms=t) for t in times[name]),
    )
    # the host table: each method's calls timed by host_us_per_call (faked: 30 µs for cute, 45 for cuDNN)
    host_us = {"triton": 60.0, "cute": 30.0, "cuDNN": 45.0}
    monkeypatch.setattr(bench_attention, "METHODS", {name: (lambda *a, n=name: n) for name in times})
    # 1 µs more while the TVM-FFI switch is on: the row must be timed with it on, and only that row
    switch = "ATTNKIT_CUTE_TVM_FFI"
    monkeypatch.setattr(bench_attention, "host_us_per_call", lambda fn: host_us[fn] + (os.environ.get(switch) == "1"))
    before = os.environ.get(switch)
    args = bench_attention.parser().parse_args(["--quick", "--methods", "triton", "cute", "cuDNN"])
    fwd, bwd, host = bench_attention.run(args, fake_gpu, common.Budget(None))
    text = fwd.markdown()
    assert "vs triton" in text and "| 2.00× |" in text, text
    assert "1.50×" in text  # cute against cuDNN
    assert "| 1.50× |" in bwd.markdown()
    text = host.markdown()
    assert "| B1 H2 N256 D128 | **attnkit cute** | 0.030 | 30 | 1.50× |" in text, text
    # the CuTe backend once more through TVM-FFI, the switch on only for that row and restored after it
    if importlib.util.find_spec("tvm_ffi") is not None:
        assert "| B1 H2 N256 D128 | **attnkit cute, TVM-FFI** | 0.031 | 31 | 1.45× |" in text, text
    else:
        assert "| B1 H2 N256 D128 | **attnkit cute, TVM-FFI** | n/a: apache-tvm-ffi is not installed |" in text, text
    assert os.environ.get(switch) == before
    assert "% of" not in text  # no ceiling column


def test_quick_attention_run_times_the_targets_peers_only():
    import bench_attention

    args = bench_attention.parser().parse_args(["--quick"])
    assert args.methods is None and set(bench_attention.QUICK_METHODS) == {*bench_attention.OURS, "cuDNN", "FA4"}


def test_variants_bench_times_every_switch_against_its_default(monkeypatch, fake_gpu):
    import bench_variants

    def inputs(batch, seqlen, kv_heads=bench_variants.HEADS, seqlen_q=None, head_dim=128, heads=bench_variants.HEADS):
        # the shapes only (no kernel runs): one element per row, broadcast over the head dim
        q = torch.zeros(1, seqlen_q or seqlen, heads, 1).expand(-1, -1, -1, head_dim)
        kv = torch.zeros(1, seqlen, kv_heads, 1).expand(-1, -1, -1, head_dim)
        return q, kv, kv

    calls = []

    def fake_forward(q, k, v, causal, **kw):
        variants = real_forward(q, k, v, causal, **kw)
        calls.append((q.shape[1], q.shape[2] // k.shape[2], causal, q.shape[3], list(variants)))
        return {name: (lambda i=i: 1.0 + 0.1 * i) for i, name in enumerate(variants)}

    real_forward = bench_variants.forward_variants
    monkeypatch.setattr(bench_variants, "_inputs", inputs)
    monkeypatch.setattr(bench_variants, "forward_variants", fake_forward)
    monkeypatch.setattr(
        bench_variants,
        "backward_variants",
        lambda q, k, v, causal: {"default": lambda: 2.0, "atomics": lambda: 1.0},
    )
    fwd, bwd = bench_variants.run(argparse.Namespace(quick=True), fake_gpu, common.Budget(None))
    n = bench_variants.QUICK[0]
    # the default, then the variants in the launcher's order: both H100 runs measured every forward switch (a new one
    # would go right after the default: test_unmeasured_variants_go_first)
    split, dynamic, wide_n = "interior blocks in their own loop", "persistent (dynamic)", "key tiles of 176, O over Q"
    switches = ["lazy rescale (threshold 8)", "poly exp2 on 2 of 8", "no ping-pong", "no intra-WG overlap"]
    # the schedule the default does not take: persistent without a causal mask, one CTA per tile with it
    full, causal = "one tile per CTA", "persistent (static)"
    sections = ["one L2 section", "L2 sections of 16 MiB", "L2 sections of 64 MiB"]
    assert calls == [
        (n, 1, False, 128, ["default", split, wide_n, *switches, full]),
        (n, 8, False, 128, ["default", "pack GQA (8 heads)"]),
        (bench_variants.SHORT_Q, 8, False, 128, ["default", "one head per tile"]),
        (n, 1, False, 64, ["default", split, "128 query rows per tile", full]),  # D = 64: the default takes 192
        (n, 1, True, 128, ["default", split, dynamic, *switches, causal, *sections]),
        (n, 8, True, 128, ["default", "pack GQA (8 heads)"]),
        (bench_variants.SHORT_Q, 8, True, 128, ["default", "one head per tile"]),
        (n, 1, True, 64, ["default", split, dynamic, "128 query rows per tile", causal]),
        # the causal schedules at short sequences
        *[(short, 1, True, 128, ["default", dynamic, causal]) for short in bench_variants.SHORT_SCHEDULE_SEQLENS],
    ]
    assert "vs default" in fwd.markdown() and "| 2.00× |" in bwd.markdown()
    # the backward also at D = 64 (H = 32)
    assert f"H16 N{n} D128 causal" in bwd.markdown() and f"H32 N{n} D64 causal" in bwd.markdown()
    assert f"H32 N{n} D64 causal" in fwd.markdown()


def test_unmeasured_variants_go_first():
    """A short budget leaves out the variants an H100 run has timed before those it has not (the backward's three
    Q / dO stages among them): the default, then the unmeasured ones, then the measured, each in the given order."""
    import bench_variants

    calls = {name: None for name in ("atomics", "default", "3 Q / dO stages", "dQ after dK", "new switch")}
    assert list(bench_variants._unmeasured_first(calls)) == [
        "default",
        "3 Q / dO stages",
        "new switch",
        "atomics",
        "dQ after dK",
    ]


def test_a_backward_that_failed_its_smoke_test_leaves_the_forward_timed(monkeypatch, fake_gpu):
    """gpu_check puts ``cute-bwd`` in $ATTNKIT_BENCH_SKIP when only the CuTe backward is wrong."""
    import bench_attention
    import bench_bias

    monkeypatch.setenv("ATTNKIT_BENCH_SKIP", "cute-bwd")
    assert common.backward_skipped("cute") and not common.backward_skipped("triton")
    assert "cute" in common.our_backends(("triton", "cute"))
    calls = []
    monkeypatch.setitem(bench_attention.METHODS, "cute", lambda *a: lambda: calls.append("fwd") or 1.0)
    fwd_result, bwd_result = bench_attention.bench_method("cute", None, None, None, True, common.Budget(None), True)
    assert fwd_result.ms == 1.0 and bwd_result.note == common.BACKWARD_SKIPPED and calls == ["fwd"]
    fwd_result, both = bench_bias.time_method(None, lambda c: (lambda: 2.0, ()), "error", common.Budget(None), False)
    assert fwd_result.ms == 2.0 and both.note == common.BACKWARD_SKIPPED


def test_bias_bench_times_the_rank_8_forward_without_the_bias_slice_too(monkeypatch):
    """The CuTe rank-8 row and, in the same call, the separate bias wgmmas the slices replaced: both launchers'
    switches set around the method's timing, backward included, and restored after it."""
    import bench_bias
    from attnkit.cute import attention_bwd as bwd
    from attnkit.cute import attention_fwd as fwd

    monkeypatch.setattr(bench_bias, "OURS", ("triton", "cute"))
    names = list(bench_bias.lowrank_methods())
    assert names.index("attnkit cute rank 8, bias wgmma apart") == names.index("attnkit cute rank 8") + 1
    for env in (fwd.BIAS_SLICE_ENV, bwd.BIAS_SLICE_ENV):
        monkeypatch.delenv(env, raising=False)
    seen = []
    monkeypatch.setattr(
        bench_bias, "time_method",
        lambda *a, **k: seen.append((fwd.bias_slices_enabled(), bwd.bias_slices_enabled())) or (common.Result(),) * 2,
    )  # fmt: skip
    setup = bench_bias.without_bias_slice(lambda c: (None, ("x",)))
    assert setup(None) == (None, ("x",))
    bench_bias.bench_method(None, setup, "error", None)
    bench_bias.bench_method(None, lambda c: None, "error", None)
    assert seen == [(False, False), (True, True)]
    assert fwd.BIAS_SLICE_ENV not in os.environ and bwd.BIAS_SLICE_ENV not in os.environ


def test_dispatch_bench_times_cute_against_triton_per_class(monkeypatch, fake_gpu):
    """Each class: both backends, forward and training step, the CuTe row with what auto picks today and Triton's
    time over CuTe's; a failing backward of one backend leaves its forward timed."""
    import bench_dispatch
    from attnkit import dispatch

    def inputs(c):
        def one(heads, seqlen, dim, dtype):
            return torch.empty(c.batch, seqlen, heads, dim, dtype=dtype, device="meta")

        q = one(c.heads, c.seqlen_q, c.head_dim, c.dtype)
        k, v = one(c.heads_kv, c.seqlen_k, c.head_dim, c.dtype), one(c.heads_kv, c.seqlen_k, c.head_dim_v, c.dtype)
        bias = None
        if c.bias_rank:
            bias = attnkit.LowRankBias(
                one(c.heads, c.seqlen_q, c.bias_rank, c.bias_dtype),
                one(c.heads, c.seqlen_k, c.bias_rank, c.bias_dtype),
            )
        return q, k, v, bias

    times = {"triton": (2.0, 9.0), "cute": (1.6, 6.0)}
    monkeypatch.setattr(bench_dispatch, "make_inputs", inputs)
    monkeypatch.setattr(
        bench_dispatch, "step_methods", lambda name, *a: (lambda: times[name][0], lambda: times[name][1])
    )
    monkeypatch.setattr(dispatch, "_ARCH", {None: "sm90"})  # meta tensors: device index None
    monkeypatch.setattr(dispatch, "resolve", lambda backend, op, device, takes: "cute" if takes else "triton")
    monkeypatch.setenv("ATTNKIT_BENCH_SKIP", "cute-bwd")
    fwd, step = bench_dispatch.run(argparse.Namespace(quick=True), fake_gpu, common.Budget(None))
    fwd_text, step_text = fwd.markdown(), step.markdown()
    control, fp16 = bench_dispatch.QUICK[0].label(), bench_dispatch.QUICK[2].label()
    assert control == "B2 H16 N8192 D128" and fp16 == "B2 H16 N8192 D128 float16"
    assert f"| {control} | **attnkit cute** | 1.600 |" in fwd_text and "| cute | 1.25× |" in fwd_text, fwd_text
    assert f"| {fp16} | **attnkit cute** |" in fwd_text
    assert fwd_text.count("| cute | 1.25× |") == 2  # the controls: bf16 D128 MHA N8192, causal and not
    assert f"| {control} | **attnkit cute** | {common.BACKWARD_SKIPPED} |" in step_text, step_text
    assert f"| {control} | **attnkit triton** | 9.000 |" in step_text
    assert len(fwd.entries) == len(step.entries) == 2 * len(bench_dispatch.QUICK)
    labels = [c.label() for c in bench_dispatch.CASES]
    assert len(set(labels)) == len(labels)
    assert "B64 H16 Hkv2 Nq1 Nk8192 D128" in labels and "B2 H16 N8192 D128 bias r2 float32" in labels


@pytest.mark.parametrize("bias_rank", [0, 2])
def test_dispatch_bench_calls_run_the_forward_and_a_training_step(bias_rank):
    """The timed closures themselves, on the CPU with the reference backend: the forward without grad, the training
    step's gradients of q, k, v (and both factors)."""
    import bench_dispatch

    c = bench_dispatch.case(
        1,
        9,
        2,
        8,
        hkv=1,
        nk=11,
        dv=4,
        window=(-1, 0),
        dtype=torch.float32,
        bias_rank=bias_rank,
        bias_dtype=torch.float32,
    )
    inputs = bench_dispatch.make_inputs(c, device="cpu")
    forward, train_step = bench_dispatch.step_methods("reference", c, *inputs)
    out = forward()
    assert out.shape == (1, 9, 2, 4) and not out.requires_grad
    grads = train_step()
    leaves = [t for t in inputs[:3]] + ([inputs[3].q_factor, inputs[3].k_factor] if bias_rank else [])
    assert [g.shape for g in grads] == [t.shape for t in leaves]
    assert all(torch.isfinite(g).all() for g in grads)


def test_host_launcher_times_the_launchers_without_a_gpu(cache_dir):
    """bench/host_launcher.py: the README's host-time figures come from it; the kernels are stubbed, so it runs here."""
    import host_launcher

    times = host_launcher.launcher_us(calls=3)
    assert set(times) == {"forward", "backward"} and all(t > 0 for t in times.values()), times
    assert host_launcher.marshalling_us(calls=3) > 0
