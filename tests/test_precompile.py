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
        assert precompile._compile_one(("sm_90a", "bwd", index, False, None)) is None
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
        for head_dim in getattr(mod, "VARIANT_HEAD_DIMS", (128,)):
            for causal in (False, True):
                assert set(mod.variant_configs(causal, head_dim).values()) <= set(both)


def test_gpu_test_cases_map_to_configs_that_fit():
    """Every shape the CuTe GPU tests run has a config (no shared-memory or head-dim error waits for the
    device), and precompile --cases adds those configs to each launcher's list."""
    import os

    from attnkit.cute import attention_fwd as fwd

    path = os.path.join(os.path.dirname(__file__), "cute_gpu_cases.py")
    found = precompile.case_configs(path, "sm_90a")
    assert any(type(c).__name__ == "FwdConfig" and c.pack_gqa > 1 for c in found)
    assert any(type(c).__name__ == "BwdConfig" and c.split_heads for c in found)
    assert any(type(c).__name__ == "BwdConfig" and c.bias_mma for c in found)
    for mod in (fwd, bwd):
        listed = precompile.configs_of(mod, "sm_90a", cases=path)
        mine = [c for c in found if type(c).__module__ == mod.__name__]
        assert mine and all(c in listed for c in mine) and len(set(listed)) == len(listed)
        for cfg in mine:
            assert cfg.make_kernel().smem_bytes() <= mod.SMEM_CAPACITY


def test_config_names_are_unique_short_file_names():
    from attnkit.cute import attention_fwd as fwd

    configs = [c for mod in (fwd, bwd) for c in precompile.configs_of(mod, "sm_90a", variants=True)]
    names = [precompile.config_name(c) for c in configs]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 160 and "/" not in n for n in names)
