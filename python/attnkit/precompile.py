"""Compile every shipped CuTe-DSL kernel config without a GPU; optionally dump each kernel's SASS.

    python -m attnkit.precompile --arch sm_90a [--sass DIR] [--only fwd|bwd] [--jobs N] [--variants] [--cases FILE]
    python -m attnkit.precompile --auto

Warms the disk compile cache (``$ATTNKIT_CACHE_DIR`` or ``~/.cache/attnkit``) for deployment. The
registry below lists launcher modules; each exposes ``shipped_configs(arch)`` (frozen config
dataclasses), ``compile_config(cfg)`` and ``cache()`` (its ``CompileCache``, for the cubins), and may
expose ``variant_configs(causal)`` (the switches ``bench/bench_variants.py`` measures; built with
``--variants``). ``--cases FILE`` adds the configs a Python file's ``configs(arch)`` returns (the GPU tests'
``tests/cute_gpu_cases.py``). A module that is not importable yet is skipped with a note. ``--auto`` compiles only
the kernels ``backend='auto'`` runs (``auto_kernels``) and prints their digests beside the ones each
``dispatch.AUTO_CUTE`` rule pinned at its GPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGISTRY = {
    "fwd": "attnkit.cute.attention_fwd",
    "bwd": "attnkit.cute.attention_bwd",
}


@dataclasses.dataclass
class Built:
    kind: str
    config: object
    source: str  # "compile" | "disk" | "failed"
    seconds: float
    cubin: bytes | None
    error: str | None = None


def config_name(cfg) -> str:
    """A file-name-safe, human-readable name: the config class and the fields that differ from their
    defaults (a hash of the rest keeps it unique and under file-name limits if it is still too long)."""
    import hashlib

    parts = [type(cfg).__name__]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.default is dataclasses.MISSING or value != field.default:
            parts.append(f"{field.name}-{value}")
    name = "_".join(parts).replace(".", "p").replace(" ", "")
    if len(name) > 160:
        name = name[:150] + "_" + hashlib.sha1(name.encode()).hexdigest()[:9]
    return name


def load_launchers(only: str | None = None) -> dict:
    mods = {}
    for kind, module in REGISTRY.items():
        if only is not None and kind != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            print(f"precompile: skipping {module} ({exc})", file=sys.stderr)
            continue
        if not hasattr(mod, "shipped_configs") or not hasattr(mod, "compile_config"):
            print(f"precompile: {module} has no shipped_configs/compile_config; skipped", file=sys.stderr)
            continue
        mods[kind] = mod
    return mods


def case_configs(path: str | None, arch: str) -> list:
    """``configs(arch)`` of the Python file at ``path`` (none without one)."""
    if path is None:
        return []
    import importlib.util

    spec = importlib.util.spec_from_file_location("attnkit_precompile_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.configs(arch))


def configs_of(mod, arch: str, variants: bool = False, cases: str | None = None) -> list:
    """The shipped configs, then (with ``variants``) the benchmark variants and (with ``cases``) that file's
    configs of this launcher, each once."""
    configs = list(mod.shipped_configs(arch))
    extra = []
    if variants and hasattr(mod, "variant_configs"):
        for head_dim in getattr(mod, "VARIANT_HEAD_DIMS", (128,)):
            for causal in (False, True):
                extra += mod.variant_configs(causal, head_dim, arch=arch).values()
    extra += [cfg for cfg in case_configs(cases, arch) if type(cfg).__module__ == mod.__name__]
    for cfg in extra:
        if cfg not in configs:
            configs.append(cfg)
    return configs


def build_all(arch: str, only: str | None = None, variants: bool = False, cases: str | None = None) -> list[Built]:
    os.environ.setdefault("CUTE_DSL_ARCH", arch)
    results = []
    for kind, mod in load_launchers(only).items():
        cache = mod.cache() if hasattr(mod, "cache") else None
        for cfg in configs_of(mod, arch, variants, cases):
            start = time.perf_counter()
            try:
                compiled = mod.compile_config(cfg)
            except Exception as exc:  # one broken config must not hide the others
                message = str(exc).strip().splitlines()
                results.append(Built(kind, cfg, "failed", time.perf_counter() - start, None, " | ".join(message)))
                continue
            seconds = time.perf_counter() - start
            record = cache.records.get(cfg) if cache is not None else None
            source = record.source if record is not None else "compile"
            cubin = record.cubin if record is not None else getattr(compiled, "__cubin__", None)
            results.append(Built(kind, cfg, source, seconds, cubin))
    return results


def _compile_one(job: tuple[str, str, int, bool, str | None]) -> str | None:
    """Worker: compile one config into the disk cache; the error text if it fails."""
    arch, kind, index, variants, cases = job
    os.environ.setdefault("CUTE_DSL_ARCH", arch)
    mod = importlib.import_module(REGISTRY[kind])
    cfg = configs_of(mod, arch, variants, cases)[index]
    try:
        mod.compile_config(cfg)
    except Exception as exc:  # reported by the serial pass that follows
        return f"{cfg}: {exc}"
    return None


def warm_in_parallel(arch: str, only: str | None, jobs: int, variants: bool = False, cases: str | None = None) -> float:
    """Compile every shipped config in `jobs` processes (disk cache on), so the serial pass only loads them.
    Worth it on a many-core GPU machine, where the compiles would otherwise eat device time."""
    import concurrent.futures
    import multiprocessing

    work = [
        (arch, kind, i, variants, cases)
        for kind, mod in load_launchers(only).items()
        for i in range(len(configs_of(mod, arch, variants, cases)))
    ]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        list(pool.map(_compile_one, work))
    return time.perf_counter() - start


def cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else "cuobjdump"


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump(), "-sass", f.name], check=True, capture_output=True, text=True).stdout


def registers_of(cubin: bytes) -> int:
    """The kernel's register count at launch (cuobjdump's resource usage), per thread."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([cuobjdump(), "-res-usage", f.name], check=True, capture_output=True, text=True).stdout
    counts = [int(n) for n in re.findall(r"\bREG:(\d+)", usage)]
    if len(counts) != 1:
        raise ValueError(f"expected one kernel's resource usage, got {counts}")
    return counts[0]


