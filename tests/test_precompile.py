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


def test_spill_audit_walks_the_reachable_configs():
    """scripts/spill_audit.py: distinct configs of both directions and dtypes, as the launchers choose them (the
    shipped main-kernel configs among them), the bf16 backward first; one audited the way its workers do."""
    import sys
    from pathlib import Path

    import torch
    from attnkit.cute import attention_fwd as fwd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import spill_audit

    configs = spill_audit.reachable()
    assert len(configs) == len(set(configs)) > 1000
    assert {(type(c).__name__, c.dtype) for c in configs} == {
        (kind, dtype) for kind in ("FwdConfig", "BwdConfig") for dtype in ("bf16", "fp16")
    }
    assert (type(configs[0]).__name__, configs[0].dtype) == ("BwdConfig", "bf16")
    shipped = [c for mod in (fwd, bwd) for c in mod.shipped_configs() if type(c).__name__ in ("FwdConfig", "BwdConfig")]
    missing = [c for c in shipped if c not in set(configs)]
    # the shipped set also forces dQ atomics where the default takes the reduce-add
    assert all(isinstance(c, bwd.BwdConfig) and not c.dq_tma_reduce for c in missing), missing
    # every GQA group size the forward packs
    assert {c.pack_gqa for c in configs if isinstance(c, fwd.FwdConfig)} == {1, *spill_audit.PACKED_GROUPS}
    kind, _, counts, regs, error = spill_audit._audit_one(bwd.choose_config(torch.bfloat16, 64, 64, False, True))
    assert error is None and kind == "bwd" and regs > 0
    assert counts["LDL"] == counts["STL"] == counts["in loop"] == counts["serialized"] == 0


def test_auto_runs_the_kernels_its_gpu_run_checked(cache_dir):
    """backend='auto' sends each dispatch.AUTO_CUTE class to kernels whose SASS is, instruction for instruction, that
    of the kernels the class's GPU run checked and timed (CuteRule.kernels, pinned from the commit of that run): a
    change that reaches one of them (a new default, a kernel edit) fails here until a GPU run has checked it and the
    rule is repinned with that run as its evidence. The digests depend on the pinned nvidia-cutlass-dsl (its ptxas)
    and Triton's cuobjdump (setup_env.sh)."""
    import dataclasses

    from attnkit import dispatch

    for rule in dispatch.AUTO_CUTE:
        assert rule.kernels, f"{rule.arch}: no pinned kernels"
        now = precompile.auto_digests(rule)
        changed = {what: (now.get(what), want) for what, want in rule.kernels if now.get(what) != want}
        assert not changed and len(now) == len(rule.kernels), (
            f"auto's kernels differ from those its GPU run checked (now, pinned): {changed or now}; "
            "`python -m attnkit.precompile --auto` lists them"
        )
        # a wider class runs configs auto_kernels does not list yet: it says so rather than pin too few
        for wider in (dict(gqa=True), dict(bias=True), dict(masks=("window",))):
            with pytest.raises(NotImplementedError):
                precompile.auto_kernels(dataclasses.replace(rule, **wider))


def test_instruction_digest_ignores_addresses_and_encodings():
    one = "        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;   /* 0x00000 */\n"
    moved = "        /*0a30*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;   /* 0x1234f */\n"
    other = "        /*0010*/                   HGMMA.64x128x16.F32.BF16 R26, gdesc[UR4], R24 ;   /* 0x00000 */\n"
    assert precompile.instruction_digest(one) == precompile.instruction_digest(moved)
    assert precompile.instruction_digest(one) != precompile.instruction_digest(other)
