/* Kernels beside the ternary ones: int8-row and fp32 matmuls (the lm_head, the fp32
 * reference) and the vector ops of a model step (RMSNorm, SiLU, softmax, fp16).
 *
 * Each has an AVX-512 path and a portable one; the portable code is compiled once more
 * for AVX2 + FMA (the compiler vectorizes it there), so a CPU without AVX-512 still runs
 * vector code. No Python or torch headers.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RYOT_X86 1
#endif

#define PORTABLE static inline __attribute__((always_inline))

static int has_avx512(void) {
#ifdef RYOT_X86
    static int known = -1;
    if (known < 0)
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl");
    return known;
#else
    return 0;
#endif
}

#ifdef RYOT_X86
static int has_avx2(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return known;
}
#endif

/* The AVX-512 vector ops run where the caller allows AVX-512 and the CPU has it. */
static int wide(int isa) { return isa >= RYOT_ISA_AVX512VNNI && has_avx512(); }

/* ---- int8 rows ---------------------------------------------------------------------- */
PORTABLE void int8_groups_portable(const uint8_t *xu, int64_t m_rows, int64_t k_padded, const int8_t *w,
                                   int64_t group0, int64_t group1, int32_t *acc, int64_t acc_stride) {
    const int64_t quads = k_padded / RYOT_INT8_K;
    for (int64_t g = group0; g < group1; g++) {
        const int8_t *group = w + g * quads * 64;
        for (int64_t m = 0; m < m_rows; m++) {
            int32_t sums[RYOT_INT8_ROWS] = {0};
            const uint8_t *x = xu + m * k_padded;
            for (int64_t q = 0; q < quads; q++)
                for (int r = 0; r < RYOT_INT8_ROWS; r++)
                    for (int j = 0; j < RYOT_INT8_K; j++) sums[r] += group[q * 64 + r * 4 + j] * x[q * 4 + j];
            memcpy(acc + m * acc_stride + g * RYOT_INT8_ROWS, sums, sizeof(sums));
        }
    }
}

#ifdef RYOT_X86
__attribute__((target("avx2,fma"))) static void
int8_groups_avx2(const uint8_t *xu, int64_t m_rows, int64_t k_padded, const int8_t *w, int64_t group0,
                 int64_t group1, int32_t *acc, int64_t acc_stride) {
    int8_groups_portable(xu, m_rows, k_padded, w, group0, group1, acc, acc_stride);
}

