/*
 * y[M, N] = x[M, K] . W[N, K]^T (+ bias) with W stored as int8 codes in groups of 32 along K:
 *     W[n, k] = fl(fl(d[n, g] * q[n, k]) + m[n, g]),   g = k / 32
 * which is exactly how GGUF's Q4_1 (q in 0..15), Q4_0 (q - 8, m = 0) and Q8_0 (m = 0) blocks
 * dequantize, so for such checkpoints the weights are bit-identical to the fp32 model's.
 *
 * Layout (built once by specd_kernels/q8.py): the output features are cut into panels of 32
 * (the last one padded with zero codes), and each panel is stored k-major, so one panel is a
 * contiguous stream:
 *     codes[p, k, j] = q[32 p + j, k]           int8  [P, K, 32]
 *     scale[p, g, j] = d[32 p + j, g]           fp32  [P, K/32, 32]
 *     shift[p, g, j] = m[32 p + j, g]           fp32  [P, K/32, 32]
 *
 * The product is an outer-product GEMM: for each panel, 32 output columns of up to 12 rows sit
 * in 24 vector accumulators (AVX-512; with AVX2's 16 registers, 16 columns of up to 6 rows in
 * 12, one half panel after the other), and k advances one at a time (one broadcast of x[r, k]
 * times the panel's row k). Every output element therefore sums its K products in one fixed order --
 * k = 0, 1, ..., K - 1, one fused multiply-add each -- whatever M is, however the rows are
 * blocked and however panels are split across threads. A row's result does not depend on the
 * other rows of the call, so a tree pass's linear layers give each branch exactly what decoding
 * that branch alone gives, and a long prompt's rows equal a short pass's.
 *
 * A panel is dequantized once per call into a thread-local fp32 buffer (K x 32 floats, in L2)
 * and reused by every row block; one or two rows dequantize on the fly instead (the same
 * arithmetic, so the same bits), since there the buffer's extra store and load would cost more
 * than they save.
 *
 * Built by specd_kernels/q8.py with: gcc -O3 -march=native -ffp-contract=off -fopenmp -shared.
 * -ffp-contract=off keeps the dequantization's multiply and add separately rounded; the dot
 * product uses explicit fused multiply-adds.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define Q8_SIMD 512
#define MAX_R 12     /* rows per register block: 12 x 2 vectors = 24 of the 32 registers */
#define FUSED_MAX 12 /* up to this many rows (one register block) dequantize in registers, as they go */
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define Q8_SIMD 256
#define MAX_R 6     /* 16 registers: 6 rows x 2 accumulators of a half panel, 2 weights, 1 broadcast */
#define FUSED_MAX 6
#else
#define Q8_SIMD 0
#define MAX_R 12
#endif

#define GROUP 32
#define PANEL 32
#define ROW_CHUNK 192 /* rows per pass over the panels (keeps x's chunk in L2 for long prompts) */

int q8_group_size(void) { return GROUP; }
int q8_panel_size(void) { return PANEL; }

int q8_has_avx512(void) { return Q8_SIMD == 512; }

/* The vector width the kernels were built for: 512 (AVX-512), 256 (AVX2 + FMA) or 0 (element by
 * element). All three give the same bits: each output sums k = 0, 1, ..., K - 1 with one fused
 * multiply-add each, and each weight is dequantized as fl(fl(d * q) + m). */
int q8_simd_width(void) { return Q8_SIMD; }

/* out = res + (sum + bias): the bias first, then the residual, as ``x + linear(h)`` rounds.
 * Shared with q8a8_linear.c (one library). */
void q8_finish_row(const float *row, float *out, int cols, const float *bias, const float *res) {
    for (int c = 0; c < cols; c++) {
        float v = bias ? row[c] + bias[c] : row[c];
        out[c] = res ? res[c] + v : v;
    }
}

#if Q8_SIMD == 512

/* Row k of a panel, dequantized: two 16-lane vectors. */
static inline void dequant_k(const int8_t *codes, const float *scale, const float *shift, int64_t k, __m512 *w0,
                             __m512 *w1) {
    const int64_t g = k / GROUP;
    const __m128i raw0 = _mm_loadu_si128((const __m128i *)(codes + k * PANEL));
    const __m128i raw1 = _mm_loadu_si128((const __m128i *)(codes + k * PANEL + 16));
    const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw0));
    const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw1));
    *w0 = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(scale + g * PANEL), q0), _mm512_loadu_ps(shift + g * PANEL));
    *w1 = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(scale + g * PANEL + 16), q1),
                        _mm512_loadu_ps(shift + g * PANEL + 16));
}

