/*
 * Fused CPU selective scan (Mamba, Gu & Dao 2023, Algorithm 2: eq. 2a-2b
 * discretised with the zero-order hold of eq. 4 for A and delta * B for B,
 * as in state-spaces/mamba's selective_scan_ref):
 *
 *   delta_t = softplus(delta_t + delta_bias)       (both optional, as upstream)
 *   h_t = exp(delta_t * A) . h_{t-1} + (delta_t * u_t) B_t      h_{-1} = 0
 *   y_t = <h_t, C_t> + D . u_t
 *   out_t = y_t * SiLU(z_t)                         (optional gate, as upstream)
 *
 * and the block's causal depthwise conv1d (+ SiLU), channel-last:
 *
 *   out[t, e] = act(bias[e] + sum_j w[j, e] x[t - (k - 1) + j, e]),  x[<0] = 0
 *
 * Built by mamba/_kernel.py with the system C compiler and loaded through
 * ctypes (no Python headers, no torch headers; benchmarks/bench_scan.py
 * prints the one-off build time).
 *
 * Layout.  u, delta, z, y: (b, l, e); At = A transposed: (n, e); B, C:
 * (b, l, n); D, delta_bias: (e); last state: (b, e, n).  All C-contiguous,
 * one dtype (the conv's input may be a column slice, see conv_fwd).
 * Work is split over the batch: each batch row is done by one thread (rows
 * are handed out as threads come free) in a fixed order, so results are
 * bitwise identical for any thread count.  Inside a row, channels are processed in blocks of up to EC with
 * the state kept as h[n][block] so that the innermost loop runs over channels
 * (contiguous in memory, vectorised) and y_t needs no horizontal sum.
 *
 * The backward pass holds no (b, l, e, n) activation from the forward: it
 * re-runs the forward recurrence for one (batch row, channel block) into a
 * per-thread scratch of about 2 l n block values (the states and
 * exp(delta_t A), the block narrowed so that it stays in L2), then walks time
 * backwards:
 *
 *   g_t      = gy_t C_t + exp(delta_{t+1} A) . g_{t+1}      (dL/dh_t)
 *   dC_t    += sum_e gy_t h_t             dB_t += sum_e g_t delta_t u_t
 *   du_t     = delta_t sum_n g_t B_t + D gy_t
 *   ddelta_t = sum_n g_t h_{t-1} exp(delta_t A) A + u_t sum_n g_t B_t
 *   dA      += sum_{b,t} g_t h_{t-1} exp(delta_t A) delta_t    dD += sum gy u
 *
 * (gy is dL/dy: dL/dout * SiLU(z) with the gate; the forward keeps y for dz.)
 * Parameter gradients (dA, dD, d delta_bias, conv dw, db) are accumulated per
 * batch row and summed over rows in order.
 */
#ifndef SCAN_REAL

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EC 128 /* channels per block (at most): 8 AVX-512 float vectors */

/* exp for the vector loop (glibc's expf does not vectorise without
 * -ffast-math).  Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then a
 * polynomial: Cephes expf coefficients (rel. err ~1e-7) and a degree-12
 * Taylor series for double (truncation error < 2e-16).  Below the smallest
 * normal result it returns 0, above the largest it returns inf, NaN stays
 * NaN, as exp does. */
static inline float exp_f32(float x) {
    const float lo = -87.3f, hi = 88.0f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    /* round to nearest by the 1.5 * 2^23 trick: plain arithmetic, which
     * vectorises even where gcc masks the lanes (a floorf call does not) */
    float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)k + 127) << 23;
    float e = p * s.f;
    e = x < lo ? 0.0f : e;
    e = x > hi ? INFINITY : e;
    return e;
}

