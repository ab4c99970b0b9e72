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
#define _GNU_SOURCE /* syscall(): AMX needs the kernel's permission */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RYOT_X86 1
#endif

enum { ISA_SCALAR = RYOT_ISA_SCALAR, ISA_AVX2 = RYOT_ISA_AVX2, ISA_AVXVNNI = RYOT_ISA_AVXVNNI,
       ISA_AVX512VNNI = RYOT_ISA_AVX512VNNI, ISA_AMX = RYOT_ISA_AMX };
#define MAX_MR RYOT_MAX_MR
#define MAX_NR RYOT_MAX_NR
#define PREFETCH_BYTES RYOT_PREFETCH_BYTES
#define COLUMN_BLOCK RYOT_COLUMN_BLOCK
#define COLUMN_GROUP RYOT_COLUMN_GROUP

const int32_t ryot_group = RYOT_GROUP, ryot_max_nr = RYOT_MAX_NR, ryot_max_mr = RYOT_MAX_MR,
              ryot_max_accumulators = RYOT_MAX_ACCUMULATORS, ryot_column_block = RYOT_COLUMN_BLOCK,
              ryot_int8_rows = RYOT_INT8_ROWS, ryot_int8_k = RYOT_INT8_K, ryot_tile_choices = RYOT_TILE_CHOICES,
              ryot_tile_rows[RYOT_TILE_CHOICES] = RYOT_TILE_ROWS;
const float ryot_quant_eps = RYOT_QUANT_EPS;

#ifdef RYOT_X86
/* AMX tiles and int8 dot products on this CPU, and Linux's permission to use them
 * (asked once for the whole process). */
static int amx_usable(void) {
    static int state = -1;
    if (state < 0) {
        unsigned a, b, c, d;
        int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25));
        enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
        state = ok && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
    return state;
}
#endif

int ryot_isa_supported(int isa) {
    if (isa == ISA_SCALAR) return 1;
#ifdef RYOT_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == ISA_AVXVNNI) return __builtin_cpu_supports("avxvnni");
    const int avx512 = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    if (isa == ISA_AVX512VNNI) return avx512;
    if (isa == ISA_AMX) return avx512 && amx_usable();
#endif
    return 0;
}

int ryot_best_isa(void) {
    int best = ISA_SCALAR;
    for (int isa = ISA_AVX2; isa <= ISA_AMX; isa++)
        if (ryot_isa_supported(isa)) best = isa;
    return best;
}

/* Per-token absmax int8 quantization, bit-identical to the torch reference:
 * scale = 127 / max(|x|, 1e-5) computed as torch computes `127.0 / tensor` (127 times the
 * reciprocal); q = round_half_even(x * scale) clamped to [-128, 127]. */
static void quantize_row_portable(const float *row, int64_t k, int8_t *out, float *scale, int32_t *sum) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(row[i]));
    const float s = 127.0f * (1.0f / fmaxf(amax, RYOT_QUANT_EPS));
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
    const float s = 127.0f * (1.0f / fmaxf(top, RYOT_QUANT_EPS));
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

void ryot_quantize_row(const float *row, int64_t k, int64_t k_padded, int8_t *out, float *scale, int32_t *sum) {
#ifdef RYOT_X86
    if (__builtin_cpu_supports("avx512bw")) quantize_row_avx512(row, k, out, scale, sum);
    else
#endif
        quantize_row_portable(row, k, out, scale, sum);
    memset(out + k, 0, (size_t)(k_padded - k));
}

static void quantize_rows(const float *x, int64_t m_rows, int64_t k, int64_t k_padded, int8_t *xq, float *scale,
                          int32_t *sums) {
    for (int64_t m = 0; m < m_rows; m++) ryot_quantize_row(x + m * k, k, k_padded, xq + m * k_padded, scale + m, sums + m);
}

/* ---- portable scalar path ------------------------------------------------------ */
/* Every tile kernel stores the sums of its mr rows x 16 nr outputs into acc (it does not
 * add to what acc holds). */
