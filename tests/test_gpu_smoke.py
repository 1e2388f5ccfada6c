"""scripts/gpu_smoke.py's verdicts, on the CPU: the diagnosis a device run prints must point at the right place."""

import importlib.util
import os
import pathlib

import pytest
import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "scripts", "gpu_smoke.py")
_spec = importlib.util.spec_from_file_location("gpu_smoke", _PATH)
gpu_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_smoke)


def _case():
    torch.manual_seed(0)
    ref64 = torch.randn(2, 300, 4, 16, dtype=torch.float64)
    ref_lp = ref64.to(torch.bfloat16)
    return ref64, ref_lp


def test_kernel_as_accurate_as_the_low_precision_reference_passes(capsys):
    ref64, ref_lp = _case()
    assert gpu_smoke.verdict("out", ref_lp.clone(), ref64, ref_lp, seq_dim=1)
    assert "out: ok" in capsys.readouterr().out


@pytest.mark.parametrize("poison", ["nan", "offset"])
def test_wrong_rows_are_located_by_query_block(capsys, poison):
    ref64, ref_lp = _case()
    got = ref_lp.clone()
    # rows 130..140: in the third 64-row block
    got[1, 130:141, 2] = float("nan") if poison == "nan" else got[1, 130:141, 2] + 1.0
    assert not gpu_smoke.verdict("dq", got, ref64, ref_lp, seq_dim=1)
    text = capsys.readouterr().out
    assert "dq: WRONG" in text and "1/5 [2]" in text
    assert ("NaN 176/" in text) == (poison == "nan")


CUTE_GROUPS = [
    "cute-fwd",
    "cute-fwd-wide",
    "cute-fwd-192",
    "cute-fwd-split",
    "cute-fwd-bias-slice",
    "cute-fwd-176",
    "cute-fwd-dynamic",
    "cute-bwd",
    "cute-bwd-reduce",
    "cute-bwd-wide",
    "cute-bwd-bias-tc",
    "cute-bwd-bias-stmatrix",
    "cute-bwd-bias-slice",
    "cute-bwd-80",
    "cute-bwd-reduce-warp",
    "cute-bwd-3-stages",
    "cute-bwd-rotate",
    "cute-bwd-early-stats",
]


# the opt-in TVM-FFI host path: cases of cute-fwd and cute-bwd again, its kernels compiled in the group's process (the
# precompile builds the default path's)
TVM_FFI_GROUP = "cute-tvm-ffi"


def test_every_group_has_cases():
    assert set(gpu_smoke.GROUPS) == {*CUTE_GROUPS, TVM_FFI_GROUP, "triton"}
    assert all(gpu_smoke.GROUPS.values())


def test_the_tvm_ffi_group_repeats_cases_of_the_default_groups():
    """Its failure then says the host path is at fault: the same inputs passed through the default one."""
    for name, run in gpu_smoke.GROUPS[TVM_FFI_GROUP].items():
        direction, case = name.split(" ", 1)
        assert direction in ("fwd", "bwd"), name
        pool = {**gpu_smoke.GROUPS[f"cute-{direction}"], **gpu_smoke.GROUPS["cute-bwd-bias-tc"]}
        assert case in pool, name
        assert pool[case].config() == run.config(), name