static inline double exp_f64(double x) {
    const double lo = -708.0, hi = 709.0;
    double xc = x < lo ? lo : (x > hi ? hi : x);
    double k = (xc * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;
    double r = xc - k * 6.93145751953125e-1;
    r = r - k * 1.42860682030941723212e-6;
    double p = 1.0 / 479001600.0;          /* 1/12! */
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    union { int64_t i; double f; } s;
    s.i = ((int64_t)k + 1023) << 52;
    double e = p * s.f;
    e = x < lo ? 0.0 : e;
    e = x > hi ? (double)INFINITY : e;
    return e;
}

/* ---- a minimal parallel-for over batch rows ---------------------------- */

typedef void (*row_fn)(void *arg, int64_t row, void *scratch);

typedef struct {
    row_fn fn;
    void *arg;
    int64_t rows;
    size_t scratch_bytes;
    atomic_llong next; /* next row to take */
    atomic_llong done; /* rows finished */
} pool_t;

/* Each worker allocates its scratch once, then takes rows one at a time from
 * a shared counter: a worker that the OS descheduled (a busy laptop) does not
 * hold the others up.  Which thread does a row never changes its result. */
static void *worker(void *p) {
    pool_t *pl = (pool_t *)p;
    void *scratch = pl->scratch_bytes ? malloc(pl->scratch_bytes) : NULL;
    if (pl->scratch_bytes && !scratch) return NULL; /* others take its rows */
    for (;;) {
        const int64_t r = atomic_fetch_add(&pl->next, 1);
        if (r >= pl->rows) break;
        pl->fn(pl->arg, r, scratch);
        atomic_fetch_add(&pl->done, 1);
    }
    free(scratch);
    return NULL;
}

/* Runs fn on every row with up to nthreads threads.  Built with -fopenmp it
 * uses the OpenMP runtime torch has loaded (same soname, so the same worker
 * threads: no oversubscription against torch's own spinning workers);
 * otherwise plain pthreads.  Returns 0, or 1 if rows were left undone because
 * no thread could allocate its scratch. */
static int parallel_rows(row_fn fn, void *arg, int64_t rows, size_t scratch_bytes, int nthreads) {
    pool_t pl;
    pl.fn = fn;
    pl.arg = arg;
    pl.rows = rows;
    pl.scratch_bytes = scratch_bytes;
    atomic_init(&pl.next, 0);
    atomic_init(&pl.done, 0);
    if (nthreads > rows) nthreads = (int)rows;
    if (nthreads > 64) nthreads = 64;
    if (nthreads <= 1) {
        worker(&pl);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
        worker(&pl);
#else
        pthread_t tid[64];
        int started[64];
        for (int i = 1; i < nthreads; i++)
            started[i] = pthread_create(&tid[i], NULL, worker, &pl) == 0;
        worker(&pl);
        for (int i = 1; i < nthreads; i++)
            if (started[i]) pthread_join(tid[i], NULL);
#endif
    }
    return atomic_load(&pl.done) < rows;
}

#define SCAN_REAL float
#define SFX(name) name##_f32
#define EXP exp_f32
#define SP_TERMS 8
#include "_scan_kernel.c" /* this file again, as the per-dtype body */
#undef SCAN_REAL
#undef SFX
#undef EXP
#undef SP_TERMS

#define SCAN_REAL double
#define SFX(name) name##_f64
#define EXP exp_f64
#define SP_TERMS 17
#include "_scan_kernel.c" /* this file again, as the per-dtype body */

#else /* ---- body, compiled once per dtype ------------------------------- */

#define real SCAN_REAL

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

static void SFX(fwd_row)(void *p, int64_t b, void *scratch) {
    SFX(args) *a = (SFX(args) *)p;
    const int64_t L = a->L, E = a->E, N = a->N;
    real *h = (real *)scratch; /* N * EC */
    real du[EC], dtv[EC];
    const real *restrict At = a->At, *restrict D = a->D;
    for (int64_t e0 = 0; e0 < E; e0 += EC) {
        const int64_t ec = E - e0 < EC ? E - e0 : EC;
        memset(h, 0, sizeof(real) * (size_t)(N * EC));
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (b * L + t) * E + e0;
            const real *restrict ut = a->u + row;
            const real *restrict Bt = a->B + (b * L + t) * N, *restrict Ct = a->C + (b * L + t) * N;
            real *restrict yt = a->out + row;
            SFX(load_dt)(a, row, e0, ec, dtv);
#pragma omp simd
            for (int64_t e = 0; e < ec; e++) {
                du[e] = dtv[e] * ut[e];
                yt[e] = D[e0 + e] * ut[e];
            }
            for (int64_t n = 0; n < N; n++) {
                const real bn = Bt[n], cn = Ct[n];
                const real *restrict An = At + n * E + e0;
                real *restrict hn = h + n * EC;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    real hv = EXP(dtv[e] * An[e]) * hn[e] + du[e] * bn;
                    hn[e] = hv;
                    yt[e] += hv * cn;
                }
            }
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
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (b * L + t) * E + e0;
            const real *restrict ut = a->u + row;
            const real *restrict Bt = a->B + (b * L + t) * N;
            SFX(load_dt)(a, row, e0, ec, dtv);
#pragma omp simd
            for (int64_t e = 0; e < ec; e++) du[e] = dtv[e] * ut[e];
            for (int64_t n = 0; n < N; n++) {
                const real bn = Bt[n];
                const real *restrict An = At + n * E + e0;
                const real *restrict hp = H + (t * N + n) * ecb;
                real *restrict hn = H + ((t + 1) * N + n) * ecb;
                real *restrict pn = P + (t * N + n) * ecb;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    const real dA = EXP(dtv[e] * An[e]);
                    pn[e] = dA;
                    hn[e] = dA * hp[e] + du[e] * bn;
                }
            }
        }
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

/* Sums per-row partials (rows, m) into out (m), in row order. */
static void SFX(sum_rows)(const real *rows, real *out, int64_t nrows, int64_t m) {
    memset(out, 0, sizeof(real) * (size_t)m);
    for (int64_t b = 0; b < nrows; b++)
        for (int64_t i = 0; i < m; i++) out[i] += rows[b * m + i];
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

/* ---- causal depthwise conv1d (+ SiLU), channel-last ----------------------- */

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

#undef real
#endif
