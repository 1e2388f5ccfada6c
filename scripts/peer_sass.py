"""FA4's sm90 attention kernels beside attnkit's, compiled on the CPU: the main loop's instruction mix and order.

    python scripts/peer_sass.py [--backward] [--causal] [--head-dim 128] [--out DIR]

A study aid for sessions without a GPU: the benchmark's CuTe-DSL peer (flash-attn-4, from the device bundle's wheel)
builds its kernel for the same shape, bf16, and both kernels' SASS is summarised side by side (registers,
HGMMA / UTMALDG / LDL / STL counts, the innermost loop's length and opcode counts, and the loop's waits, barriers and
shared-memory accesses in order). Nothing runs: FA4's launcher is called on CPU tensors, its tensors become fake
ones (symbolic extents, 16-byte aligned strides), ``cute.compile`` keeps the cubin of its main kernel and returns a
no-op for everything else. SASS says what each kernel issues, not how long it waits; the device's profile
(scripts/gpu_profile.sh) says that.

flash-attn-4 and quack-kernels are unpacked without their dependencies from ``.device/wheels`` (or
``../shared/device/wheels``) into a temporary folder when they are not importable; einops, which only FA4's test
helpers import, is stubbed. Written against flash-attn-4 4.0.0b36 (its private ``_flash_attn_fwd`` /
``_flash_attn_bwd`` and ``to_cute_tensor``): another version may need this script changed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = ("flash_attn_4-*.whl", "quack_kernels-*.whl")
# opcodes listed in order: what the loop waits on and what it moves through shared memory
SHOWN = ("WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "BAR.", "SYNCS.", "LDS", "STS", "STSM", "REDG", "UBLKRED", "MEMBAR")


def import_fa4() -> types.ModuleType:
    """flash_attn.cute.interface, unpacked from the device bundle's wheels if it is not installed."""
    os.environ.setdefault("FLASH_ATTENTION_ARCH", "90")
    os.environ.setdefault("FLASH_ATTENTION_NUM_SMS", "132")  # an H100 SXM's, for its split heuristics
    try:
        import einops  # noqa: F401
    except ImportError:  # only FA4's test helpers use it: names that fail when called
        stub = types.ModuleType("einops")

        def unavailable(*args, **kwargs):
            raise NotImplementedError("einops is stubbed by scripts/peer_sass.py")

        stub.rearrange = stub.repeat = unavailable
        sys.modules["einops"] = stub
    try:
        import flash_attn.cute.interface as interface
    except ImportError:
        wheels = []
        for folder in (os.path.join(ROOT, ".device", "wheels"), os.path.join(ROOT, "..", "shared", "device", "wheels")):
            found = [sorted(glob.glob(os.path.join(folder, pattern))) for pattern in WHEELS]
            if all(found):
                wheels = [f[-1] for f in found]
                break
        if not wheels:
            raise SystemExit("peer_sass: flash-attn-4 is not installed and no .device/wheels has its wheel") from None
        target = tempfile.mkdtemp(prefix="attnkit-peer-")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, *wheels]
        subprocess.run(pip, check=True)
        sys.path.insert(0, target)
        import flash_attn.cute.interface as interface
    return interface


