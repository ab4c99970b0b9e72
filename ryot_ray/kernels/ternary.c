/* Ternary (BitNet b1.58) matrix multiply on int8 activations, for CPUs.
 *
 * y[m, n] = w_scale / x_scale[m] * sum_k (code[n, k] - 1) * xq[m, k]
 * where code = w + 1 in {0, 1, 2} is stored in 2 bits and xq is the per-token absmax
 * int8 quantization of x, done here. The sum is computed as
 * sum_k code * xq - sum_k xq, so the unsigned codes feed u8 x s8 dot products directly.
 *
 * Packed layout (written by ryot_ray/kernels/pack.py): rows in groups of 16, K in
 * blocks of 16. One 64-byte block holds 16 rows x 16 k: byte j belongs to row j / 4,
 * and its 2-bit field p (bits 2p, 2p+1) holds k = 4p + j % 4. So field p of a whole block
 * is exactly the u8 operand of a 32-bit-lane dot product against the broadcast int8
 * activation quad k = 4p..4p+3, one lane per row. A tile of `nr` row groups stores its
 * groups' blocks next to each other for every K block: [tile][kblock][group][64].
 *
 * No Python or torch headers: the library builds in about a second and is called through
 * ctypes. Each ISA path is compiled with its own target attribute and chosen at run time.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RYOT_X86 1
#endif

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVXVNNI = 2, ISA_AVX512VNNI = 3 };
#define MAX_MR 8
#define MAX_NR 8

int ryot_isa_supported(int isa) {
    if (isa == ISA_SCALAR) return 1;
#ifdef RYOT_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == ISA_AVXVNNI) return __builtin_cpu_supports("avxvnni");
    if (isa == ISA_AVX512VNNI)
        return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
#endif
    return 0;
}

int ryot_best_isa(void) {
    int best = ISA_SCALAR;
    for (int isa = ISA_AVX2; isa <= ISA_AVX512VNNI; isa++)
        if (ryot_isa_supported(isa)) best = isa;
    return best;
}

/* Per-token absmax int8 quantization, bit-identical to the torch reference:
 * scale = 127 / max(|x|, 1e-5); q = round_half_even(x * scale) clamped to [-128, 127]. */
void ryot_quantize(const float *x, int64_t m_rows, int64_t k, int64_t k_padded,
                   int8_t *xq, float *scale, int32_t *sums) {
    for (int64_t m = 0; m < m_rows; m++) {
        const float *row = x + m * k;
        float amax = 0.0f;
        for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(row[i]));
        float s = 127.0f / fmaxf(amax, 1e-5f);
        int32_t total = 0;
        int8_t *out = xq + m * k_padded;
        for (int64_t i = 0; i < k; i++) {
            float q = nearbyintf(row[i] * s);
            q = fminf(fmaxf(q, -128.0f), 127.0f);
            out[i] = (int8_t)q;
            total += (int32_t)q;
        }
        memset(out + k, 0, (size_t)(k_padded - k));
        scale[m] = s;
        sums[m] = total;
    }
}

/* ---- portable scalar path ------------------------------------------------------ */
static void tile_scalar(const int8_t *xq, int64_t k_padded, int64_t mr, const uint8_t *w,
                        int64_t nr, int32_t acc[MAX_MR][MAX_NR * 16]) {
    int64_t kblocks = k_padded / 16;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        for (int64_t g = 0; g < nr; g++) {
            const uint8_t *block = w + (kb * nr + g) * 64;
            for (int j = 0; j < 64; j++) {
                int row = g * 16 + j / 4;
                for (int p = 0; p < 4; p++) {
                    int32_t code = (block[j] >> (2 * p)) & 3;
                    int64_t kk = kb * 16 + 4 * p + j % 4;
                    for (int64_t m = 0; m < mr; m++) acc[m][row] += code * xq[m * k_padded + kk];
                }
            }
        }
    }
}

