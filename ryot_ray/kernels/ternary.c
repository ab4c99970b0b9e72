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
#include <omp.h>
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
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096
#endif

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
static void quantize_row_portable(const float *row, int64_t k, int8_t *out, float *scale, int32_t *sum) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(row[i]));
    const float s = 127.0f / fmaxf(amax, 1e-5f);
    int32_t total = 0;
    for (int64_t i = 0; i < k; i++) {
        float q = rintf(row[i] * s); /* the default rounding mode: ties to even */
        q = fminf(fmaxf(q, -128.0f), 127.0f);
        out[i] = (int8_t)q;
        total += (int32_t)q;
    }
    *scale = s;
    *sum = total;
}

#ifdef RYOT_X86
__attribute__((target("avx512f,avx512bw"))) static void
quantize_row_avx512(const float *row, int64_t k, int8_t *out, float *scale, int32_t *sum) {
    __m512 amax = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
    float top = _mm512_reduce_max_ps(amax);
    for (; i < k; i++) top = fmaxf(top, fabsf(row[i]));
    const float s = 127.0f / fmaxf(top, 1e-5f);
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    __m512i total = _mm512_setzero_si512();
    for (i = 0; i + 16 <= k; i += 16) {
        __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(row + i), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i n = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
        total = _mm512_add_epi32(total, n);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtsepi32_epi8(n));
    }
    int32_t tail = 0;
    for (; i < k; i++) {
        float q = fminf(fmaxf(rintf(row[i] * s), -128.0f), 127.0f);
        out[i] = (int8_t)q;
        tail += (int32_t)q;
    }
    *scale = s;
    *sum = _mm512_reduce_add_epi32(total) + tail;
}
#endif

void ryot_quantize(const float *x, int64_t m_rows, int64_t k, int64_t k_padded,
                   int8_t *xq, float *scale, int32_t *sums) {
#ifdef RYOT_X86
    const int wide = __builtin_cpu_supports("avx512bw");
#endif
    for (int64_t m = 0; m < m_rows; m++) {
        int8_t *out = xq + m * k_padded;
#ifdef RYOT_X86
        if (wide) quantize_row_avx512(x + m * k, k, out, scale + m, sums + m);
        else
#endif
            quantize_row_portable(x + m * k, k, out, scale + m, sums + m);
        memset(out + k, 0, (size_t)(k_padded - k));
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
/* ---- AVX-512 VNNI: 16 rows per register, vpdpbusd ----------------------------
 * One token (decode): field p is taken with a mask only, block & (3 << 2p), which is
 * code * 4^p; each field keeps its own accumulator (four independent dependency chains
 * per group, no shifts) and the sums are scaled back exactly at the end.
 * Several tokens (prefill): each field is shifted down once and reused by every token. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
tile_avx512_fixed(const int8_t *xq, int64_t k_padded, const int mr, const uint8_t *w, const int nr,
                  int32_t acc_out[MAX_MR][MAX_NR * 16]) {
    const int64_t kblocks = k_padded / 16;
    if (mr == 1) {
        __m512i acc[MAX_NR][4];
        for (int g = 0; g < nr; g++)
            for (int p = 0; p < 4; p++) acc[g][p] = _mm512_setzero_si512();
        for (int64_t kb = 0; kb < kblocks; kb++) {
            const int32_t *quads = (const int32_t *)(xq + kb * 16);
            for (int g = 0; g < nr; g++) /* decode streams from DRAM: ask for data ahead */
                _mm_prefetch((const char *)(w + (kb * nr + g) * 64 + PREFETCH_BYTES), _MM_HINT_T0);
            for (int p = 0; p < 4; p++) {
                const __m512i mask = _mm512_set1_epi8((char)(3 << (2 * p)));
                const __m512i x = _mm512_set1_epi32(quads[p]);
                for (int g = 0; g < nr; g++) {
                    __m512i block = _mm512_loadu_si512((const void *)(w + (kb * nr + g) * 64));
                    acc[g][p] = _mm512_dpbusd_epi32(acc[g][p], _mm512_and_si512(block, mask), x);
                }
            }
        }
        for (int g = 0; g < nr; g++) {
            __m512i sum = _mm512_add_epi32(acc[g][0], _mm512_srai_epi32(acc[g][1], 2));
            sum = _mm512_add_epi32(sum, _mm512_srai_epi32(acc[g][2], 4));
            sum = _mm512_add_epi32(sum, _mm512_srai_epi32(acc[g][3], 6));
            _mm512_storeu_si512((void *)&acc_out[0][g * 16], sum);
        }
        return;
    }
    __m512i acc[MAX_MR][MAX_NR];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < nr; g++) acc[m][g] = _mm512_setzero_si512();
    const __m512i low2 = _mm512_set1_epi8(3);
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