/* 16 rows per register lane group; one dot product per 64 bytes and token. One token
 * keeps four independent sums (the dot product's latency), several tokens one each. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
int8_groups_avx512(const uint8_t *xu, int64_t m_rows, int64_t k_padded, const int8_t *w, int64_t group0,
                   int64_t group1, int32_t *acc, int64_t acc_stride) {
    const int64_t quads = k_padded / RYOT_INT8_K;
    for (int64_t g = group0; g < group1; g++) {
        const int8_t *group = w + g * quads * 64;
        if (m_rows == 1) {
            const int32_t *x = (const int32_t *)xu;
            __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
            int64_t q = 0;
            for (; q + 4 <= quads; q += 4) {
                s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32(x[q]), _mm512_loadu_si512(group + q * 64));
                s1 = _mm512_dpbusd_epi32(s1, _mm512_set1_epi32(x[q + 1]), _mm512_loadu_si512(group + q * 64 + 64));
                s2 = _mm512_dpbusd_epi32(s2, _mm512_set1_epi32(x[q + 2]), _mm512_loadu_si512(group + q * 64 + 128));
                s3 = _mm512_dpbusd_epi32(s3, _mm512_set1_epi32(x[q + 3]), _mm512_loadu_si512(group + q * 64 + 192));
            }
            for (; q < quads; q++)
                s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32(x[q]), _mm512_loadu_si512(group + q * 64));
            const __m512i total = _mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3));
            _mm512_storeu_si512(acc + g * RYOT_INT8_ROWS, total);
            continue;
        }
        for (int64_t m0 = 0; m0 < m_rows; m0 += RYOT_MAX_MR) {
            const int64_t tokens = m_rows - m0 < RYOT_MAX_MR ? m_rows - m0 : RYOT_MAX_MR;
            __m512i sums[RYOT_MAX_MR];
            for (int t = 0; t < RYOT_MAX_MR; t++) sums[t] = _mm512_setzero_si512();
            for (int64_t q = 0; q < quads; q++) {
                const __m512i rows = _mm512_loadu_si512(group + q * 64);
                for (int64_t t = 0; t < tokens; t++) {
                    int32_t quad;
                    memcpy(&quad, xu + (m0 + t) * k_padded + q * 4, 4);
                    sums[t] = _mm512_dpbusd_epi32(sums[t], _mm512_set1_epi32(quad), rows);
                }
            }
            for (int64_t t = 0; t < tokens; t++)
                _mm512_storeu_si512(acc + (m0 + t) * acc_stride + g * RYOT_INT8_ROWS, sums[t]);
        }
    }
}
#endif

void ryot_int8_groups(const uint8_t *xu, int64_t m_rows, int64_t k_padded, const int8_t *w, int64_t group0,
                      int64_t group1, int isa, int32_t *acc, int64_t acc_stride) {
#ifdef RYOT_X86
    if (isa >= RYOT_ISA_AVX512VNNI) return int8_groups_avx512(xu, m_rows, k_padded, w, group0, group1, acc, acc_stride);
    if (isa >= RYOT_ISA_AVX2) return int8_groups_avx2(xu, m_rows, k_padded, w, group0, group1, acc, acc_stride);
#endif
    (void)isa;
    int8_groups_portable(xu, m_rows, k_padded, w, group0, group1, acc, acc_stride);
}

/* ---- fp32 rows ------------------------------------------------------------------------ */
PORTABLE void f32_rows_portable(const float *x, int64_t m_rows, int64_t k, int64_t x_stride, const float *w,
                                int64_t row0, int64_t row1, float *y, int64_t y_stride) {
    for (int64_t n = row0; n < row1; n++)
        for (int64_t m = 0; m < m_rows; m++) {
            const float *a = w + n * k, *b = x + m * x_stride;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < k; i++) sum += a[i] * b[i];
            y[m * y_stride + n] = sum;
        }
}

#ifdef RYOT_X86
__attribute__((target("avx2,fma"))) static void
f32_rows_avx2(const float *x, int64_t m_rows, int64_t k, int64_t x_stride, const float *w, int64_t row0,
              int64_t row1, float *y, int64_t y_stride) {
    f32_rows_portable(x, m_rows, k, x_stride, w, row0, row1, y, y_stride);
}

/* RT rows x MT tokens of dot products, 16 k at a time; the weights' rows are read once
 * for the MT tokens. */