#ifdef RYOT_X86
/* ---- AVX-512 VNNI: 16 rows per register, vpdpbusd ---------------------------- */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
tile_avx512_fixed(const int8_t *xq, int64_t k_padded, const int mr, const uint8_t *w, const int nr,
                  int32_t acc_out[MAX_MR][MAX_NR * 16]) {
    __m512i acc[MAX_MR][MAX_NR];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < nr; g++) acc[m][g] = _mm512_setzero_si512();
    const __m512i low2 = _mm512_set1_epi8(3);
    const int64_t kblocks = k_padded / 16;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        for (int g = 0; g < nr; g++) {
            __m512i block = _mm512_loadu_si512((const void *)(w + (kb * nr + g) * 64));
            for (int p = 0; p < 4; p++) {
                __m512i codes = _mm512_and_si512(_mm512_srli_epi16(block, 2 * p), low2);
                for (int m = 0; m < mr; m++) {
                    int32_t quad;
                    memcpy(&quad, xq + m * k_padded + kb * 16 + 4 * p, 4);
                    acc[m][g] = _mm512_dpbusd_epi32(acc[m][g], codes, _mm512_set1_epi32(quad));
                }
            }
        }
    }
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < nr; g++) _mm512_storeu_si512((void *)&acc_out[m][g * 16], acc[m][g]);
}

#define AVX512_CASE(MR, NR) \
    if (mr == MR && nr == NR) { tile_avx512_fixed(xq, k_padded, MR, w, NR, acc); return; }

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
tile_avx512(const int8_t *xq, int64_t k_padded, int64_t mr, const uint8_t *w, int64_t nr,
            int32_t acc[MAX_MR][MAX_NR * 16]) {
    AVX512_CASE(1, 1) AVX512_CASE(1, 2) AVX512_CASE(1, 4) AVX512_CASE(1, 8)
    AVX512_CASE(2, 1) AVX512_CASE(2, 2) AVX512_CASE(2, 4) AVX512_CASE(2, 8)
    AVX512_CASE(4, 1) AVX512_CASE(4, 2) AVX512_CASE(4, 4)
    AVX512_CASE(8, 1) AVX512_CASE(8, 2)
    tile_scalar(xq, k_padded, mr, w, nr, acc);
}

