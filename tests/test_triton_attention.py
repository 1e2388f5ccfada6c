"""backend="triton" attention and FlashBias through the public API, against the float64 reference under the 2x rule
(tests/numerics.py), output, lse and every gradient, with NaN-poisoned outputs.

CPU: Triton's interpreter (TRITON_INTERPRET=1, set by conftest) at tiny shapes, fp16 and fp32 (its bf16 tl.dot is
wrong). GPU (marker `gpu`): larger shapes, bf16 too, and CUDA-graph capture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import attnkit
import pytest
import torch
from attnkit import reference

# triton_backend is imported at collection, while conftest's TRITON_INTERPRET=1 holds: triton.jit picks the
# interpreter when a kernel module is imported, so a test that later unsets the variable cannot load it compiled.
from attnkit.backends import alloc, triton_backend  # noqa: F401
from numerics import assert_2x

GRAD_NAMES = ("dq", "dk", "dv", "dq_factor", "dk_factor")


def _make(b, sq, sk, h, hkv, d, dv, dtype, device, *, packed=False):
    if packed:
        # q/k/v as views into one packed tensor: non-trivial sequence and head strides.
        qkv = torch.randn(b, sq, 3, h, d, dtype=dtype, device=device)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1, :hkv], qkv[:, :, 2, :hkv, :dv]
    else:
        q = torch.randn(b, sq, h, d, dtype=dtype, device=device)
        k = torch.randn(b, sk, hkv, d, dtype=dtype, device=device)
        v = torch.randn(b, sk, hkv, dv, dtype=dtype, device=device)
    return q, k, v


def _factors(kind, b, sq, sk, h, device):
    """Bias factors by kind: None, "alibi" (exact rank 2, float32), or (rank, dtype, (q_factor batch, heads),
    (k_factor batch, heads)) for random learned-style factors, a 1 meaning that dim broadcasts."""
    if kind is None:
        return None
    if kind == "alibi":
        slopes = torch.tensor([2.0 ** -(i + 1) for i in range(h)], device=device)
        return attnkit.bias.alibi(slopes, sq, sk)
    rank, dtype, (qb, qh), (kb, kh) = kind
    qf = 0.5 * torch.randn(qb, sq, qh, rank, device=device).to(dtype)
    kf = 0.5 * torch.randn(kb, sk, kh, rank, device=device).to(dtype)
    return attnkit.LowRankBias(qf, kf)


def _assert_lse(got, ref64, ref_lowp):
    empty = torch.isneginf(ref64)
    assert torch.equal(torch.isneginf(got), empty), "lse: -inf rows differ from the reference"
    assert not torch.isnan(got).any(), "lse: NaN"
    zero = torch.zeros((), dtype=got.dtype, device=got.device)
    assert_2x(
        "lse",
        torch.where(empty, zero, got),
        torch.where(empty, zero.double(), ref64),
        torch.where(empty, zero, ref_lowp.float()),
    )


def check_attention(q, k, v, bias=None, causal=False, window=(-1, -1), softmax_scale=None):
    """Runs the Triton backend forward and backward and checks every result against the references."""
    inputs = [q, k, v] + ([bias.q_factor, bias.k_factor] if bias is not None else [])
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    tb = None if bias is None else attnkit.LowRankBias(leaves[3], leaves[4])
    with alloc.poisoned():
        out, lse = attnkit.attention(
            *leaves[:3],
            causal=causal,
            window=window,
            bias=tb,
            softmax_scale=softmax_scale,
            return_lse=True,
            backend="triton",
        )
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)

    left, right = window
    kw = dict(
        softmax_scale=q.shape[3] ** -0.5 if softmax_scale is None else softmax_scale,
        window_left=left,
        window_right=0 if causal else right,
    )
    ins64 = [x.detach().double() for x in inputs]
    f64 = ins64[3:] if bias is not None else [None, None]
    o64, l64 = reference.attention_forward(*ins64[:3], *f64, compute_dtype=torch.float64, **kw)
    g64 = reference.attention_backward(dout.double(), *ins64[:3], o64, l64, *f64, compute_dtype=torch.float64, **kw)
    lowp = q.dtype
    fl = inputs[3:] if bias is not None else [None, None]
    ol, ll = reference.attention_forward(*inputs[:3], *fl, compute_dtype=lowp, **kw)
    gl = reference.attention_backward(dout, *inputs[:3], ol, ll, *fl, compute_dtype=lowp, **kw)

    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert_2x("out", out, o64, ol)
    _assert_lse(lse, l64, ll)
    empty = torch.isneginf(l64).transpose(1, 2)  # (B, Sq, H)
    assert (out[empty] == 0).all(), "rows that see no key must give 0"
    for name, got, x, r64, rl in zip(
        GRAD_NAMES[: len(grads)], grads, inputs, g64[: len(grads)], gl[: len(grads)], strict=True
    ):
        assert got.dtype == x.dtype, f"{name}: dtype {got.dtype} != {x.dtype}"
        assert torch.isfinite(got).all(), f"{name}: not finite"
        assert_2x(name, got, r64, rl)
    return out, lse, grads


CPU = torch.device("cpu")

# (B, Sq, Sk, H, Hkv, D, Dv, dtype, causal, window, bias kind)
_F16, _F32 = torch.float16, torch.float32
CPU_CASES = {
    "full": (2, 64, 64, 2, 2, 64, 64, _F16, False, (-1, -1), None),
    "causal-odd": (1, 77, 77, 2, 2, 32, 32, _F16, True, (-1, -1), None),
    "causal-sq<sk-gqa": (1, 17, 77, 4, 2, 64, 64, _F16, True, (-1, -1), None),
    "causal-sq>sk-mqa-empty-rows": (1, 77, 17, 3, 1, 32, 32, _F16, True, (-1, -1), None),
    "one-query": (2, 1, 77, 2, 1, 32, 32, _F16, False, (-1, -1), None),
    "one-key-causal": (1, 17, 1, 2, 2, 32, 32, _F16, True, (-1, -1), None),
    "window-left": (1, 80, 80, 2, 1, 32, 32, _F16, False, (8, -1), None),
    "window-both-empty-rows": (1, 80, 33, 2, 2, 32, 32, _F16, False, (5, 3), None),
    "window-right-sq<sk": (1, 33, 80, 2, 2, 32, 32, _F16, False, (-1, 4), None),
    "window-causal-zero": (1, 40, 40, 1, 1, 32, 32, _F16, True, (0, -1), None),
    "d96-dv64-causal": (1, 45, 45, 2, 1, 96, 64, _F16, True, (-1, -1), None),
    "fp32-gqa-window": (1, 50, 61, 4, 2, 64, 64, _F32, True, (20, -1), None),
    "bias-r1-fp32": (2, 40, 40, 2, 2, 32, 32, _F16, False, (-1, -1), (1, _F32, (2, 2), (2, 2))),
    "bias-alibi-causal": (1, 49, 77, 4, 2, 32, 32, _F16, True, (-1, -1), "alibi"),
    "bias-r8-fp16-broadcast": (2, 37, 53, 4, 2, 64, 64, _F16, False, (-1, -1), (8, _F16, (1, 4), (2, 1))),
    "bias-r8-fp32-window": (1, 60, 60, 2, 1, 32, 32, _F16, True, (9, -1), (8, _F32, (1, 1), (1, 2))),
    "bias-r3-fp32-empty-rows": (1, 50, 20, 2, 2, 32, 32, _F32, True, (-1, -1), (3, _F32, (1, 2), (1, 1))),
    "bias-r33-fp16-padded": (1, 30, 45, 2, 2, 32, 32, _F16, False, (-1, 6), (33, _F16, (1, 2), (1, 2))),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_attention_cpu(case):
    b, sq, sk, h, hkv, d, dv, dtype, causal, window, kind = CPU_CASES[case]
    q, k, v = _make(b, sq, sk, h, hkv, d, dv, dtype, CPU)
    check_attention(q, k, v, _factors(kind, b, sq, sk, h, CPU), causal=causal, window=window)


def test_strided_inputs_cpu():
    q, k, v = _make(2, 33, 33, 4, 2, 32, 32, _F16, CPU, packed=True)
    assert not q.is_contiguous() and not k.is_contiguous()
    check_attention(q, k, v, causal=True)


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_nonpositive_scale_cpu(scale):
    # The running max is then taken on the scaled logits rather than on q·kᵀ.
    q, k, v = _make(1, 33, 40, 2, 1, 32, 32, _F16, CPU)
    check_attention(q, k, v, causal=True, softmax_scale=scale)


def test_fully_masked_rows_cpu():
    # Sq > Sk, causal: the first Sq - Sk rows see no key at all.
    q, k, v = _make(1, 40, 8, 2, 1, 32, 32, _F16, CPU)
    out, lse, grads = check_attention(q, k, v, causal=True)
    assert torch.isneginf(lse[:, :, :32]).all() and torch.isfinite(lse[:, :, 32:]).all()
    assert (out[:, :32] == 0).all()
    assert (grads[0][:, :32] == 0).all(), "rows that see no key must get zero dq"


GPU_CASES = {
    "d64-causal-gqa": (2, 1023, 1023, 8, 2, 64, 64, False, True, (-1, -1), None),
    "d128-full": (2, 1000, 1000, 4, 4, 128, 128, False, False, (-1, -1), None),
    "d128-sq<sk-causal": (1, 300, 1100, 4, 1, 128, 128, False, True, (-1, -1), None),
    "d256-window": (1, 777, 777, 2, 2, 256, 256, False, False, (100, 50), None),
    "d192-dv128-causal": (1, 500, 500, 2, 1, 192, 128, False, True, (-1, -1), None),
    "d32-sq>sk-causal": (2, 600, 200, 4, 2, 32, 32, False, True, (-1, -1), None),
    "d96-packed": (2, 513, 513, 4, 2, 96, 96, True, True, (-1, -1), None),
    "alibi-causal": (2, 1024, 1024, 8, 8, 128, 128, False, True, (-1, -1), "alibi"),
    "bias-r8-learned": (2, 800, 900, 4, 2, 64, 64, False, False, (-1, -1), (8, None, (1, 4), (2, 1))),
    "bias-r64-fp32-window": (1, 700, 700, 4, 4, 128, 128, False, True, (256, -1), (64, _F32, (1, 4), (1, 4))),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_attention_gpu(case, dtype):
    b, sq, sk, h, hkv, d, dv, packed, causal, window, kind = GPU_CASES[case]
    dev = torch.device("cuda")
    q, k, v = _make(b, sq, sk, h, hkv, d, dv, dtype, dev, packed=packed)
    if isinstance(kind, tuple) and kind[1] is None:
        kind = (kind[0], dtype, *kind[2:])
    check_attention(q, k, v, _factors(kind, b, sq, sk, h, dev), causal=causal, window=window)


@pytest.mark.gpu
def test_cuda_graph_capture_gpu():
    dev = torch.device("cuda")
    q, k, v = (x.requires_grad_() for x in _make(2, 512, 512, 4, 2, 128, 128, torch.bfloat16, dev))
    bias = attnkit.bias.alibi(torch.tensor([0.5, 0.25, 0.125, 0.0625], device=dev), 512, 512)

    def step():
        out = attnkit.attention(q, k, v, causal=True, bias=bias, backend="triton")
        return (out,) + torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for e, c in zip(eager, captured, strict=True):
        torch.testing.assert_close(c, e, rtol=0, atol=0)


_SM90_COMPILE = """
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attnkit.backends.triton_attention import attention_tiles
from attnkit.kernels.triton import attention as kernels

