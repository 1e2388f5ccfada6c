"""`python -m attnkit.precompile --jobs N`: a worker's compile lands in the disk cache for the serial pass."""

from __future__ import annotations

import pytest

pytest.importorskip("cutlass")

from attnkit import precompile  # noqa: E402
from attnkit.cute import attention_bwd as bwd  # noqa: E402


def test_worker_compile_is_loaded_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ATTNKIT_DISABLE_DISK_CACHE", raising=False)
    monkeypatch.setenv("CUTE_DSL_ARCH", "sm_90a")
    configs = bwd.shipped_configs("sm_90a")
    index = next(i for i, cfg in enumerate(configs) if type(cfg).__name__ == "BwdPostprocessConfig")
    bwd.cache().clear_memory()
    try:
        assert precompile._compile_one(("sm_90a", "bwd", index, False)) is None
        assert any(tmp_path.rglob("*")), "the worker wrote nothing to the disk cache"
        bwd.cache().clear_memory()  # as in a fresh process: only the disk copy remains
        bwd.compile_config(configs[index])
        assert bwd.cache().records[configs[index]].source == "disk"
    finally:
        bwd.cache().clear_memory()


def test_variants_extend_the_shipped_configs():
    from attnkit.cute import attention_fwd as fwd

    for mod in (fwd, bwd):
        shipped = precompile.configs_of(mod, "sm_90a")
        both = precompile.configs_of(mod, "sm_90a", variants=True)
        assert both[: len(shipped)] == shipped and len(set(both)) == len(both)
        for causal in (False, True):
            assert set(mod.variant_configs(causal).values()) <= set(both)
