/*
 * Fused CPU selective scan (Mamba, Gu & Dao 2023, eq. 2a-2b with the ZOH
 * discretisation of Sec. 3.5 / Algorithm 2 as in state-spaces/mamba's
 * selective_scan_ref):
 *
 *   h_t = exp(delta_t * A) . h_{t-1} + (delta_t * u_t) B_t      h_{-1} = 0
 *   y_t = <h_t, C_t> + D . u_t
 *
 * Built by mamba/_kernel.py with the system C compiler and loaded through
 * ctypes (no Python headers, no torch headers: it compiles in about a second).
 *
 * Layout.  u, delta, y: (b, l, e); At = A transposed: (n, e); B, C: (b, l, n);
 * D: (e); last state: (b, e, n).  All C-contiguous, one dtype.
 * Work is split over the batch: one batch row is scanned by exactly one
 * thread, in a fixed order, so results are bitwise identical for any thread
 * count.  Inside a row, channels are processed in blocks of EC with the
 * state kept as h[n][EC] so that the innermost loop runs over channels
 * (contiguous in memory, vectorised) and y_t needs no horizontal sum.
 *
 * The backward pass holds no (b, l, e, n) activation from the forward: it
 * re-runs the forward recurrence for one (batch row, channel block) into a
 * per-thread scratch of (l + 1) * n * EC values, then walks time backwards:
 *
 *   g_t      = gy_t C_t + exp(delta_{t+1} A) . g_{t+1}      (dL/dh_t)
 *   dC_t    += sum_e gy_t h_t             dB_t += sum_e g_t delta_t u_t
 *   du_t     = delta_t sum_n g_t B_t + D gy_t
 *   ddelta_t = sum_n g_t h_{t-1} exp(delta_t A) A + u_t sum_n g_t B_t
 *   dA      += sum_{b,t} g_t h_{t-1} exp(delta_t A) delta_t    dD += sum gy u
 *
 * dA and dD are accumulated per batch row and summed over rows in order.
 */
#ifndef SCAN_REAL

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EC 64 /* channels per block: 4 AVX-512 float vectors */

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

typedef void (*row_fn)(void *arg, int64_t lo, int64_t hi, int *err);

typedef struct {
    row_fn fn;
    void *arg;
    int64_t lo, hi;
    int err;
} task_t;

static void *run_task(void *p) {
    task_t *t = (task_t *)p;
    t->fn(t->arg, t->lo, t->hi, &t->err);
    return NULL;
}

/* Runs fn over `rows` split into nthreads contiguous ranges.  Built with
 * -fopenmp it uses the OpenMP runtime already loaded by torch (same soname,
 * so the same thread pool: no oversubscription against torch's own spinning
 * workers); otherwise plain pthreads.  Returns 0, or 1 if a thread could not
 * allocate its scratch. */
static int parallel_rows(row_fn fn, void *arg, int64_t rows, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > rows) nthreads = (int)rows;
    if (nthreads > 64) nthreads = 64;
    task_t tasks[64];
    for (int i = 0; i < nthreads; i++) {
        tasks[i].fn = fn;
        tasks[i].arg = arg;
        tasks[i].lo = rows * i / nthreads;
        tasks[i].hi = rows * (i + 1) / nthreads;
        tasks[i].err = 0;
    }
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(nthreads) if (nthreads > 1)
    for (int i = 0; i < nthreads; i++) run_task(&tasks[i]);
#else
    pthread_t tid[64];
    int started[64];
    for (int i = 1; i < nthreads; i++)
        started[i] = pthread_create(&tid[i], NULL, run_task, &tasks[i]) == 0;
    run_task(&tasks[0]);
    for (int i = 1; i < nthreads; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else run_task(&tasks[i]); /* could not start a thread: run it here */
    }
#endif
    for (int i = 0; i < nthreads; i++) err |= tasks[i].err;
    return err;
}

#define SCAN_REAL float
#define SFX(name) name##_f32
#define EXP exp_f32
#include __FILE__
#undef SCAN_REAL
#undef SFX
#undef EXP

#define SCAN_REAL double
#define SFX(name) name##_f64
#define EXP exp_f64
#include __FILE__

#else /* ---- body, compiled once per dtype ------------------------------- */

#define real SCAN_REAL

