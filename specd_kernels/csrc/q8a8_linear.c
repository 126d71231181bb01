/*
 * The "q8a8" weight format: the same exact int8 weight codes as q8_linear.c, multiplied by
 * activations that are themselves quantized to int8, so the inner product is integer
 * arithmetic (AVX-512 VNNI: 64 multiply-adds per instruction instead of 16 for fp32 FMAs).
 *
 * Weights (exact, as in q8_linear.c):  W[n, k] = d[n, g] * q[n, k] + m[n, g],  g = k / 32.
 * Activations, per row and per group of 32 along K (what llama.cpp does for its Q8 dot
 * products):  s[r, g] = max|x[r, g*32 : g*32+32]| / 127,   a[r, k] = round(x[r, k] / s[r, g]).
 Per group
 *     sum_k x w  ~=  s * d * (sum_k a q)  +  (s * sum_k a) * m
 * with both sums exact int32. vpdpbusd multiplies unsigned by signed bytes, so the activations
 * are stored as a + 128 and each output's integer sum starts at -128 * sum_k q (precomputed per
 * group): the correction is exact, in integers, before any rounding. THIS CHANGES THE MODEL'S OUTPUTS against fp32 (the activations
 * are rounded); it is an opt-in format, never chosen by "auto".
 *
 * What it keeps: every row is quantized and summed on its own, in one fixed order (the integer
 * sums are exact in any order; the float steps run group 0, 1, ..., G-1 per output). A row's
 * result does not depend on the other rows of the call, so a tree pass equals decoding each
 * branch alone and speculative decoding stays lossless against this engine's own greedy decoding.
 *
 * Layout (specd_kernels/q8.py, to_a8_panels): panels of 32 output features; within a panel,
 * for each quad of four consecutive k, the 32 features' four codes side by side:
 *     codes[p, k/4, j, k%4] = q[32 p + j, k]        int8  [P, K/4, 32, 4]
 *     start[p, g, j] = -128 * sum_{k in g} q[32 p + j, k]                  int32 [P, K/32, 32]
 *     scale[p, g, j] = d[32 p + j, g],  shift[p, g, j] = m[32 p + j, g]   fp32 [P, K/32, 32]
 * so one vpdpbusd multiplies a broadcast of a[r, k..k+3] + 128 by a 64-byte row of the panel.
 *
 * Without AVX-512 VNNI: AVX2's byte multiplies (below, two exact routes by the size of the codes),
 * else element by element; the same bits every way.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define A8_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define A8_AVX2 1
#endif

#define A8_GROUP 32
#define A8_PANEL 32
#define A8_MAX_R 6 /* rows per register block: 6 x (2 int + 2 float) vectors */

int q8a8_has_vnni(void) {
#ifdef A8_VNNI
    return 1;
#else
    return 0;
#endif
}

/* Which integer path runs a matrix whose codes reach max_abs = max |q|: 2 = VNNI, 1 = AVX2, 0 = element
 * by element (AVX2 takes codes up to 127 in magnitude: Q4_0, Q4_1 and Q8_0 all qualify). */
int q8a8_path(int max_abs) {
#if defined(A8_VNNI)
    (void)max_abs;
    return 2;
#elif defined(A8_AVX2)
    return max_abs <= 127 ? 1 : 0;
#else
    (void)max_abs;
    return 0;
#endif
}

/* Row r of x [K] -> a [K] (stored + 128, as uint8), s [G], ss [G] = s * sum(a) per group. */
static void quantize_row(const float *x, int64_t K, uint8_t *a, float *s, float *ss) {
    for (int64_t g = 0; g < K / A8_GROUP; g++) {
        const float *xg = x + g * A8_GROUP;
        float amax = 0.0f;
        for (int i = 0; i < A8_GROUP; i++) amax = fmaxf(amax, fabsf(xg[i]));
        const float scale = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < A8_GROUP; i++) {
            float v = nearbyintf(xg[i] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            a[g * A8_GROUP + i] = (uint8_t)((int32_t)v + 128);
            sum += (int32_t)v;
        }
        s[g] = scale;
        ss[g] = scale * (float)sum;
    }
}