/* ---- 256-bit paths: each 64-byte block is two halves of 8 rows ----------------- */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256i
dot_avx2(__m256i acc, __m256i codes, __m256i x) {
    __m256i pairs = _mm256_maddubs_epi16(codes, x); /* |pair| <= 2 * 2 * 128: no saturation */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2,avxvnni"), always_inline)) static inline __m256i
dot_avxvnni(__m256i acc, __m256i codes, __m256i x) {
    return _mm256_dpbusd_avx_epi32(acc, codes, x);
}

#define TILE_256(NAME, TARGET, DOT)                                                          \
    __attribute__((target(TARGET))) static void NAME(const int8_t *xq, int64_t k_padded,     \
                                                     int64_t mr, const uint8_t *w, int64_t nr, \
                                                     int32_t acc_out[MAX_MR][MAX_NR * 16]) {  \
        const __m256i low2 = _mm256_set1_epi8(3);                                            \
        const int64_t kblocks = k_padded / 16;                                               \
        for (int64_t m = 0; m < mr; m++) {                                                   \
            for (int64_t g = 0; g < nr; g++) {                                               \
                __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();            \
                for (int64_t kb = 0; kb < kblocks; kb++) {                                   \
                    const uint8_t *block = w + (kb * nr + g) * 64;                           \
                    __m256i b0 = _mm256_loadu_si256((const __m256i *)block);                 \
                    __m256i b1 = _mm256_loadu_si256((const __m256i *)(block + 32));          \
                    for (int p = 0; p < 4; p++) {                                            \
                        int32_t quad;                                                        \
                        memcpy(&quad, xq + m * k_padded + kb * 16 + 4 * p, 4);               \
                        __m256i x = _mm256_set1_epi32(quad);                                 \
                        lo = DOT(lo, _mm256_and_si256(_mm256_srli_epi16(b0, 2 * p), low2), x); \
                        hi = DOT(hi, _mm256_and_si256(_mm256_srli_epi16(b1, 2 * p), low2), x); \
                    }                                                                        \
                }                                                                            \
                _mm256_storeu_si256((__m256i *)&acc_out[m][g * 16], lo);                     \
                _mm256_storeu_si256((__m256i *)&acc_out[m][g * 16 + 8], hi);                 \
            }                                                                                \
        }                                                                                    \
    }

TILE_256(tile_avx2, "avx2,fma", dot_avx2)
TILE_256(tile_avxvnni, "avx2,avxvnni", dot_avxvnni)
#endif

typedef void (*tile_fn)(const int8_t *, int64_t, int64_t, const uint8_t *, int64_t,
                        int32_t[MAX_MR][MAX_NR * 16]);

static tile_fn tile_for(int isa) {
#ifdef RYOT_X86
    if (isa == ISA_AVX512VNNI) return tile_avx512;
    if (isa == ISA_AVXVNNI) return tile_avxvnni;
    if (isa == ISA_AVX2) return tile_avx2;
#endif
    (void)isa;
    return tile_scalar;
}

/* Integer accumulators sum_k code * xq for every token and row: the exact core, exposed
 * for tests. acc has m_rows x n_padded entries. */
int ryot_ternary_accumulate(const int8_t *xq, int64_t m_rows, int64_t k_padded,
                            const uint8_t *packed, int64_t n_padded, int64_t nr, int64_t mr,
                            int isa, int threads, int32_t *acc) {
    if (nr < 1 || nr > MAX_NR || mr < 1 || mr > MAX_MR || k_padded % 16 || n_padded % (16 * nr))
        return -1;
    if (!ryot_isa_supported(isa)) return -2;
    tile_fn tile = tile_for(isa);
    const int64_t tiles = n_padded / (16 * nr);
    const int64_t tile_bytes = (k_padded / 16) * nr * 64;
    const int64_t mblocks = (m_rows + mr - 1) / mr;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t mb = 0; mb < mblocks; mb++) {
            int32_t local[MAX_MR][MAX_NR * 16];
            memset(local, 0, sizeof(local));
            int64_t m0 = mb * mr, rows = m_rows - m0 < mr ? m_rows - m0 : mr;
            tile(xq + m0 * k_padded, k_padded, rows, packed + t * tile_bytes, nr, local);
            for (int64_t m = 0; m < rows; m++)
                memcpy(acc + (m0 + m) * n_padded + t * 16 * nr, local[m], sizeof(int32_t) * 16 * nr);
        }
    }
    return 0;
}

/* y[m, n] for n < n_out: quantize x, accumulate, rescale. */
int ryot_ternary_linear(const float *x, int64_t m_rows, int64_t k, const uint8_t *packed,
                        int64_t n_out, int64_t nr, int64_t mr, float w_scale, int isa,
                        int threads, float *y) {
    const int64_t k_padded = (k + 15) / 16 * 16;
    const int64_t n_padded = (n_out + 16 * nr - 1) / (16 * nr) * (16 * nr);
    int8_t *xq = malloc((size_t)(m_rows * k_padded));
    float *scale = malloc(sizeof(float) * (size_t)m_rows);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)m_rows);
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(m_rows * n_padded));
    int status = -3;
    if (xq && scale && sums && acc) {
        ryot_quantize(x, m_rows, k, k_padded, xq, scale, sums);
        status = ryot_ternary_accumulate(xq, m_rows, k_padded, packed, n_padded, nr, mr, isa,
                                         threads, acc);
        for (int64_t m = 0; status == 0 && m < m_rows; m++) {
            const float factor = w_scale / scale[m];
            for (int64_t n = 0; n < n_out; n++)
                y[m * n_out + n] = (float)(acc[m * n_padded + n] - sums[m]) * factor;
        }
    }
    free(xq);
    free(scale);
    free(sums);
    free(acc);
    return status;
}