def sass_summary(sass: str) -> dict[str, int]:
    """Instruction counts the CPU tests check (HGMMA, TMA loads/stores, local memory), and whether ptxas serialized
    the wgmmas (``wgmma_serialized``)."""
    counts = {}
    for op in ("HGMMA", "UTMALDG", "UTMASTG", "LDL", "STL", "MUFU.EX2", "BAR.SYNC"):
        counts[op] = sum(1 for line in sass.splitlines() if f" {op}" in line or f"\t{op}" in line)
    counts["serialized"] = int(wgmma_serialized(sass))
    return counts


def wgmma_serialized(sass: str) -> bool:
    """Whether ptxas serialized the kernel's wgmmas: every HGMMA then ends a group of its own (``gsb0``, and a wait
    after it), where the kernels issue each GEMM's k blocks as one group with a single ``gsb0`` on its last HGMMA.
    ptxas does that, with only a warning the DSL does not show, when it cannot prove a wgmma's registers safe (e.g.
    a wgmma that only some warpgroups issue while another is in flight): a silent slowdown of several times."""
    hgmma = [line for line in sass.splitlines() if re.search(r"\bHGMMA\.", line)]
    return bool(hgmma) and all("gsb0" in line for line in hgmma)


def _instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text without encoding or ';') of every SASS line."""
    out = []
    for line in sass.splitlines():
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2)))
    return out


def opcode(instruction: str) -> str:
    """``FFMA`` of ``@!P0 FFMA R1, ...``: the opcode, past any predicate."""
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def instruction_digest(sass: str) -> str:
    """The first 16 hex digits of the sha256 of a kernel's SASS instructions, without addresses, encodings, names or
    comments: two kernels with one digest run the same machine code."""
    import hashlib

    text = "\n".join(t for _, t in _instructions(sass))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# the masks of dispatch.CuteRule and the (window_left, window_right) a call of each passes
_RULE_MASKS = {"none": (-1, -1), "causal": (-1, 0)}


def auto_kernels(rule) -> dict[str, tuple[str, object]]:
    """Every CuTe kernel ``backend='auto'`` runs for a call of ``rule``'s class (``dispatch.CuteRule`` on sm90), by
    a description ("bwd main bf16 d128/128 causal"): (kind, config) of the forward, the backward's main kernel and its
    preprocess and postprocess, per dtype, head dims and mask, as the launchers choose them (one K/V head per query
    head, no bias, 132 SMs)."""
    from attnkit.cute import attention_bwd, attention_fwd

    if rule.arch != "sm90" or rule.gqa or rule.bias or rule.deterministic or set(rule.masks) - set(_RULE_MASKS):
        # a wider class runs more configs (GQA's packing and head splits, bias ranks, windows): list them here first
        raise NotImplementedError(f"auto_kernels lists sm90 MHA calls without a bias or a window only: {rule}")
    found = {}
    for dtype in rule.dtypes:
        for head_dim, head_dim_v in rule.head_dims:
            for mask, (wl, wr) in _RULE_MASKS.items():
                if mask not in rule.masks:
                    continue
                fwd = attention_fwd.config_for(dtype, rule.min_seqlen, 1, 1, head_dim, head_dim_v, wl, wr)
                where = f"{fwd.dtype} d{head_dim}/{head_dim_v} {mask}"
                found[f"fwd {where}"] = ("fwd", fwd)
                main, _ = attention_bwd.config_for(
                    dtype, 1, rule.min_seqlen, 1, 1, head_dim, head_dim_v, wl, wr, sm_count=132
                )
                pre, post = attention_bwd.pass_configs(main)
                found[f"bwd main {where}"] = ("bwd", main)
                found[f"bwd pre {where}"] = ("bwd", pre)
                found[f"bwd post {where}"] = ("bwd", post)
    return found


def auto_digests(rule) -> dict[str, str]:
    """``instruction_digest`` of each of ``auto_kernels(rule)``, compiled for sm_90a (the disk cache's copy where
    it has one)."""
    digests = {}
    for what, (kind, cfg) in auto_kernels(rule).items():
        mod = importlib.import_module(REGISTRY[kind])
        mod.compile_config(cfg)
        digests[what] = instruction_digest(sass_of(mod.cache().cubin(cfg)))
    return digests


def print_auto_digests() -> int:
    """``--auto``: each auto rule's kernels, their digests now and the ones its GPU run pinned
    (``dispatch.CuteRule.kernels``); exit status 1 if any differs (a rule's kernels changed since its run)."""
    from attnkit import dispatch

    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    changed = 0
    for rule in dispatch.AUTO_CUTE:
        pinned = dict(rule.kernels)
        now = auto_digests(rule)
        for what in sorted(now.keys() | pinned.keys()):
            same = now.get(what) == pinned.get(what)
            changed += not same
            print(f"{what:36s} {now.get(what, '-'):16s} pinned {pinned.get(what, '-'):16s} {'' if same else 'CHANGED'}")
    return 1 if changed else 0


def innermost_loop(sass: str, containing: tuple[str, ...]) -> list[str]:
    """The instructions of the shortest loop (a backward branch and the code it jumps back over) whose
    body has every opcode prefix in ``containing``; empty if none has."""
    instructions = _instructions(sass)
    best: list[str] = []
    for address, text in instructions:
        m = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= address:
            continue
        start = int(m.group(1), 16)
        body = [t for a, t in instructions if start <= a <= address]
        ops = [opcode(t) for t in body]
        if all(any(op.startswith(c) for op in ops) for c in containing) and (not best or len(body) < len(best)):
            best = body
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90a", choices=["sm_90a"])
    parser.add_argument("--sass", type=Path, default=None, help="write <DIR>/<kind>/<config>.sass")
    parser.add_argument("--only", choices=sorted(REGISTRY), default=None)
    parser.add_argument("--jobs", type=int, default=1, help="compile in N processes first (needs the disk cache)")
    parser.add_argument("--variants", action="store_true", help="also the configs bench/bench_variants.py times")
    parser.add_argument("--cases", default=None, help="also the configs a Python file's configs(arch) returns")
    parser.add_argument(
        "--auto", action="store_true", help="only the kernels backend='auto' runs: their digests and the pinned ones"
    )
    args = parser.parse_args(argv)
    if args.auto:
        return print_auto_digests()

    if args.jobs > 1:
        if os.environ.get("ATTNKIT_DISABLE_DISK_CACHE") == "1":
            parser.error("--jobs needs the disk cache (ATTNKIT_DISABLE_DISK_CACHE=1 is set)")
        seconds = warm_in_parallel(args.arch, args.only, args.jobs, args.variants, args.cases)
        print(f"parallel compile ({args.jobs} processes): {seconds:.1f}s")
    results = build_all(args.arch, args.only, args.variants, args.cases)
    for built in results:
        line = f"{built.kind:4s} {built.source:8s} {built.seconds:7.3f}s  {built.config}"
        if built.error is not None:
            print(f"{line}\n     error: {built.error}")
            continue
        if args.sass is not None:
            if built.cubin is None:
                line += "  (no cubin)"
            else:
                sass = sass_of(built.cubin)
                out = args.sass / built.kind / f"{config_name(built.config)}.sass"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(sass)
                line += "  " + " ".join(f"{k}={v}" for k, v in sass_summary(sass).items())
        print(line)
    cold = [b.seconds for b in results if b.source == "compile"]
    warm = [b.seconds for b in results if b.source == "disk"]
    failed = [b for b in results if b.source == "failed"]
    if cold:
        print(f"cold compiles: {len(cold)}, mean {sum(cold) / len(cold):.2f}s, max {max(cold):.2f}s")
    if warm:
        print(f"warm loads: {len(warm)}, mean {1000 * sum(warm) / len(warm):.1f}ms, max {1000 * max(warm):.1f}ms")
    if failed:
        print(f"FAILED: {len(failed)} config(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