/* out = res + (sum + bias): q8_linear.c's, the same rounding order for both formats. */
void q8_finish_row(const float *row, float *out, int cols, const float *bias, const float *res);

#ifdef A8_VNNI

#define DEFINE_A8_BLOCK(R)                                                                                   \
    static void a8_block_##R(const uint8_t *a, int64_t K, const float *s, const float *ss, int64_t G,        \
                             const int8_t *w, const int32_t *st, const float *d, const float *mp, float *out, \
                             int64_t ldo,                                                                    \
                             int cols, const float *bias, const float *res) {                                \
        __m512 y0[R], y1[R];                                                                                 \
        for (int r = 0; r < R; r++) y0[r] = y1[r] = _mm512_setzero_ps();                                     \
        for (int64_t g = 0; g < G; g++) {                                                                    \
            __m512i i0[R], i1[R];                                                                            \
            const __m512i st0 = _mm512_loadu_si512((const void *)(st + g * A8_PANEL));                       \
            const __m512i st1 = _mm512_loadu_si512((const void *)(st + g * A8_PANEL + 16));                  \
            for (int r = 0; r < R; r++) i0[r] = st0, i1[r] = st1;                                            \
            const int8_t *wg = w + g * A8_GROUP * A8_PANEL;                                                  \
            for (int q = 0; q < A8_GROUP / 4; q++) {                                                         \
                const __m512i w0 = _mm512_loadu_si512((const void *)(wg + q * 128));                          \
                const __m512i w1 = _mm512_loadu_si512((const void *)(wg + q * 128 + 64));                     \
                for (int r = 0; r < R; r++) {                                                                \
                    int32_t quad;                                                                            \
                    memcpy(&quad, a + r * K + g * A8_GROUP + q * 4, 4);                                      \
                    const __m512i xb = _mm512_set1_epi32(quad);                                              \
                    i0[r] = _mm512_dpbusd_epi32(i0[r], xb, w0);                                              \
                    i1[r] = _mm512_dpbusd_epi32(i1[r], xb, w1);                                              \
                }                                                                                            \
            }                                                                                                \
            const __m512 d0 = _mm512_loadu_ps(d + g * A8_PANEL), d1 = _mm512_loadu_ps(d + g * A8_PANEL + 16); \
            const __m512 m0 = _mm512_loadu_ps(mp + g * A8_PANEL), m1 = _mm512_loadu_ps(mp + g * A8_PANEL + 16); \
            for (int r = 0; r < R; r++) {                                                                    \
                const __m512 sr = _mm512_set1_ps(s[r * G + g]), ssr = _mm512_set1_ps(ss[r * G + g]);         \
                y0[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i0[r]), sr), d0, y0[r]);            \
                y1[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i1[r]), sr), d1, y1[r]);            \
                y0[r] = _mm512_fmadd_ps(ssr, m0, y0[r]);                                                     \
                y1[r] = _mm512_fmadd_ps(ssr, m1, y1[r]);                                                     \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < R; r++) {                                                                        \
            float row[A8_PANEL];                                                                             \
            _mm512_storeu_ps(row, y0[r]);                                                                    \
            _mm512_storeu_ps(row + 16, y1[r]);                                                               \
            q8_finish_row(row, out + r * ldo, cols, bias, res ? res + r * ldo : NULL);                      \
        }                                                                                                    \
    }

#else /* the same arithmetic, element by element */

#ifdef A8_AVX2
/*
 * AVX2 has no vpdpbusd; vpmaddubsw multiplies 32 unsigned by 32 signed bytes and adds neighbouring
 * pairs into int16 lanes, which saturate, so each matrix takes one of two exact routes (max_abs =
 * max |q| over its codes, from Python):
 *   max_abs <= 64: the stored a + 128 (0..254) times q, as VNNI does: a pair is at most
 *      2 * 254 * 64 = 32512, never saturated; the integer sum starts at the same -128 sum q.
 *      With max_abs <= 16 (Q4_0, Q4_1) four quads' pairs add up in int16 (<= 4 * 8128) before
 *      widening: fewer multiply instructions per product, the same exact sums.
 *   otherwise (Q8_0, |q| <= 127): the sign moves to the weights, |a| * sign(q, a), a pair at most
 *      2 * 127 * 127 = 32258; the sum is sum a q itself, so it starts at 0.
 * vpmaddwd with ones widens the pairs to int32. Either way every group's integer sum is exact,
 * so it equals the VNNI one, and the float steps are the same operations in 8 lanes: same bits.
 * 16 registers: a half panel (16 features, two int32 vectors per row) at a time, up to 6 rows;
 * each row's float sums wait in memory between groups.
 */
