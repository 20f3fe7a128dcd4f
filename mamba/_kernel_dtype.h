/*
 * Per-dtype template: every kernel for one element type.  Included once per
 * dtype by _scan_kernel.c (and by nothing else), which defines before it
 *
 *   real       the element type (float, double)
 *   SFX(name)  name with the dtype's suffix (name##_f32, name##_f64): the
 *              exported kernels and the static helpers of each dtype
 *   EXP        the vectorisable exp for real (exp_f32, exp_f64)
 *   SP_TERMS   terms of softplus' log1p series for real's rounding
 *
 * and this file #undefs them at its end, so the next dtype starts clean.  No
 * include guard: being read twice is the point.
 */
#if !defined(real) || !defined(SFX) || !defined(EXP) || !defined(SP_TERMS)
#error "_kernel_dtype.h is a per-dtype template: include it from _scan_kernel.c with real, SFX, EXP, SP_TERMS defined"
#endif

/* log(1 + e^x) as torch's softplus (beta 1, threshold 20):
 * max(x, 0) + log1p(e^-|x|), with log1p(w) = 2 atanh(w / (2 + w)) summed as
 * a series in s^2 <= 1/9 (SP_TERMS terms: below the dtype's rounding). */
static inline real SFX(softplus)(real x) {
    const real ax = x < 0 ? -x : x;
    const real w = EXP(-ax);
    const real s = w / (2 + w), s2 = s * s;
    real p = 0;
    for (int k = SP_TERMS - 1; k >= 0; k--) p = p * s2 + (real)1 / (real)(2 * k + 1);
    const real r = (x > 0 ? x : 0) + 2 * s * p;
    return x > 20 ? x : r;
}

static inline real SFX(sigmoid)(real x) { return 1 / (1 + EXP(-x)); }

/* Sums per-row partials (rows, m) into out (m), in row order: the parameter
 * gradients are accumulated per batch row (one thread each) and reduced here,
 * so their value does not depend on which thread did which row. */
static void SFX(sum_rows)(const real *rows, real *out, int64_t nrows, int64_t m) {
    memset(out, 0, sizeof(real) * (size_t)m);
    for (int64_t b = 0; b < nrows; b++)
        for (int64_t i = 0; i < m; i++) out[i] += rows[b * m + i];
}

#include "_kernel_scan.h"
#include "_kernel_conv.h"

#undef real
#undef SFX
#undef EXP
#undef SP_TERMS
