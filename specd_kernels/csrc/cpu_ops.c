/*
 * The small per-layer operations of a CPU decode step, each one call instead of several torch
 * ops (a 16-row pass spends more time dispatching those ops than computing them):
 *   rms_norm   y = w * (x * (1 / sqrt(mean(x^2) + eps)))        per row, as transformers' RMSNorm
 *   rope       x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin       in place, per head (rotate_half)
 * Every operation is per row, so a row's result never depends on the other rows of the call.
 * Built into the same library as q8_linear.c (specd_kernels/q8.py), with -ffp-contract=off:
 * each multiply and add rounds separately, so rope gives exactly the bits of the torch ops it
 * replaces; rms_norm differs from torch's only in the order of the mean's sum.
 * Vector code for AVX-512 and, on CPUs without it, AVX2 + FMA; element by element otherwise.
 * The widths sum in different orders (attention agrees across them to float32 rounding), but
 * within one build every (row, head) still sums in one fixed order of its own.
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OPS_AVX2 1 /* 8-lane versions of the AVX-512 code below, for CPUs without AVX-512 */
#endif

void cpu_rms_norm(const float *x, int64_t M, int64_t E, const float *w, float eps, float *y) {
    for (int64_t r = 0; r < M; r++) {
        const float *xr = x + r * E;
        float lanes[16] = {0};
        for (int64_t k = 0; k + 16 <= E; k += 16)
            for (int j = 0; j < 16; j++) lanes[j] += xr[k + j] * xr[k + j];
        float sum = 0.0f;
        for (int64_t k = E / 16 * 16; k < E; k++) sum += xr[k] * xr[k];
        for (int j = 0; j < 16; j++) sum += lanes[j];
        const float inv = 1.0f / sqrtf(sum / (float)E + eps);
        float *yr = y + r * E;
        for (int64_t k = 0; k < E; k++) yr[k] = w[k] * (xr[k] * inv);
    }
}

/* x: T rows of `stride` floats; rotate `heads` heads of D at the row's start; cos/sin: [T, D/2]. */
void cpu_rope(float *x, int64_t T, int64_t stride, int64_t heads, int64_t D, const float *cos_t, const float *sin_t) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++) {
        const float *restrict c = cos_t + t * half;
        const float *restrict s = sin_t + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *restrict x1 = x + t * stride + h * D;
            float *restrict x2 = x1 + half;
            int64_t j = 0;
#ifdef __AVX512F__
            for (; j + 16 <= half; j += 16) {
                const __m512 a = _mm512_loadu_ps(x1 + j), b = _mm512_loadu_ps(x2 + j);
                const __m512 cv = _mm512_loadu_ps(c + j), sv = _mm512_loadu_ps(s + j);
                _mm512_storeu_ps(x1 + j, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)));
                _mm512_storeu_ps(x2 + j, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)));
            }
#elif defined(OPS_AVX2)
            for (; j + 8 <= half; j += 8) {
                const __m256 a = _mm256_loadu_ps(x1 + j), b = _mm256_loadu_ps(x2 + j);
                const __m256 cv = _mm256_loadu_ps(c + j), sv = _mm256_loadu_ps(s + j);
                _mm256_storeu_ps(x1 + j, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
                _mm256_storeu_ps(x2 + j, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
            }
#endif
            for (; j < half; j++) {
                const float a = x1[j], b = x2[j];
                const float ac = a * c[j], bs = b * s[j], bc = b * c[j], as = a * s[j];
                x1[j] = ac - bs;
                x2[j] = bc + as;
            }
        }
    }
}

/* ---- attention over every session of a pass, one call per layer ------------------------------ */

#if defined(__AVX512F__)
#define GROUP_MAX 4 /* query heads per KV head that the D = 64 kernels take at once */
#else
#define GROUP_MAX 3
#endif

#ifdef __AVX512F__
/* e^x for x <= 0 (Cephes' expf polynomial on [-ln2/2, ln2/2], scaled by 2^n with scalef):
 * within 2 ulp of expf; x below -87.3 gives about 1e-38 rather than 0. */