#define DEFINE_A8X_BLOCK(R, ROUTE)                                                                          \
    static void a8x_block_##R##_##ROUTE(const uint8_t *a, int64_t K, const float *s, const float *ss,        \
                                          int64_t G, const int8_t *w, const int32_t *st, const float *d,       \
                                          const float *mp, float *out, int64_t ldo, int cols, const float *bias, \
                                          const float *res) {                                                \
        float y[R][A8_PANEL];                                                                                \
        const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);                      \
        for (int r = 0; r < R; r++)                                                                          \
            for (int c = 0; c < A8_PANEL; c++) y[r][c] = 0.0f;                                               \
        for (int h = 0; h < 2 && h * 16 < cols; h++) {                                                       \
            for (int64_t g = 0; g < G; g++) {                                                                \
                __m256i i0[R], i1[R];                                                                        \
                for (int r = 0; r < R; r++) {                                                                \
                    i0[r] = ROUTE == 1 ? _mm256_setzero_si256()                                              \
                                       : _mm256_loadu_si256((const __m256i *)(st + g * A8_PANEL + h * 16));  \
                    i1[r] = ROUTE == 1 ? _mm256_setzero_si256()                                              \
                                       : _mm256_loadu_si256((const __m256i *)(st + g * A8_PANEL + h * 16 + 8)); \
                }                                                                                            \
                const int8_t *wg = w + g * A8_GROUP * A8_PANEL + h * 64;                                     \
                for (int q0 = 0; q0 < A8_GROUP / 4; q0 += 4) { /* four quads: 16 k */                      \
                    __m256i p0[R], p1[R];                                                                    \
                    for (int q = q0; q < q0 + 4; q++) {                                                      \
                        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wg + q * 128));              \
                        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wg + q * 128 + 32));         \
                        for (int r = 0; r < R; r++) {                                                        \
                            int32_t quad;                                                                    \
                            memcpy(&quad, a + r * K + g * A8_GROUP + q * 4, 4);                              \
                            __m256i xb = _mm256_set1_epi32(quad), v0 = w0, v1 = w1;                          \
                            if (ROUTE == 1) { /* a = stored - 128: flip the top bit; |a| times sign(q, a) */ \
                                const __m256i xs = _mm256_xor_si256(xb, flip);                               \
                                xb = _mm256_abs_epi8(xs);                                                    \
                                v0 = _mm256_sign_epi8(w0, xs);                                               \
                                v1 = _mm256_sign_epi8(w1, xs);                                               \
                            }                                                                                \
                            const __m256i m0 = _mm256_maddubs_epi16(xb, v0), m1 = _mm256_maddubs_epi16(xb, v1); \
                            if (ROUTE == 2) { /* |pair| <= 2 * 254 * 16: four quads add up in int16 */       \
                                p0[r] = q == q0 ? m0 : _mm256_add_epi16(p0[r], m0);                         \
                                p1[r] = q == q0 ? m1 : _mm256_add_epi16(p1[r], m1);                         \
                            } else {                                                                         \
                                i0[r] = _mm256_add_epi32(i0[r], _mm256_madd_epi16(m0, ones));                \
                                i1[r] = _mm256_add_epi32(i1[r], _mm256_madd_epi16(m1, ones));                \
                            }                                                                                \
                        }                                                                                    \
                    }                                                                                        \
                    if (ROUTE == 2)                                                                          \
                        for (int r = 0; r < R; r++) {                                                        \
                            i0[r] = _mm256_add_epi32(i0[r], _mm256_madd_epi16(p0[r], ones));                 \
                            i1[r] = _mm256_add_epi32(i1[r], _mm256_madd_epi16(p1[r], ones));                 \
                        }                                                                                    \
                }                                                                                            \
                const float *dg = d + g * A8_PANEL + h * 16, *mg = mp + g * A8_PANEL + h * 16;               \
                const __m256 d0 = _mm256_loadu_ps(dg), d1 = _mm256_loadu_ps(dg + 8);                         \
                const __m256 m0 = _mm256_loadu_ps(mg), m1 = _mm256_loadu_ps(mg + 8);                         \
                for (int r = 0; r < R; r++) {                                                                \
                    const __m256 sr = _mm256_set1_ps(s[r * G + g]), ssr = _mm256_set1_ps(ss[r * G + g]);     \
                    float *yr = y[r] + h * 16;                                                               \
                    __m256 y0 = _mm256_loadu_ps(yr), y1 = _mm256_loadu_ps(yr + 8);                           \
                    y0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i0[r]), sr), d0, y0);              \
                    y1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i1[r]), sr), d1, y1);              \
                    y0 = _mm256_fmadd_ps(ssr, m0, y0);                                                       \
                    y1 = _mm256_fmadd_ps(ssr, m1, y1);                                                       \
                    _mm256_storeu_ps(yr, y0);                                                                \
                    _mm256_storeu_ps(yr + 8, y1);                                                            \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < R; r++) q8_finish_row(y[r], out + r * ldo, cols, bias, res ? res + r * ldo : NULL); \
    }