/* Prefill on a tile unpacked once to one byte per code, [kblock][group][field][64]:
 * every block of `mr` tokens then costs one load and `mr` dot products per 64 codes. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
unpack_tile_avx512(const uint8_t *w, int64_t kblocks, int64_t nr, uint8_t *codes) {
    const __m512i low2 = _mm512_set1_epi8(3);
    for (int64_t b = 0; b < kblocks * nr; b++) {
        __m512i block = _mm512_loadu_si512((const void *)(w + b * 64));
        for (int p = 0; p < 4; p++)
            _mm512_storeu_si512((void *)(codes + (b * 4 + p) * 64),
                                _mm512_and_si512(_mm512_srli_epi16(block, 2 * p), low2));
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
tile_unpacked_fixed(const int8_t *xq, int64_t k_padded, const int mr, const uint8_t *codes,
                    const int nr, int32_t *y, int64_t y_stride) {
    __m512i acc[MAX_MR][MAX_NR];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < nr; g++) acc[m][g] = _mm512_setzero_si512();
    const int64_t kblocks = k_padded / 16;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        for (int p = 0; p < 4; p++) {
            __m512i field[MAX_NR];
            for (int g = 0; g < nr; g++)
                field[g] = _mm512_loadu_si512((const void *)(codes + ((kb * nr + g) * 4 + p) * 64));
            for (int m = 0; m < mr; m++) {
                int32_t quad;
                memcpy(&quad, xq + m * k_padded + kb * 16 + 4 * p, 4);
                const __m512i x = _mm512_set1_epi32(quad);
                for (int g = 0; g < nr; g++) acc[m][g] = _mm512_dpbusd_epi32(acc[m][g], field[g], x);
            }
        }
    }
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < nr; g++) _mm512_storeu_si512((void *)(y + m * y_stride + g * 16), acc[m][g]);
}

#define UNPACKED_CASE(MR, NR) \
    if (mr == MR && nr == NR) { tile_unpacked_fixed(xq, k_padded, MR, codes, NR, y, y_stride); return 1; }

/* Returns 0 where the (mr, nr) pair has no specialised kernel. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static int
tile_unpacked(const int8_t *xq, int64_t k_padded, int64_t mr, const uint8_t *codes, int64_t nr,
              int32_t *y, int64_t y_stride) {
    UNPACKED_CASE(1, 1) UNPACKED_CASE(1, 2) UNPACKED_CASE(1, 4) UNPACKED_CASE(1, 8)
    UNPACKED_CASE(2, 1) UNPACKED_CASE(2, 2) UNPACKED_CASE(2, 4) UNPACKED_CASE(2, 8)
    UNPACKED_CASE(4, 1) UNPACKED_CASE(4, 2) UNPACKED_CASE(4, 4)
    UNPACKED_CASE(8, 1) UNPACKED_CASE(8, 2)
    return 0;
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

/* ---- 256-bit paths: each 64-byte block is two halves of 8 rows; masks only, one
 * accumulator per half and field, token by token ---------------------------------- */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256i