static inline __m512 exp_le0(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}
#elif defined(OPS_AVX2)
/* The same polynomial in 8 lanes; 2^n is built in the exponent bits (n >= -126 after the clamp). */
static inline __m256 exp_le0(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* Lane sums in one fixed tree (neighbouring pairs, pairs of pairs, the two 128-bit halves). */
static inline float reduce_add8(__m256 a) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

static inline float reduce_max8(__m256 a) {
    const __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(q, _mm_movehdup_ps(q)));
}

/* The lane sums of four accumulators, the same fixed tree for each of the four slots. */
static inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* Lanes [0, n) of a vector load, for n < 8 (the others read as zero, nothing past the end). */
static inline __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* scores[g][p] = scale * q_g . keys[index[p]] for the G query heads of one KV head, D = 64: one
 * head at a time with its query in eight registers, four positions at a time (missing ones read
 * a zero row). */
static void group_scores_64(const float *q, int64_t G, const float *keys, const int64_t *index, int64_t n,
                            float scale, float *scores, int64_t ld) {
    static const float zeros[64] = {0};
    const __m128 sv = _mm_set1_ps(scale);
    for (int64_t g = 0; g < G; g++) {
        __m256 qv[8];
        for (int c = 0; c < 8; c++) qv[c] = _mm256_loadu_ps(q + g * 64 + c * 8);
        for (int64_t p = 0; p < n; p += 4) {
            const float *rows[4];
            for (int r = 0; r < 4; r++) rows[r] = p + r < n ? keys + index[p + r] * 64 : zeros;
            __m256 acc[4];
            for (int r = 0; r < 4; r++) {
                acc[r] = _mm256_mul_ps(qv[0], _mm256_loadu_ps(rows[r]));
                for (int c = 1; c < 8; c++) acc[r] = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(rows[r] + c * 8), acc[r]);
            }
            float out[4];
            _mm_storeu_ps(out, _mm_mul_ps(reduce4(acc[0], acc[1], acc[2], acc[3]), sv));
            for (int r = 0; r < 4 && p + r < n; r++) scores[g * ld + p + r] = out[r];
        }
    }
}

/* out[g][64] = sum_p w[g][p] * values[index[p]] for the G (<= 3) heads at once, 32 of the 64
 * columns at a time (G x 4 accumulators); each head's sum runs p = 0..n-1, as weighted_rows does. */
static void group_weighted_rows_64(const float *w, int64_t ld, int64_t G, const float *values, const int64_t *index,
                                   int64_t n, float *out) {
    for (int half = 0; half < 2; half++) {
        __m256 acc[3][4];
        for (int g = 0; g < 3; g++)
            for (int c = 0; c < 4; c++) acc[g][c] = _mm256_setzero_ps();
        for (int64_t p = 0; p < n; p++) {
            const float *row = values + index[p] * 64 + half * 32;
            const __m256 v0 = _mm256_loadu_ps(row), v1 = _mm256_loadu_ps(row + 8);
            const __m256 v2 = _mm256_loadu_ps(row + 16), v3 = _mm256_loadu_ps(row + 24);
            for (int64_t g = 0; g < G; g++) {
                const __m256 wv = _mm256_broadcast_ss(w + g * ld + p);
                acc[g][0] = _mm256_fmadd_ps(wv, v0, acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(wv, v1, acc[g][1]);
                acc[g][2] = _mm256_fmadd_ps(wv, v2, acc[g][2]);
                acc[g][3] = _mm256_fmadd_ps(wv, v3, acc[g][3]);
            }
        }
        for (int64_t g = 0; g < G; g++)
            for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + g * 64 + half * 32 + c * 8, acc[g][c]);
    }
}
#endif

static float dot(const float *a, const float *b, int64_t D) {
#ifdef __AVX512F__
    if (D % 16 == 0) {
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b));
        for (int64_t d = 16; d < D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
        return _mm512_reduce_add_ps(acc);
    }
#elif defined(OPS_AVX2)
    if (D % 8 == 0) {
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b));
        for (int64_t d = 8; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
        return reduce_add8(acc);
    }