#define DEFINE_A8X_BLOCKS(R) DEFINE_A8X_BLOCK(R, 0) DEFINE_A8X_BLOCK(R, 1)
DEFINE_A8X_BLOCKS(1)
DEFINE_A8X_BLOCKS(2)
DEFINE_A8X_BLOCKS(3)
DEFINE_A8X_BLOCKS(4)
DEFINE_A8X_BLOCKS(5)
DEFINE_A8X_BLOCKS(6)
DEFINE_A8X_BLOCK(1, 2)
DEFINE_A8X_BLOCK(2, 2)
DEFINE_A8X_BLOCK(3, 2)
/* The int16 route keeps four vectors per row live: at most 3 rows per pass over the panel. */
#define DEFINE_A8X_SPLIT(R, A, B)                                                                            \
    static void a8x_block_##R##_2(const uint8_t *a, int64_t K, const float *s, const float *ss, int64_t G,   \
                                  const int8_t *w, const int32_t *st, const float *d, const float *mp,       \
                                  float *out, int64_t ldo, int cols, const float *bias, const float *res) {  \
        a8x_block_##A##_2(a, K, s, ss, G, w, st, d, mp, out, ldo, cols, bias, res);                          \
        a8x_block_##B##_2(a + A * K, K, s + A * G, ss + A * G, G, w, st, d, mp, out + A * ldo, ldo, cols,   \
                          bias, res ? res + A * ldo : NULL);                                                 \
    }
DEFINE_A8X_SPLIT(4, 2, 2)
DEFINE_A8X_SPLIT(5, 3, 2)
DEFINE_A8X_SPLIT(6, 3, 3)
#endif

#define DEFINE_A8_BLOCK(R)                                                                                   \
    static void a8_block_##R(const uint8_t *a, int64_t K, const float *s, const float *ss, int64_t G,        \
                             const int8_t *w, const int32_t *st, const float *d, const float *mp, float *out, \
                             int64_t ldo,                                                                    \
                             int cols, const float *bias, const float *res) {                                \
        for (int r = 0; r < R; r++) {                                                                        \
            float row[A8_PANEL];                                                                             \
            for (int c = 0; c < cols; c++) {                                                                 \
                float y = 0.0f;                                                                              \
                for (int64_t g = 0; g < G; g++) {                                                            \
                    int32_t acc = st[g * A8_PANEL + c];                                                      \
                    for (int i = 0; i < A8_GROUP; i++) {                                                     \
                        const int64_t k = g * A8_GROUP + i;                                                  \
                        acc += (int32_t)a[r * K + k] * (int32_t)w[(k / 4) * 128 + c * 4 + k % 4];            \
                    }                                                                                        \
                    y = fmaf((float)acc * s[r * G + g], d[g * A8_PANEL + c], y);                             \
                    y = fmaf(ss[r * G + g], mp[g * A8_PANEL + c], y);                                        \
                }                                                                                            \
                row[c] = y;                                                                                  \
            }                                                                                                \
            q8_finish_row(row, out + r * ldo, cols, bias, res ? res + r * ldo : NULL);                      \
        }                                                                                                    \
    }