# (D, Dv, bias mode, rank, padded rank, factor dtype, window left, window right)
CASES = [(64, 64, 0, 1, 1, "fp32", -1, 0), (128, 128, 1, 8, 16, "bf16", 64, 0), (192, 128, 3, 2, 2, "fp32", 64, 64)]
for d, dv, bias, rank, block_r, fdt, left, right in CASES:
    tiles = attention_tiles(torch.device("cuda"), d, dv)
    pointers = {n: "*bf16" for n in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")}
    pointers.update({n: "*fp32" for n in ("Lse", "Delta", "DKF", "DQF")}, QF="*" + fdt, KF="*" + fdt)
    common = dict(HEAD_DIM=d, HEAD_DIM_V=dv, RANK=rank, BLOCK_D=triton.next_power_of_2(d),
                  BLOCK_DV=triton.next_power_of_2(dv), BLOCK_R=block_r, BIAS=bias, HAS_LEFT=left >= 0,
                  HAS_RIGHT=right >= 0)
    for fn, t, extra in ((kernels.attention_fwd, tiles.fwd, dict(LOGITS_RAW=bias == 0)),
                         (kernels.attention_bwd_dkdv, tiles.dkdv, {}), (kernels.attention_bwd_dq, tiles.dq, {})):
        consts = dict(common, BLOCK_M=t.block_m, BLOCK_N=t.block_n, **extra)
        sig = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if "scale" in n else "i32")
               for n in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 128),
                                  options=dict(num_warps=t.num_warps, num_stages=t.num_stages))
        assert "wgmma.mma_async" in compiled.asm["ptx"], (fn.__name__, d, bias)
        with open(f"{sys.argv[1]}/{fn.__name__}-d{d}-bias{bias}.ptx", "w") as f:
            f.write(compiled.asm["ptx"])