static void dequant_panel(const int8_t *codes, const float *scale, const float *shift, int64_t K, float *buf) {
    for (int64_t k = 0; k < K; k++) {
        __m512 w0, w1;
        dequant_k(codes, scale, shift, k, &w0, &w1);
        _mm512_store_ps(buf + k * PANEL, w0);
        _mm512_store_ps(buf + k * PANEL + 16, w1);
    }
}

static inline void store_block(const __m512 *acc0, const __m512 *acc1, int R, float *out, int64_t ldo, int cols,
                               const float *bias, const float *res) {
    for (int r = 0; r < R; r++) {
        float row[PANEL];
        _mm512_storeu_ps(row, acc0[r]);
        _mm512_storeu_ps(row + 16, acc1[r]);
        q8_finish_row(row, out + r * ldo, cols, bias, res ? res + r * ldo : NULL);
    }
}

/* R rows of x against a dequantized panel buf [K, 32]. */
#define DEFINE_BLOCK(R)                                                                              \
    static void block_##R(const float *x, int64_t ldx, int64_t K, const float *buf, float *out,      \
                          int64_t ldo, int cols, const float *bias, const float *res) {            \
        __m512 acc0[R], acc1[R];                                                                     \
        for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                         \
        for (int64_t k = 0; k < K; k++) {                                                            \
            const __m512 w0 = _mm512_load_ps(buf + k * PANEL);                                       \
            const __m512 w1 = _mm512_load_ps(buf + k * PANEL + 16);                                  \
            for (int r = 0; r < R; r++) {                                                            \
                const __m512 xb = _mm512_set1_ps(x[r * ldx + k]);                                    \
                acc0[r] = _mm512_fmadd_ps(xb, w0, acc0[r]);                                          \
                acc1[r] = _mm512_fmadd_ps(xb, w1, acc1[r]);                                          \
            }                                                                                        \
        }                                                                                            \
        store_block(acc0, acc1, R, out, ldo, cols, bias, res);                                            \
    }

/* R (1 or 2) rows straight from the codes, dequantizing row k of the panel as it goes. */
#define DEFINE_FUSED(R)                                                                              \
    static void fused_##R(const float *x, int64_t ldx, int64_t K, const int8_t *codes,               \
                          const float *scale, const float *shift, float *out, int64_t ldo, int cols, \
                          const float *bias, const float *res) {                                                       \
        __m512 acc0[R], acc1[R];                                                                     \
        for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();                         \
        for (int64_t k = 0; k < K; k++) {                                                            \
            __m512 w0, w1;                                                                           \
            dequant_k(codes, scale, shift, k, &w0, &w1);                                             \
            for (int r = 0; r < R; r++) {                                                            \
                const __m512 xb = _mm512_set1_ps(x[r * ldx + k]);                                    \
                acc0[r] = _mm512_fmadd_ps(xb, w0, acc0[r]);                                          \
                acc1[r] = _mm512_fmadd_ps(xb, w1, acc1[r]);                                          \
            }                                                                                        \
        }                                                                                            \
        store_block(acc0, acc1, R, out, ldo, cols, bias, res);                                            \
    }

#elif Q8_SIMD == 256

/* AVX2: 8 lanes and 16 registers, so a panel runs as two halves of 16 features (h = 0, 1). */

/* Features 16 h .. 16 h + 15 of a panel's row k, dequantized: two 8-lane vectors. */
static inline void dequant_half(const int8_t *codes, const float *scale, const float *shift, int64_t k, int h,
                                __m256 *w0, __m256 *w1) {
    const int64_t g = k / GROUP;
    const __m128i raw = _mm_loadu_si128((const __m128i *)(codes + k * PANEL + h * 16));
    const __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
    const __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(raw, 8)));
    const float *sc = scale + g * PANEL + h * 16, *sh = shift + g * PANEL + h * 16;
    *w0 = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(sc), q0), _mm256_loadu_ps(sh));
    *w1 = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(sc + 8), q1), _mm256_loadu_ps(sh + 8));
}

static void dequant_panel(const int8_t *codes, const float *scale, const float *shift, int64_t K, float *buf) {
    for (int64_t k = 0; k < K; k++)
        for (int h = 0; h < 2; h++) {
            __m256 w0, w1;
            dequant_half(codes, scale, shift, k, h, &w0, &w1);
            _mm256_store_ps(buf + k * PANEL + h * 16, w0);
            _mm256_store_ps(buf + k * PANEL + h * 16 + 8, w1);
        }
}

/* R rows of x against a panel, one half at a time: from the dequantized buffer buf [K, 32]
 * (FUSED 0), or straight from the codes, dequantizing row k of the half as it goes (FUSED 1). */
