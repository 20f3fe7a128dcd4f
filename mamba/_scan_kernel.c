/*
 * Fused CPU kernels of the Mamba block (Gu & Dao 2023), built by
 * mamba/_kernel.py with the system C compiler and loaded through ctypes (no
 * Python headers, no torch headers; benchmarks/bench_scan.py prints the
 * one-off build time).  This is the one translation unit; it holds what does
 * not depend on the dtype and instantiates the rest once per dtype:
 *
 *   _scan_kernel.c    exp, the parallel-for over batch rows, the two dtypes
 *   _kernel_dtype.h   per-dtype template: sigmoid, softplus, row sums, and
 *                     the two kernel files below
 *   _kernel_scan.h    selective scan, forward and backward (its equations
 *                     are at the top of that file)
 *   _kernel_conv.h    causal depthwise conv1d (+ SiLU), forward and backward
 *
 * Exported, each as _f32 (float) and _f64 (double): scan_fwd, scan_bwd,
 * conv_fwd, conv_bwd.  Everything else is static.  The ctypes signatures are
 * in _kernel.py (_SIGNATURES); tests/mamba/test_kernel.py parses the
 * prototypes here and checks that the two agree.
 *
 * Why a template header rather than a macro or generated files: the kernels
 * carry `#pragma omp simd` lines and comments between statements, which a
 * multi-line macro cannot hold as written (it would need _Pragma and lose
 * the line numbers of compiler errors and profiles); a generated float and
 * double pair would be two copies to keep in step.  The header is written
 * once in terms of `real`, SFX(name), EXP and SP_TERMS, and included once per
 * dtype below.
 *
 * Layout.  u, delta, z, y: (b, l, e); At = A transposed: (n, e); B, C:
 * (b, l, n); D, delta_bias: (e); last state: (b, e, n).  All C-contiguous,
 * one dtype (the conv's input may be a column slice, see conv_fwd).
 * Work is split over the batch: each batch row is done by one thread (rows
 * are handed out as threads come free) in a fixed order, so results are
 * bitwise identical for any thread count.  Inside a row, the innermost loops
 * run over a block of up to EC channels (contiguous in memory, vectorised).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EC 128 /* channels per block (at most): 8 AVX-512 float vectors */

/* for helpers whose callers pass a mode as a literal: inlined, the tests on it
 * are decided at compile time instead of in the loop */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* what the scan's state_step keeps besides the state (see _kernel_scan.h);
 * here because the template is read once per dtype */
enum keep { KEEP_Y, KEEP_EXP };

/* ---- exp for the vector loops -------------------------------------------- */

/* glibc's expf does not vectorise without -ffast-math.  Cody-Waite reduction
 * x = k ln2 + r, |r| <= ln2/2, then a polynomial: Cephes expf coefficients
 * (rel. err ~1e-7) and a degree-12 Taylor series for double (truncation error
 * < 2e-16).  Below the smallest normal result it returns 0, above the largest
 * it returns inf, NaN stays NaN, as exp does. */
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

/* ---- a minimal parallel-for over batch rows ------------------------------ */

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

/* ---- the two dtypes ------------------------------------------------------ */

/* SP_TERMS: terms of softplus' log1p series, enough to fall below the dtype's
 * rounding (see softplus in _kernel_dtype.h).  The header #undefs all four. */
#define real float
#define SFX(name) name##_f32
#define EXP exp_f32
#define SP_TERMS 8
#include "_kernel_dtype.h" /* scan_fwd_f32, scan_bwd_f32, conv_fwd_f32, conv_bwd_f32 */

#define real double
#define SFX(name) name##_f64
#define EXP exp_f64
#define SP_TERMS 17
#include "_kernel_dtype.h" /* scan_fwd_f64, scan_bwd_f64, conv_fwd_f64, conv_bwd_f64 */