static void tile_scalar(const int8_t *xq, int64_t k_padded, int64_t mr, const uint8_t *w,
                        int64_t nr, int64_t stride, int32_t acc[MAX_MR][MAX_NR * 16]) {
    (void)stride;
    int64_t kblocks = k_padded / 16;
    for (int64_t m = 0; m < mr; m++) memset(acc[m], 0, sizeof(int32_t) * (size_t)(16 * nr));
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
                  int64_t stride, int32_t acc_out[MAX_MR][MAX_NR * 16]) {
    const int64_t kblocks = k_padded / 16;
    if (mr == 1) {
        const int64_t used = kblocks * nr * 64; /* < stride for a width prefix */
        __m512i acc[MAX_NR][4];
        for (int g = 0; g < nr; g++)
            for (int p = 0; p < 4; p++) acc[g][p] = _mm512_setzero_si512();
        for (int64_t kb = 0; kb < kblocks; kb++) {
            const int32_t *quads = (const int32_t *)(xq + kb * 16);
            for (int g = 0; g < nr; g++) { /* decode streams from DRAM: ask for what is read next */
                int64_t ahead = (kb * nr + g) * 64 + PREFETCH_BYTES;
                if (ahead >= used) ahead += stride - used; /* the next tile */
                _mm_prefetch((const char *)(w + ahead), _MM_HINT_T0);
            }
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
    const int64_t used = kblocks * nr * 64;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        for (int g = 0; g < nr; g++) {
            int64_t ahead = (kb * nr + g) * 64 + PREFETCH_BYTES; /* as for one token */
            if (ahead >= used) ahead += stride - used;
            _mm_prefetch((const char *)(w + ahead), _MM_HINT_T0);
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
    if (mr == MR && nr == NR) { tile_avx512_fixed(xq, k_padded, MR, w, NR, stride, acc); return; }

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
tile_avx512(const int8_t *xq, int64_t k_padded, int64_t mr, const uint8_t *w, int64_t nr, int64_t stride,
            int32_t acc[MAX_MR][MAX_NR * 16]) {
    AVX512_CASE(1, 1) AVX512_CASE(1, 2) AVX512_CASE(1, 4) AVX512_CASE(1, 8)
    AVX512_CASE(2, 1) AVX512_CASE(2, 2) AVX512_CASE(2, 4) AVX512_CASE(2, 8)
    AVX512_CASE(4, 1) AVX512_CASE(4, 2) AVX512_CASE(4, 4)
    AVX512_CASE(8, 1) AVX512_CASE(8, 2)
    tile_scalar(xq, k_padded, mr, w, nr, stride, acc);
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
                                                     int64_t stride,                          \
                                                     int32_t acc_out[MAX_MR][MAX_NR * 16]) {  \
        (void)stride;                                                                        \
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

/* (xq, k_padded, mr, tile, nr, stride: the bytes from a tile to the next, acc) */
typedef void (*tile_fn)(const int8_t *, int64_t, int64_t, const uint8_t *, int64_t, int64_t,
                        int32_t[MAX_MR][MAX_NR * 16]);

static tile_fn tile_for(int isa) {
#ifdef RYOT_X86
    if (isa >= ISA_AVX512VNNI) return tile_avx512;
    if (isa == ISA_AVXVNNI) return tile_avxvnni;
    if (isa == ISA_AVX2) return tile_avx2;
#endif
    (void)isa;
    return tile_scalar;
}

#ifdef RYOT_X86
/* ---- AMX: several tokens at a time on the int8 tile unit -----------------------------
 * Row groups are taken four at a time (across tile boundaries: tile t's group g is flat
 * group nr t + g) and unpacked to one byte per code along K: [group][kblock][field][64].
 * Field p of block kb is 16 rows x the 4 k 16 kb + 4 p .. + 3, which is exactly one
 * 64-byte row of an AMX B tile (k quads x 16 columns), so 16 consecutive rows (4 blocks)
 * are the B tile of a 64-wide K chunk. The A tile is 64 int8 activations of up to 16
 * tokens; C += A . B sums 16 tokens x 16 rows in int32, four groups' C tiles side by
 * side so four dot products are in flight. K chunks past the weight's end are zero
 * codes; the last chunk's activations are copied into a zeroed row block, so nothing is
 * read past either buffer. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* RYOT_AMX_GROUPS C tiles 0-3 (one per group), A tile 4, B tiles 5-7 in turn */

__attribute__((target("amx-tile"))) static void configure_tiles(int tokens) {
    tile_config config;
    memset(&config, 0, sizeof(config));
    config.palette = 1;
    for (int t = 0; t <= 4; t++) config.rows[t] = (uint8_t)tokens, config.colsb[t] = 64;
    for (int t = 5; t <= 7; t++) config.rows[t] = 16, config.colsb[t] = 64;
    _tile_loadconfig(&config);
}

static int64_t amx_chunks(int64_t k_padded) { return (k_padded / 16 + 3) / 4; }

/* One group's codes, one byte each, from its blocks `block_stride` bytes apart. */
__attribute__((target("avx512f,avx512bw"))) static void unpack_group_avx512(const uint8_t *w, int64_t kblocks,
                                                                            int64_t block_stride, uint8_t *codes) {
    const __m512i low2 = _mm512_set1_epi8(3);
    for (int64_t kb = 0; kb < kblocks; kb++) {
        const __m512i block = _mm512_loadu_si512((const void *)(w + kb * block_stride));
        for (int p = 0; p < 4; p++)
            _mm512_storeu_si512((void *)(codes + (kb * 4 + p) * 64),
                                _mm512_and_si512(_mm512_srli_epi16(block, 2 * p), low2));
    }
    memset(codes + kblocks * 256, 0, (size_t)(amx_chunks(kblocks * 16) * 1024 - kblocks * 256));
}


/* C tile C_TILE += A (tile 4) . group I's B tile (its 16 rows of 64 bytes at B_ROWS),
 * loaded into tile B_TILE; groups past `groups` are skipped. */
#define AMX_GROUP(I, C_TILE, B_TILE, B_ROWS)      \
    if (I < groups) {                             \
        _tile_loadd(B_TILE, B_ROWS, 64);          \
        _tile_dpbsud(C_TILE, 4, B_TILE);          \
    }

/* Chunk c of one group, unpacked to one byte per code: 16 rows of 64 bytes (zero codes
 * past the weight's kblocks). */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void
unpack_chunk_avx512(const uint8_t *w, int64_t c, int64_t kblocks, int64_t block_stride, uint8_t *rows) {
    const __m512i low2 = _mm512_set1_epi8(3);
    for (int64_t b = 0; b < 4; b++) {
        const int64_t kb = 4 * c + b;
        const __m512i block = kb < kblocks ? _mm512_loadu_si512((const void *)(w + kb * block_stride))
                                           : _mm512_set1_epi8(0);
        for (int p = 0; p < 4; p++)
            _mm512_storeu_si512((void *)(rows + (b * 4 + p) * 64),
                                _mm512_and_si512(_mm512_srli_epi16(block, 2 * p), low2));
    }
}

/* Up to 16 tokens (one A tile): each K chunk of four groups is unpacked into a 4 KB buffer
 * that stays in L1, while the tile unit works on the other buffer. More tokens take
 * `tiles_amx`, which unpacks a group set's whole K once for all its token blocks. */
__attribute__((target("avx512f,avx512bw,amx-tile,amx-int8"))) static void
tiles_amx_streamed(const int8_t *xq, int64_t m_rows, int64_t k_padded, const uint8_t *packed, int64_t tile_bytes,
                   int64_t nr, int64_t first, int64_t last, uint8_t *scratch, int32_t *acc, int64_t acc_stride) {
    const int64_t chunks = amx_chunks(k_padded), full = k_padded / 64, kblocks = k_padded / 16;
    uint8_t *buffers = scratch; /* two sets of four groups x 1 KB */
    int8_t *tail = (int8_t *)(scratch + 2 * RYOT_AMX_GROUPS * 1024);
    configure_tiles((int)m_rows);
    if (full < chunks) {
        memset(tail, 0, 16 * 64);
        for (int64_t m = 0; m < m_rows; m++)
            memcpy(tail + m * 64, xq + m * k_padded + full * 64, (size_t)(k_padded - full * 64));
    }
    for (int64_t flat = first * nr; flat < last * nr; flat += RYOT_AMX_GROUPS) {
        const int64_t groups = last * nr - flat < RYOT_AMX_GROUPS ? last * nr - flat : RYOT_AMX_GROUPS;
        const uint8_t *group[RYOT_AMX_GROUPS];
        for (int64_t i = 0; i < groups; i++) group[i] = packed + (flat + i) / nr * tile_bytes + (flat + i) % nr * 64;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t c = 0; c < chunks; c++) {
            uint8_t *codes = buffers + (c & 1) * RYOT_AMX_GROUPS * 1024;
            for (int64_t i = 0; i < groups; i++) unpack_chunk_avx512(group[i], c, kblocks, nr * 64, codes + i * 1024);
            if (c < full) _tile_loadd(4, xq + c * 64, k_padded);
            else _tile_loadd(4, tail, 64);
            AMX_GROUP(0, 0, 5, codes + 0 * 1024)
            AMX_GROUP(1, 1, 6, codes + 1 * 1024)
            AMX_GROUP(2, 2, 7, codes + 2 * 1024)
            AMX_GROUP(3, 3, 5, codes + 3 * 1024)
        }
        int32_t *y = acc + flat * 16;
        _tile_stored(0, y, acc_stride * 4);
        if (groups > 1) _tile_stored(1, y + 16, acc_stride * 4);
        if (groups > 2) _tile_stored(2, y + 32, acc_stride * 4);
        if (groups > 3) _tile_stored(3, y + 48, acc_stride * 4);
    }
    _tile_release();
}

__attribute__((target("avx512f,avx512bw,amx-tile,amx-int8"))) static void
tiles_amx(const int8_t *xq, int64_t m_rows, int64_t k_padded, const uint8_t *packed, int64_t tile_bytes, int64_t nr,
          int64_t first, int64_t last, uint8_t *scratch, int32_t *acc, int64_t acc_stride) {
    const int64_t chunks = amx_chunks(k_padded), group_bytes = chunks * 1024, full = k_padded / 64;
    uint8_t *codes = scratch;
    int8_t *tail = (int8_t *)(scratch + RYOT_AMX_GROUPS * group_bytes); /* 16 tokens x 64 activations */
    int configured = 0;
    for (int64_t flat = first * nr; flat < last * nr; flat += RYOT_AMX_GROUPS) {
        const int64_t groups = last * nr - flat < RYOT_AMX_GROUPS ? last * nr - flat : RYOT_AMX_GROUPS;
        for (int64_t i = 0; i < groups; i++)
            unpack_group_avx512(packed + (flat + i) / nr * tile_bytes + (flat + i) % nr * 64, k_padded / 16, nr * 64,
                                codes + i * group_bytes);
        for (int64_t m0 = 0; m0 < m_rows; m0 += 16) {
            const int tokens = (int)(m_rows - m0 < 16 ? m_rows - m0 : 16);
            if (tokens != configured) configure_tiles(configured = tokens);
            if (full < chunks) { /* the last chunk's activations, zero past k_padded */
                memset(tail, 0, 16 * 64);
                for (int m = 0; m < tokens; m++)
                    memcpy(tail + m * 64, xq + (m0 + m) * k_padded + full * 64, (size_t)(k_padded - full * 64));
            }
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t c = 0; c < chunks; c++) {
                if (c < full) _tile_loadd(4, xq + m0 * k_padded + c * 64, k_padded);
                else _tile_loadd(4, tail, 64);
                AMX_GROUP(0, 0, 5, codes + 0 * group_bytes + c * 1024)
                AMX_GROUP(1, 1, 6, codes + 1 * group_bytes + c * 1024)
                AMX_GROUP(2, 2, 7, codes + 2 * group_bytes + c * 1024)
                AMX_GROUP(3, 3, 5, codes + 3 * group_bytes + c * 1024)
            }
            int32_t *y = acc + m0 * acc_stride + flat * 16;
            _tile_stored(0, y, acc_stride * 4);
            if (groups > 1) _tile_stored(1, y + 16, acc_stride * 4);
            if (groups > 2) _tile_stored(2, y + 32, acc_stride * 4);
            if (groups > 3) _tile_stored(3, y + 48, acc_stride * 4);
        }
    }
    if (configured) _tile_release();
}
#endif

/* The unpacked tile, or four AMX groups (rounded to whole K chunks; streamed: two chunks'
 * buffers) and a row block of activations for the AMX tail. */
int64_t ryot_unpack_bytes(int64_t k_padded, int64_t nr) {
    const int64_t groups = nr > RYOT_AMX_GROUPS ? nr : RYOT_AMX_GROUPS;
    const int64_t whole = (k_padded / 64 + 1) * 1024 * groups, streamed = 2 * RYOT_AMX_GROUPS * 1024;
    return (whole > streamed ? whole : streamed) + 16 * 64;
}

void ryot_ternary_tiles(const int8_t *xq, int64_t m_rows, int64_t k_padded, const uint8_t *packed,
                        int64_t tile_bytes, int64_t nr, int64_t mr, int64_t first, int64_t last, int isa,
                        uint8_t *scratch, int32_t *acc, int64_t acc_stride) {
#ifdef RYOT_X86
    if (isa == ISA_AMX && m_rows >= RYOT_AMX_MIN_TOKENS && scratch) {
        if (m_rows <= 16)
            return tiles_amx_streamed(xq, m_rows, k_padded, packed, tile_bytes, nr, first, last, scratch, acc,
                                      acc_stride);
        return tiles_amx(xq, m_rows, k_padded, packed, tile_bytes, nr, first, last, scratch, acc, acc_stride);
    }
#endif
    if (mr * nr > RYOT_MAX_ACCUMULATORS) mr = RYOT_MAX_ACCUMULATORS / nr; /* same result, in registers */
    if (mr < 1) mr = 1;
    const tile_fn tile = tile_for(isa);
    for (int64_t t = first; t < last; t++) {
        const uint8_t *w = packed + t * tile_bytes;
#ifdef RYOT_X86
        /* prefill: unpack the tile once, then run every block of tokens over it */
        const int unpack = isa >= ISA_AVX512VNNI && m_rows >= RYOT_UNPACK_MIN_TOKENS && scratch;
        if (unpack) unpack_tile_avx512(w, k_padded / 16, nr, scratch);
#else
        const int unpack = 0;
#endif
        for (int64_t m0 = 0, rows = 0; m0 < m_rows; m0 += rows) {
            /* a power of two of tokens at a time: those (with mr x nr <= 16) have kernels;
             * any other count would fall to the scalar one */
            for (rows = 1; rows * 2 <= mr && m0 + rows * 2 <= m_rows; rows *= 2) {}
            int32_t *y = acc + m0 * acc_stride + t * 16 * nr;
#ifdef RYOT_X86
            if (unpack && tile_unpacked(xq + m0 * k_padded, k_padded, rows, scratch, nr, y, acc_stride)) continue;
#endif
            if (rows == 1) { /* one token: the kernel's first row is the output itself */
                tile(xq + m0 * k_padded, k_padded, 1, w, nr, tile_bytes, (int32_t(*)[MAX_NR * 16])y);
                continue;
            }
            int32_t local[MAX_MR][MAX_NR * 16];
            tile(xq + m0 * k_padded, k_padded, rows, w, nr, tile_bytes, local);
            for (int64_t m = 0; m < rows; m++) memcpy(y + m * acc_stride, local[m], sizeof(int32_t) * 16 * nr);
        }
    }
}

/* Integer accumulators sum_k code * xq for every token and row: the exact core, exposed
 * for tests. acc has m_rows x n_padded entries. Only the first k_padded columns of a
 * weight packed with packed_k_padded columns are read: the first K blocks of a tile are a
 * prefix of it, so a Matryoshka width prefix of the input needs only the tile stride. */
int ryot_ternary_accumulate(const int8_t *xq, int64_t m_rows, int64_t k_padded,
                            const uint8_t *packed, int64_t packed_k_padded, int64_t n_padded,
                            int64_t nr, int64_t mr, int isa, int threads, int32_t *acc) {
    if (nr < 1 || nr > MAX_NR || mr < 1 || mr > MAX_MR || k_padded % 16 || packed_k_padded % 16 ||
        k_padded > packed_k_padded || n_padded % (16 * nr) || threads < 1)
        return -1;
    if (!ryot_isa_supported(isa)) return -2;
    const int64_t tiles = n_padded / (16 * nr);
    const int64_t tile_bytes = (packed_k_padded / 16) * nr * 64;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        const int64_t count = omp_get_num_threads(), me = omp_get_thread_num();
        uint8_t *scratch = malloc((size_t)ryot_unpack_bytes(k_padded, nr));
        if (scratch)
            ryot_ternary_tiles(xq, m_rows, k_padded, packed, tile_bytes, nr, mr, tiles * me / count,
                               tiles * (me + 1) / count, isa, scratch, acc, n_padded);
        else
            failed = 1;
        free(scratch);
    }
    return failed ? -3 : 0;
}

/* RMSNorm of each row (the layer's SubLN), as torch computes it:
 * x * rsqrt(mean(x^2) + eps) * weight. */
static void rms_norm_rows(const float *x, int64_t m_rows, int64_t k, const float *weight, float eps,
                          float *out) {
    for (int64_t m = 0; m < m_rows; m++) ryot_rms_norm(x + m * k, k, weight, eps, out + m * k, ryot_best_isa());
}

/* y[m, n] for n < n_out: RMSNorm (when norm_weight is given), quantize, accumulate,
 * rescale. x has k <= packed_k_padded columns, the first k of the packed weight. */
int ryot_ternary_linear(const float *x, int64_t m_rows, int64_t k, const uint8_t *packed,
                        int64_t packed_k_padded, int64_t n_out, int64_t nr, int64_t mr, float w_scale,
                        int isa, int threads, float *y, const float *norm_weight, float norm_eps) {
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
        quantize_rows(x, m_rows, k, k_padded, xq, scale, sums);
        status = ryot_ternary_accumulate(xq, m_rows, k_padded, packed, packed_k_padded, n_padded, nr,
                                         mr, isa, threads, acc);
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

/* ---- sparse down-projection (Q-Sparse): read only the kept columns ---------------------
 * Column layout (written by pack_ternary_columns): column j is n_padded / 4 contiguous
 * bytes of 2-bit codes w + 1, so a kept column is one contiguous read and a width prefix
 * of K is a prefix of the columns. Each 64-row chunk is 16 bytes; byte b holds row
 * 16 f + b of the chunk in its field f. Kept columns go four at a time (padded with zero
 * activations): the bytes of their chunks, transposed so that 32-bit lane b holds byte b
 * of each, are per field the u8 operand of dot products against the four int8
 * activations, 16 rows in order. As in the dense decode path the fields are masked, not
 * shifted (the sums of field f are 4^f too large until the end: exact while keep < 2^17),
 * and the sum of the activations is subtracted at the end. Threads split the kept
 * columns; each sums all rows, 256 at a time in registers, for a group of kept columns
 * at a time, while it asks memory for the same rows of the next group's columns, a few
 * lines per four columns summed (measured faster than asking for whole columns in a
 * burst, or for the next block of the same columns). */

/* acc[r] += sum over kept i < keep (a multiple of 4) of code[r, index[i]] * xq[i] for the
 * 256 rows r of a block; `lines` is the block's 64 bytes in column 0, columns are
 * column_bytes apart. The block's lines in columns next[0, n_next) are prefetched. */
typedef void (*column_block_fn)(const int8_t *xq, const int32_t *index, int64_t keep, const int32_t *next,
                                int64_t n_next, const uint8_t *lines, int64_t column_bytes, int32_t *acc);

static inline void prefetch_next(const int32_t *next, int64_t n_next, int64_t i, const uint8_t *lines,
                                 int64_t column_bytes) {
    for (int64_t c = i; c < i + 4 && c < n_next; c++) __builtin_prefetch(lines + next[c] * column_bytes);
}

static void column_block_scalar(const int8_t *xq, const int32_t *index, int64_t keep, const int32_t *next,
                                int64_t n_next, const uint8_t *lines, int64_t column_bytes, int32_t *acc) {
    for (int64_t i = 0; i < keep; i++) {
        if (i % 4 == 0) prefetch_next(next, n_next, i, lines, column_bytes);
        const uint8_t *block = lines + index[i] * column_bytes;
        for (int s = 0; s < 4; s++)
            for (int f = 0; f < 4; f++)
                for (int b = 0; b < 16; b++) acc[64 * s + 16 * f + b] += ((block[16 * s + b] >> (2 * f)) & 3) * xq[i];
    }
}

#ifdef RYOT_X86
/* The four chunks side by side in one register; byte 4 b + c of the transpose is byte
 * 16 c + b of that register, byte b of column c. */
#define COLUMNS_OF(b) b, 16 + b, 32 + b, 48 + b
static const uint8_t TRANSPOSE_4x16[64] = {
    COLUMNS_OF(0),  COLUMNS_OF(1),  COLUMNS_OF(2),  COLUMNS_OF(3),  COLUMNS_OF(4),  COLUMNS_OF(5),
    COLUMNS_OF(6),  COLUMNS_OF(7),  COLUMNS_OF(8),  COLUMNS_OF(9),  COLUMNS_OF(10), COLUMNS_OF(11),
    COLUMNS_OF(12), COLUMNS_OF(13), COLUMNS_OF(14), COLUMNS_OF(15)};

__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vbmi"))) static void
column_block_avx512(const int8_t *xq, const int32_t *index, int64_t keep, const int32_t *next, int64_t n_next,
                    const uint8_t *lines, int64_t column_bytes, int32_t *acc) {
    const __m512i transpose = _mm512_loadu_si512((const void *)TRANSPOSE_4x16);
    __m512i sum[16]; /* [chunk][field]: rows 64 s + 16 f + 0..15, times 4^f */
    for (int v = 0; v < 16; v++) sum[v] = _mm512_setzero_si512();
    for (int64_t i = 0; i < keep; i += 4) {
        int32_t quad;
        memcpy(&quad, xq + i, 4);
        const __m512i x = _mm512_set1_epi32(quad);
        prefetch_next(next, n_next, i, lines, column_bytes);
        const uint8_t *col[4];
        for (int c = 0; c < 4; c++) col[c] = lines + index[i + c] * column_bytes;
        for (int s = 0; s < 4; s++) {
            __m512i chunks = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(col[0] + 16 * s)));
            chunks = _mm512_inserti32x4(chunks, _mm_loadu_si128((const __m128i *)(col[1] + 16 * s)), 1);
            chunks = _mm512_inserti32x4(chunks, _mm_loadu_si128((const __m128i *)(col[2] + 16 * s)), 2);
            chunks = _mm512_inserti32x4(chunks, _mm_loadu_si128((const __m128i *)(col[3] + 16 * s)), 3);
            const __m512i codes = _mm512_permutexvar_epi8(transpose, chunks);
            for (int f = 0; f < 4; f++) {
                const __m512i field = _mm512_and_si512(codes, _mm512_set1_epi8((char)(3 << (2 * f))));
                sum[4 * s + f] = _mm512_dpbusd_epi32(sum[4 * s + f], field, x);
            }
        }
    }
    for (int v = 0; v < 16; v++) {
        const __m512i scaled = _mm512_srai_epi32(sum[v], 2 * (v % 4));
        const __m512i total = _mm512_add_epi32(_mm512_loadu_si512((const void *)(acc + 16 * v)), scaled);
        _mm512_storeu_si512((void *)(acc + 16 * v), total);
    }
}

/* 256-bit: a chunk at a time. Chunks of columns 0 | 2 and 1 | 3 side by side, interleaved
 * by bytes, regrouped by 128-bit halves and interleaved by 16-bit pairs, give the
 * transpose's lanes b = 0-3 | 8-11 and b = 4-7 | 12-15. */
#define COLUMN_256(NAME, TARGET, DOT)                                                                           \
    __attribute__((target(TARGET))) static void NAME(const int8_t *xq, const int32_t *index, int64_t keep,      \
                                                     const int32_t *next, int64_t n_next, const uint8_t *lines, \
                                                     int64_t column_bytes, int32_t *acc) {                    \
        for (int s = 0; s < 4; s++) {                                                                           \
            __m256i sum[4][2]; /* [field][h]: rows 64 s + 16 f + 4 h + (0-3 | 8-11), times 4^f */               \
            for (int f = 0; f < 4; f++) sum[f][0] = sum[f][1] = _mm256_setzero_si256();                         \
            for (int64_t i = 0; i < keep; i += 4) {                                                             \
                if (s == 0) prefetch_next(next, n_next, i, lines, column_bytes);                                \
                int32_t quad;                                                                                   \
                memcpy(&quad, xq + i, 4);                                                                       \
                const __m256i x = _mm256_set1_epi32(quad);                                                      \
                const __m128i *col[4];                                                                          \
                for (int c = 0; c < 4; c++) col[c] = (const __m128i *)(lines + index[i + c] * column_bytes + 16 * s); \
                const __m256i even = _mm256_loadu2_m128i(col[2], col[0]), odd = _mm256_loadu2_m128i(col[3], col[1]); \
                const __m256i lo = _mm256_unpacklo_epi8(even, odd), hi = _mm256_unpackhi_epi8(even, odd);        \
                const __m256i pairs01 = _mm256_permute2x128_si256(lo, hi, 0x20);                                \
                const __m256i pairs23 = _mm256_permute2x128_si256(lo, hi, 0x31);                                \
                const __m256i codes[2] = {_mm256_unpacklo_epi16(pairs01, pairs23),                              \
                                          _mm256_unpackhi_epi16(pairs01, pairs23)};                             \
                for (int f = 0; f < 4; f++)                                                                     \
                    for (int h = 0; h < 2; h++)                                                                 \
                        sum[f][h] = DOT(sum[f][h], _mm256_and_si256(codes[h], _mm256_set1_epi8((char)(3 << (2 * f)))), \
                                        x);                                                                     \
            }                                                                                                   \
            for (int f = 0; f < 4; f++)                                                                         \
                for (int h = 0; h < 2; h++) {                                                                   \
                    __m128i *low = (__m128i *)(acc + 64 * s + 16 * f + 4 * h), *high = low + 2;                 \
                    const __m256i scaled = _mm256_srai_epi32(sum[f][h], 2 * f);                                 \
                    const __m256i total = _mm256_add_epi32(_mm256_loadu2_m128i(high, low), scaled);             \
                    _mm256_storeu2_m128i(high, low, total);                                                     \
                }                                                                                               \
        }                                                                                                       \
    }

COLUMN_256(column_block_avx2, "avx2,fma", dot_avx2)
COLUMN_256(column_block_avxvnni, "avx2,avxvnni", dot_avxvnni)
#endif

/* The AVX-512 kernel needs VBMI (vpermb); without it the AVX2 kernel runs. */
static column_block_fn column_block_for(int isa) {
#ifdef RYOT_X86
    if (isa >= ISA_AVX512VNNI && __builtin_cpu_supports("avx512vbmi")) return column_block_avx512;
    if (isa >= ISA_AVXVNNI && __builtin_cpu_supports("avxvnni")) return column_block_avxvnni;
    if (isa >= ISA_AVX2) return column_block_avx2;
#endif
    (void)isa;
    return column_block_scalar;
}

void ryot_column_blocks(const int8_t *xq, const int32_t *index, int64_t keep4, const uint8_t *columns,
                        int64_t n_padded, int64_t block0, int64_t block1, int isa, int32_t *acc) {
    const column_block_fn block = column_block_for(isa);
    const int64_t column_bytes = n_padded / 4;
    memset(acc + block0 * COLUMN_BLOCK, 0, sizeof(int32_t) * (size_t)((block1 - block0) * COLUMN_BLOCK));
    for (int64_t group = 0; group < keep4; group += COLUMN_GROUP) {
        const int64_t end = group + COLUMN_GROUP < keep4 ? group + COLUMN_GROUP : keep4;
        const int64_t n_next = keep4 - end < COLUMN_GROUP ? keep4 - end : COLUMN_GROUP;
        for (int64_t b = block0; b < block1; b++)
            block(xq + group, index + group, end - group, index + end, n_next, columns + b * (COLUMN_BLOCK / 4),
                  column_bytes, acc + b * COLUMN_BLOCK);
    }
}

/* Integer accumulators sum_i w[n, index[i]] * xq[i] for each token (keep entries a token),
 * the exact core of the sparse path, exposed for tests. acc has m_rows x n_padded
 * entries. Threads split the kept columns (whole columns each: split by row blocks, the
 * prefetchers fetch each thread the other's half of every column too), summing into
 * accumulators of their own, then split the rows to add them up. */
int ryot_sparse_accumulate(const int8_t *xq, const int32_t *index, int64_t m_rows, int64_t keep,
                           const uint8_t *columns, int64_t n_padded, int isa, int threads, int32_t *acc) {
    if (keep < 0 || keep >= 1 << 17 || n_padded % COLUMN_BLOCK || threads < 1) return -1;
    if (!ryot_isa_supported(isa)) return -2;
    const int64_t keep4 = (keep + 3) / 4 * 4, blocks = n_padded / COLUMN_BLOCK;
    int8_t *xq4 = calloc((size_t)(m_rows * keep4), 1); /* padding: activation 0 on column 0 */
    int32_t *index4 = calloc((size_t)(m_rows * keep4), sizeof(int32_t));
    int32_t *partial = malloc(sizeof(int32_t) * (size_t)((threads - 1) * m_rows * n_padded + 1)); /* threads 1.. */
    if (!xq4 || !index4 || !partial) {
        free(xq4);
        free(index4);
        free(partial);
        return -3;
    }
    for (int64_t m = 0; m < m_rows; m++) {
        memcpy(xq4 + m * keep4, xq + m * keep, (size_t)keep);
        memcpy(index4 + m * keep4, index + m * keep, sizeof(int32_t) * (size_t)keep);
    }
#pragma omp parallel num_threads(threads)
    {
        const int64_t count = omp_get_num_threads(), me = omp_get_thread_num(), quads = keep4 / 4;
        const int64_t c0 = 4 * (quads * me / count), c1 = 4 * (quads * (me + 1) / count);
        int32_t *mine = me == 0 ? acc : partial + (me - 1) * m_rows * n_padded;
        for (int64_t m = 0; m < m_rows; m++)
            ryot_column_blocks(xq4 + m * keep4 + c0, index4 + m * keep4 + c0, c1 - c0, columns, n_padded, 0, blocks,
                               isa, mine + m * n_padded);
#pragma omp barrier
        const int64_t b0 = blocks * me / count, b1 = blocks * (me + 1) / count;
        for (int64_t m = 0; m < m_rows; m++) {
            int32_t *out = acc + m * n_padded;
            int32_t total = 0; /* the codes are w + 1 */
            for (int64_t i = 0; i < keep; i++) total += xq[m * keep + i];
            for (int64_t n = b0 * COLUMN_BLOCK; n < b1 * COLUMN_BLOCK; n++) {
                int32_t sum = out[n] - total;
                for (int64_t t = 1; t < count; t++) sum += partial[((t - 1) * m_rows + m) * n_padded + n];
                out[n] = sum;
            }
        }
    }
    free(xq4);
    free(index4);
    free(partial);
    return 0;
}

/* ---- top-k selection -------------------------------------------------------------
 * Magnitudes |x| compared as integers (the float's bits without the sign). The keep-th
 * largest is found by a binary search over its top 11 bits, each step one counting pass
 * (vector compares, no histogram: a histogram's increments serialize), then by a radix
 * select over the few candidates sharing those bits, 10 and 10 bits at a time. The
 * passes below write their survivors to `out` (which may be `keys` itself) branch-free or
 * by vector compress and whole-vector stores: either way no write passes position n - 1. */
static int64_t in_range_portable(const uint32_t *keys, int64_t n, uint32_t lo, uint32_t hi, uint32_t *out) {
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        out[kept] = keys[i];
        kept += keys[i] >= lo && keys[i] <= hi;
    }
    return kept;
}