#endif

DEFINE_A8_BLOCK(1)
DEFINE_A8_BLOCK(2)
DEFINE_A8_BLOCK(3)
DEFINE_A8_BLOCK(4)
DEFINE_A8_BLOCK(5)
DEFINE_A8_BLOCK(6)

typedef void (*a8_block_fn)(const uint8_t *, int64_t, const float *, const float *, int64_t, const int8_t *,
                            const int32_t *, const float *, const float *, float *, int64_t, int, const float *,
                            const float *);
static const a8_block_fn A8_BLOCKS[A8_MAX_R + 1] = {NULL, a8_block_1, a8_block_2, a8_block_3,
                                                    a8_block_4, a8_block_5, a8_block_6};
#ifdef A8_AVX2
static const a8_block_fn A8X_BLOCKS[3][A8_MAX_R + 1] = {
    {NULL, a8x_block_1_0, a8x_block_2_0, a8x_block_3_0, a8x_block_4_0, a8x_block_5_0, a8x_block_6_0},
    {NULL, a8x_block_1_1, a8x_block_2_1, a8x_block_3_1, a8x_block_4_1, a8x_block_5_1, a8x_block_6_1},
    {NULL, a8x_block_1_2, a8x_block_2_2, a8x_block_3_2, a8x_block_4_2, a8x_block_5_2, a8x_block_6_2}};
#endif

/* Returns 0, or -1 when the activations' buffers cannot be allocated (y untouched).
 * max_abs: the largest |q| among the codes (it picks the AVX2 route; any value is exact elsewhere).
 * x: [M, K] fp32; codes/start/scale/shift: the layout above; bias: [N] or NULL; res: [M, N] or NULL, added last
 * (may be y itself); y: [M, N]. Panels are split across threads; rows run in even register blocks. */
static void a8_screen_panel(int64_t M, int64_t G, const float *s, const float *absw, float c, float *y, int64_t ldy,
                            int cols, float *hmax, float *lmax, int64_t P, int64_t p);

static int a8_run(const float *x, int64_t M, int64_t K, const int8_t *codes, const int32_t *start, const float *scale,
                  const float *shift, int64_t N, const float *bias, const float *res, float *y, int threads,
                  int max_abs, const float *absw, float c, float *hmax, float *lmax) {
    const int64_t G = K / A8_GROUP;
    const a8_block_fn *blocks = A8_BLOCKS;
#ifdef A8_AVX2
    if (q8a8_path(max_abs) == 1) blocks = A8X_BLOCKS[max_abs <= 16 ? 2 : (max_abs <= 64 ? 0 : 1)];
#else
    (void)max_abs;
#endif
    const int64_t panels = (N + A8_PANEL - 1) / A8_PANEL;
    uint8_t *a = (uint8_t *)malloc((size_t)(M * K) + 1);
    float *s = (float *)malloc((size_t)(M * G + 1) * sizeof(float));
    float *ss = (float *)malloc((size_t)(M * G + 1) * sizeof(float));
    if (!a || !s || !ss) { /* no memory for the quantized activations: y untouched, the caller raises */
        free(a);
        free(s);
        free(ss);
        return -1;
    }
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++) quantize_row(x + r * K, K, a + r * K, s + r * G, ss + r * G);
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            const int64_t n0 = p * A8_PANEL;
            const int cols = (int)(N - n0 < A8_PANEL ? N - n0 : A8_PANEL);
            const int8_t *pw = codes + p * K * A8_PANEL;
            const int32_t *pst = start + p * G * A8_PANEL;
            const float *pd = scale + p * G * A8_PANEL, *pm = shift + p * G * A8_PANEL;
            const float *pb = bias ? bias + n0 : NULL;
            const int64_t nblocks = (M + A8_MAX_R - 1) / A8_MAX_R;
            int64_t r0 = 0;
            for (int64_t b = 0; b < nblocks; b++) {
                const int64_t R = (M - r0) / (nblocks - b) + ((M - r0) % (nblocks - b) ? 1 : 0);
                blocks[R](a + r0 * K, K, s + r0 * G, ss + r0 * G, G, pw, pst, pd, pm, y + r0 * N + n0, N, cols, pb,
                             res ? res + r0 * N + n0 : NULL);
                r0 += R;
            }
            if (absw) /* the screen: this panel's rows are still in cache */
                a8_screen_panel(M, G, s, absw + p * G * A8_PANEL, c, y + n0, N, cols, hmax, lmax, panels, p);
        }
    }
    free(a);
    free(s);
    free(ss);
    return 0;
}