#define DEFINE_HALVES(NAME, R, FUSED)                                                                \
    static void NAME(const float *x, int64_t ldx, int64_t K, const float *buf, const int8_t *codes,  \
                     const float *scale, const float *shift, float *out, int64_t ldo, int cols,      \
                     const float *bias, const float *res) {                                         \
        float rows[R][PANEL];                                                                        \
        for (int h = 0; h < 2 && h * 16 < cols; h++) {                                               \
            __m256 acc0[R], acc1[R];                                                                 \
            for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();                     \
            for (int64_t k = 0; k < K; k++) {                                                        \
                __m256 w0, w1;                                                                       \
                if (FUSED) {                                                                         \
                    dequant_half(codes, scale, shift, k, h, &w0, &w1);                               \
                } else {                                                                             \
                    w0 = _mm256_load_ps(buf + k * PANEL + h * 16);                                   \
                    w1 = _mm256_load_ps(buf + k * PANEL + h * 16 + 8);                               \
                }                                                                                    \
                for (int r = 0; r < R; r++) {                                                        \
                    const __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);                          \
                    acc0[r] = _mm256_fmadd_ps(xb, w0, acc0[r]);                                      \
                    acc1[r] = _mm256_fmadd_ps(xb, w1, acc1[r]);                                      \
                }                                                                                    \
            }                                                                                        \
            for (int r = 0; r < R; r++) {                                                            \
                _mm256_storeu_ps(rows[r] + h * 16, acc0[r]);                                         \
                _mm256_storeu_ps(rows[r] + h * 16 + 8, acc1[r]);                                     \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++) q8_finish_row(rows[r], out + r * ldo, cols, bias, res ? res + r * ldo : NULL); \
    }

#define DEFINE_BLOCK(R)                                                                              \
    DEFINE_HALVES(halves_##R, R, 0)                                                                  \
    static void block_##R(const float *x, int64_t ldx, int64_t K, const float *buf, float *out,      \
                          int64_t ldo, int cols, const float *bias, const float *res) {              \
        halves_##R(x, ldx, K, buf, NULL, NULL, NULL, out, ldo, cols, bias, res);                     \
    }

#define DEFINE_FUSED(R)                                                                              \
    DEFINE_HALVES(fused_halves_##R, R, 1)                                                            \
    static void fused_##R(const float *x, int64_t ldx, int64_t K, const int8_t *codes,               \
                          const float *scale, const float *shift, float *out, int64_t ldo, int cols, \
                          const float *bias, const float *res) {                                     \
        fused_halves_##R(x, ldx, K, NULL, codes, scale, shift, out, ldo, cols, bias, res);           \
    }

#else /* portable build: the same arithmetic, element by element */

static void dequant_panel(const int8_t *codes, const float *scale, const float *shift, int64_t K, float *buf) {
    for (int64_t k = 0; k < K; k++) {
        const int64_t g = k / GROUP;
        for (int j = 0; j < PANEL; j++) {
            const float p = scale[g * PANEL + j] * (float)codes[k * PANEL + j];
            buf[k * PANEL + j] = p + shift[g * PANEL + j];
        }
    }
}

#define DEFINE_BLOCK(R)                                                                              \
    static void block_##R(const float *x, int64_t ldx, int64_t K, const float *buf, float *out,      \
                          int64_t ldo, int cols, const float *bias, const float *res) {              \
        for (int r = 0; r < R; r++) {                                                                \
            float row[PANEL];                                                                        \
            for (int c = 0; c < cols; c++) {                                                         \
                float acc = 0.0f;                                                                    \
                for (int64_t k = 0; k < K; k++) acc = fmaf(x[r * ldx + k], buf[k * PANEL + c], acc); \
                row[c] = acc;                                                                        \
            }                                                                                        \
            q8_finish_row(row, out + r * ldo, cols, bias, res ? res + r * ldo : NULL);                  \
        }                                                                                            \
    }

#endif

DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
DEFINE_BLOCK(3)
DEFINE_BLOCK(4)
DEFINE_BLOCK(5)
DEFINE_BLOCK(6)
#if MAX_R > 6
DEFINE_BLOCK(7)
DEFINE_BLOCK(8)
DEFINE_BLOCK(9)
DEFINE_BLOCK(10)
DEFINE_BLOCK(11)
DEFINE_BLOCK(12)
#define BLOCKS_7_12 , block_7, block_8, block_9, block_10, block_11, block_12
#else
#define BLOCKS_7_12
#endif

typedef void (*block_fn)(const float *, int64_t, int64_t, const float *, float *, int64_t, int, const float *,
                         const float *);
static const block_fn BLOCKS[MAX_R + 1] = {NULL, block_1, block_2, block_3, block_4, block_5, block_6 BLOCKS_7_12};