/* How many keys are >= threshold; with `out`, their positions too. */
static int64_t at_least_portable(const uint32_t *keys, int64_t n, uint32_t threshold, int32_t *out) {
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (out) out[kept] = (int32_t)i;
        kept += keys[i] >= threshold;
    }
    return kept;
}

#ifdef RYOT_X86
__attribute__((target("avx512f"))) static int64_t
in_range_avx512(const uint32_t *keys, int64_t n, uint32_t lo, uint32_t hi, uint32_t *out) {
    const __m512i vlo = _mm512_set1_epi32((int)lo), vhi = _mm512_set1_epi32((int)hi);
    int64_t kept = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i v = _mm512_loadu_si512((const void *)(keys + i));
        const __mmask16 in = _mm512_cmpge_epu32_mask(v, vlo) & _mm512_cmple_epu32_mask(v, vhi);
        _mm512_storeu_si512((void *)(out + kept), _mm512_maskz_compress_epi32(in, v));
        kept += __builtin_popcount(in);
    }
    return kept + in_range_portable(keys + i, n - i, lo, hi, out + kept);
}

__attribute__((target("avx512f"))) static int64_t
at_least_avx512(const uint32_t *keys, int64_t n, uint32_t threshold, int32_t *out) {
    const __m512i vt = _mm512_set1_epi32((int)threshold), step = _mm512_set1_epi32(16);
    __m512i position = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t kept = 0, i = 0;
    for (; i + 16 <= n; i += 16, position = _mm512_add_epi32(position, step)) {
        const __mmask16 in = _mm512_cmpge_epu32_mask(_mm512_loadu_si512((const void *)(keys + i)), vt);
        if (out) _mm512_storeu_si512((void *)(out + kept), _mm512_maskz_compress_epi32(in, position));
        kept += __builtin_popcount(in);
    }
    const int64_t tail = at_least_portable(keys + i, n - i, threshold, out ? out + kept : NULL);
    for (int64_t j = kept; out && j < kept + tail; j++) out[j] += (int32_t)i;
    return kept + tail;
}
#endif