__attribute__((target("avx512f"), always_inline)) static inline void
f32_block(const float *x, int64_t x_stride, int64_t k, const float *w, const int rt, const int mt, float *y,
          int64_t y_stride) {
    __m512 acc[4][6];
    for (int r = 0; r < rt; r++)
        for (int t = 0; t < mt; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 rows[4];
        for (int r = 0; r < rt; r++) rows[r] = _mm512_loadu_ps(w + r * k + i);
        for (int t = 0; t < mt; t++) {
            const __m512 v = _mm512_loadu_ps(x + t * x_stride + i);
            for (int r = 0; r < rt; r++) acc[r][t] = _mm512_fmadd_ps(rows[r], v, acc[r][t]);
        }
    }
    if (i < k) {
        const __mmask16 tail = (__mmask16)((1u << (k - i)) - 1);
        __m512 rows[4];
        for (int r = 0; r < rt; r++) rows[r] = _mm512_maskz_loadu_ps(tail, w + r * k + i);
        for (int t = 0; t < mt; t++) {
            const __m512 v = _mm512_maskz_loadu_ps(tail, x + t * x_stride + i);
            for (int r = 0; r < rt; r++) acc[r][t] = _mm512_fmadd_ps(rows[r], v, acc[r][t]);
        }
    }
    for (int t = 0; t < mt; t++)
        for (int r = 0; r < rt; r++) y[t * y_stride + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define F32_TOKENS(RT)                                                                          \
    switch (mt) {                                                                               \
    case 1: f32_block(x, x_stride, k, w, RT, 1, y, y_stride); break;                            \
    case 2: f32_block(x, x_stride, k, w, RT, 2, y, y_stride); break;                            \
    case 3: f32_block(x, x_stride, k, w, RT, 3, y, y_stride); break;                            \
    case 4: f32_block(x, x_stride, k, w, RT, 4, y, y_stride); break;                            \
    case 5: f32_block(x, x_stride, k, w, RT, 5, y, y_stride); break;                            \
    default: f32_block(x, x_stride, k, w, RT, 6, y, y_stride); break;                           \
    }

__attribute__((target("avx512f"))) static void
f32_tile(const float *x, int64_t x_stride, int64_t k, const float *w, int rt, int mt, float *y, int64_t y_stride) {
    switch (rt) {
    case 1: F32_TOKENS(1) break;
    case 2: F32_TOKENS(2) break;
    case 3: F32_TOKENS(3) break;
    default: F32_TOKENS(4) break;
    }
}

/* Blocks of 4 rows outside, blocks of up to 6 tokens inside: a block's rows stay in
 * cache while every token passes over them. */
__attribute__((target("avx512f"))) static void
f32_rows_avx512(const float *x, int64_t m_rows, int64_t k, int64_t x_stride, const float *w, int64_t row0,
                int64_t row1, float *y, int64_t y_stride) {
    for (int64_t n = row0; n < row1; n += 4) {
        const int rt = row1 - n < 4 ? (int)(row1 - n) : 4;
        for (int64_t m = 0; m < m_rows; m += 6) {
            const int mt = m_rows - m < 6 ? (int)(m_rows - m) : 6;
            f32_tile(x + m * x_stride, x_stride, k, w + n * k, rt, mt, y + m * y_stride + n, y_stride);
        }
    }
}
#endif

void ryot_f32_rows(const float *x, int64_t m_rows, int64_t k, int64_t x_stride, const float *w, int64_t row0,
                   int64_t row1, int isa, float *y, int64_t y_stride) {
#ifdef RYOT_X86
    if (isa >= RYOT_ISA_AVX512VNNI && has_avx512()) return f32_rows_avx512(x, m_rows, k, x_stride, w, row0, row1, y, y_stride);
    if (isa >= RYOT_ISA_AVX2 && has_avx2()) return f32_rows_avx2(x, m_rows, k, x_stride, w, row0, row1, y, y_stride);
#endif
    (void)isa;
    f32_rows_portable(x, m_rows, k, x_stride, w, row0, row1, y, y_stride);
}

/* IEEE half precision, round to nearest even; overflow to infinity. */
static uint16_t f16_portable(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    const uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0));
    if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds above the largest half */
    if (magnitude < 0x38800000u) { /* subnormal half (or zero) */
        if (magnitude < 0x33000000u) return (uint16_t)sign;
        const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(magnitude >> 23);
        uint32_t half = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1), midway = 1u << (shift - 1);
        if (rest > midway || (rest == midway && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((magnitude >> 13) - (112u << 10));
    const uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

static float f32_portable(uint16_t half) {
    const uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = (half >> 10) & 0x1f, mantissa = half & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        const float value = ldexpf((float)mantissa, -24);
        memcpy(&bits, &value, 4);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* ---- vector ops ---------------------------------------------------------------------------- */
#ifdef RYOT_X86
/* e^x to about one ulp (Cephes' polynomial), by 2^n * e^r with |r| <= ln2 / 2. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.37626f));
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
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f"))) static float sum_squares_avx512(const float *x, int64_t k) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    if (i < k) {
        const __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << (k - i)) - 1), x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) static void silu_mul_avx512(const float *gate, const float *up, int64_t n,
                                                               float *out) {
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* The gradients of out = silu(gate) * up: grad_up = grad * silu(gate), grad_gate = grad * up
 * * sig * (1 + gate * (1 - sig)) with sig = sigmoid(gate). */
__attribute__((target("avx512f"))) static void silu_mul_backward_avx512(const float *grad, const float *gate,
                                                                        const float *up, int64_t n, float *grad_gate,
                                                                        float *grad_up) {
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i), d = _mm512_loadu_ps(grad + i);
        const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        const __m512 slope = _mm512_mul_ps(sig, _mm512_fmadd_ps(g, _mm512_sub_ps(one, sig), one));
        _mm512_storeu_ps(grad_up + i, _mm512_mul_ps(d, _mm512_mul_ps(g, sig)));
        _mm512_storeu_ps(grad_gate + i, _mm512_mul_ps(_mm512_mul_ps(d, _mm512_loadu_ps(up + i)), slope));
    }
    for (; i < n; i++) {
        const float sig = 1.0f / (1.0f + expf(-gate[i]));
        grad_up[i] = grad[i] * (gate[i] * sig);
        grad_gate[i] = grad[i] * up[i] * (sig * (1.0f + gate[i] * (1.0f - sig)));
    }
}

__attribute__((target("avx512f"))) static float exp_sum_avx512(float *x, int64_t n, float top) {
    __m512 sum = _mm512_setzero_ps();
    const __m512 vtop = _mm512_set1_ps(top);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vtop));
        _mm512_storeu_ps(x + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    float total = _mm512_reduce_add_ps(sum);
    for (; i < n; i++) total += x[i] = expf(x[i] - top);
    return total;
}

__attribute__((target("avx512f"))) static void f16_from_f32_avx512(const float *x, uint16_t *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) out[i] = f16_portable(x[i]);
}