#if Q8_SIMD
DEFINE_FUSED(1)
DEFINE_FUSED(2)
DEFINE_FUSED(3)
DEFINE_FUSED(4)
DEFINE_FUSED(5)
DEFINE_FUSED(6)
#if FUSED_MAX > 6
DEFINE_FUSED(7)
DEFINE_FUSED(8)
DEFINE_FUSED(9)
DEFINE_FUSED(10)
DEFINE_FUSED(11)
DEFINE_FUSED(12)
#define FUSED_7_12 , fused_7, fused_8, fused_9, fused_10, fused_11, fused_12
#else
#define FUSED_7_12
#endif

typedef void (*fused_fn)(const float *, int64_t, int64_t, const int8_t *, const float *, const float *, float *,
                         int64_t, int, const float *, const float *);
static const fused_fn FUSED[FUSED_MAX + 1] = {NULL, fused_1, fused_2, fused_3, fused_4, fused_5, fused_6 FUSED_7_12};
#endif

/* Rows [0, M) of x against one panel, in register blocks of at most MAX_R rows, sized evenly
 * (16 rows run as 8 + 8, not 12 + 4). */
static void panel_rows(const float *x, int64_t M, int64_t K, const float *buf, float *y, int64_t N, int64_t n0,
                       int cols, const float *bias, const float *res) {
    const int64_t nblocks = (M + MAX_R - 1) / MAX_R;
    int64_t r0 = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t R = (M - r0) / (nblocks - b) + ((M - r0) % (nblocks - b) ? 1 : 0);
        BLOCKS[R](x + r0 * K, K, K, buf, y + r0 * N + n0, N, cols, bias, res ? res + r0 * N + n0 : NULL);
        r0 += R;
    }
}

/* x: [M, K] fp32 row-major; codes/scale/shift: the panel layout above; bias: [N] or NULL; res: [M, N] or
 * NULL, added last (res may be y itself: y += x W^T in place); y: [M, N]. Returns 0, or -1 when a
 * thread could not allocate its panel buffer (y is then incomplete). */
int q8_linear(const float *x, int64_t M, int64_t K, const int8_t *codes, const float *scale, const float *shift,
              int64_t N, const float *bias, const float *res, float *y, int threads) {
    const int64_t G = K / GROUP;
    const int64_t panels = (N + PANEL - 1) / PANEL;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *buf = NULL;
#if Q8_SIMD
        if (M > FUSED_MAX)
#endif
        {
            buf = (float *)aligned_alloc(64, (size_t)K * PANEL * sizeof(float));
            if (buf == NULL) {
#pragma omp atomic write
                failed = 1;
            }
        }
        for (int64_t c0 = 0; c0 < M; c0 += ROW_CHUNK) {
            const int64_t rows = M - c0 < ROW_CHUNK ? M - c0 : ROW_CHUNK;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < panels; p++) {
                const int64_t n0 = p * PANEL;
                const int cols = (int)(N - n0 < PANEL ? N - n0 : PANEL);
                const int8_t *pc = codes + p * K * PANEL;
                const float *ps = scale + p * G * PANEL, *pm = shift + p * G * PANEL;
                const float *pb = bias ? bias + n0 : NULL;
                const float *xc = x + c0 * K;
                float *yc = y + c0 * N;
                const float *rc = res ? res + c0 * N : NULL;
#if Q8_SIMD
                if (M <= FUSED_MAX) {
                    FUSED[M](xc, K, K, pc, ps, pm, yc + n0, N, cols, pb, rc ? rc + n0 : NULL);
                    continue;
                }
#endif
                if (buf == NULL) continue; /* this thread has no buffer: the call reports failure */
                dequant_panel(pc, ps, pm, K, buf);
                panel_rows(xc, rows, K, buf, yc, N, n0, cols, pb, rc);
            }
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* One row x [K] against ONE panel (codes/scale/shift of that panel, bias of its columns or NULL):
 * out[0 .. cols) gets exactly what q8_linear writes for those outputs (the same per-output sums,
 * whatever M: see the top of this file). The argmax screen (q8a8_linear.c) rescores its candidates
 * with it. */
void q8_panel_row(const float *x, int64_t K, const int8_t *codes, const float *scale, const float *shift, int cols,
                  const float *bias, float *out) {
#if Q8_SIMD
    FUSED[1](x, K, K, codes, scale, shift, out, PANEL, cols, bias, NULL);
#else
    float row[PANEL];
    for (int c = 0; c < cols; c++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const float p = scale[(k / GROUP) * PANEL + c] * (float)codes[k * PANEL + c];
            acc = fmaf(x[k], p + shift[(k / GROUP) * PANEL + c], acc);
        }
        row[c] = acc;
    }
    q8_finish_row(row, out, cols, bias, NULL);
#endif
}
