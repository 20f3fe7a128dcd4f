/*
 * Selective scan, forward and backward, for one dtype (part of the template
 * _kernel_dtype.h; see _scan_kernel.c).
 *
 * Mamba, Gu & Dao 2023, Algorithm 2: eq. 2a-2b discretised with the
 * zero-order hold of eq. 4 for A and delta * B for B, as in
 * state-spaces/mamba's selective_scan_ref:
 *
 *   delta_t = softplus(delta_t + delta_bias)       (both optional, as upstream)
 *   h_t = exp(delta_t * A) . h_{t-1} + (delta_t * u_t) B_t      h_{-1} = 0
 *   y_t = <h_t, C_t> + D . u_t
 *   out_t = y_t * SiLU(z_t)                         (optional gate, as upstream)
 *
 * Inside a batch row, channels are processed in blocks of up to EC with the
 * state kept as h[n][block], so that the innermost loop runs over channels
 * and y_t needs no horizontal sum.
 *
 * The backward pass holds no (b, l, e, n) activation from the forward: it
 * re-runs the forward recurrence (state_step, the same code as the forward)
 * for one (batch row, channel block) into a per-thread scratch of about
 * 2 l n block values (the states and exp(delta_t A), the block narrowed so
 * that it stays in L2), then walks time backwards:
 *
 *   g_t      = gy_t C_t + exp(delta_{t+1} A) . g_{t+1}      (dL/dh_t)
 *   dC_t    += sum_e gy_t h_t             dB_t += sum_e g_t delta_t u_t
 *   du_t     = delta_t sum_n g_t B_t + D gy_t
 *   ddelta_t = sum_n g_t h_{t-1} exp(delta_t A) A + u_t sum_n g_t B_t
 *   dA      += sum_{b,t} g_t h_{t-1} exp(delta_t A) delta_t    dD += sum gy u
 *
 * (gy is dL/dy: dL/dout * SiLU(z) with the gate; the forward keeps y for dz.)
 * Parameter gradients (dA, dD, d delta_bias) are accumulated per batch row
 * and summed over rows in order (sum_rows).
 */
#ifndef SFX
#error "_kernel_scan.h is part of the per-dtype template: include _kernel_dtype.h"
#endif

typedef struct {
    const real *u, *delta, *At, *B, *C, *D, *z, *dbias, *gout, *gh_last;
    real *out, *y_pre, *h_last, *gu, *gdelta, *gB, *gC, *gz, *gA_rows, *gD_rows, *gbias_rows;
    int64_t L, E, N, ecb;
    int softplus;
} SFX(args);

/* dtv = softplus?(delta + bias) for one channel block of one time step */
static inline void SFX(load_dt)(const SFX(args) *a, int64_t row, int64_t e0, int64_t ec, real *restrict dtv) {
    const real *restrict dr = a->delta + row;
    if (a->dbias) {
        const real *restrict bias = a->dbias + e0;
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) dtv[e] = dr[e] + bias[e];
    } else {
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) dtv[e] = dr[e];
    }
    if (a->softplus) {
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) dtv[e] = SFX(softplus)(dtv[e]);
    }
}

/* One time step of the recurrence (eq. 2a) for the channel block
 * [e0, e0 + ec) of batch row b:
 *
 *   h_t[n] = exp(delta_t A[n]) . h_{t-1}[n] + (delta_t u_t) B_t[n]    every n
 *
 * written once for the forward and the backward's recompute, which keep
 * different things besides h_t: the forward (KEEP_Y) makes
 * y_t = D u_t + sum_n h_t[n] C_t[n] in the same pass, into kept (ec values);
 * the backward (KEEP_EXP) stores exp(delta_t A) into kept (n rows ldh apart)
 * for its reverse walk.  `keep` is a literal at each call, so once inlined
 * its tests are decided at compile time and the vectorised loop holds no
 * branch.  (Passing NULL for what is not kept would not do: the compiler
 * cannot prove the other pointer non-NULL, so that test stays in the code;
 * tried, it also lost the FMA in y's sum and changed the forward's rounding.)
 * State rows are ldh apart (h[n ldh + e]).  hp (h_{t-1}) and hn (h_t) may be
 * one buffer: the forward updates in place, each element read before it is
 * written at the same index; so they are not restrict, and `omp simd`
 * vectorises the loop without an alias check. */
