"""Compile cache for CuTe-DSL kernels: in memory, then on disk, then a cold compile.

A kernel is identified by a frozen config dataclass (which carries the target arch) plus a source
fingerprint: every ``*.py`` under ``attnkit/kernels/cute`` and ``attnkit/cute``, and the versions of
Python, nvidia-cutlass-dsl and torch. Any edit to the kernel sources therefore misses the disk cache
instead of loading a stale binary.

On disk each entry is ``<dir>/<fingerprint>/<key-hash>.o`` (the exported host launcher with the
embedded cubin, loaded with ``cute.runtime.load_module`` in about a millisecond) next to
``<key-hash>.cubin`` (kept so that ``--sass`` works from a warm cache). The directory is
``$ATTNKIT_CACHE_DIR`` or ``~/.cache/attnkit``; ``ATTNKIT_DISABLE_DISK_CACHE=1`` keeps everything
in memory. Writes go through a temporary file and ``os.replace`` so that concurrent processes never
see a half-written object.

Usage (one cache per launcher module)::

    _CACHE = CompileCache("attention_fwd")
    kernel = _CACHE.get(cfg, lambda options: cute.compile(fn, *fake_args, options=options))

``build`` receives the compile option string (target arch, cubin dump into a scratch directory) and
must pass it to ``cute.compile`` unchanged.

With ``ATTNKIT_CUTE_TVM_FFI=1`` (``tensors.tvm_ffi_enabled``) kernels are compiled with ``--enable-tvm-ffi``,
exported and loaded as TVM-FFI functions, and kept under their own keys (in memory and on disk).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tensors import tvm_ffi_enabled

__all__ = [
    "CompileCache",
    "CompileRecord",
    "cache_dir",
    "disk_cache_enabled",
    "source_fingerprint",
]

_EXPORT_NAME = "attnkit_kernel"


def disk_cache_enabled() -> bool:
    return os.environ.get("ATTNKIT_DISABLE_DISK_CACHE", "0") not in ("1", "true", "True")


def cache_dir() -> Path:
    root = os.environ.get("ATTNKIT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "attnkit"


def _source_roots() -> list[Path]:
    import attnkit.cute
    import attnkit.kernels.cute

    return [Path(attnkit.kernels.cute.__file__).resolve().parent, Path(attnkit.cute.__file__).resolve().parent]


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """Hash of the kernel and launcher sources plus the toolchain versions (once per process)."""
    import cutlass
    import torch

    h = hashlib.sha256()
    h.update(f"py{sys.version_info.major}.{sys.version_info.minor}".encode())
    h.update(f"cutlass-dsl={cutlass.__version__};torch={torch.__version__}".encode())
    for root in _source_roots():
        for src in sorted(root.rglob("*.py")):
            h.update(f"{root.name}/{src.relative_to(root).as_posix()}".encode())
            data = src.read_bytes()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _load_runtime_globally() -> None:
    """Exporting and loading objects resolve the CuTe runtime's cuda* shims by symbol name; the
    DSL opens that library privately (RTLD_LOCAL), so open it once more with RTLD_GLOBAL."""
    import ctypes

    import cutlass.cute as cute

    for lib in cute.runtime.find_runtime_libraries(enable_tvm_ffi=False):
        if Path(lib).exists():
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def _key_hash(namespace: str, config: Any, tvm_ffi: bool = False) -> str:
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"compile cache keys must be frozen dataclasses, got {type(config).__name__}")
    # repr of a frozen dataclass of plain fields is stable across processes, unlike hash().
    text = f"{namespace}:{type(config).__module__}.{type(config).__qualname__}:{config!r}"
    if tvm_ffi:
        # the exported object links against apache-tvm-ffi: a new version misses instead of loading a stale one
        import tvm_ffi as tvm_ffi_module

        text += f":tvm-ffi={tvm_ffi_module.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass
class CompileRecord:
    """How one config was obtained in this process: ``source`` is "compile" or "disk"."""

    source: str
    seconds: float
    cubin: bytes | None = None


class CompileCache:
    """In-memory + on-disk cache of compiled CuTe-DSL kernels keyed on frozen config dataclasses."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._memory: dict[Any, Any] = {}
        # keyed (config, TVM-FFI path) like _memory; ``records`` shows the current path's
        self._records: dict[tuple[Any, bool], CompileRecord] = {}
        self._lock = threading.Lock()

    @property
    def records(self) -> dict[Any, CompileRecord]:
        """How each config was obtained in this process, on the current host path (``tensors.tvm_ffi_enabled``)."""
        path = tvm_ffi_enabled()
        return {config: record for (config, tvm), record in self._records.items() if tvm == path}

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._records.clear()

    def _entry_paths(self, config: Any) -> tuple[Path, Path]:
        folder = cache_dir() / source_fingerprint()
        stem = _key_hash(self.namespace, config, tvm_ffi_enabled())
        return folder / f"{stem}.o", folder / f"{stem}.cubin"

    def get(self, config: Any, build: Callable[[str], Any], *, arch: str | None = None) -> Any:
        """Return the compiled kernel for ``config``; ``build(options)`` runs on a miss."""
        key = (config, tvm_ffi_enabled())
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                return hit
            arch = arch if arch is not None else config.arch
            kernel = self._load(config) if disk_cache_enabled() else None
            if kernel is None:
                kernel = self._compile(config, build, arch)
            self._memory[key] = kernel
            return kernel

    def recompile(self, config: Any, build: Callable[[str], Any], *, arch: str | None = None) -> Any:
        """Drop a (disk-loaded) entry and compile it in this process; the disk entry is rewritten."""
        key = (config, tvm_ffi_enabled())
        with self._lock:
            self._memory.pop(key, None)
            kernel = self._compile(config, build, arch if arch is not None else config.arch)
            self._memory[key] = kernel
            return kernel

    def cubin(self, config: Any) -> bytes | None:
        """The cubin of a config obtained in this process (compiled or loaded from disk)."""
        record = self._records.get((config, tvm_ffi_enabled()))
        return record.cubin if record is not None else None

    def _load(self, config: Any) -> Any:
        import cutlass.cute as cute

        obj_path, cubin_path = self._entry_paths(config)
        if not obj_path.exists():
            return None
        start = time.perf_counter()
        try:
            _load_runtime_globally()
            module = cute.runtime.load_module(str(obj_path), enable_tvm_ffi=tvm_ffi_enabled())
            kernel = getattr(module, _EXPORT_NAME)
        except Exception as exc:  # a truncated or foreign object is a miss, not an error
            print(f"attnkit: ignoring unreadable cache entry {obj_path}: {exc}", file=sys.stderr)
            return None
        cubin = cubin_path.read_bytes() if cubin_path.exists() else None
        self._records[(config, tvm_ffi_enabled())] = CompileRecord("disk", time.perf_counter() - start, cubin)
        return kernel

    def _compile(self, config: Any, build: Callable[[str], Any], arch: str) -> Any:
        with tempfile.TemporaryDirectory(prefix="attnkit-cubin-") as scratch:
            options = f"--gpu-arch {arch} --keep-cubin --dump-dir {scratch}"
            if tvm_ffi_enabled():
                options += " --enable-tvm-ffi"
            start = time.perf_counter()
            kernel = build(options)
            seconds = time.perf_counter() - start
        cubin = kernel.__cubin__
        cubin = bytes(cubin) if cubin is not None else None
        self._records[(config, tvm_ffi_enabled())] = CompileRecord("compile", seconds, cubin)
        if disk_cache_enabled():
            self._store(config, kernel, cubin)
        return kernel

    def _store(self, config: Any, kernel: Any, cubin: bytes | None) -> None:
        obj_path, cubin_path = self._entry_paths(config)
        obj_path.unlink(missing_ok=True)
        try:
            _load_runtime_globally()
            obj_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=obj_path.parent, prefix=".tmp-") as scratch:
                if tvm_ffi_enabled():
                    kernel.export_to_c(str(Path(scratch) / f"{obj_path.stem}.o"), function_name=_EXPORT_NAME)
                else:
                    kernel.export_to_c(scratch, obj_path.stem, function_prefix=_EXPORT_NAME)
                if cubin is not None:
                    tmp_cubin = Path(scratch) / "kernel.cubin"
                    tmp_cubin.write_bytes(cubin)
                    os.replace(tmp_cubin, cubin_path)
                # The .o goes last: its presence is what marks the entry complete.
                os.replace(Path(scratch) / f"{obj_path.stem}.o", obj_path)
        except Exception as exc:  # the cache is an optimisation; a read-only disk must not fail a call
            print(f"attnkit: could not write compile cache entry {obj_path}: {exc}", file=sys.stderr)
