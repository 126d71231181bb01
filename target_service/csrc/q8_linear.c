/*
 * y[M, N] = x[M, K] . W[N, K]^T (+ bias) with W stored as int8 codes in groups of 32 along K:
 *     W[n, k] = fl(fl(d[n, g] * q[n, k]) + m[n, g]),   g = k / 32
 * which is exactly how GGUF's Q4_1 (q in 0..15), Q4_0 (q - 8, m = 0) and Q8_0 (m = 0) blocks
 * dequantize, so for such checkpoints the weights are bit-identical to the fp32 model's.
 *
 * Every output element sums its K products in one fixed order (one 16-lane accumulator, k
 * advancing 16 at a time, then a fixed reduction of the lanes), whatever M is and however rows
 * are split across threads. A row's result does not depend on the other rows of the call, so a
 * tree pass's linear layers give each branch exactly what decoding that branch alone gives.
 *
 * Built by target_service/q8.py with: gcc -O3 -march=native -ffp-contract=off -fopenmp -shared.
 * -ffp-contract=off keeps the dequantization's multiply and add separately rounded; the dot
 * product uses explicit fused multiply-adds.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define GROUP 32

int q8_group_size(void) { return GROUP; }

int q8_has_avx512(void) {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
}

/* Dequantize one weight row into w[K] (K % 32 == 0). */
static void dequant_row(const int8_t *q, const float *d, const float *m, int64_t K, float *w) {
    const int64_t G = K / GROUP;
#ifdef __AVX512F__
    for (int64_t g = 0; g < G; g++) {
        const __m512 dv = _mm512_set1_ps(d[g]);
        const __m512 mv = _mm512_set1_ps(m[g]);
        const __m128i raw0 = _mm_loadu_si128((const __m128i *)(q + g * GROUP));
        const __m128i raw1 = _mm_loadu_si128((const __m128i *)(q + g * GROUP + 16));
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw0));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw1));
        _mm512_storeu_ps(w + g * GROUP, _mm512_add_ps(_mm512_mul_ps(dv, q0), mv));
        _mm512_storeu_ps(w + g * GROUP + 16, _mm512_add_ps(_mm512_mul_ps(dv, q1), mv));
    }
#else
    for (int64_t g = 0; g < G; g++)
        for (int j = 0; j < GROUP; j++) {
            float p = d[g] * (float)q[g * GROUP + j];
            w[g * GROUP + j] = p + m[g];
        }
#endif
}

/*
 * Register blocking: R rows of x against COLS dequantized weight rows at a time, one 16-lane
 * accumulator per (row, column), k advancing 16 at a time. Each output's order of summation is
 * the same for every R and every column block: lane j accumulates x[k+j]*w[k+j] for k = 0, 16,
 * ..., then the 16 lanes are reduced by one fixed tree (reduce8; the portable build adds them
 * left to right).
 */
#define COLS 8

static inline float lane_sum(const float *lanes) {
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += lanes[j];
    return s;
}

#ifdef __AVX512F__
/* The lane sums of eight accumulators at once, one fixed tree for each: lanes j and j + 8
 * first, then neighbouring pairs, then pairs of pairs, then the two 128-bit halves. */
static inline __m256 reduce8(const __m512 *a) {
    __m256 s[8];
    for (int c = 0; c < 8; c++)
        s[c] = _mm256_add_ps(_mm512_castps512_ps256(a[c]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[c]), 1)));
    const __m256 t0 = _mm256_hadd_ps(s[0], s[1]), t1 = _mm256_hadd_ps(s[2], s[3]);
    const __m256 t2 = _mm256_hadd_ps(s[4], s[5]), t3 = _mm256_hadd_ps(s[6], s[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#define DEFINE_BLOCK(R)                                                                              \
    static void block_##R(const float *x, int64_t K, const float *w, int64_t cols, float *out,       \
                          int64_t ldo) {                                                             \
        __m512 acc[R][COLS];                                                                         \
        for (int r = 0; r < R; r++)                                                                  \
            for (int c = 0; c < COLS; c++) acc[r][c] = _mm512_setzero_ps();                          \
        for (int64_t k = 0; k < K; k += 16) {                                                        \
            __m512 xv[R];                                                                            \
            for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_ps(x + r * K + k);                     \
            for (int c = 0; c < COLS; c++) {                                                         \
                const __m512 wv = _mm512_loadu_ps(w + c * K + k);                                    \
                for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);       \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++) {                                                                \
            float sums[COLS];                                                                        \
            _mm256_storeu_ps(sums, reduce8(acc[r]));                                                 \
            for (int c = 0; c < cols; c++) out[r * ldo + c] = sums[c];                               \
        }                                                                                            \
    }
#else
#define DEFINE_BLOCK(R)                                                                              \
    static void block_##R(const float *x, int64_t K, const float *w, int64_t cols, float *out,       \
                          int64_t ldo) {                                                             \
        for (int r = 0; r < R; r++)                                                                  \
            for (int c = 0; c < cols; c++) {                                                         \
                float lanes[16] = {0};                                                               \
                for (int64_t k = 0; k < K; k += 16)                                                  \
                    for (int j = 0; j < 16; j++) lanes[j] = fmaf(x[r * K + k + j], w[c * K + k + j], lanes[j]); \
                out[r * ldo + c] = lane_sum(lanes);                                                  \
            }                                                                                        \
    }
#endif

DEFINE_BLOCK(1)
DEFINE_BLOCK(2)

/* x: [M, K] fp32 row-major; q: [N, K] int8; d, m: [N, K/32] fp32; bias: [N] or NULL; y: [M, N]. */
void q8_linear(const float *x, int64_t M, int64_t K, const int8_t *q, const float *d, const float *m,
               int64_t N, const float *bias, float *y, int threads) {
    const int64_t G = K / GROUP;
    const int64_t blocks = (N + COLS - 1) / COLS;
#pragma omp parallel num_threads(threads)
    {
        float *w = (float *)aligned_alloc(64, (size_t)((COLS * K * sizeof(float) + 63) / 64 * 64));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t n0 = b * COLS;
            const int64_t cols = N - n0 < COLS ? N - n0 : COLS;
            for (int64_t c = 0; c < COLS; c++) {
                if (c < cols)
                    dequant_row(q + (n0 + c) * K, d + (n0 + c) * G, m + (n0 + c) * G, K, w + c * K);
                else
                    memset(w + c * K, 0, (size_t)K * sizeof(float));
            }
            int64_t r = 0;
            for (; r + 2 <= M; r += 2) block_2(x + r * K, K, w, cols, y + r * N + n0, N);
            for (; r < M; r++) block_1(x + r * K, K, w, cols, y + r * N + n0, N);
            if (bias)
                for (int64_t rr = 0; rr < M; rr++)
                    for (int64_t c = 0; c < cols; c++) y[rr * N + n0 + c] += bias[n0 + c];
        }
        free(w);
    }
}