ALWAYS_INLINE void SFX(state_step)(const SFX(args) *a, int64_t b, int64_t t, int64_t e0, int64_t ec,
                                   int64_t ldh, const real *hp, real *hn, enum keep keep,
                                   real *restrict kept) {
    const int64_t L = a->L, E = a->E, N = a->N;
    const int64_t row = (b * L + t) * E + e0;
    const real *restrict ut = a->u + row, *restrict D = a->D + e0;
    const real *restrict Bt = a->B + (b * L + t) * N, *restrict Ct = a->C + (b * L + t) * N;
    real du[EC], dtv[EC];
    SFX(load_dt)(a, row, e0, ec, dtv);
#pragma omp simd
    for (int64_t e = 0; e < ec; e++) {
        du[e] = dtv[e] * ut[e];
        if (keep == KEEP_Y) kept[e] = D[e] * ut[e];
    }
    for (int64_t n = 0; n < N; n++) {
        const real bn = Bt[n], cn = Ct[n];
        const real *restrict An = a->At + n * E + e0;
        const real *hpn = hp + n * ldh;
        real *hnn = hn + n * ldh;
#pragma omp simd
        for (int64_t e = 0; e < ec; e++) {
            const real dA = EXP(dtv[e] * An[e]);
            const real hv = dA * hpn[e] + du[e] * bn;
            hnn[e] = hv;
            if (keep == KEEP_Y)
                kept[e] += hv * cn;
            else
                kept[n * ldh + e] = dA;
        }
    }
}

static void SFX(fwd_row)(void *p, int64_t b, void *scratch) {
    SFX(args) *a = (SFX(args) *)p;
    const int64_t L = a->L, E = a->E, N = a->N;
    real *h = (real *)scratch; /* N * EC, updated in place */
    for (int64_t e0 = 0; e0 < E; e0 += EC) {
        const int64_t ec = E - e0 < EC ? E - e0 : EC;
        memset(h, 0, sizeof(real) * (size_t)(N * EC));
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (b * L + t) * E + e0;
            real *restrict yt = a->out + row;
            SFX(state_step)(a, b, t, e0, ec, EC, h, h, KEEP_Y, yt);
            if (a->z) {
                const real *restrict zt = a->z + row;
                if (a->y_pre) memcpy(a->y_pre + row, yt, sizeof(real) * (size_t)ec);
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) yt[e] *= zt[e] * SFX(sigmoid)(zt[e]);
            }
        }
        if (a->h_last)
            for (int64_t n = 0; n < N; n++)
                for (int64_t e = 0; e < ec; e++)
                    a->h_last[(b * E + e0 + e) * N + n] = h[n * EC + e];
    }
}

/* the widest channel block whose backward scratch stays within a 1 MiB L2 */
static int64_t SFX(bwd_block)(int64_t L, int64_t N) {
    int64_t ecb = EC;
    while (ecb > 32 && 2 * (L + 1) * N * ecb * (int64_t)sizeof(real) > (1 << 20)) ecb /= 2;
    return ecb;
}

static size_t SFX(bwd_scratch)(int64_t L, int64_t N, int64_t ecb) {
    return sizeof(real) * (size_t)((2 * L + 2) * N * ecb);
}