void ryot_select_top(const float *row, int64_t k, int64_t keep, uint32_t *words, int32_t *index) {
    uint32_t *keys = words, *work = words + k;
    int32_t *taken = (int32_t *)(words + 2 * k);
    int64_t (*in_range)(const uint32_t *, int64_t, uint32_t, uint32_t, uint32_t *) = in_range_portable;
    int64_t (*at_least)(const uint32_t *, int64_t, uint32_t, int32_t *) = at_least_portable;
#ifdef RYOT_X86
    if (__builtin_cpu_supports("avx512f")) {
        in_range = in_range_avx512;
        at_least = at_least_avx512;
    }
#endif
    for (int64_t i = 0; i < k; i++) {
        memcpy(&keys[i], &row[i], sizeof(uint32_t));
        keys[i] &= 0x7fffffffu;
    }
    /* top bits: at least keep keys are >= lo << 20, fewer (`above`) are >= hi << 20 */
    uint32_t lo = 0, hi = 2048;
    int64_t above = 0;
    while (hi - lo > 1) {
        const uint32_t mid = (lo + hi) / 2;
        const int64_t count = at_least(keys, k, mid << 20, NULL);
        if (count >= keep) lo = mid;
        else hi = mid, above = count;
    }
    int64_t rank = keep - above; /* the rank-th largest of the candidates is the threshold */
    uint32_t threshold = lo << 20;
    int64_t candidates = in_range(keys, k, threshold, threshold | 0xfffffu, work);
    for (int shift = 10; shift >= 0; shift -= 10) {
        int32_t count[1024] = {0};
        for (int64_t i = 0; i < candidates; i++) count[(work[i] >> shift) & 1023]++;
        uint32_t digit = 1023;
        while (count[digit] < rank) rank -= count[digit--];
        threshold |= digit << shift;
        candidates = in_range(work, candidates, threshold, threshold | ((1u << shift) - 1), work);
    }
    /* keep - rank magnitudes are above the threshold, `candidates` equal to it */
    if (candidates == rank) {
        memcpy(index, taken, sizeof(int32_t) * (size_t)at_least(keys, k, threshold, taken));
        return;
    }
    for (int64_t i = 0, kept = 0; kept < keep; i++) { /* ties: the lower indices */
        const int tie = keys[i] == threshold && rank > 0;
        rank -= tie;
        index[kept] = (int32_t)i;
        kept += keys[i] > threshold || tie;
    }
}