print("ok")
"""


@pytest.fixture(scope="module")
def sm90_ptx(tmp_path_factory) -> dict[str, str]:
    """The PTX of each kernel `_SM90_COMPILE` compiles for sm_90a, by "<kernel>-d<D>-bias<mode>", compiled once
    for the tests below with FMA contraction on (Triton's default, what a GPU run gets)."""
    out = tmp_path_factory.mktemp("sm90_ptx")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _SM90_COMPILE, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    return {f.stem: f.read_text() for f in out.glob("*.ptx")}


def test_kernels_compile_for_sm90(sm90_ptx):
    """The interpreter never runs Triton's compiler: compile each kernel for sm_90a (PTX through ptxas, no GPU
    needed) and check that the tile table's configs issue Hopper wgmma (asserted in the script, per kernel)."""
    assert len(sm90_ptx) == 9, sorted(sm90_ptx)


_SM90_LAUNCH_COMPILE = """
import re
import subprocess
import tempfile

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attnkit.backends.triton_attention import attention_tiles
from attnkit.kernels.triton import attention as kernels


def local_accesses_in_inner_loops(cubin):
    # SASS local loads/stores (register spills) inside innermost loops: a backward branch closes a loop.
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([knobs.nvidia.nvdisasm.path, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    labels, insts, pending = {}, [], []
    for line in sass.splitlines():
        label = re.match(r"\\s*(\\.L_x_\\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        inst = re.search(r"/\\*([0-9a-f]{4,})\\*/\\s+(.*)", line)
        if inst:
            addr = int(inst.group(1), 16)
            labels.update((p, addr) for p in pending)
            pending = []
            insts.append((addr, inst.group(2)))
    loops = []
    for addr, text in insts:
        branch = re.search(r"BRA.*`\\((\\.L_x_\\d+)\\)", text)
        if branch and labels.get(branch.group(1), addr) < addr:
            loops.append((labels[branch.group(1)], addr))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    assert inner, "no loop found in the SASS"
    return sum(1 for addr, text in insts if re.search(r"\\b(STL|LDL)", text) and any(a <= addr <= b for a, b in inner))


# The benchmark shapes: bf16, MHA (group 1), causal; (D, bias mode, rank, padded rank, factor dtype).
CASES = [(128, 0, 1, 1, "fp32"), (128, 1, 8, 16, "bf16"), (128, 3, 2, 2, "fp32"), (64, 3, 2, 2, "fp32"),
         (128, 2, 64, 64, "fp32")]
for d, bias, rank, block_r, fdt in CASES:
    tiles = attention_tiles(torch.device("cuda"), d, d, bias, block_r)
    pointers = {n: "*bf16" for n in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")}
    pointers.update({n: "*fp32" for n in ("Lse", "Delta", "DKF", "DQF")}, QF="*" + fdt, KF="*" + fdt)
    common = dict(HEAD_DIM=d, HEAD_DIM_V=d, RANK=rank, BLOCK_D=d, BLOCK_DV=d, BLOCK_R=block_r, BIAS=bias,
                  HAS_LEFT=False, HAS_RIGHT=True, group=1)
    kernels_ = [(kernels.attention_fwd, tiles.fwd, dict(LOGITS_RAW=bias == 0))]
    if d == 128:
        kernels_ += [(kernels.attention_bwd_dkdv, tiles.dkdv, {}), (kernels.attention_bwd_dq, tiles.dq, {})]
    for fn, t, extra in kernels_:
        consts = dict(common, BLOCK_M=t.block_m, BLOCK_N=t.block_n, **extra)
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}
        sig = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if "scale" in n else "i32")
               for n in fn.arg_names}
        # What a launch on 16-byte aligned tensors with lengths, heads and strides divisible by 16 specializes on
        # (window_left is -1, window_right 0).
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if sig[n].startswith("*") or (sig[n] == "i32" and n != "window_left")}
        compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 128),
                                  options=dict(num_warps=t.num_warps, num_stages=t.num_stages))
        ptx = compiled.asm["ptx"]
        what = (fn.__name__, d, bias)
        assert "wgmma.mma_async" in ptx, what
        assert "cp.async" in ptx, ("streamed loads not pipelined", what)
        n = local_accesses_in_inner_loops(compiled.asm["cubin"])
        assert n == 0, ("register spills inside the tile loop", what, n)
print("ok")
"""


def test_kernels_pipeline_without_loop_spills_sm90():
    """At the benchmark shapes (bf16, MHA, causal, D = 128; no bias, rank-8 bf16 bias, fp32 ALiBi; also rank-64
    float32 factors, and the D = 64 ALiBi forward), compiled for sm_90a with the specialization a real launch gets,
    the tile table's configs issue wgmma, pipeline their loads with cp.async and keep register spills out of the
    tile loops (read off the SASS)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _SM90_LAUNCH_COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def _many_key_tiles(sq, sk, h, d, dtype, device, rank):
    """Query row i's largest logit is with key i (key i = 4 q_i, a logit near 4 |q_i|² / sqrt(d) = 32, against about
    1 for the random keys), so the running max is set within the first Sq keys and then stands over every later key
    tile, and ulp(max · log2 e) is large."""
    q, k, v = _make(1, sq, sk, h, h, d, d, dtype, device)
    k[:, :sq] = 4 * q
    if rank == 0:
        return q, k, v, None
    qf = 0.5 * torch.randn(1, sq, h, rank, device=device).to(dtype)
    kf = 0.5 * torch.randn(1, sk, h, rank, device=device).to(dtype)
    return q, k, v, attnkit.LowRankBias(qf, kf)


def _check_lse_over_many_key_tiles(sq, sk, h, d, dtype, device, rank):
    q, k, v, bias = _many_key_tiles(sq, sk, h, d, dtype, device, rank)
    out, lse = attnkit.attention(q, k, v, bias=bias, return_lse=True, backend="triton")
    kw = dict(softmax_scale=d**-0.5, window_left=-1, window_right=-1)
    f64 = [None, None] if bias is None else [bias.q_factor.double(), bias.k_factor.double()]
    fl = [None, None] if bias is None else [bias.q_factor, bias.k_factor]
    o64, l64 = reference.attention_forward(q.double(), k.double(), v.double(), *f64, compute_dtype=torch.float64, **kw)
    ol, ll = reference.attention_forward(q, k, v, *fl, compute_dtype=dtype, **kw)
    assert_2x("out", out, o64, ol)
    _assert_lse(lse, l64, ll)


@pytest.mark.parametrize("rank", [0, 8], ids=["no-bias", "bias-r8"])
def test_lse_over_many_key_tiles_cpu(rank):
    _check_lse_over_many_key_tiles(32, 320, 1, 32, _F16, CPU, rank)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rank", [0, 8], ids=["no-bias", "bias-r8"])
def test_lse_over_many_key_tiles_gpu(rank, dtype):
    """The forward once computed its rescale factor as exp2(m_old * c - round(m_new * c)); the GPU build contracts
    that into an FMA whose result is round(m * c)'s rounding error, not 0, so alpha = 2^delta on every key tile
    after the max is set, out unchanged and lse off by a few ulp per dozen tiles (3 GPU bias cases failed on lse
    alone, 2026-11-27). About 250 key tiles after the max make the old drift about 20 times the bound (a float32
    emulation of both forms: 6.4e-4 against 3.2e-5)."""
    _check_lse_over_many_key_tiles(128, 16384, 2, 64, dtype, torch.device("cuda"), rank)


def test_forward_rescale_factor_is_exact_while_the_max_stands_sm90(sm90_ptx):
    """In the forward's sm_90a PTX (the no-bias raw-logit path with a right window bound, a rank-8 bf16 bias with
    both bounds, float32 ALiBi-style factors), the exponent of every exp2 on the rescale-factor line is a plain
    difference of the two stored running maxima, so it is 0 and alpha is 1 while a row's max stands; the old
    exp2(m_i * c - round(m_new * c)) was an fma.rn.f32 there. The interpreter never contracts, so only this and the
    GPU test above see it."""
    from attnkit.kernels.triton import attention as kernels

    with open(kernels.__file__) as f:
        alpha_line = 1 + next(i for i, text in enumerate(f) if "alpha = tl.exp2(" in text)
    forwards = {name: ptx for name, ptx in sm90_ptx.items() if name.startswith("attention_fwd-")}
    assert len(forwards) == 3, sorted(sm90_ptx)
    for name, ptx in forwards.items():
        lines = ptx.splitlines()
        files = {m.group(1) for line in lines if (m := re.match(r'\s*\.file\s+(\d+)\s+"[^"]*attention\.py"', line))}
        defs: dict[str, list[str]] = {}
        for line in lines:
            m = re.match(r"\s*([a-z][\w.]*)\s+(%\w+)\s*,", line)
            if m:
                defs.setdefault(m.group(2), []).append(m.group(1))
        loc, operands = None, []
        for line in lines:
            m = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)\s", line)
            if m:
                loc = (m.group(1), int(m.group(2)))
                continue
            m = re.match(r"\s*ex2\.approx[\w.]*\s+%\w+\s*,\s*(%\w+)", line)
            if m and loc is not None and loc[0] in files and loc[1] == alpha_line:
                operands.append(m.group(1))
        assert operands, ("no exp2 of the rescale factor found", name, alpha_line)
        for reg in operands:
            ops = defs.get(reg, [])
            assert ops and all(op.split(".")[0] in ("sub", "add") for op in ops), (name, reg, ops)