static void SFX(bwd_row)(void *p, int64_t b, void *scratch) {
    SFX(args) *a = (SFX(args) *)p;
    const int64_t L = a->L, E = a->E, N = a->N, ecb = a->ecb;
    real *H = (real *)scratch;       /* (L + 1) N ecb: H[t + 1] = h_t, H[0] = h_{-1} = 0 */
    real *P = H + (L + 1) * N * ecb; /* L N ecb: exp(delta_t A) */
    real *g = P + L * N * ecb;       /* N ecb */
    real du[EC], dtv[EC], gyv[EC], gsum[EC], gdA[EC];
    const real *restrict At = a->At, *restrict D = a->D;
    real *gA = a->gA_rows + b * N * E; /* (n, e) for this row */
    real *gD = a->gD_rows + b * E;
    real *gbias = a->gbias_rows ? a->gbias_rows + b * E : NULL;
    for (int64_t e0 = 0; e0 < E; e0 += ecb) {
        const int64_t ec = E - e0 < ecb ? E - e0 : ecb;
        /* 1. recompute the states of this block */
        memset(H, 0, sizeof(real) * (size_t)(N * ecb));
        for (int64_t t = 0; t < L; t++)
            SFX(state_step)(a, b, t, e0, ec, ecb, H + t * N * ecb, H + (t + 1) * N * ecb, KEEP_EXP, P + t * N * ecb);
        /* 2. walk back in time; g holds exp(delta_{t+1} A) . g_{t+1} */
        if (a->gh_last) {
            for (int64_t n = 0; n < N; n++)
                for (int64_t e = 0; e < ec; e++)
                    g[n * ecb + e] = a->gh_last[(b * E + e0 + e) * N + n];
        } else {
            memset(g, 0, sizeof(real) * (size_t)(N * ecb));
        }
        for (int64_t t = L - 1; t >= 0; t--) {
            const int64_t row = (b * L + t) * E + e0;
            const real *restrict ut = a->u + row, *restrict got = a->gout + row;
            const real *restrict Bt = a->B + (b * L + t) * N, *restrict Ct = a->C + (b * L + t) * N;
            real *restrict gBt = a->gB + (b * L + t) * N, *restrict gCt = a->gC + (b * L + t) * N;
            SFX(load_dt)(a, row, e0, ec, dtv);
            if (a->z && a->gz) { /* out = y SiLU(z): dy = dout SiLU(z), dz = dout y SiLU'(z) */
                const real *restrict zt = a->z + row, *restrict yp = a->y_pre + row;
                real *restrict gzt = a->gz + row;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    const real sg = SFX(sigmoid)(zt[e]);
                    gyv[e] = got[e] * zt[e] * sg;
                    gzt[e] = got[e] * yp[e] * sg * (1 + zt[e] * (1 - sg));
                }
            } else if (a->z) { /* z needs no gradient */
                const real *restrict zt = a->z + row;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) gyv[e] = got[e] * zt[e] * SFX(sigmoid)(zt[e]);
            } else {
                memcpy(gyv, got, sizeof(real) * (size_t)ec);
            }
#pragma omp simd
            for (int64_t e = 0; e < ec; e++) {
                du[e] = dtv[e] * ut[e];
                gsum[e] = 0;
                gdA[e] = 0;
            }
            for (int64_t n = 0; n < N; n++) {
                const real bn = Bt[n], cn = Ct[n];
                const real *restrict An = At + n * E + e0;
                const real *restrict hp = H + (t * N + n) * ecb;
                const real *restrict hn = H + ((t + 1) * N + n) * ecb;
                const real *restrict pn = P + (t * N + n) * ecb;
                real *restrict gn = g + n * ecb;
                real *restrict gAn = gA + n * E + e0;
                real sC = 0, sB = 0;
#pragma omp simd reduction(+ : sC, sB)
                for (int64_t e = 0; e < ec; e++) {
                    const real gt = gn[e] + gyv[e] * cn; /* dL/dh_t */
                    const real dA = pn[e];
                    const real gx = gt * hp[e] * dA;     /* dL/d(delta A) */
                    sC += gyv[e] * hn[e];
                    sB += gt * du[e];
                    gsum[e] += gt * bn;
                    gdA[e] += gx * An[e];
                    gAn[e] += gx * dtv[e];
                    gn[e] = gt * dA;
                }
                gCt[n] += sC;
                gBt[n] += sB;
            }
            real *restrict gut = a->gu + row, *restrict gdt = a->gdelta + row;
#pragma omp simd
            for (int64_t e = 0; e < ec; e++) {
                gut[e] = dtv[e] * gsum[e] + D[e0 + e] * gyv[e];
                gdt[e] = gdA[e] + ut[e] * gsum[e];
                gD[e0 + e] += gyv[e] * ut[e];
            }
            if (a->softplus) { /* softplus'(x) = sigmoid(x), 1 above the threshold */
                const real *restrict dr = a->delta + row;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    const real x = dr[e] + (a->dbias ? a->dbias[e0 + e] : 0);
                    gdt[e] *= x > 20 ? 1 : SFX(sigmoid)(x);
                }
            }
            if (gbias) {
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) gbias[e0 + e] += gdt[e];
            }
        }
    }
}

