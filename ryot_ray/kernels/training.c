/* The elementwise steps of training (model/steps.py): those around a BitLinear's products,
 * the RMSNorm and its backward, the FFN's SiLU gate (its math in dense.c). Each is one
 * pass over rows that stay in cache, where torch makes several passes and a temporary per
 * operation. Rows are split over `threads` OpenMP threads.
 *
 * Values equal torch's reference steps except for the order of a row's sums (the sum of
 * squares of the RMSNorm, the dot product of its backward), which moves the last bit, and
 * the SiLU's exp (a polynomial to about one ulp). bf16 outputs round to nearest even, as
 * torch's conversion does. The vector path is AVX-512; elsewhere the loops are scalar
 * (`ryot_train_vectorized` says which, so a caller can prefer torch's vector code).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RYOT_X86 1
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

int ryot_train_vectorized(void) {
#ifdef RYOT_X86
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static inline uint16_t bf16_from_f32(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline float f32_from_bf16(uint16_t half) {
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

/* 127 / max(absmax, eps) as torch computes `127.0 / tensor`: times the reciprocal. */
static inline float int8_scale(float absmax) { return 127.0f * (1.0f / fmaxf(absmax, RYOT_QUANT_EPS)); }

static inline float quantized(float value, float scale) {
    return fminf(fmaxf(rintf(value * scale), -128.0f), 127.0f);
}

/* A row of values written as fp32 or bf16. */
static inline void store(void *out, int bf16, int64_t i, float value) {
    if (bf16) ((uint16_t *)out)[i] = bf16_from_f32(value);
    else ((float *)out)[i] = value;
}