int q8a8_linear(const float *x, int64_t M, int64_t K, const int8_t *codes, const int32_t *start, const float *scale,
                const float *shift, int64_t N, const float *bias, const float *res, float *y, int threads,
                int max_abs) {
    return a8_run(x, M, K, codes, start, scale, shift, N, bias, res, y, threads, max_abs, NULL, 0.0f, NULL, NULL);
}

/*
 * The argmax screen: the EXACT argmax of q8_linear.c's logits (the fp32 model's bits) at about the
 * cost of this file's int8-activation product, for greedy verification.
 *
 * Per row r and output j the int8-activation value y_j differs from the exact kernel's e_j by at
 * most  c * B_j  with  B_j = sum_g s[r, g] * A[j, g],  A[j, g] = sum_{k in g} (|d q_k| + |m|)
 * (``c`` from Python: the activations' rounding, half a step s[r, g] per element, plus both sums'
 * float rounding; specd_kernels/q8.py derives it). So with  hi_j = y_j + c B_j,  lo_j = y_j - c B_j
 * and  L = max_j lo_j,  the exact argmax j* has  hi_j* >= e_j* >= e_k >= lo_k  for every k: every
 * output with hi_j >= L is a candidate, and j* is one of them. q8a8_screen writes hi (in place of
 * y) and, per row and panel of 32 outputs, the largest hi and lo; q8a8_pick rescores the panels
 * holding candidates with q8_linear.c's own code (the same bits as its full product) and keeps the
 * first maximum among the candidates, as torch.argmax does. A row with candidates in more than
 * max_panels panels, or a maximum that is not finite, gets -1: the caller runs the exact product.
 * The caller passes only finite rows small enough that no product can overflow (|x| < 2^50).
 */
#define SCREEN_SLACK 1e-6f /* relative: the rounding of hi and lo themselves (16 ulps of y) */

static void a8_screen_panel(int64_t M, int64_t G, const float *s, const float *absw, float c, float *y, int64_t ldy,
                            int cols, float *hmax, float *lmax, int64_t P, int64_t p) {
    for (int64_t r = 0; r < M; r++) {
        float *yr = y + r * ldy;
        float hm = -INFINITY, lm = -INFINITY;
#if defined(__AVX512F__)
        if (cols == A8_PANEL) { /* a whole panel: two vectors of 16 outputs */
            __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
            for (int64_t g = 0; g < G; g++) {
                const __m512 sg = _mm512_set1_ps(s[r * G + g]);
                b0 = _mm512_fmadd_ps(sg, _mm512_loadu_ps(absw + g * A8_PANEL), b0);
                b1 = _mm512_fmadd_ps(sg, _mm512_loadu_ps(absw + g * A8_PANEL + 16), b1);
            }
            const __m512 cv = _mm512_set1_ps(c), ev = _mm512_set1_ps(SCREEN_SLACK);
            const __m512 v0 = _mm512_loadu_ps(yr), v1 = _mm512_loadu_ps(yr + 16);
            const __m512 e0 = _mm512_add_ps(_mm512_mul_ps(cv, b0), _mm512_mul_ps(ev, _mm512_abs_ps(v0)));
            const __m512 e1 = _mm512_add_ps(_mm512_mul_ps(cv, b1), _mm512_mul_ps(ev, _mm512_abs_ps(v1)));
            const __m512 h0 = _mm512_add_ps(v0, e0), h1 = _mm512_add_ps(v1, e1);
            _mm512_storeu_ps(yr, h0);
            _mm512_storeu_ps(yr + 16, h1);
            hmax[r * P + p] = _mm512_reduce_max_ps(_mm512_max_ps(h0, h1));
            lmax[r * P + p] = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_sub_ps(v0, e0), _mm512_sub_ps(v1, e1)));
            continue;
        }