dot_avx2(__m256i acc, __m256i codes, __m256i x) {
    /* codes * 4^p <= 128, so |a pair| <= 2 * 128 * 128 = 32768: no int16 saturation */
    __m256i pairs = _mm256_maddubs_epi16(codes, x);
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
        const int64_t kblocks = k_padded / 16;                                               \
        for (int64_t m = 0; m < mr; m++) {                                                   \
            const int32_t *quads = (const int32_t *)(xq + m * k_padded);                      \
            for (int64_t g = 0; g < nr; g++) {                                               \
                __m256i lo[4], hi[4];                                                        \
                for (int p = 0; p < 4; p++) lo[p] = hi[p] = _mm256_setzero_si256();          \
                for (int64_t kb = 0; kb < kblocks; kb++) {                                   \
                    const uint8_t *block = w + (kb * nr + g) * 64;                           \
                    __m256i b0 = _mm256_loadu_si256((const __m256i *)block);                 \
                    __m256i b1 = _mm256_loadu_si256((const __m256i *)(block + 32));          \
                    for (int p = 0; p < 4; p++) {                                            \
                        __m256i mask = _mm256_set1_epi8((char)(3 << (2 * p)));               \
                        __m256i x = _mm256_set1_epi32(quads[kb * 4 + p]);                    \
                        lo[p] = DOT(lo[p], _mm256_and_si256(b0, mask), x);                   \
                        hi[p] = DOT(hi[p], _mm256_and_si256(b1, mask), x);                   \
                    }                                                                        \
                }                                                                            \
                for (int p = 1; p < 4; p++) {                                                \
                    lo[0] = _mm256_add_epi32(lo[0], _mm256_srai_epi32(lo[p], 2 * p));        \
                    hi[0] = _mm256_add_epi32(hi[0], _mm256_srai_epi32(hi[p], 2 * p));        \
                }                                                                            \
                _mm256_storeu_si256((__m256i *)&acc_out[m][g * 16], lo[0]);                  \
                _mm256_storeu_si256((__m256i *)&acc_out[m][g * 16 + 8], hi[0]);              \
            }                                                                                \
        }                                                                                    \
    }

TILE_256(tile_avx2, "avx2,fma", dot_avx2)
TILE_256(tile_avxvnni, "avx2,avxvnni", dot_avxvnni)

__attribute__((target("avx512f"))) static uint64_t read_avx512(const uint8_t *data, int64_t bytes) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (int64_t i = 0; i + 256 <= bytes; i += 256) {
        a = _mm512_xor_si512(a, _mm512_loadu_si512((const void *)(data + i)));
        b = _mm512_xor_si512(b, _mm512_loadu_si512((const void *)(data + i + 64)));
        c = _mm512_xor_si512(c, _mm512_loadu_si512((const void *)(data + i + 128)));
        d = _mm512_xor_si512(d, _mm512_loadu_si512((const void *)(data + i + 192)));
    }
    a = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
    return (uint64_t)_mm512_reduce_or_epi64(a);
}
#endif

static uint64_t read_portable(const uint8_t *data, int64_t bytes) {
    const uint64_t *words = (const uint64_t *)data;
    uint64_t folded = 0;
    for (int64_t i = 0; i < bytes / 8; i++) folded ^= words[i];
    return folded;
}

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

#ifdef RYOT_X86
/* Prefill: each thread unpacks a tile once, then runs every token block over it. */
static int accumulate_prefill(const int8_t *xq, int64_t m_rows, int64_t k_padded, const uint8_t *packed,
                              int64_t tiles, int64_t tile_bytes, int64_t nr, int64_t mr, int threads,
                              int32_t *acc, int64_t n_padded) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        uint8_t *codes = malloc((size_t)(tile_bytes * 4));
        if (!codes) failed = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            if (!codes) continue;
            unpack_tile_avx512(packed + t * tile_bytes, k_padded / 16, nr, codes);
            for (int64_t m0 = 0; m0 < m_rows; m0 += mr) {
                int64_t rows = m_rows - m0 < mr ? m_rows - m0 : mr;
                int32_t *y = acc + m0 * n_padded + t * 16 * nr;
                if (!tile_unpacked(xq + m0 * k_padded, k_padded, rows, codes, nr, y, n_padded)) {
                    int32_t local[MAX_MR][MAX_NR * 16];
                    memset(local, 0, sizeof(local));
                    tile_avx512(xq + m0 * k_padded, k_padded, rows, packed + t * tile_bytes, nr, local);
                    for (int64_t m = 0; m < rows; m++)
                        memcpy(y + m * n_padded, local[m], sizeof(int32_t) * 16 * nr);
                }
            }
        }
        free(codes);
    }
    return failed ? -3 : 0;
}
#endif