#ifdef RYOT_X86
AVX512 static inline __m512 quantized16(__m512 value, __m512 scale) {
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(value, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
}

AVX512 static inline void store16(void *out, int bf16, int64_t i, __m512 value) {
    if (!bf16) {
        _mm512_storeu_ps((float *)out + i, value);
        return;
    }
    __m512i bits = _mm512_castps_si512(value);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

AVX512 static inline __m512 load16(const void *in, int bf16, int64_t i) {
    if (!bf16) return _mm512_loadu_ps((const float *)in + i);
    __m256i half = _mm256_loadu_si256((const __m256i *)((const uint16_t *)in + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
#endif

static inline float load(const void *in, int bf16, int64_t i) {
    return bf16 ? f32_from_bf16(((const uint16_t *)in)[i]) : ((const float *)in)[i];
}

/* 1 / sqrt(mean(x^2) + eps) of a row */
static float rstd_portable(const float *x, int64_t k, float eps) {
    float squares = 0.0f;
    for (int64_t i = 0; i < k; i++) squares += x[i] * x[i];
    return 1.0f / sqrtf(squares / (float)k + eps);
}

/* ---- forward: RMSNorm and int8 codes ---------------------------------------------------
 * rstd = 1 / sqrt(mean(x^2) + eps); normed = x * rstd * weight; scale = 127 / max(|normed|,
 * RYOT_QUANT_EPS); codes = round(normed * scale) in [-128, 127]. `normed` may be NULL. */
static void norm_quantize_portable(const float *x, int64_t k, const float *weight, float eps, int8_t *codes,
                                   float *scale, float *rstd, float *normed) {
    float top = 0.0f;
    const float r = rstd_portable(x, k, eps);
    for (int64_t i = 0; i < k; i++) top = fmaxf(top, fabsf(x[i] * r * weight[i]));
    const float s = int8_scale(top);
    for (int64_t i = 0; i < k; i++) {
        float v = x[i] * r * weight[i];
        if (normed) normed[i] = v;
        codes[i] = (int8_t)quantized(v, s);
    }
    *scale = s;
    *rstd = r;
}

static void rms_norm_portable(const float *x, int64_t k, const float *weight, float eps, float *out, float *rstd) {
    const float r = rstd_portable(x, k, eps);
    for (int64_t i = 0; i < k; i++) out[i] = x[i] * r * weight[i];
    *rstd = r;
}

/* scale the int32 sums of one row, in place as fp32 */
static void scale_row_portable(const int32_t *in, int64_t n, float f, const float *bias, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)in[i] * f + (bias ? bias[i] : 0.0f);
}

static float row_scale_portable(const float *row, int64_t k) {
    float top = 0.0f;
    for (int64_t i = 0; i < k; i++) top = fmaxf(top, fabsf(row[i]));
    return int8_scale(top);
}

static void requantize_portable(const float *row, int64_t k, int bf16, void *out) {
    const float s = row_scale_portable(row, k);
    for (int64_t i = 0; i < k; i++) store(out, bf16, i, quantized(row[i], s) / s);
}

static void quantize_portable(const float *row, int64_t k, int8_t *codes, float *scale) {
    const float s = row_scale_portable(row, k);
    for (int64_t i = 0; i < k; i++) codes[i] = (int8_t)quantized(row[i], s);
    *scale = s;
}

static void dequantize_portable(const int8_t *row, int64_t k, float scale, int bf16, void *out) {
    for (int64_t i = 0; i < k; i++) store(out, bf16, i, (float)row[i] / scale);
}

/* One row of the SubLN backward (see ryot_train_subln_backward); adds grad_y * unit to sums. */
static void subln_row_portable(const void *grad, int bf16, const float *normalized, int64_t k, float rstd,
                               const float *inverse, const float *scaled, float *grad_x, float *sums) {
    float dot = 0.0f;
    for (int64_t i = 0; i < k; i++) {
        float g = load(grad, bf16, i), u = normalized[i] * (inverse ? inverse[i] : rstd);
        dot += g * scaled[i] * u;
        sums[i] += g * u;
    }
    const float mean = dot / (float)k;
    for (int64_t i = 0; i < k; i++)
        grad_x[i] = (load(grad, bf16, i) * scaled[i] - normalized[i] * (inverse ? inverse[i] : rstd) * mean) * rstd;
}

#ifdef RYOT_X86
/* The AVX-512 rows: 16 lanes at a time, the tail (k % 16) as the portable code does it. */
AVX512 static float rstd_avx512(const float *x, int64_t k, float eps) {
    const int64_t body = k - k % 16;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < body; i += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(x + i), sum);
    float squares = _mm512_reduce_add_ps(sum);
    for (int64_t i = body; i < k; i++) squares += x[i] * x[i];
    return 1.0f / sqrtf(squares / (float)k + eps);
}

AVX512 static void norm_quantize_avx512(const float *x, int64_t k, const float *weight, float eps, int8_t *codes,
                                        float *scale, float *rstd, float *normed) {
    const int64_t body = k - k % 16;
    const float r = rstd_avx512(x, k, eps);
    const __m512 vr = _mm512_set1_ps(r);
    __m512 most = _mm512_setzero_ps();
    for (int64_t i = 0; i < body; i += 16)
        most = _mm512_max_ps(most, _mm512_abs_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vr),
                                                              _mm512_loadu_ps(weight + i))));
    float top = _mm512_reduce_max_ps(most);
    for (int64_t i = body; i < k; i++) top = fmaxf(top, fabsf(x[i] * r * weight[i]));
    const float s = int8_scale(top);
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < body; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vr), _mm512_loadu_ps(weight + i));
        if (normed) _mm512_storeu_ps(normed + i, v);
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(quantized16(v, vs))));
    }
    for (int64_t i = body; i < k; i++) {
        float v = x[i] * r * weight[i];
        if (normed) normed[i] = v;
        codes[i] = (int8_t)quantized(v, s);
    }
    *scale = s;
    *rstd = r;
}

AVX512 static void rms_norm_avx512(const float *x, int64_t k, const float *weight, float eps, float *out,
                                   float *rstd) {
    const int64_t body = k - k % 16;
    const float r = rstd_avx512(x, k, eps);
    const __m512 vr = _mm512_set1_ps(r);
    for (int64_t i = 0; i < body; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vr), _mm512_loadu_ps(weight + i)));
    for (int64_t i = body; i < k; i++) out[i] = x[i] * r * weight[i];
    *rstd = r;
}

AVX512 static void scale_row_avx512(const int32_t *in, int64_t n, float f, const float *bias, float *out) {
    const int64_t body = n - n % 16;
    const __m512 vf = _mm512_set1_ps(f);
    for (int64_t i = 0; i < body; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(in + i)), vf);
        _mm512_storeu_ps(out + i, bias ? _mm512_add_ps(v, _mm512_loadu_ps(bias + i)) : v);
    }
    scale_row_portable(in + body, n - body, f, bias ? bias + body : NULL, out + body);
}

