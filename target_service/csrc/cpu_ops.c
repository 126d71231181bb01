/*
 * The small per-layer operations of a CPU decode step, each one call instead of several torch
 * ops (a 16-row pass spends more time dispatching those ops than computing them):
 *   rms_norm   y = w * (x * (1 / sqrt(mean(x^2) + eps)))        per row, as transformers' RMSNorm
 *   rope       x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin       in place, per head (rotate_half)
 * Every operation is per row, so a row's result never depends on the other rows of the call.
 * Built into the same library as q8_linear.c (target_service/q8.py), with -ffp-contract=off:
 * each multiply and add rounds separately, so rope gives exactly the bits of the torch ops it
 * replaces; rms_norm differs from torch's only in the order of the mean's sum.
 */
#include <stdint.h>
#include <math.h>

#ifdef __AVX512F__
#include <immintrin.h>
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