@pytest.mark.parametrize("group", CUTE_GROUPS)
def test_smoke_configs_are_precompiled(monkeypatch, group):
    """gpu_check compiles on every core before the smoke runs; a case outside that set compiles serially there."""
    pytest.importorskip("cutlass")
    from attnkit import precompile
    from attnkit.cute import attention_bwd, attention_fwd

    cases = str(pathlib.Path(gpu_smoke.ROOT) / "tests" / "cute_gpu_cases.py")
    mod = attention_fwd if group.startswith("cute-fwd") else attention_bwd
    built = precompile.configs_of(mod, "sm_90a", variants=True, cases=cases)
    if group == "cute-fwd":
        monkeypatch.setenv(attention_fwd.WIDE_TILE_ENV, "0")
    if group in ("cute-fwd", "cute-fwd-split"):
        monkeypatch.setenv(attention_fwd.BIAS_SLICE_ENV, "0")
    if group in ("cute-bwd", "cute-bwd-wide", "cute-bwd-bias-tc", "cute-bwd-bias-stmatrix"):
        monkeypatch.setenv(attention_bwd.DQ_TMA_REDUCE_ENV, "0")
    if group.startswith("cute-bwd") and group not in ("cute-bwd-bias-stmatrix", "cute-bwd-bias-slice"):
        monkeypatch.setenv(attention_bwd.BIAS_STMATRIX_ENV, "0")
    if group.startswith("cute-bwd") and group != "cute-bwd-bias-slice":
        monkeypatch.setenv(attention_bwd.BIAS_SLICE_ENV, "0")
    for name, run in gpu_smoke.GROUPS[group].items():
        cfg = run.config()
        assert cfg in built, f"{group}: {name}: {cfg}"
        if group == "cute-fwd-192":
            assert cfg.num_mma_warpgroups == 3, name
        if mod is attention_fwd:
            assert cfg.split_mask_loops == (group == "cute-fwd-split"), name
            assert (cfg.tile_n == 176) == (group == "cute-fwd-176"), name
            assert cfg.dynamic_schedule == (group == "cute-fwd-dynamic"), name
            assert cfg.bias_slice == (group == "cute-fwd-bias-slice"), name
        if group == "cute-bwd-reduce":
            assert cfg.dq_tma_reduce, name
        if group in ("cute-bwd", "cute-bwd-wide", "cute-bwd-bias-tc"):
            # the reduce-add only where a case asks for it by name (the factor gradients under dK with dQ's
            # reduce-add staging: ATTNKIT_SM90_BWD_TC_FACTOR_GRADS=0 gives that config the float32 ones)
            assert not cfg.dq_tma_reduce or (group == "cute-bwd-bias-tc" and "reduce-add" in name), name
        if group == "cute-bwd-80":
            assert cfg.tile_m == 80, name
        if mod is attention_bwd:
            assert cfg.dq_reduce_warp == (group == "cute-bwd-reduce-warp"), name
            assert (cfg.num_stages == 3) == (group == "cute-bwd-3-stages"), name
            assert cfg.rotate_query_blocks == (group == "cute-bwd-rotate"), name
            assert cfg.early_stats == (group == "cute-bwd-early-stats"), name
        if group == "cute-fwd-bias-slice":
            # and the config it falls back to, the bias wgmma waited for alone (ATTNKIT_SM90_FWD_BIAS_SLICE=0)
            monkeypatch.setenv(attention_fwd.BIAS_SLICE_ENV, "0")
            twin = run.config()
            monkeypatch.delenv(attention_fwd.BIAS_SLICE_ENV)
            assert not twin.bias_slice and twin in built, f"{group}: {name}: {twin}"
        if mod is attention_bwd:
            assert cfg.bias_slice == (group == "cute-bwd-bias-slice"), name
        if group == "cute-bwd-bias-slice":
            # and the configs it falls back to: the separate bias wgmma (ATTNKIT_SM90_BWD_BIAS_SLICE=0), and that
            # without the bias stmatrix too (ATTNKIT_SM90_BWD_BIAS_STMATRIX=0 as well)
            twin = attention_bwd.without_bias_slice(cfg)
            assert twin in built and attention_bwd.without_bias_stmatrix(twin) in built, f"{group}: {name}: {twin}"
        elif group == "cute-bwd-bias-stmatrix":
            # stmatrix with a bias above d = 64, and the config it falls back to (ATTNKIT_SM90_BWD_BIAS_STMATRIX=0)
            assert cfg.bias_rank and max(cfg.head_dim, cfg.head_dim_v) > 64 and cfg.make_kernel().ds_stmatrix, name
            twin = attention_bwd.without_bias_stmatrix(cfg)
            assert not twin.make_kernel().ds_stmatrix and twin in built, f"{group}: {name}: {twin}"
        elif mod is attention_bwd and cfg.bias_rank and max(cfg.head_dim, cfg.head_dim_v) > 64:
            assert not cfg.make_kernel().ds_stmatrix, name
        if group == "cute-bwd-bias-tc":
            assert cfg.make_kernel().tc_factor_grads, name
            # and its float32 twin, which the group's failure leaves the rest of the run on
            monkeypatch.setenv(attention_bwd.TC_FACTOR_GRADS_ENV, "0")
            twin = run.config()
            monkeypatch.delenv(attention_bwd.TC_FACTOR_GRADS_ENV)
            assert not twin.make_kernel().tc_factor_grads and twin in built, f"{group}: {name}: {twin}"


def test_gpu_check_smokes_every_group():
    import re

    script = (pathlib.Path(gpu_smoke.ROOT) / "scripts" / "gpu_check.sh").read_text()
    groups = re.search(r"^groups=\((.*)\)$", script, re.M)
    assert groups and groups.group(1).split() == list(gpu_smoke.GROUPS)


def test_gpu_profile_cases_parse():
    """scripts/gpu_profile.sh is valid bash and every case it profiles is one scripts/gpu_profile.py accepts."""
    import re
    import shlex
    import subprocess

    root = pathlib.Path(gpu_smoke.ROOT) / "scripts"
    subprocess.run(["bash", "-n", str(root / "gpu_profile.sh")], check=True)
    spec = importlib.util.spec_from_file_location("gpu_profile", root / "gpu_profile.py")
    gpu_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_profile)
    cases = re.findall(r"^profile (\S+) (.+)$", (root / "gpu_profile.sh").read_text(), re.M)
    assert len(cases) == 6 and len({name for name, _ in cases}) == 6
    for name, args in cases:
        words = shlex.split(args)
        # the profile function's own flag: per-instruction stall sampling, for the backward cases
        source = words[0] == "--source"
        parsed = gpu_profile.parser().parse_args(words[1:] if source else words)
        assert name.endswith(parsed.method) and ("causal" in name) == parsed.causal
        assert name.startswith("bwd") == parsed.backward == source


def test_ncu_hot_ranks_each_kernels_instructions_by_stall_samples():
    """scripts/ncu_hot.py on an export shaped like Nsight Compute's source page (a kernel line, then its table)."""
    spec = importlib.util.spec_from_file_location("ncu_hot", pathlib.Path(gpu_smoke.ROOT) / "scripts" / "ncu_hot.py")
    ncu_hot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ncu_hot)
    header = '"# Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)"'
    text = "\n".join(
        [
            '"kernel_main"',
            header,
            '"0x100","HGMMA.64x64x16.F32.BF16 R152, gdesc[UR12], RZ","10","2"',
            '"0x110","BAR.SYNC.DEFER_BLOCKING 0x7, 0x100","70","65"',
            '"0x120","MUFU.EX2 R1, R1","20","1"',
            '"kernel_post"',
            '"# Address","Source","Instructions Executed"',
            '"0x0","EXIT","5"',
        ]
    )
    out = ncu_hot.hottest(text, top=2)
    lines = out.splitlines()
    assert lines[0] == "== kernel_main (3 instructions)"
    assert "70.0%" in lines[1] and "BAR.SYNC" in lines[1] and "not issued 65" in lines[1]
    assert "20.0%" in lines[2] and "MUFU.EX2" in lines[2]
    assert lines[3] == "== kernel_post (1 instructions)" and "no 'Warp Stall Sampling (All...' column" in lines[4]