#endif
    float s = 0.0f;
    for (int64_t d = 0; d < D; d++) s = fmaf(a[d], b[d], s);
    return s;
}

#ifdef __AVX512F__
/* The lane sums of four accumulators: one fixed tree per accumulator (lanes j and j + 8, then
 * neighbouring pairs, pairs of pairs, the two 128-bit halves), so a dot product's bits do not
 * depend on which of the four slots it took. */
static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
#define HALVES(a) _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
    const __m256 t0 = _mm256_hadd_ps(HALVES(a0), HALVES(a1)), t1 = _mm256_hadd_ps(HALVES(a2), HALVES(a3));
#undef HALVES
    const __m256 u = _mm256_hadd_ps(t0, t1);
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* scores[g][p] = scale * q_g . keys[index[p]] for the G (<= 4) query heads of one KV head, D = 64,
 * four positions at a time (missing ones read a zero row); each key row is loaded once for all G. */
static void group_scores_64(const float *q, int64_t G, const float *keys, const int64_t *index, int64_t n,
                            float scale, float *scores, int64_t ld) {
    static const float zeros[64] = {0};
    __m512 qv[4][4];
    for (int64_t g = 0; g < G; g++)
        for (int c = 0; c < 4; c++) qv[g][c] = _mm512_loadu_ps(q + g * 64 + c * 16);
    const __m128 sv = _mm_set1_ps(scale);
    for (int64_t p = 0; p < n; p += 4) {
        __m512 kv[4][4];
        for (int r = 0; r < 4; r++) {
            const float *row = p + r < n ? keys + index[p + r] * 64 : zeros;
            for (int c = 0; c < 4; c++) kv[r][c] = _mm512_loadu_ps(row + c * 16);
        }
        for (int64_t g = 0; g < G; g++) {
            __m512 acc[4];
            for (int r = 0; r < 4; r++) {
                acc[r] = _mm512_mul_ps(qv[g][0], kv[r][0]);
                for (int c = 1; c < 4; c++) acc[r] = _mm512_fmadd_ps(qv[g][c], kv[r][c], acc[r]);
            }
            float out[4];
            _mm_storeu_ps(out, _mm_mul_ps(reduce4(acc[0], acc[1], acc[2], acc[3]), sv));
            for (int r = 0; r < 4 && p + r < n; r++) scores[g * ld + p + r] = out[r];
        }
    }
}

/* out[g][64] = sum_p w[g][p] * values[index[p]] for the G (<= 4) heads at once: each value row is
 * loaded once, and the G x 4 accumulators are independent chains (each head's sum runs p = 0..n-1,
 * as weighted_rows does it alone). */
static void group_weighted_rows_64(const float *w, int64_t ld, int64_t G, const float *values, const int64_t *index,
                                   int64_t n, float *out) {
    __m512 acc[4][4];
    for (int g = 0; g < 4; g++)
        for (int c = 0; c < 4; c++) acc[g][c] = _mm512_setzero_ps();
    for (int64_t p = 0; p < n; p++) {
        const float *row = values + index[p] * 64;
        const __m512 v0 = _mm512_loadu_ps(row), v1 = _mm512_loadu_ps(row + 16);
        const __m512 v2 = _mm512_loadu_ps(row + 32), v3 = _mm512_loadu_ps(row + 48);
        for (int64_t g = 0; g < G; g++) {
            const __m512 wv = _mm512_set1_ps(w[g * ld + p]);
            acc[g][0] = _mm512_fmadd_ps(wv, v0, acc[g][0]);
            acc[g][1] = _mm512_fmadd_ps(wv, v1, acc[g][1]);
            acc[g][2] = _mm512_fmadd_ps(wv, v2, acc[g][2]);
            acc[g][3] = _mm512_fmadd_ps(wv, v3, acc[g][3]);
        }
    }
    for (int64_t g = 0; g < G; g++)
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(out + g * 64 + c * 16, acc[g][c]);
}
#endif

