"""The CuTe launchers' host-side tensor preparation: what TMA can describe is passed as is, the rest copied."""

import pytest
import torch
from attnkit.cute.tensors import tma_ready


def test_tma_describable_tensors_are_not_copied():
    x = torch.randn(2, 64, 4, 128, dtype=torch.bfloat16)
    assert tma_ready(x) is x
    # a head slice keeps 16-byte strides and an aligned base
    assert tma_ready(x[:, :, 1:3]).data_ptr() == x[:, :, 1:3].data_ptr()
    # size-1 dims may carry any 16-byte stride
    y = torch.randn(64 * 64 + 64, dtype=torch.float16).as_strided((1, 64, 1, 64), (8, 64, 16, 1))
    assert tma_ready(y) is y


def test_what_tma_cannot_describe_is_copied_contiguous():
    x = torch.randn(2, 64, 4, 128, dtype=torch.bfloat16)
    cases = {
        "last dim strided": x.transpose(2, 3),
        "broadcast heads": x[:, :, :1].expand(2, 64, 4, 128),
        "misaligned base": torch.randn(2 * 64 * 4 * 128 + 4, dtype=torch.bfloat16)[4:].view(2, 64, 4, 128),
        "odd row stride": torch.randn(2, 64, 4, 130, dtype=torch.bfloat16)[..., :128],
    }
    for name, t in cases.items():
        r = tma_ready(t)
        assert r.is_contiguous() and torch.equal(r, t), name
        assert r.data_ptr() != t.data_ptr(), name


def test_a_converted_tensor_describes_the_same_memory_to_every_kernel():
    """The backward launcher converts dout, lse2, dpsum and dQaccum once and passes each to two kernels: the
    argument CuTe marshals (a memref descriptor: base pointer, then the int32 extents and int64 strides) is built
    once and is the same, with the tensor's own base and strides, on every call."""
    import ctypes

    pytest.importorskip("cutlass")
    from attnkit.cute.tensors import to_cute

    t = torch.randn(2, 64, 4, 128, dtype=torch.bfloat16)[:, 1:]
    c = to_cute(t)
    descriptors = [c.__c_pointers__() for _ in range(3)]
    assert descriptors[0] == descriptors[1] == descriptors[2] and len(descriptors[0]) == 1
    words = (ctypes.c_int64 * 6).from_address(descriptors[0][0])
    shape = [words[1] & 0xFFFFFFFF, words[1] >> 32, words[2] & 0xFFFFFFFF, words[2] >> 32]
    assert words[0] == t.data_ptr() and shape == list(t.shape) and list(words[3:6]) == list(t.stride()[:3])