__attribute__((target("avx512f"))) static void f32_from_f16_avx512(const uint16_t *x, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))));
    for (; i < n; i++) out[i] = f32_portable(x[i]);
}
#endif

#ifdef RYOT_X86
#define ATTEND_MAX_VECTORS 16 /* head_dim up to 256 in registers */

/* 16 entries of a row of fp32 or half values from `index` on; lanes past `mask` are 0. */
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) static inline __m512 load16(const void *rows, int half,
                                                                               int64_t index, __mmask16 mask) {
    if (half) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)rows + index));
    return _mm512_maskz_loadu_ps(mask, (const float *)rows + index);
}

/* Scores 64 positions at a time (four independent sums, so the multiply-adds' latency is
 * hidden); values summed over even and odd positions apart, for the same reason. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
attend_avx512(const float *q, const void *keys, int64_t key_stride, const void *values, int64_t n, int64_t hd,
              int half, float scale, float *scores, float *out) {
    for (int64_t j = 0; j < n; j += 64) {
        __mmask16 mask[4];
        __m512 dot[4];
        for (int b = 0; b < 4; b++) {
            const int64_t left = n - j - 16 * b;
            mask[b] = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            dot[b] = _mm512_setzero_ps();
        }
        for (int64_t d = 0; d < hd; d++) {
            const __m512 qd = _mm512_set1_ps(q[d]);
            for (int b = 0; b < 4; b++)
                dot[b] = _mm512_fmadd_ps(qd, load16(keys, half, d * key_stride + j + 16 * b, mask[b]), dot[b]);
        }
        for (int b = 0; b < 4; b++)
            _mm512_mask_storeu_ps(scores + j + 16 * b, mask[b], _mm512_mul_ps(dot[b], _mm512_set1_ps(scale)));
    }
    ryot_softmax(scores, n, RYOT_ISA_AVX512VNNI);
    const int64_t vectors = hd / 16;
    __m512 even[ATTEND_MAX_VECTORS], odd[ATTEND_MAX_VECTORS];
    for (int64_t d = 0; d < vectors; d++) even[d] = odd[d] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const __m512 w0 = _mm512_set1_ps(scores[j]), w1 = _mm512_set1_ps(scores[j + 1]);
        for (int64_t d = 0; d < vectors; d++) {
            even[d] = _mm512_fmadd_ps(w0, load16(values, half, j * hd + 16 * d, 0xffff), even[d]);
            odd[d] = _mm512_fmadd_ps(w1, load16(values, half, (j + 1) * hd + 16 * d, 0xffff), odd[d]);
        }
    }
    if (j < n)
        for (int64_t d = 0; d < vectors; d++)
            even[d] = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), load16(values, half, j * hd + 16 * d, 0xffff), even[d]);
    for (int64_t d = 0; d < vectors; d++) _mm512_storeu_ps(out + 16 * d, _mm512_add_ps(even[d], odd[d]));
}
#endif

static float row_value(const void *rows, int half, int64_t index) {
    return half ? f32_portable(((const uint16_t *)rows)[index]) : ((const float *)rows)[index];
}

void ryot_attend(const float *q, const void *keys, int64_t key_stride, const void *values, int64_t n, int64_t hd,
                 int half, float scale, float *scores, float *out, int isa) {
#ifdef RYOT_X86
    if (wide(isa) && hd % 16 == 0 && hd / 16 <= ATTEND_MAX_VECTORS)
        return attend_avx512(q, keys, key_stride, values, n, hd, half, scale, scores, out);
#endif
    for (int64_t j = 0; j < n; j++) scores[j] = 0.0f;
    for (int64_t d = 0; d < hd; d++)
        for (int64_t j = 0; j < n; j++) scores[j] += q[d] * row_value(keys, half, d * key_stride + j);
    for (int64_t j = 0; j < n; j++) scores[j] *= scale;
    ryot_softmax(scores, n, isa);
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < hd; d++) out[d] += scores[j] * row_value(values, half, j * hd + d);
}

void ryot_rms_norm(const float *x, int64_t k, const float *weight, float eps, float *out, int isa) {
    float squares = 0.0f;
#ifdef RYOT_X86
    if (wide(isa)) squares = sum_squares_avx512(x, k);
    else
#endif
        for (int64_t i = 0; i < k; i++) squares += x[i] * x[i];
    const float inv = 1.0f / sqrtf(squares / (float)k + eps);
    if (weight)
        for (int64_t i = 0; i < k; i++) out[i] = x[i] * inv * weight[i];
    else
        for (int64_t i = 0; i < k; i++) out[i] = x[i] * inv;
}

void ryot_silu_mul(const float *gate, const float *up, int64_t n, float *out, int isa) {
#ifdef RYOT_X86
    if (wide(isa)) return silu_mul_avx512(gate, up, n, out);
#endif
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void ryot_relu2_mul(const float *gate, const float *up, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = (gate[i] > 0.0f ? gate[i] * gate[i] : 0.0f) * up[i];
}

void ryot_silu_mul_backward(const float *grad, const float *gate, const float *up, int64_t n, float *grad_gate,
                            float *grad_up, int isa) {
#ifdef RYOT_X86
    if (wide(isa)) return silu_mul_backward_avx512(grad, gate, up, n, grad_gate, grad_up);
#endif
    for (int64_t i = 0; i < n; i++) {
        const float sig = 1.0f / (1.0f + expf(-gate[i]));
        grad_up[i] = grad[i] * (gate[i] * sig);
        grad_gate[i] = grad[i] * up[i] * (sig * (1.0f + gate[i] * (1.0f - sig)));
    }
}

void ryot_softmax(float *x, int64_t n, int isa) {
    float top = -INFINITY;
    for (int64_t i = 0; i < n; i++) top = fmaxf(top, x[i]);
    float total = 0.0f;
#ifdef RYOT_X86
    if (wide(isa)) total = exp_sum_avx512(x, n, top);
    else
#endif
        for (int64_t i = 0; i < n; i++) total += x[i] = expf(x[i] - top);
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void ryot_f16_from_f32(const float *x, uint16_t *out, int64_t n, int isa) {
#ifdef RYOT_X86
    if (wide(isa)) return f16_from_f32_avx512(x, out, n);
#endif
    for (int64_t i = 0; i < n; i++) out[i] = f16_portable(x[i]);
}

void ryot_f32_from_f16(const uint16_t *x, float *out, int64_t n, int isa) {
#ifdef RYOT_X86
    if (wide(isa)) return f32_from_f16_avx512(x, out, n);
#endif
    for (int64_t i = 0; i < n; i++) out[i] = f32_portable(x[i]);
}
