"""The CuTe launchers' host-side tensor preparation: what TMA can describe is passed as is, the rest copied."""

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