/* scores[0..n) <- exp(scores - max), returns their sum. */
static float softmax_numerators(float *scores, int64_t n) {
    float m = -INFINITY;
    int64_t p = 0;
#ifdef __AVX512F__
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (; p + 16 <= n; p += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(scores + p));
    m = _mm512_reduce_max_ps(mx); /* a maximum is the same in any order */
#elif defined(OPS_AVX2)
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (; p + 8 <= n; p += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(scores + p));
    m = reduce_max8(mx);
#endif
    for (; p < n; p++) m = scores[p] > m ? scores[p] : m;
    float sum = 0.0f;
    p = 0;
#ifdef __AVX512F__
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (; p + 16 <= n; p += 16) {
        const __m512 e = exp_le0(_mm512_sub_ps(_mm512_loadu_ps(scores + p), mv));
        _mm512_storeu_ps(scores + p, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (p < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - p)) - 1u);
        const __m512 e = exp_le0(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + p), mv));
        _mm512_mask_storeu_ps(scores + p, tail, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(tail, e));
        p = n;
    }
    sum = _mm512_reduce_add_ps(acc);
#elif defined(OPS_AVX2)
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (; p + 8 <= n; p += 8) {
        const __m256 e = exp_le0(_mm256_sub_ps(_mm256_loadu_ps(scores + p), mv));
        _mm256_storeu_ps(scores + p, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (p < n) {
        const __m256i tail = tail_mask(n - p);
        const __m256 e = _mm256_and_ps(exp_le0(_mm256_sub_ps(_mm256_maskload_ps(scores + p, tail), mv)),
                                       _mm256_castsi256_ps(tail));
        _mm256_maskstore_ps(scores + p, tail, e);
        acc = _mm256_add_ps(acc, e);
        p = n;
    }
    sum = reduce_add8(acc);
#endif
    for (; p < n; p++) {
        scores[p] = expf(scores[p] - m);
        sum += scores[p];
    }
    return sum;
}

/* out[D] = sum_p w[p] * rows(p)[D] over n positions whose rows are given by index. */
static void weighted_rows(const float *w, const float *base, const int64_t *index, int64_t n, int64_t D, float *out) {
#ifdef __AVX512F__
    if (D == 64) { /* the common head size: the output row stays in four registers */
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t p = 0; p < n; p++) {
            const float *row = base + index[p] * D;
            const __m512 wv = _mm512_set1_ps(w[p]);
            a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row), a0);
            a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + 16), a1);
            a2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + 32), a2);
            a3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + 48), a3);
        }
        _mm512_storeu_ps(out, a0);
        _mm512_storeu_ps(out + 16, a1);
        _mm512_storeu_ps(out + 32, a2);
        _mm512_storeu_ps(out + 48, a3);
        return;
    }
#endif
    for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
    for (int64_t p = 0; p < n; p++) {
        const float *row = base + index[p] * D;
        const float wp = w[p];
        int64_t d = 0;
#ifdef __AVX512F__
        const __m512 wv = _mm512_set1_ps(wp);
        for (; d + 16 <= D; d += 16)
            _mm512_storeu_ps(out + d, _mm512_fmadd_ps(wv, _mm512_loadu_ps(row + d), _mm512_loadu_ps(out + d)));
#elif defined(OPS_AVX2)
        const __m256 wv = _mm256_set1_ps(wp);
        for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(out + d, _mm256_fmadd_ps(wv, _mm256_loadu_ps(row + d), _mm256_loadu_ps(out + d)));
#endif
        for (; d < D; d++) out[d] = fmaf(wp, row[d], out[d]);
    }
}

/*
 * One layer's attention for S sessions whose new rows are stacked in q/k/v ([T] rows, q_stride /
 * k_stride / v_stride floats apart; q: H heads of D, k/v: Hkv heads of D, each head contiguous).
 * Session s owns rows [spans[s], spans[s+1]),
 * has lens[s] committed positions and a cache whose layer block starts at caches[s] with capacity
 * caps[s] ([2, Hkv, cap, D]: keys, then values). Its new rows' keys/values are first written at
 * positions lens[s].. of its cache; then new row i of s attends to the whole prefix and to the new
 * rows c with blocks[s][i * Q + c] != 0 (blocks[s] NULL: a single row, which sees itself). Query
 * head h reads KV head h / (H / Hkv). out: [T, H * D]. Every (row, head) is computed on its own,
 * in one fixed order, so results do not depend on the other rows or sessions of the pass.
 * Returns 0, or -1 when a thread could not allocate its scratch rows (out is then incomplete).
 */