/* For each token: RMSNorm of the row (when norm_weight is given, as the dense path does),
 * the indices (ascending) of its `keep` largest entries by magnitude and their int8 codes,
 * quantized as the dense path quantizes the whole row (the row's absmax is kept). index
 * and xq have m_rows x keep entries, keep <= k. */
int ryot_sparse_quantize(const float *x, int64_t m_rows, int64_t k, int64_t keep, const float *norm_weight,
                         float norm_eps, int32_t *index, int8_t *xq, float *scale) {
    if (keep < 1 || keep > k) return -1;
    float *normed = norm_weight ? malloc(sizeof(float) * (size_t)(m_rows * k)) : NULL;
    uint32_t *words = malloc(sizeof(uint32_t) * 3 * (size_t)k);
    int8_t *codes = malloc((size_t)k);
    int status = -3;
    if (words && codes && (normed || !norm_weight)) {
        if (normed) {
            rms_norm_rows(x, m_rows, k, norm_weight, norm_eps, normed);
            x = normed;
        }
        for (int64_t m = 0; m < m_rows; m++) {
            int32_t *kept = index + m * keep;
            int32_t sum; /* unused: the kernel sums the kept codes itself */
            ryot_quantize_row(x + m * k, k, k, codes, scale + m, &sum);
            if (keep == k)
                for (int64_t i = 0; i < k; i++) kept[i] = (int32_t)i;
            else
                ryot_select_top(x + m * k, k, keep, words, kept);
            for (int64_t i = 0; i < keep; i++) xq[m * keep + i] = codes[kept[i]];
        }
        status = 0;
    }
    free(normed);
    free(words);
    free(codes);
    return status;
}

