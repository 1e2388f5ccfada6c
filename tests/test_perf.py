import itertools

import pytest
from attnkit import perf


def brute_pairs(sq, sk, causal, window):
    left, right = window
    if causal:
        right = 0
    offset = sk - sq
    count = 0
    for i in range(sq):
        for j in range(sk):
            d = j - (i + offset)
            if (left < 0 or d >= -left) and (right < 0 or d <= right):
                count += 1
    return count


def test_full_and_causal_square():
    n = 1000
    assert perf.visible_pairs(n, n) == n * n
    assert perf.visible_pairs(n, n, causal=True) == n * (n + 1) // 2


@pytest.mark.parametrize(
    "sq,sk,causal,window",
    [
        (sq, sk, causal, window)
        for sq, sk in [(1, 1), (1, 7), (7, 1), (5, 9), (9, 5), (33, 33), (0, 4), (4, 0)]
        for causal, window in itertools.product([False, True], [(-1, -1), (0, 0), (3, -1), (-1, 2), (2, 4), (20, 1)])
    ],
)
def test_visible_pairs_match_brute_force(sq, sk, causal, window):
    assert perf.visible_pairs(sq, sk, causal=causal, window=window) == brute_pairs(sq, sk, causal, window)


def test_causal_bottom_right_when_sk_longer():
    # 2 queries against 5 keys: the last query sees all 5 keys, the first 4.
    assert perf.visible_pairs(2, 5, causal=True) == 9
    # More queries than keys: the first rows see nothing.
    assert perf.visible_pairs(5, 2, causal=True) == 3


def test_attention_flops_match_the_baseline_convention():
    b, h, n, d = 2, 16, 8192, 128
    full = perf.attention_fwd_flops(b, h, n, n, d)
    assert full == 4 * b * h * n * n * d
    causal = perf.attention_fwd_flops(b, h, n, n, d, causal=True)
    assert causal == 4 * b * h * d * n * (n + 1) // 2
    assert perf.attention_bwd_flops(b, h, n, n, d) == 2.5 * full


def test_bias_flops():
    b, h, n, d, r = 1, 2, 64, 32, 8
    plain = perf.attention_fwd_flops(b, h, n, n, d)
    biased = perf.attention_fwd_flops(b, h, n, n, d, bias_rank=r)
    assert biased - plain == 2 * r * b * h * n * n
    bwd = perf.attention_bwd_flops(b, h, n, n, d, bias_rank=r)
    assert bwd == 2.5 * plain + 3 * (biased - plain)


def test_lightning_bytes_match_the_baseline_floor():
    # BASELINES.md: D=128, 65536 tokens x 16 heads, forward 1.07 GB, backward about 1.9 GB.
    fwd = perf.lightning_fwd_bytes(1, 65536, 16, 128)
    assert fwd == 65536 * 16 * 128 * 4 * 2
    assert abs(fwd / 1e9 - 1.07) < 0.01
    assert abs(perf.lightning_bwd_bytes(1, 65536, 16, 128) / 1e9 - 1.88) < 0.01


def test_lightning_flops_chunked():
    c, d, e = 64, 128, 64
    one_chunk = perf.lightning_fwd_flops(1, c, 1, d, e, chunk=c)
    assert one_chunk == 2 * c * c * (d + e) + 4 * c * d * e
    assert perf.lightning_fwd_flops(3, 4 * c + 1, 2, d, e, chunk=c) == 3 * 2 * 5 * one_chunk
    assert perf.lightning_bwd_flops(1, c, 1, d, e, chunk=c) == 2 * one_chunk


def test_decode_step_bytes_and_rates():
    state_only = perf.decode_step_bytes(64, 16, 128, include_qkvo=False)
    assert state_only == 2 * 64 * 16 * 128 * 128 * 4
    assert perf.decode_step_bytes(64, 16, 128) == state_only + 64 * 16 * 4 * 128 * 2
    # BASELINES.md: fla fused_recurrent 0.064 ms is about 2.1 TB/s effective.
    assert abs(perf.tbps(state_only, 0.064) - 2.1) < 0.05
    assert perf.tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert perf.percent_of(400.0, 800.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        perf.percent_of(1.0, 0.0)


def test_dtype_bytes():
    assert perf.dtype_bytes("bfloat16") == 2
    assert perf.dtype_bytes("torch.float32") == 4
    assert perf.dtype_bytes(1) == 1
    with pytest.raises(ValueError):
        perf.dtype_bytes("int3")