AVX512 static float row_scale_avx512(const float *row, int64_t k) {
    const int64_t body = k - k % 16;
    __m512 most = _mm512_setzero_ps();
    for (int64_t i = 0; i < body; i += 16) most = _mm512_max_ps(most, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
    float top = _mm512_reduce_max_ps(most);
    for (int64_t i = body; i < k; i++) top = fmaxf(top, fabsf(row[i]));
    return int8_scale(top);
}

AVX512 static void requantize_avx512(const float *row, int64_t k, int bf16, void *out) {
    const int64_t body = k - k % 16;
    const float s = row_scale_avx512(row, k);
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < body; i += 16) store16(out, bf16, i, _mm512_div_ps(quantized16(_mm512_loadu_ps(row + i), vs), vs));
    for (int64_t i = body; i < k; i++) store(out, bf16, i, quantized(row[i], s) / s);
}

AVX512 static void quantize_avx512(const float *row, int64_t k, int8_t *codes, float *scale) {
    const int64_t body = k - k % 16;
    const float s = row_scale_avx512(row, k);
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < body; i += 16)
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(quantized16(_mm512_loadu_ps(row + i), vs))));
    for (int64_t i = body; i < k; i++) codes[i] = (int8_t)quantized(row[i], s);
    *scale = s;
}

AVX512 static void dequantize_avx512(const int8_t *row, int64_t k, float scale, int bf16, void *out) {
    const int64_t body = k - k % 16;
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < body; i += 16)
        store16(out, bf16, i,
                _mm512_div_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + i)))), vs));
    for (int64_t i = body; i < k; i++) store(out, bf16, i, (float)row[i] / scale);
}

AVX512 static void subln_row_avx512(const void *grad, int bf16, const float *normalized, int64_t k, float rstd,
                                    const float *inverse, const float *scaled, float *grad_x, float *sums) {
    const int64_t body = k - k % 16;
    const __m512 vr = _mm512_set1_ps(rstd);
    __m512 total = _mm512_setzero_ps();
    for (int64_t i = 0; i < body; i += 16) {
        __m512 g = load16(grad, bf16, i);
        __m512 u = _mm512_mul_ps(_mm512_loadu_ps(normalized + i), inverse ? _mm512_loadu_ps(inverse + i) : vr);
        total = _mm512_fmadd_ps(_mm512_mul_ps(g, _mm512_loadu_ps(scaled + i)), u, total);
        _mm512_storeu_ps(sums + i, _mm512_fmadd_ps(g, u, _mm512_loadu_ps(sums + i)));
    }
    float dot = _mm512_reduce_add_ps(total);
    for (int64_t i = body; i < k; i++) {
        float g = load(grad, bf16, i), u = normalized[i] * (inverse ? inverse[i] : rstd);
        dot += g * scaled[i] * u;
        sums[i] += g * u;
    }
    const float mean = dot / (float)k;
    const __m512 vmean = _mm512_set1_ps(mean);
    for (int64_t i = 0; i < body; i += 16) {
        __m512 g = _mm512_mul_ps(load16(grad, bf16, i), _mm512_loadu_ps(scaled + i));
        __m512 u = _mm512_mul_ps(_mm512_loadu_ps(normalized + i), inverse ? _mm512_loadu_ps(inverse + i) : vr);
        _mm512_storeu_ps(grad_x + i, _mm512_mul_ps(_mm512_sub_ps(g, _mm512_mul_ps(u, vmean)), vr));
    }
    for (int64_t i = body; i < k; i++)
        grad_x[i] = (load(grad, bf16, i) * scaled[i] - normalized[i] * (inverse ? inverse[i] : rstd) * mean) * rstd;
}
#define DISPATCH(name, ...) (wide ? name##_avx512(__VA_ARGS__) : name##_portable(__VA_ARGS__))
#else
#define DISPATCH(name, ...) ((void)wide, name##_portable(__VA_ARGS__))
#endif

/* ---- the entry points: rows split over the threads ------------------------------------- */
void ryot_train_norm_quantize(const float *x, int64_t rows, int64_t k, const float *weight, float eps,
                              int threads, int8_t *codes, float *scale, float *rstd, float *normed) {
    const int wide = ryot_train_vectorized();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++)
        DISPATCH(norm_quantize, x + m * k, k, weight, eps, codes + m * k, scale + m, rstd + m,
                 normed ? normed + m * k : NULL);
}

/* out = x * rstd * weight with rstd = 1 / sqrt(mean(x^2) + eps) per row (kept for backward). */
void ryot_train_rms_norm(const float *x, int64_t rows, int64_t k, const float *weight, float eps, int threads,
                         float *out, float *rstd) {
    const int wide = ryot_train_vectorized();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++) DISPATCH(rms_norm, x + m * k, k, weight, eps, out + m * k, rstd + m);
}