/* z, delta_bias, y_pre, h_last may be NULL; y_pre is filled when z is given. */
int SFX(scan_fwd)(const real *u, const real *delta, const real *At, const real *B, const real *C,
                  const real *D, const real *z, const real *delta_bias, real *out, real *y_pre,
                  real *h_last, int64_t Bsz, int64_t L, int64_t E, int64_t N, int softplus,
                  int nthreads) {
    SFX(args) a;
    memset(&a, 0, sizeof(a));
    a.u = u; a.delta = delta; a.At = At; a.B = B; a.C = C; a.D = D; a.z = z; a.dbias = delta_bias;
    a.out = out; a.y_pre = y_pre; a.h_last = h_last;
    a.L = L; a.E = E; a.N = N; a.softplus = softplus;
    return parallel_rows(SFX(fwd_row), &a, Bsz, sizeof(real) * (size_t)(N * EC), nthreads);
}

/* gB, gC must come in zeroed; gA (n, e), gD (e), gbias (e) are overwritten.
 * gout is dL/dout; gh_last, z, gz (needs y_pre) and delta_bias (with gbias)
 * may be NULL. */
int SFX(scan_bwd)(const real *u, const real *delta, const real *At, const real *B, const real *C,
                  const real *D, const real *z, const real *delta_bias, const real *y_pre,
                  const real *gout, const real *gh_last, real *gu, real *gdelta, real *gA,
                  real *gB, real *gC, real *gD, real *gz, real *gbias, int64_t Bsz, int64_t L,
                  int64_t E, int64_t N, int softplus, int nthreads) {
    SFX(args) a;
    memset(&a, 0, sizeof(a));
    a.u = u; a.delta = delta; a.At = At; a.B = B; a.C = C; a.D = D; a.z = z; a.dbias = delta_bias;
    a.y_pre = (real *)y_pre; a.gout = gout; a.gh_last = gh_last; /* y_pre only read */
    a.gu = gu; a.gdelta = gdelta; a.gB = gB; a.gC = gC; a.gz = gz;
    a.L = L; a.E = E; a.N = N; a.softplus = softplus;
    a.gA_rows = (real *)calloc((size_t)(Bsz * N * E), sizeof(real));
    a.gD_rows = (real *)calloc((size_t)(Bsz * E), sizeof(real));
    a.gbias_rows = delta_bias ? (real *)calloc((size_t)(Bsz * E), sizeof(real)) : NULL;
    int err = !a.gA_rows || !a.gD_rows || (delta_bias && !a.gbias_rows);
    a.ecb = SFX(bwd_block)(L, N);
    if (!err) err = parallel_rows(SFX(bwd_row), &a, Bsz, SFX(bwd_scratch)(L, N, a.ecb), nthreads);
    if (!err) {
        SFX(sum_rows)(a.gA_rows, gA, Bsz, N * E);
        SFX(sum_rows)(a.gD_rows, gD, Bsz, E);
        if (delta_bias) SFX(sum_rows)(a.gbias_rows, gbias, Bsz, E);
    }
    free(a.gA_rows);
    free(a.gD_rows);
    free(a.gbias_rows);
    return err;
}
