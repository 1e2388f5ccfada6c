import os

import pytest
import torch

# The suite runs the CuTe launchers' default host path whatever the shell exports; tests of the opt-in TVM-FFI path
# (tests/test_cute_tvm_ffi.py) switch it on themselves.
os.environ.pop("ATTNKIT_CUTE_TVM_FFI", None)

# Triton's interpreter must be chosen before triton is imported; CPU tensors then run the Triton kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        # Import the kernels now, while the interpreter is chosen: a test that unsets TRITON_INTERPRET later
        # must not be the first to load them (they would bind to the missing GPU driver for the whole run).
        import attnkit.backends.triton_backend  # noqa: F401
    except ImportError:
        pass


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One fresh CuTe disk cache for a test module: the first compile of each config there is a cold one."""
    from attnkit.cute import attention_bwd, attention_fwd

    path = tmp_path_factory.mktemp("attnkit-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNKIT_CACHE_DIR", str(path))
    mp.delenv("ATTNKIT_DISABLE_DISK_CACHE", raising=False)
    mp.setenv("CUTE_DSL_ARCH", "sm_90a")
    for launcher in (attention_fwd, attention_bwd):
        launcher.cache().clear_memory()
    yield path
    for launcher in (attention_fwd, attention_bwd):
        launcher.cache().clear_memory()
    mp.undo()


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    major = torch.cuda.get_device_capability()[0] if has_gpu else 0
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "sm90" in item.keywords and major != 9:
            item.add_marker(pytest.mark.skip(reason="needs a Hopper (sm90) GPU"))
        if "sm100" in item.keywords and major != 10:
            item.add_marker(pytest.mark.skip(reason="needs a Blackwell (sm100) GPU"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