int cpu_attention(const float *q, int64_t q_stride, const float *k, int64_t k_stride, const float *v, int64_t v_stride,
                  int64_t H, int64_t Hkv, int64_t D,
                  int64_t S, const int64_t *caches, const int64_t *caps, const int64_t *lens, const int64_t *spans,
                  const int64_t *blocks, float scale, float *out, int threads) {
    for (int64_t s = 0; s < S; s++) {
        float *cache = (float *)caches[s];
        const int64_t cap = caps[s], len = lens[s];
        for (int64_t t = spans[s]; t < spans[s + 1]; t++)
            for (int64_t j = 0; j < Hkv; j++) {
                const int64_t pos = len + t - spans[s];
                memcpy(cache + (j * cap + pos) * D, k + t * k_stride + j * D, (size_t)D * sizeof(float));
                memcpy(cache + ((Hkv + j) * cap + pos) * D, v + t * v_stride + j * D, (size_t)D * sizeof(float));
            }
    }
    const int64_t T = spans[S], groups = H / Hkv;
    int64_t most = 0;
    for (int64_t s = 0; s < S; s++) {
        const int64_t n = lens[s] + spans[s + 1] - spans[s];
        most = n > most ? n : most;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *scores = (float *)malloc((size_t)groups * (most + 16) * sizeof(float));
        int64_t *index = (int64_t *)malloc((size_t)(most + 16) * sizeof(int64_t));
        const int64_t ld = most + 16;
        if (scores == NULL || index == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 2)
        for (int64_t item = 0; item < T * Hkv; item++) {
            if (scores == NULL || index == NULL) continue; /* no scratch here: the call reports failure */
            const int64_t t = item / Hkv, j = item % Hkv;
            int64_t s = 0;
            while (t >= spans[s + 1]) s++;
            const float *cache = (const float *)caches[s];
            const int64_t cap = caps[s], len = lens[s], Q = spans[s + 1] - spans[s], i = t - spans[s];
            const float *keys = cache + j * cap * D, *values = cache + (Hkv + j) * cap * D;
            const uint8_t *block = (const uint8_t *)blocks[s];
            int64_t n = 0;
            for (int64_t p = 0; p < len; p++) index[n++] = p;
            for (int64_t c = 0; c < Q; c++)
                if (block ? block[i * Q + c] : c == i) index[n++] = len + c;
            const float *q0 = q + t * q_stride + j * groups * D; /* the query heads of KV head j */
#if defined(__AVX512F__) || defined(OPS_AVX2)
            if (D == 64 && groups <= GROUP_MAX)
                group_scores_64(q0, groups, keys, index, n, scale, scores, ld);
            else
#endif
                for (int64_t g = 0; g < groups; g++)
                    for (int64_t p = 0; p < n; p++) scores[g * ld + p] = dot(q0 + g * D, keys + index[p] * D, D) * scale;
            for (int64_t g = 0; g < groups; g++) {
                float *sg = scores + g * ld;
                const float inv = 1.0f / softmax_numerators(sg, n);
                for (int64_t p = 0; p < n; p++) sg[p] *= inv;
            }
            float *o = out + t * H * D + j * groups * D; /* the G heads' outputs, side by side */
#if defined(__AVX512F__) || defined(OPS_AVX2)
            if (D == 64 && groups <= GROUP_MAX)
                group_weighted_rows_64(scores, ld, groups, values, index, n, o);
            else
#endif
                for (int64_t g = 0; g < groups; g++) weighted_rows(scores + g * ld, values, index, n, D, o + g * D);
        }
        free(scores);
        free(index);
    }
    return failed ? -1 : 0;
}
