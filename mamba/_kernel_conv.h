/*
 * Causal depthwise conv1d (+ SiLU) of the Mamba block, channel-last, forward
 * and backward, for one dtype (part of the template _kernel_dtype.h; see
 * _scan_kernel.c):
 *
 *   out[t, e] = act(bias[e] + sum_j w[j, e] x[t - (k - 1) + j, e]),  x[<0] = 0
 *
 * One thread per batch row, as the scan; the weight and bias gradients are
 * accumulated per row and summed over rows in order (sum_rows).
 */
#ifndef SFX
#error "_kernel_conv.h is part of the per-dtype template: include _kernel_dtype.h"
#endif

typedef struct {
    const real *x, *wT, *bias, *gout;
    real *out, *gx, *gw_rows, *gb_rows;
    int64_t L, E, K, ldx;
    int silu;
} SFX(cargs);

/* pre-activation of one channel block at step t */
static inline void SFX(conv_pre)(const SFX(cargs) *a, int64_t b, int64_t t, int64_t e0, int64_t ec,
                                 real *restrict acc) {
    if (a->bias) {
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) acc[e] = a->bias[e0 + e];
    } else {
        memset(acc, 0, sizeof(real) * (size_t)ec);
    }
    for (int64_t j = 0; j < a->K; j++) {
        const int64_t s = t - (a->K - 1) + j;
        if (s < 0) continue;
        const real *restrict xs = a->x + (b * a->L + s) * a->ldx + e0;
        const real *restrict wj = a->wT + j * a->E + e0;
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) acc[e] += wj[e] * xs[e];
    }
}

static void SFX(conv_fwd_row)(void *p, int64_t b, void *scratch) {
    SFX(cargs) *a = (SFX(cargs) *)p;
    real acc[EC];
    (void)scratch;
    for (int64_t t = 0; t < a->L; t++)
        for (int64_t e0 = 0; e0 < a->E; e0 += EC) {
            const int64_t ec = a->E - e0 < EC ? a->E - e0 : EC;
            SFX(conv_pre)(a, b, t, e0, ec, acc);
            real *restrict o = a->out + (b * a->L + t) * a->E + e0;
            if (a->silu) {
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) o[e] = acc[e] * SFX(sigmoid)(acc[e]);
            } else {
                memcpy(o, acc, sizeof(real) * (size_t)ec);
            }
        }
}

static void SFX(conv_bwd_row)(void *p, int64_t b, void *scratch) {
    SFX(cargs) *a = (SFX(cargs) *)p;
    real acc[EC];
    (void)scratch;
    real *gw = a->gw_rows + b * a->K * a->E, *gb = a->gb_rows + b * a->E;
    for (int64_t t = 0; t < a->L; t++)
        for (int64_t e0 = 0; e0 < a->E; e0 += EC) {
            const int64_t ec = a->E - e0 < EC ? a->E - e0 : EC;
            const real *restrict go = a->gout + (b * a->L + t) * a->E + e0;
            if (a->silu) { /* acc becomes dL/d(pre-activation) */
                SFX(conv_pre)(a, b, t, e0, ec, acc);
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    const real sg = SFX(sigmoid)(acc[e]);
                    acc[e] = go[e] * sg * (1 + acc[e] * (1 - sg));
                }
            } else {
                memcpy(acc, go, sizeof(real) * (size_t)ec);
            }
#pragma omp simd
            for (int64_t e = 0; e < ec; e++) gb[e0 + e] += acc[e];
            for (int64_t j = 0; j < a->K; j++) {
                const int64_t s = t - (a->K - 1) + j;
                if (s < 0) continue;
                const real *restrict xs = a->x + (b * a->L + s) * a->ldx + e0;
                const real *restrict wj = a->wT + j * a->E + e0;
                real *restrict gxs = a->gx + (b * a->L + s) * a->E + e0;
                real *restrict gwj = gw + j * a->E + e0;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    gxs[e] += wj[e] * acc[e];
                    gwj[e] += xs[e] * acc[e];
                }
            }
        }
}

/* x: rows of E channels, ldx apart (a view of in_proj's output is fine);
 * wT: (K, E); bias may be NULL; out: (B, L, E). */
int SFX(conv_fwd)(const real *x, int64_t ldx, const real *wT, const real *bias, real *out,
                  int64_t Bsz, int64_t L, int64_t E, int64_t K, int silu, int nthreads) {
    SFX(cargs) a;
    memset(&a, 0, sizeof(a));
    a.x = x; a.wT = wT; a.bias = bias; a.out = out;
    a.L = L; a.E = E; a.K = K; a.ldx = ldx; a.silu = silu;
    return parallel_rows(SFX(conv_fwd_row), &a, Bsz, 0, nthreads);
}

/* gx (B, L, E) must come in zeroed; gwT (K, E) and gbias (E) are overwritten. */
int SFX(conv_bwd)(const real *x, int64_t ldx, const real *wT, const real *bias, const real *gout,
                  real *gx, real *gwT, real *gbias, int64_t Bsz, int64_t L, int64_t E, int64_t K,
                  int silu, int nthreads) {
    SFX(cargs) a;
    memset(&a, 0, sizeof(a));
    a.x = x; a.wT = wT; a.bias = bias; a.gout = gout; a.gx = gx;
    a.L = L; a.E = E; a.K = K; a.ldx = ldx; a.silu = silu;
    a.gw_rows = (real *)calloc((size_t)(Bsz * K * E), sizeof(real));
    a.gb_rows = (real *)calloc((size_t)(Bsz * E), sizeof(real));
    int err = !a.gw_rows || !a.gb_rows;
    if (!err) err = parallel_rows(SFX(conv_bwd_row), &a, Bsz, 0, nthreads);
    if (!err) {
        SFX(sum_rows)(a.gw_rows, gwT, Bsz, K * E);
        SFX(sum_rows)(a.gb_rows, gbias, Bsz, E);
    }
    free(a.gw_rows);
    free(a.gb_rows);
    return err;
}