/* y[m, n] for n < n_out from the `keep` largest entries of each row of x [m_rows, k]
 * (k <= the packed columns: a width prefix): quantize as above, accumulate the kept
 * columns only, rescale like the dense path. */
int ryot_sparse_linear(const float *x, int64_t m_rows, int64_t k, int64_t keep, const uint8_t *columns,
                       int64_t n_out, float w_scale, int isa, int threads, float *y,
                       const float *norm_weight, float norm_eps) {
    const int64_t n_padded = (n_out + COLUMN_BLOCK - 1) / COLUMN_BLOCK * COLUMN_BLOCK;
    int32_t *index = malloc(sizeof(int32_t) * (size_t)(m_rows * keep));
    int8_t *xq = malloc((size_t)(m_rows * keep));
    float *scale = malloc(sizeof(float) * (size_t)m_rows);
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(m_rows * n_padded));
    int status = -3;
    if (index && xq && scale && acc) {
        status = ryot_sparse_quantize(x, m_rows, k, keep, norm_weight, norm_eps, index, xq, scale);
        if (status == 0)
            status = ryot_sparse_accumulate(xq, index, m_rows, keep, columns, n_padded, isa, threads, acc);
        for (int64_t m = 0; status == 0 && m < m_rows; m++) {
            const float factor = w_scale / scale[m];
            for (int64_t n = 0; n < n_out; n++) y[m * n_out + n] = (float)acc[m * n_padded + n] * factor;
        }
    }
    free(index);
    free(xq);
    free(scale);
    free(acc);
    return status;
}
