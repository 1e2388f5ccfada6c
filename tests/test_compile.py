"""torch.compile(fullgraph=True) of the public functions, forward and backward, equal to eager. Few cases: compiling
is slow on a small CPU machine; one runs the default inductor backend, the others aot_eager."""

import attnkit
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def run(fn, inputs, compiled_backend):
    """Forward and backward of fn eagerly and compiled; asserts outputs and input grads agree."""
    eager_in, compiled_in = leaves(*inputs), leaves(*inputs)
    compiled = torch.compile(fn, fullgraph=True, backend=compiled_backend)
    want, got = fn(*eager_in), compiled(*compiled_in)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for w, g in zip(want, got, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w)
    seeds = [torch.randn_like(w) for w in want]
    sum(((w * s).sum() for w, s in zip(want, seeds, strict=True)), torch.zeros(())).backward()
    sum(((g * s).sum() for g, s in zip(got, seeds, strict=True)), torch.zeros(())).backward()
    for e, c in zip(eager_in, compiled_in, strict=True):
        torch.testing.assert_close(c.grad, e.grad)


def test_attention_bias_causal_inductor():
    q, k, v = torch.randn(2, 5, 4, 16), torch.randn(2, 7, 2, 16), torch.randn(2, 7, 2, 16)
    qf, kf = torch.randn(1, 5, 4, 2), torch.randn(2, 7, 1, 2)

    def fn(q, k, v, qf, kf):
        return attnkit.attention(q, k, v, causal=True, bias=attnkit.LowRankBias(qf, kf)) * 2.0

    run(fn, (q, k, v, qf, kf), "inductor")


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_attention_no_bias_causal_window_aot_eager(backend):
    q, k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)

    def fn(q, k, v):
        out, lse = attnkit.attention(q, k, v, causal=True, window=(2, -1), return_lse=True, backend=backend)
        return out, lse.detach()

    run(fn, (q, k, v), "aot_eager")


def test_lightning_state_aot_eager():
    q, k, v = torch.randn(2, 9, 3, 4), torch.randn(2, 9, 3, 4), torch.randn(2, 9, 3, 5)
    init = torch.randn(2, 3, 4, 5)
    slopes = attnkit.lightning.slopes(3)

    def fn(q, k, v, init):
        return attnkit.lightning_attention(q, k, v, slopes, scale=0.5, initial_state=init, output_final_state=True)

    run(fn, (q, k, v, init), "aot_eager")


def test_lightning_step_aot_eager():
    q, k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 5)
    state = torch.randn(2, 3, 4, 5)
    slopes = attnkit.lightning.slopes(3)

    def fn(q, k, v, state):
        return attnkit.lightning_attention_step(q, k, v, slopes, state, scale=0.5)

    run(fn, (q, k, v, state), "aot_eager")


def test_lightning_transposed_inputs_inductor():
    q, k, v = (torch.randn(1, 3, 5, 4).transpose(1, 2) for _ in range(3))
    slopes = attnkit.lightning.slopes(3)

    def fn(q, k, v):
        return attnkit.lightning_attention(q, k, v, slopes)[0] * 2.0

    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v))