#endif
        float b[A8_PANEL];
        for (int j = 0; j < A8_PANEL; j++) b[j] = 0.0f;
        for (int64_t g = 0; g < G; g++) {
            const float sg = s[r * G + g];
            const float *ag = absw + g * A8_PANEL;
            for (int j = 0; j < A8_PANEL; j++) b[j] += sg * ag[j];
        }
        for (int j = 0; j < cols; j++) {
            const float v = yr[j];
            const float slack = c * b[j] + SCREEN_SLACK * fabsf(v);
            const float hi = v + slack, lo = v - slack;
            yr[j] = hi;
            hm = hi > hm ? hi : hm;
            lm = lo > lm ? lo : lm;
        }
        hmax[r * P + p] = hm;
        lmax[r * P + p] = lm;
    }
}

/* x: [M, K]; hi: [M, N] (written); hmax, lmax: [M, P]. Returns 0 or -1 (no memory; hi untouched). */
int q8a8_screen(const float *x, int64_t M, int64_t K, const int8_t *codes, const int32_t *start, const float *scale,
                const float *shift, const float *absw, float c, int64_t N, const float *bias, float *hi, float *hmax,
                float *lmax, int threads, int max_abs) {
    return a8_run(x, M, K, codes, start, scale, shift, N, bias, NULL, hi, threads, max_abs, absw, c, hmax, lmax);
}

/* q8_linear.c's exact outputs of one panel for one row. */
void q8_panel_row(const float *x, int64_t K, const int8_t *codes, const float *scale, const float *shift, int cols,
                  const float *bias, float *out);

/* The exact argmax per row (out[r]; -1: more than max_panels panels hold candidates, or a maximum
 * that is not finite) from q8a8_screen's hi, hmax, lmax. A panel holding a candidate is rescored
 * whole with q8_linear.c's own code (qcodes/qscale/qshift: ITS layout) -- 32 outputs for about the
 * price of one. cand (optional): the outputs each row compared exactly. */
void q8a8_pick(const float *x, int64_t M, int64_t K, const int8_t *qcodes, const float *qscale, const float *qshift,
               int64_t N, const float *bias, const float *hi, const float *hmax, const float *lmax, int max_panels,
               int64_t *out, int32_t *cand, int threads) {
    const int64_t G = K / A8_GROUP, P = (N + A8_PANEL - 1) / A8_PANEL;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t r = 0; r < M; r++) {
        const float *hr = hmax + r * P, *lr = lmax + r * P;
        float L = -INFINITY;
        for (int64_t p = 0; p < P; p++) L = lr[p] > L ? lr[p] : L;
        int ok = isfinite(L), panels = 0, count = 0;
        int64_t best = -1;
        float top = 0.0f;
        for (int64_t p = 0; ok && p < P; p++) {
            if (!(hr[p] >= L)) continue;
            if (!isfinite(hr[p]) || ++panels > max_panels) {
                ok = 0;
                break;
            }
            const int64_t n0 = p * A8_PANEL;
            const int cols = (int)(N - n0 < A8_PANEL ? N - n0 : A8_PANEL);
            float exact[A8_PANEL];
            q8_panel_row(x + r * K, K, qcodes + p * K * A8_PANEL, qscale + p * G * A8_PANEL, qshift + p * G * A8_PANEL,
                         cols, bias ? bias + n0 : NULL, exact);
            for (int j = 0; j < cols; j++) {
                if (!(hi[r * N + n0 + j] >= L)) continue;
                count++;
                const float e = exact[j];
                if (!isfinite(e)) {
                    ok = 0;
                    break;
                }
                if (best < 0 || e > top) best = n0 + j, top = e;
            }
        }
        out[r] = ok ? best : -1;
        if (cand) cand[r] = count;
    }
}