def fa4_cubin(backward: bool, causal: bool, head_dim: int) -> bytes:
    """The cubin of FA4's sm90 main kernel (forward or backward) for bf16 at this head dim."""
    import cutlass
    import cutlass.cute as cute
    import torch
    from cutlass.cute.runtime import make_fake_tensor

    interface = import_fa4()
    from flash_attn.cute.flash_bwd_sm90 import FlashAttentionBackwardSm90
    from flash_attn.cute.flash_fwd_sm90 import FlashAttentionForwardSm90

    target = FlashAttentionBackwardSm90 if backward else FlashAttentionForwardSm90
    dtypes = {torch.bfloat16: cutlass.BFloat16, torch.float16: cutlass.Float16, torch.float32: cutlass.Float32}
    dtypes[torch.int32] = cutlass.Int32

    def fake_tensor(t, assumed_align=16, leading_dim=-1, fully_dynamic=False, enable_tvm_ffi=True):
        if t is None:
            return None
        leading = t.ndim - 1 if leading_dim == -1 else leading_dim
        align = max(1, 16 // t.element_size())
        shape = tuple(cute.sym_int() for _ in range(t.ndim))
        stride = tuple(1 if i == leading else cute.sym_int64(divisibility=align) for i in range(t.ndim))
        return make_fake_tensor(dtypes[t.dtype], shape, stride=stride, assumed_align=assumed_align)

    found = {}
    real_compile = cute.compile

    def keep_cubin(*args, options="", **kwargs):
        if isinstance(args[0], target):
            with tempfile.TemporaryDirectory() as scratch:
                kept = f"{options} --gpu-arch sm_90a --keep-cubin --dump-dir {scratch}"
                found["cubin"] = bytes(real_compile(*args, options=kept, **kwargs).__cubin__)
        return lambda *a, **k: None

    batch, seqlen, heads = 1, 1024, 2
    q = torch.randn(batch, seqlen, heads, head_dim, dtype=torch.bfloat16)
    k, v, out, dout = (torch.randn_like(q) for _ in range(4))
    lse = torch.randn(batch, heads, seqlen)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(cute, "compile", keep_cubin))
        stack.enter_context(_patched(interface, "to_cute_tensor", fake_tensor))
        # the launchers assert CUDA inputs unless a fake mode is active; under it they also skip every launch
        stack.enter_context(_patched(interface, "is_fake_mode", lambda: True))
        if backward:
            interface._flash_attn_bwd(q, k, v, out, dout, lse, causal=causal)
        else:
            interface._flash_attn_fwd(q, k, v, causal=causal)
    if "cubin" not in found:
        raise SystemExit(f"peer_sass: FA4 built no {target.__name__} (its interface may have changed)")
    return found["cubin"]


@contextlib.contextmanager
def _patched(owner, name: str, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def attnkit_cubin(backward: bool, causal: bool, head_dim: int) -> bytes:
    import torch
    from attnkit.cute import attention_bwd, attention_fwd

    if backward:
        cfg = attention_bwd.choose_config(torch.bfloat16, head_dim, head_dim, False, causal)
        attention_bwd.compile_config(cfg)
        return attention_bwd.cache().cubin(cfg)
    cfg = attention_fwd.config_for(torch.bfloat16, 8192, 16, 16, head_dim, head_dim, -1, 0 if causal else -1)
    attention_fwd.compile_fwd(cfg)
    return attention_fwd.cache().cubin(cfg)


def summary(name: str, cubin: bytes, out: str | None) -> list[str]:
    from attnkit import precompile

    sass = precompile.sass_of(cubin)
    if out:
        with open(os.path.join(out, f"{name}.sass"), "w") as f:
            f.write(sass)
    loop = precompile.innermost_loop(sass, ("HGMMA", "MUFU.EX2"))
    ops = collections.Counter(precompile.opcode(t).split(".")[0] for t in loop)
    lines = [
        f"== {name}: {precompile.registers_of(cubin)} registers at launch, {precompile.sass_summary(sass)}",
        f"   main loop: {len(loop)} instructions; " + ", ".join(f"{op} {n}" for op, n in ops.most_common(16)),
        "   in order (position: instruction):",
    ]
    run: list = []  # [position, shape, count] of the HGMMAs since the last instruction shown

    def flush() -> None:
        if run:
            lines.append(f"   {run[0]:4d}: HGMMA.{run[1]} x{run[2]}")
            run.clear()

    for i, t in enumerate(loop):
        op = precompile.opcode(t)
        if op.startswith("HGMMA"):
            shape = op.split(".")[1]
            if run and run[1] == shape:
                run[2] += 1
            else:
                flush()
                run.extend([i, shape, 1])
        elif op.startswith(SHOWN):
            flush()
            lines.append(f"   {i:4d}: {t}")
    flush()
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backward", action="store_true")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--head-dim", type=int, default=128, choices=(64, 96, 128, 192, 256))
    p.add_argument("--out", default=None, help="also write both kernels' whole SASS here")
    args = p.parse_args(argv)
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    what = f"{'backward' if args.backward else 'forward'}{' causal' if args.causal else ''} d = {args.head_dim}, bf16"
    print(f"peer_sass: {what}")
    for name, build in (("FA4", fa4_cubin), ("attnkit", attnkit_cubin)):
        print("\n".join(summary(name, build(args.backward, args.causal, args.head_dim), args.out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