typedef struct {
    const real *u, *delta, *At, *B, *C, *D, *gy, *gh_last;
    real *y, *h_last, *gu, *gdelta, *gB, *gC, *gA_rows, *gD_rows;
    int64_t L, E, N;
} SFX(args);

static void SFX(fwd_rows)(void *p, int64_t lo, int64_t hi, int *err) {
    SFX(args) *a = (SFX(args) *)p;
    const int64_t L = a->L, E = a->E, N = a->N;
    real *h = (real *)malloc(sizeof(real) * (size_t)(N * EC));
    if (!h) { *err = 1; return; }
    real du[EC];
    const real *restrict At = a->At, *restrict D = a->D;
    for (int64_t b = lo; b < hi; b++) {
        for (int64_t e0 = 0; e0 < E; e0 += EC) {
            const int64_t ec = E - e0 < EC ? E - e0 : EC;
            memset(h, 0, sizeof(real) * (size_t)(N * EC));
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (b * L + t) * E + e0;
                const real *restrict dt = a->delta + row, *restrict ut = a->u + row;
                const real *restrict Bt = a->B + (b * L + t) * N, *restrict Ct = a->C + (b * L + t) * N;
                real *restrict yt = a->y + row;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    du[e] = dt[e] * ut[e];
                    yt[e] = D[e0 + e] * ut[e];
                }
                for (int64_t n = 0; n < N; n++) {
                    const real bn = Bt[n], cn = Ct[n];
                    const real *restrict An = At + n * E + e0;
                    real *restrict hn = h + n * EC;
#pragma omp simd
                    for (int64_t e = 0; e < ec; e++) {
                        real hv = EXP(dt[e] * An[e]) * hn[e] + du[e] * bn;
                        hn[e] = hv;
                        yt[e] += hv * cn;
                    }
                }
            }
            if (a->h_last)
                for (int64_t n = 0; n < N; n++)
                    for (int64_t e = 0; e < ec; e++)
                        a->h_last[(b * E + e0 + e) * N + n] = h[n * EC + e];
        }
    }
    free(h);
}

static void SFX(bwd_rows)(void *p, int64_t lo, int64_t hi, int *err) {
    SFX(args) *a = (SFX(args) *)p;
    const int64_t L = a->L, E = a->E, N = a->N;
    /* H[t + 1] = h_t for one channel block, H[0] = h_{-1} = 0 */
    real *H = (real *)malloc(sizeof(real) * (size_t)((L + 1) * N * EC));
    real *g = (real *)malloc(sizeof(real) * (size_t)(N * EC));
    if (!H || !g) { free(H); free(g); *err = 1; return; }
    real du[EC], gsum[EC], gdA[EC];
    for (int64_t b = lo; b < hi; b++) {
        real *gA = a->gA_rows + b * N * E;  /* (n, e) for this row */
        real *gD = a->gD_rows + b * E;
        for (int64_t e0 = 0; e0 < E; e0 += EC) {
            const int64_t ec = E - e0 < EC ? E - e0 : EC;
            /* 1. recompute the states of this block */
            memset(H, 0, sizeof(real) * (size_t)(N * EC));
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (b * L + t) * E + e0;
                const real *dt = a->delta + row, *ut = a->u + row;
                const real *Bt = a->B + (b * L + t) * N;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) du[e] = dt[e] * ut[e];
                for (int64_t n = 0; n < N; n++) {
                    const real bn = Bt[n];
                    const real *An = a->At + n * E + e0;
                    const real *hp = H + (t * N + n) * EC;
                    real *hn = H + ((t + 1) * N + n) * EC;
#pragma omp simd
                    for (int64_t e = 0; e < ec; e++)
                        hn[e] = EXP(dt[e] * An[e]) * hp[e] + du[e] * bn;
                }
            }
            /* 2. walk back in time; g holds exp(delta_{t+1} A) . g_{t+1} */
            if (a->gh_last) {
                for (int64_t n = 0; n < N; n++)
                    for (int64_t e = 0; e < ec; e++)
                        g[n * EC + e] = a->gh_last[(b * E + e0 + e) * N + n];
            } else {
                memset(g, 0, sizeof(real) * (size_t)(N * EC));
            }
            for (int64_t t = L - 1; t >= 0; t--) {
                const int64_t row = (b * L + t) * E + e0;
                const real *dt = a->delta + row, *ut = a->u + row, *gyt = a->gy + row;
                const real *Bt = a->B + (b * L + t) * N, *Ct = a->C + (b * L + t) * N;
                real *gBt = a->gB + (b * L + t) * N, *gCt = a->gC + (b * L + t) * N;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    du[e] = dt[e] * ut[e];
                    gsum[e] = 0;
                    gdA[e] = 0;
                }
                for (int64_t n = 0; n < N; n++) {
                    const real bn = Bt[n], cn = Ct[n];
                    const real *An = a->At + n * E + e0;
                    const real *hp = H + (t * N + n) * EC;
                    const real *hn = H + ((t + 1) * N + n) * EC;
                    real *gn = g + n * EC;
                    real *gAn = gA + n * E + e0;
                    real sC = 0, sB = 0;
#pragma omp simd reduction(+ : sC, sB)
                    for (int64_t e = 0; e < ec; e++) {
                        const real gt = gn[e] + gyt[e] * cn;     /* dL/dh_t */
                        const real dA = EXP(dt[e] * An[e]);
                        const real gx = gt * hp[e] * dA;         /* dL/d(delta A) */
                        sC += gyt[e] * hn[e];
                        sB += gt * du[e];
                        gsum[e] += gt * bn;
                        gdA[e] += gx * An[e];
                        gAn[e] += gx * dt[e];
                        gn[e] = gt * dA;
                    }
                    gCt[n] += sC;
                    gBt[n] += sB;
                }
                real *gut = a->gu + row, *gdt = a->gdelta + row;
#pragma omp simd
                for (int64_t e = 0; e < ec; e++) {
                    gut[e] = dt[e] * gsum[e] + a->D[e0 + e] * gyt[e];
                    gdt[e] = gdA[e] + ut[e] * gsum[e];
                    gD[e0 + e] += gyt[e] * ut[e];
                }
            }
        }
    }
    free(H);
    free(g);
}