/* out[m, n] = sums[m, n] * (weight_scale / scale[m]) (+ bias[n]); out may be sums' memory. */
void ryot_train_scale_sums(const int32_t *sums, int64_t rows, int64_t n, const float *scale, float weight_scale,
                           const float *bias, int threads, float *out) {
    const int wide = ryot_train_vectorized();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++) DISPATCH(scale_row, sums + m * n, n, weight_scale / scale[m], bias, out + m * n);
}

/* The activations the forward multiplied, for the weight gradient, as fp32 or bf16: from
 * the normalized input, quantized again (round(x * scale) / scale), or from the saved codes
 * (codes / scale). */
void ryot_train_requantize(const float *x, int64_t rows, int64_t k, int threads, int bf16, void *out) {
    const int wide = ryot_train_vectorized();
    const int64_t bytes = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++) DISPATCH(requantize, x + m * k, k, bf16, (char *)out + m * k * bytes);
}

/* int8 codes and per-row scales of x, as the forward makes them for the activations. */
void ryot_train_quantize(const float *x, int64_t rows, int64_t k, int threads, int8_t *codes, float *scale) {
    const int wide = ryot_train_vectorized();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++) DISPATCH(quantize, x + m * k, k, codes + m * k, scale + m);
}

void ryot_train_dequantize(const int8_t *codes, int64_t rows, int64_t k, const float *scale, int threads, int bf16,
                           void *out) {
    const int wide = ryot_train_vectorized();
    const int64_t bytes = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t m = 0; m < rows; m++) DISPATCH(dequantize, codes + m * k, k, scale[m], bf16, (char *)out + m * k * bytes);
}

/* An RMSNorm's backward. For y = unit * weight with unit = x * rstd, given grad_y (fp32 or
 * bf16), the normalized input (unit = normalized * inverse; inverse = 1 / weight, or 0 where
 * the weight cannot be divided by) or, with inverse NULL, x itself (unit = x * rstd), and
 * scaled = weight times the scale of what follows (1 for a plain RMSNorm):
 * grad_x = (g - unit * mean(g * unit)) * rstd with g = grad_y * scaled, and
 * grad_weight_sum = the sum over rows of grad_y * unit (the caller applies the scale).
 * Each thread sums its rows apart; returns -1 if that memory cannot be had. */
int ryot_train_subln_backward(const void *grad, int bf16, const float *normalized, int64_t rows, int64_t k,
                              const float *rstd, const float *inverse, const float *scaled, int threads,
                              float *grad_x, float *grad_weight_sum) {
    const int wide = ryot_train_vectorized();
    if (threads < 1) threads = 1;
    float *partial = calloc((size_t)threads * (size_t)k, sizeof(float));
    if (!partial) return -1;
    const int64_t bytes = bf16 ? 2 : 4;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int t = 0, team = 1;
#endif
        const int64_t chunk = (rows + team - 1) / team, first = t * chunk;
        const int64_t last = first + chunk < rows ? first + chunk : rows;
        for (int64_t m = first; m < last; m++)
            DISPATCH(subln_row, (const char *)grad + m * k * bytes, bf16, normalized + m * k, k, rstd[m], inverse,
                     scaled, grad_x + m * k, partial + t * k);
    }
    for (int64_t i = 0; i < k; i++) {
        float total = 0.0f;
        for (int t = 0; t < threads; t++) total += partial[t * k + i];
        grad_weight_sum[i] = total;
    }
    free(partial);
    return 0;
}

/* ---- the FFN's gate: out = silu(gate) * up and its gradients (dense.c), n values split
 * over the threads in whole vectors ------------------------------------------------------ */
static void split(int64_t n, int64_t *first, int64_t *last) {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int t = 0, team = 1;
#endif
    const int64_t chunk = ((n + team - 1) / team + 15) / 16 * 16;
    *first = t * chunk < n ? t * chunk : n;
    *last = *first + chunk < n ? *first + chunk : n;
}

void ryot_train_silu_mul(const float *gate, const float *up, int64_t n, int threads, float *out) {
    const int isa = ryot_best_isa();
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t first, last;
        split(n, &first, &last);
        ryot_silu_mul(gate + first, up + first, last - first, out + first, isa);
    }
}

void ryot_train_silu_mul_backward(const float *grad, const float *gate, const float *up, int64_t n, int threads,
                                  float *grad_gate, float *grad_up) {
    const int isa = ryot_best_isa();
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t first, last;
        split(n, &first, &last);
        ryot_silu_mul_backward(grad + first, gate + first, up + first, last - first, grad_gate + first,
                               grad_up + first, isa);
    }
}
