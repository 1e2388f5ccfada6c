"""exp2 on the FMA pipe: Cody-Waite split plus a minimax polynomial for 2^frac.

MUFU.EX2 issues at a sixteenth of the FMA rate, so a share of each softmax row can be computed here
instead (FA4's trick, not Blackwell-specific). Relative errors of the polynomials on [0, 1):
degree 3: 7.5e-5 (under a fifth of a bf16 half-ulp), degree 4: 2.6e-6 (under a hundredth of an fp16
half-ulp), so P rounded to the MMA dtype is unchanged in all but rare ties.
"""

import cutlass
import cutlass.cute as cute
from cutlass import Float32

# Minimax-in-relative-error fits of 2^f on [0, 1), low order first.
EXP2_POLY = {
    3: (0.9999251961708069, 0.695833683013916, 0.22606724500656128, 0.0780242532491684),
    4: (1.0000026226043701, 0.6930038332939148, 0.2414427548646927, 0.05201148986816406, 0.013534142635762691),
}

# 1.5 * 2^23: adding it (rounding down) leaves floor(x) in the low mantissa bits.
_ROUND_MAGIC = 12582912.0


@cute.jit
def exp2_poly(x: Float32, degree: cutlass.Constexpr[int] = 3) -> Float32:
    """2^x for x <= 127; inputs below -126 (including -inf) give about 2^-126 (a denormal or the smallest
    normal), never inf or NaN: a masked score's P is negligible next to the row's largest, which is >= 1."""
    # at -126 the exponent field stays >= 0 even when p(0) rounds just below 1
    x = cute.arch.fmax(x, -126.0)
    shifted = cute.arch.inline_ptx(
        "add.rm.ftz.f32 {$w0}, {$r0}, {$r1};",
        write_only_types=[Float32],
        read_only_args=[x, Float32(_ROUND_MAGIC)],
    )
    frac = x - (shifted - _ROUND_MAGIC)
    coeffs = EXP2_POLY[degree]
    p = Float32(coeffs[degree])
    for i in cutlass.range_constexpr(degree - 1, -1, -1):
        p = p * frac + coeffs[i]
    # floor(x) sits in the low bits of `shifted`; shifted << 23 adds it to p's exponent field
    return cute.arch.inline_ptx(
        "{\n\t.reg .b32 e, m;\n\tshl.b32 e, {$r0}, 23;\n\tmov.b32 m, {$r1};\n\t"
        "add.u32 m, m, e;\n\tmov.b32 {$w0}, m;\n\t}",
        write_only_types=[Float32],
        read_only_args=[shifted, p],
    )