/* Integer accumulators sum_k code * xq for every token and row: the exact core, exposed
 * for tests. acc has m_rows x n_padded entries. */
int ryot_ternary_accumulate(const int8_t *xq, int64_t m_rows, int64_t k_padded,
                            const uint8_t *packed, int64_t n_padded, int64_t nr, int64_t mr,
                            int isa, int threads, int32_t *acc) {
    if (nr < 1 || nr > MAX_NR || mr < 1 || mr > MAX_MR || k_padded % 16 || n_padded % (16 * nr))
        return -1;
    if (!ryot_isa_supported(isa)) return -2;
    if (mr * nr > 16) mr = 16 / nr; /* keep the accumulators in registers: same result, faster */
    tile_fn tile = tile_for(isa);
    const int64_t tiles = n_padded / (16 * nr);
    const int64_t tile_bytes = (k_padded / 16) * nr * 64;
    const int64_t mblocks = (m_rows + mr - 1) / mr;
#ifdef RYOT_X86
    if (isa == ISA_AVX512VNNI && m_rows > 1) return accumulate_prefill(xq, m_rows, k_padded, packed, tiles, tile_bytes, nr, mr, threads, acc, n_padded);
#endif
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

/* RMSNorm of each row (the layer's SubLN), in the order torch computes it:
 * x * rsqrt(mean(x^2) + eps) * weight. */
static void rms_norm_rows(const float *x, int64_t m_rows, int64_t k, const float *weight, float eps,
                          float *out) {
    for (int64_t m = 0; m < m_rows; m++) {
        const float *row = x + m * k;
        float *dst = out + m * k;
        float squares = 0.0f;
        for (int64_t i = 0; i < k; i++) squares += row[i] * row[i];
        const float inv = 1.0f / sqrtf(squares / (float)k + eps);
        for (int64_t i = 0; i < k; i++) dst[i] = row[i] * inv * weight[i];
    }
}

/* y[m, n] for n < n_out: RMSNorm (when norm_weight is given), quantize, accumulate,
 * rescale. */
int ryot_ternary_linear(const float *x, int64_t m_rows, int64_t k, const uint8_t *packed,
                        int64_t n_out, int64_t nr, int64_t mr, float w_scale, int isa,
                        int threads, float *y, const float *norm_weight, float norm_eps) {
    const int64_t k_padded = (k + 15) / 16 * 16;
    const int64_t n_padded = (n_out + 16 * nr - 1) / (16 * nr) * (16 * nr);
    int8_t *xq = malloc((size_t)(m_rows * k_padded));
    float *scale = malloc(sizeof(float) * (size_t)m_rows);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)m_rows);
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(m_rows * n_padded));
    float *normed = norm_weight ? malloc(sizeof(float) * (size_t)(m_rows * k)) : NULL;
    int status = -3;
    if (xq && scale && sums && acc && (normed || !norm_weight)) {
        if (normed) {
            rms_norm_rows(x, m_rows, k, norm_weight, norm_eps, normed);
            x = normed;
        }
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
    free(normed);
    return status;
}

/* Read `bytes` bytes (a multiple of 256) and fold them into one word: the memory-read
 * roofline the kernel is measured against, with the same threads. */
uint64_t ryot_read_bytes(const uint8_t *data, int64_t bytes, int threads) {
    const int64_t chunks = bytes / 256;
    uint64_t folded = 0;
#ifdef RYOT_X86
    const int wide = __builtin_cpu_supports("avx512f");
#else
    const int wide = 0;
#endif
#pragma omp parallel num_threads(threads) reduction(^ : folded)
    {
        int count = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t first = chunks * me / count * 256, last = chunks * (me + 1) / count * 256;
#ifdef RYOT_X86
        folded ^= wide ? read_avx512(data + first, last - first) : read_portable(data + first, last - first);
#else
        folded ^= read_portable(data + first, last - first);
#endif
    }
    return folded;
}