int SFX(scan_fwd)(const real *u, const real *delta, const real *At, const real *B,
                  const real *C, const real *D, real *y, real *h_last,
                  int64_t Bsz, int64_t L, int64_t E, int64_t N, int nthreads) {
    SFX(args) a;
    memset(&a, 0, sizeof(a));
    a.u = u; a.delta = delta; a.At = At; a.B = B; a.C = C; a.D = D;
    a.y = y; a.h_last = h_last;
    a.L = L; a.E = E; a.N = N;
    return parallel_rows(SFX(fwd_rows), &a, Bsz, nthreads);
}

/* gB, gC must come in zeroed; gA (n, e) and gD (e) are overwritten. */
int SFX(scan_bwd)(const real *u, const real *delta, const real *At, const real *B,
                  const real *C, const real *D, const real *gy, const real *gh_last,
                  real *gu, real *gdelta, real *gA, real *gB, real *gC, real *gD,
                  int64_t Bsz, int64_t L, int64_t E, int64_t N, int nthreads) {
    SFX(args) a;
    memset(&a, 0, sizeof(a));
    a.u = u; a.delta = delta; a.At = At; a.B = B; a.C = C; a.D = D;
    a.gy = gy; a.gh_last = gh_last;
    a.gu = gu; a.gdelta = gdelta; a.gB = gB; a.gC = gC;
    a.L = L; a.E = E; a.N = N;
    a.gA_rows = (real *)calloc((size_t)(Bsz * N * E), sizeof(real));
    a.gD_rows = (real *)calloc((size_t)(Bsz * E), sizeof(real));
    int err = !a.gA_rows || !a.gD_rows;
    if (!err) err = parallel_rows(SFX(bwd_rows), &a, Bsz, nthreads);
    if (!err) {
        /* sum the per-row partials in row order: deterministic */
        memset(gA, 0, sizeof(real) * (size_t)(N * E));
        memset(gD, 0, sizeof(real) * (size_t)E);
        for (int64_t b = 0; b < Bsz; b++) {
            for (int64_t i = 0; i < N * E; i++) gA[i] += a.gA_rows[b * N * E + i];
            for (int64_t i = 0; i < E; i++) gD[i] += a.gD_rows[b * E + i];
        }
    }
    free(a.gA_rows);
    free(a.gD_rows);
    return err;
}

#undef real
#endif
