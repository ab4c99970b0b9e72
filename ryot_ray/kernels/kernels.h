/* Every constant of the native kernels, and the kernels a caller's own thread team runs.
 *
 * Python reads the constants from the built library (the `ryot_*` integers below), so
 * they live here only. The kernels take a range of the work (tiles, row groups, row
 * blocks) and run on the calling thread: a caller splits the work over its own team,
 * so one team of threads can run a whole model step without a fork per matmul.
 */
#ifndef RYOT_KERNELS_H
#define RYOT_KERNELS_H

#include <stdint.h>

/* ISA paths, best last; the library picks the best the CPU runs unless told. AMX is
 * AVX-512 VNNI plus the int8 tile unit (Xeon), used for several tokens at a time. */
enum { RYOT_ISA_SCALAR = 0, RYOT_ISA_AVX2 = 1, RYOT_ISA_AVXVNNI = 2, RYOT_ISA_AVX512VNNI = 3, RYOT_ISA_AMX = 4 };

#define RYOT_GROUP 16            /* ternary rows per 64-byte block, and k per block */
#define RYOT_MAX_NR 8            /* row groups per tile (the tile-size knob) */
#define RYOT_MAX_MR 8            /* tokens per micro-tile */
#define RYOT_MAX_ACCUMULATORS 16 /* tokens x row groups a micro-tile keeps in registers */
#define RYOT_TILE_ROWS {1, 2, 4, 8} /* the row groups per tile that have kernels */
#define RYOT_TILE_CHOICES 4
#define RYOT_PREFETCH_BYTES 4096 /* how far ahead of the one-token kernel memory is asked for */
#define RYOT_UNPACK_MIN_TOKENS 9 /* from this many tokens a tile is unpacked once and reused */
#define RYOT_AMX_MIN_TOKENS 9    /* from this many tokens the AMX path runs (fewer: VNNI) */
#define RYOT_AMX_GROUPS 4        /* row groups the AMX path sums at once (a C tile each) */
#define RYOT_COLUMN_BLOCK 256    /* output rows the sparse column kernel sums in registers */
#define RYOT_COLUMN_GROUP 16     /* kept columns per prefetch group (8 to 16 measured best) */
#define RYOT_INT8_ROWS 16        /* rows per group of the int8-row layout */
#define RYOT_INT8_K 4            /* k per 4-byte lane of the int8-row layout */
#define RYOT_QUANT_EPS 1e-5f     /* floor of the absmax in int8 activation quantization */

extern const int32_t ryot_group, ryot_max_nr, ryot_max_mr, ryot_max_accumulators, ryot_column_block,
    ryot_int8_rows, ryot_int8_k, ryot_tile_choices, ryot_tile_rows[RYOT_TILE_CHOICES];
extern const float ryot_quant_eps;

int ryot_isa_supported(int isa);
int ryot_best_isa(void);

/* ---- int8 activations ---------------------------------------------------------------
 * Per-token absmax: scale = 127 / max(|x|, eps), q = round-half-even(x * scale) clamped
 * to [-128, 127]; out[k, k_padded) is zeroed. Returns nothing; scale and sum of q out. */
void ryot_quantize_row(const float *row, int64_t k, int64_t k_padded, int8_t *out, float *scale, int32_t *sum);

/* Every range kernel below writes its rows at their own place in the output (row n of
 * token m at out[m * stride + n]) and nothing else, so threads share one output.
 *
 * ---- ternary, tile layout (see pack.py) ---------------------------------------------
 * Integer accumulators sum_k code * xq for tiles [first, last) of a weight whose tiles
 * are tile_bytes apart, over the first k_padded inputs, for m_rows tokens (xq rows
 * k_padded apart); tile t holds rows [16 nr t, 16 nr (t + 1)). `scratch` holds
 * ryot_unpack_bytes(k_padded, nr) bytes (used from RYOT_UNPACK_MIN_TOKENS tokens). */
void ryot_ternary_tiles(const int8_t *xq, int64_t m_rows, int64_t k_padded, const uint8_t *packed,
                        int64_t tile_bytes, int64_t nr, int64_t mr, int64_t first, int64_t last, int isa,
                        uint8_t *scratch, int32_t *acc, int64_t acc_stride);
int64_t ryot_unpack_bytes(int64_t k_padded, int64_t nr);

/* ---- ternary, column layout (sparse inputs) -----------------------------------------
 * acc[r] for the rows r of row blocks [block0, block1) = sum over i < keep4 of
 * code[r, index[i]] * xq[i]; keep4 is a multiple of 4 (pad with zero activations on
 * column 0). */
void ryot_column_blocks(const int8_t *xq, const int32_t *index, int64_t keep4, const uint8_t *columns,
                        int64_t n_padded, int64_t block0, int64_t block1, int isa, int32_t *acc);

/* Writes to index (ascending) the `keep` (< k) entries of row largest in magnitude, the
 * lower index among equals; `work` holds 3 * k words. */
void ryot_select_top(const float *row, int64_t k, int64_t keep, uint32_t *work, int32_t *index);

/* ---- int8 rows (lm_head, embeddings): rows in groups of 16, k in lanes of 4 ---------
 * [group][k / 4][16 rows][4 bytes], rows and k zero-padded. acc[m, r] = sum_k w[r, k] *
 * (xq[m, k] + 128) for the rows of groups [group0, group1); xu holds xq + 128. */
void ryot_int8_groups(const uint8_t *xu, int64_t m_rows, int64_t k_padded, const int8_t *w, int64_t group0,
                      int64_t group1, int isa, int32_t *acc, int64_t acc_stride);

/* ---- fp32 rows ------------------------------------------------------------------------
 * y[m, n] = sum_k w[n, k] x[m, k] for rows [row0, row1) of a row-major [N, k] weight;
 * x rows are x_stride apart. */
void ryot_f32_rows(const float *x, int64_t m_rows, int64_t k, int64_t x_stride, const float *w, int64_t row0,
                   int64_t row1, int isa, float *y, int64_t y_stride);

/* ---- vector ops (AVX-512 where isa allows it and the CPU has it, else portable) -------- */
/* out = x * rsqrt(mean(x^2) + eps) * weight (weight may be NULL: no gain). */
void ryot_rms_norm(const float *x, int64_t k, const float *weight, float eps, float *out, int isa);
/* out[i] = silu(gate[i]) * up[i] */
void ryot_silu_mul(const float *gate, const float *up, int64_t n, float *out, int isa);
/* relu(gate)^2 * up (the BitNet b1.58 2B4T FFN), as transformers computes it */
void ryot_relu2_mul(const float *gate, const float *up, int64_t n, float *out);
/* its gradients: grad_gate = grad * up * silu'(gate), grad_up = grad * silu(gate) */
void ryot_silu_mul_backward(const float *grad, const float *gate, const float *up, int64_t n, float *grad_gate,
                            float *grad_up, int isa);
/* x = softmax(x) over n entries */
void ryot_softmax(float *x, int64_t n, int isa);
/* out[hd] = softmax(scale * q . key_j) . value_j over positions j < n: keys transposed
 * (entry d of key j at keys[d * key_stride + j]), values [position][hd], both fp32 or IEEE
 * half (`half`); scores holds n floats. */
void ryot_attend(const float *q, const void *keys, int64_t key_stride, const void *values, int64_t n, int64_t hd,
                 int half, float scale, float *scores, float *out, int isa);
/* IEEE half precision, round to nearest even */
void ryot_f16_from_f32(const float *x, uint16_t *out, int64_t n, int isa);
void ryot_f32_from_f16(const uint16_t *x, float *out, int64_t n, int isa);

#endif
