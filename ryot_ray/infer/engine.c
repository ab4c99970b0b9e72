/* The whole step of a Llama-architecture model in one call, on one team of threads.
 * (The BitNet b1.58 2B4T block is one too: its linears' inputs are normed by the block,
 * so its layers have no block norms (NULL) and every ternary linear has the gain of the
 * norm before it; its sub-norms before o and down are gains of those linears, also of
 * fp32 ones in its reference; its FFN multiplies relu(gate)^2, not silu(gate), by up.)
 *
 * A call takes rows (token, sequence slot, position): the prompts of a prefill or one
 * token per sequence in decode, mixed as the caller likes. Every row writes its key and
 * value into its slot's cache at its position and attends to positions 0..position of
 * that slot, so sequences need no padding and a prefill is the same code with more rows.
 * Logits are computed for the rows asked for only.
 *
 * One OpenMP parallel region runs the whole step. Inside it every op splits its work
 * over the team and ends with a barrier where the next op reads what others wrote. Ops
 * that only read a row and write that row (norms, activation quantization) follow each
 * other without barriers; with fewer rows than threads every thread computes them for
 * all rows into its own buffers, so the matmul after them needs no barrier either.
 * Nothing is allocated per step.
 *
 * Linears: ternary (BitLinear: its own RMSNorm gain per input, int8 activations, packed
 * 2-bit weights in the tile layout, one scale per weight), ternary by columns (a sparse
 * down-projection reading only the kept inputs' columns), fp32 rows (the reference) and
 * int8 rows (an int8 lm_head). A fused linear (q/k/v, gate/up) holds segments that share
 * one input and one pass over the threads, each with its own gain and scale.
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

enum { LINEAR_TERNARY = 0, LINEAR_COLUMNS = 1, LINEAR_FP32 = 2, LINEAR_INT8 = 3 };
enum { FFN_SILU = 0, FFN_RELU2 = 1 };
enum { KV_FP32 = 0, KV_FP16 = 1 };
#define MAX_SEGMENTS 3
/* Phases of a step, timed on thread 0 when profiling is on (each ends at a barrier). */
enum { PHASE_EMBED, PHASE_QKV, PHASE_ATTENTION, PHASE_O, PHASE_GATE_UP, PHASE_DOWN, PHASE_HEAD, PHASES };

const int32_t ryot_max_segments = MAX_SEGMENTS, ryot_phases = PHASES;

typedef struct {
    int32_t kind;
    int32_t segments;
    int64_t in_features;
    int64_t rows_per_tile;   /* ternary: row groups per tile */
    int64_t tokens_per_tile; /* ternary: tokens per micro-tile */
    int64_t rows[MAX_SEGMENTS];
    float scale[MAX_SEGMENTS];       /* ternary: weight = (code - 1) * scale */
    const float *gain[MAX_SEGMENTS]; /* ternary: the RMSNorm gain of each segment's input; fp32 o, down: a sub-norm's */
    const void *data;                /* the segments' weights, one after another */
    const float *row_scale;          /* int8 rows: weight = code * row_scale[row] */
    const int32_t *row_sums;         /* int8 rows: sum of each row's codes */
} ryot_linear;

typedef struct {
    const float *attn_norm, *ffn_norm; /* the block's RMSNorm weights (NULL: the ternary linears norm) */
    ryot_linear qkv, o, gate_up, down;
} ryot_layer;

typedef struct {
    int64_t hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, positions;
    float norm_eps;  /* the block's RMSNorms */
    float subln_eps; /* the ternary linears' own RMSNorms, and the fp32 linears' sub-norms */
    int32_t ffn_activation; /* FFN_SILU or FFN_RELU2 */
    int32_t embed_int8;
    const void *embed;        /* [vocab, hidden] fp32, or int8 with one scale per row */
    const float *embed_scale; /* int8 table: per-row scales */
    const float *final_norm;
    const float *rope_cos, *rope_sin; /* [positions, head_dim / 2], attention scaling applied */
    ryot_linear head;
    const ryot_layer *layer;
} ryot_model;

/* What the engine derives once from a linear. */
typedef struct {
    int64_t k_padded;                    /* of the full input */
    int64_t tile_bytes;                  /* ternary: bytes from a tile to the next */
    int64_t tiles[MAX_SEGMENTS];         /* ternary: whole tiles of each segment */
    int64_t padded_rows;                 /* all segments, each padded to its layout */
    int64_t first_row[MAX_SEGMENTS];     /* where a segment's outputs start, unpadded */
    int64_t first_padded[MAX_SEGMENTS];  /* ... and padded (its accumulators) */
} layout;

typedef struct {
    float *normed, *xscale, *scores, *row;
    int8_t *xq;
    int32_t *xsum, *index;
    int32_t *partial; /* a column linear's sums over this thread's kept columns: rows x padded outputs */
    uint32_t *words;
    uint8_t *unpack;
} scratch;

typedef struct ryot_engine {
    const ryot_model *model;
    int64_t slots, max_len, max_rows, kv_elem, kp_max, width_max;
    int kv_kind, threads, isa;
    layout *layouts; /* per layer: qkv, o, gate_up, down; then the head */
    uint8_t *keys, *values;
    float *hidden, *normed, *qkv, *attn, *ffn, *act, *xscale;
    int8_t *xq;
    int32_t *xsum, *index, *acc;
    int64_t acc_stride;
    scratch *own; /* per thread, for rows it prepares for itself */
    int profiling;
    double phase_seconds[PHASES], mark;
} ryot_engine;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Thread 0 charges the time since the last mark to `phase` (all threads have passed the
 * barrier that ended it). */
static void charge(ryot_engine *e, int phase, int me) {
    if (!e->profiling || me != 0) return;
    const double t = now();
    e->phase_seconds[phase] += t - e->mark;
    e->mark = t;
}

static int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static layout layout_of(const ryot_linear *lin) {
    layout out;
    memset(&out, 0, sizeof(out));
    int64_t row = 0, padded = 0;
    for (int s = 0; s < lin->segments; s++) {
        out.first_row[s] = row;
        out.first_padded[s] = padded;
        row += lin->rows[s];
        if (lin->kind == LINEAR_TERNARY) {
            out.tiles[s] = (lin->rows[s] + 16 * lin->rows_per_tile - 1) / (16 * lin->rows_per_tile);
            padded += out.tiles[s] * 16 * lin->rows_per_tile;
        } else if (lin->kind == LINEAR_COLUMNS) {
            padded += round_up(lin->rows[s], RYOT_COLUMN_BLOCK);
        } else if (lin->kind == LINEAR_INT8) {
            padded += round_up(lin->rows[s], RYOT_INT8_ROWS);
        } else {
            padded += lin->rows[s];
        }
    }
    out.padded_rows = padded;
    out.k_padded = lin->kind == LINEAR_INT8 ? round_up(lin->in_features, RYOT_INT8_K)
                                            : round_up(lin->in_features, RYOT_GROUP);
    out.tile_bytes = out.k_padded / 16 * lin->rows_per_tile * 64;
    return out;
}

static layout *layout_at(const ryot_engine *e, int64_t layer, int which) { return &e->layouts[layer * 4 + which]; }

/* ---- the team ---------------------------------------------------------------------------
 * Rows a thread prepares: with fewer rows than threads, all of them into its own buffers;
 * else its share, into the shared ones (then a barrier before anyone reads them). */
typedef struct {
    int me, count;
    int64_t r0, r1;
    int own;
} share;

static share rows_for(int me, int count, int64_t rows) {
    share out = {me, count, 0, rows, rows < count};
    if (!out.own) {
        out.r0 = rows * me / count;
        out.r1 = rows * (me + 1) / count;
    }
    return out;
}

static void part(int64_t units, int me, int count, int64_t *first, int64_t *last) {
    *first = units * me / count;
    *last = units * (me + 1) / count;
}

/* The prepared inputs of a linear: int8 codes, scales and sums per segment and row. */
typedef struct {
    int8_t *xq;
    float *xscale;
    int32_t *xsum;
    int32_t *index; /* sparse: the kept columns of each row */
} prepared;

static prepared prepared_for(const ryot_engine *e, const share *sh) {
    if (sh->own) {
        const scratch *s = &e->own[sh->me];
        return (prepared){s->xq, s->xscale, s->xsum, s->index};
    }
    return (prepared){e->xq, e->xscale, e->xsum, e->index};
}

/* Row m of segment s's codes; the rows of a segment are `row_bytes` apart, as the
 * kernels read them. */
static int8_t *xq_at(const ryot_engine *e, prepared p, int s, int64_t m, int64_t row_bytes) {
    return p.xq + s * e->max_rows * e->kp_max + m * row_bytes;
}

/* Int8 codes of each segment's normed input for rows [r0, r1) of x (k inputs used). */
static void prepare_ternary(const ryot_engine *e, const ryot_linear *lin, const float *x, int64_t x_stride,
                            int64_t k, const share *sh, prepared p) {
    const int64_t kp = round_up(k, RYOT_GROUP);
    float *tmp = e->own[sh->me].row;
    for (int64_t m = sh->r0; m < sh->r1; m++)
        for (int s = 0; s < lin->segments; s++) {
            ryot_rms_norm(x + m * x_stride, k, lin->gain[s], e->model->subln_eps, tmp, e->isa);
            ryot_quantize_row(tmp, k, kp, xq_at(e, p, s, m, kp), &p.xscale[s * e->max_rows + m],
                              &p.xsum[s * e->max_rows + m]);
        }
}

/* Sparse input: the `keep` largest |x| of each row; the RMSNorm over all k inputs (the
 * others are zero), int8 codes of the kept ones; keep is padded to 4 with zeros. */
static void prepare_columns(const ryot_engine *e, const ryot_linear *lin, const float *x, int64_t x_stride,
                            int64_t k, int64_t keep, const share *sh, prepared p) {
    const scratch *own = &e->own[sh->me];
    const int64_t keep4 = round_up(keep, 4);
    for (int64_t m = sh->r0; m < sh->r1; m++) {
        const float *row = x + m * x_stride;
        int32_t *index = p.index + m * e->width_max;
        if (keep < k) {
            ryot_select_top(row, k, keep, own->words, index);
        } else {
            for (int64_t i = 0; i < k; i++) index[i] = (int32_t)i;
        }
        float squares = 0.0f;
        for (int64_t i = 0; i < keep; i++) squares += row[index[i]] * row[index[i]];
        const float inv = 1.0f / sqrtf(squares / (float)k + e->model->subln_eps);
        float *kept = own->row;
        for (int64_t i = 0; i < keep; i++) kept[i] = row[index[i]] * inv * lin->gain[0][index[i]];
        ryot_quantize_row(kept, keep, keep4, xq_at(e, p, 0, m, keep4), &p.xscale[m], &p.xsum[m]);
        for (int64_t i = keep; i < keep4; i++) index[i] = 0;
    }
}

/* Int8 codes (stored + 128, the unsigned operand) of rows of x, no norm. */
static void prepare_int8(const ryot_engine *e, const float *x, int64_t x_stride, int64_t k, const share *sh,
                         prepared p) {
    const int64_t kp = round_up(k, RYOT_INT8_K);
    for (int64_t m = sh->r0; m < sh->r1; m++) {
        int8_t *codes = xq_at(e, p, 0, m, kp);
        ryot_quantize_row(x + m * x_stride, k, kp, codes, &p.xscale[m], &p.xsum[m]);
        for (int64_t i = 0; i < kp; i++) codes[i] = (int8_t)((uint8_t)codes[i] ^ 0x80u);
    }
}

/* y[n] (+)= (a[n] - sum) * factor for n in [n0, n1): the accumulators of a row to floats,
 * added to the residual stream where `add` (two plain loops the compiler vectorizes). */
static void rescale(float *y, const int32_t *a, int32_t sum, float factor, int64_t n0, int64_t n1, int add) {
    if (add)
        for (int64_t n = n0; n < n1; n++) y[n] += (float)(a[n] - sum) * factor;
    else
        for (int64_t n = n0; n < n1; n++) y[n] = (float)(a[n] - sum) * factor;
}

/* out[m, first_row[s] + n] (+)= row n of segment s for every row m, n < limit (rows of
 * each segment in use; the full input unless k says less). x: the input rows for fp32
 * linears (prepared codes for the others). Ends with a barrier. */
static void linear_run(ryot_engine *e, const ryot_linear *lin, const layout *lay, const float *x, int64_t x_stride,
                       int64_t rows, int64_t k, int64_t limit, int64_t keep, prepared p, float *out,
                       int64_t out_stride, int add, int me, int count) {
    const int64_t acc_stride = e->acc_stride;
    int32_t *acc = e->acc;
    int64_t first, last;
    if (lin->kind == LINEAR_TERNARY) {
        const int64_t tile_rows = 16 * lin->rows_per_tile, kp = round_up(k, RYOT_GROUP);
        int64_t used[MAX_SEGMENTS], total = 0;
        for (int s = 0; s < lin->segments; s++) {
            used[s] = (min64(limit, lin->rows[s]) + tile_rows - 1) / tile_rows;
            total += used[s];
        }
        part(total, me, count, &first, &last);
        int64_t base = 0, memory = 0;
        for (int s = 0; s < lin->segments; s++) {
            const int64_t t0 = max64(first - base, 0), t1 = min64(last - base, used[s]);
            if (t0 < t1) {
                const uint8_t *weights = (const uint8_t *)lin->data + memory * lay->tile_bytes;
                int32_t *seg_acc = acc + lay->first_padded[s];
                ryot_ternary_tiles(xq_at(e, p, s, 0, kp), rows, kp, weights, lay->tile_bytes, lin->rows_per_tile,
                                   lin->tokens_per_tile, t0, t1, e->isa, e->own[me].unpack, seg_acc, acc_stride);
                const int64_t n1 = min64(min64(t1 * tile_rows, lin->rows[s]), limit);
                for (int64_t m = 0; m < rows; m++) {
                    const float factor = lin->scale[s] / p.xscale[s * e->max_rows + m];
                    const int32_t sum = p.xsum[s * e->max_rows + m];
                    float *y = out + m * out_stride + lay->first_row[s];
                    const int32_t *a = seg_acc + m * acc_stride;
                    rescale(y, a, sum, factor, t0 * tile_rows, n1, add);
                }
            }
            base += used[s];
            memory += lay->tiles[s];
        }
    } else if (lin->kind == LINEAR_COLUMNS) {
        /* Threads split the kept columns, each reading whole columns into accumulators of its
         * own (thread 0: acc), then split the rows to add those up. Split by rows instead,
         * each thread would have the other's half of every column it reads fetched too. */
        const int64_t n_padded = round_up(lin->rows[0], RYOT_COLUMN_BLOCK), keep4 = round_up(keep, 4);
        int64_t q0, q1;
        part(keep4 / 4, me, count, &q0, &q1);
        for (int64_t m = 0; m < rows; m++) {
            int32_t *mine = me == 0 ? acc + m * acc_stride : e->own[me].partial + m * n_padded;
            ryot_column_blocks(xq_at(e, p, 0, m, keep4) + 4 * q0, p.index + m * e->width_max + 4 * q0, 4 * (q1 - q0),
                               (const uint8_t *)lin->data, n_padded, 0, n_padded / RYOT_COLUMN_BLOCK, e->isa, mine);
        }
#pragma omp barrier
        part(n_padded / RYOT_COLUMN_BLOCK, me, count, &first, &last);
        for (int64_t m = 0; m < rows; m++) {
            int32_t *a = acc + m * acc_stride;
            for (int t = 1; t < count; t++) {
                const int32_t *theirs = e->own[t].partial + m * n_padded;
                for (int64_t n = first * RYOT_COLUMN_BLOCK; n < last * RYOT_COLUMN_BLOCK; n++) a[n] += theirs[n];
            }
            const float factor = lin->scale[0] / p.xscale[m];
            const int32_t sum = p.xsum[m];
            float *y = out + m * out_stride;
            const int64_t n1 = min64(last * RYOT_COLUMN_BLOCK, lin->rows[0]);
            rescale(y, a, sum, factor, first * RYOT_COLUMN_BLOCK, n1, add);
        }
    } else if (lin->kind == LINEAR_INT8) {
        const int64_t kp = round_up(k, RYOT_INT8_K), groups = round_up(lin->rows[0], RYOT_INT8_ROWS) / RYOT_INT8_ROWS;
        part(groups, me, count, &first, &last);
        ryot_int8_groups((const uint8_t *)xq_at(e, p, 0, 0, kp), rows, kp, (const int8_t *)lin->data, first, last, e->isa,
                         acc, acc_stride);
        const int64_t n0 = first * RYOT_INT8_ROWS, n1 = min64(last * RYOT_INT8_ROWS, lin->rows[0]);
        for (int64_t m = 0; m < rows; m++) {
            const float inverse = 1.0f / p.xscale[m];
            const int32_t *a = acc + m * acc_stride;
            float *y = out + m * out_stride;
            for (int64_t n = n0; n < n1; n++) /* the head: never added to anything */
                y[n] = (float)(a[n] - 128 * lin->row_sums[n]) * lin->row_scale[n] * inverse;
        }
    } else { /* fp32 rows, all segments as one matrix */
        const int64_t total = lay->padded_rows;
        int64_t r0, r1;
        part((total + 3) / 4, me, count, &r0, &r1);
        first = min64(r0 * 4, total);
        last = min64(r1 * 4, total);
        if (!add) {
            ryot_f32_rows(x, rows, k, x_stride, (const float *)lin->data, first, last, e->isa, out, out_stride);
        } else { /* into the residual stream */
            float *y = (float *)acc;
            ryot_f32_rows(x, rows, k, x_stride, (const float *)lin->data, first, last, e->isa, y, acc_stride);
            for (int64_t m = 0; m < rows; m++)
                for (int64_t n = first; n < last; n++) out[m * out_stride + n] += y[m * acc_stride + n];
        }
    }
#pragma omp barrier
}

/* Prepare (row by row, no barrier unless rows were shared) and run a linear. */
static void linear(ryot_engine *e, const ryot_linear *lin, const layout *lay, const float *x, int64_t x_stride,
                   int64_t rows, int64_t k, int64_t limit, int64_t keep, float *out, int64_t out_stride, int add,
                   const share *sh) {
    const prepared p = prepared_for(e, sh);
    if (lin->kind == LINEAR_TERNARY) prepare_ternary(e, lin, x, x_stride, k, sh, p);
    else if (lin->kind == LINEAR_COLUMNS) prepare_columns(e, lin, x, x_stride, k, keep, sh, p);
    else if (lin->kind == LINEAR_INT8) prepare_int8(e, x, x_stride, k, sh, p);
    if (!sh->own) {
#pragma omp barrier
    }
    linear_run(e, lin, lay, x, x_stride, rows, k, limit, keep, p, out, out_stride, add, sh->me, sh->count);
}

/* RMSNorm of rows of x into the rows' normed buffer (own or shared). */
static float *normed_rows(ryot_engine *e, const float *x, int64_t x_stride, const int32_t *pick, const float *weight,
                          const share *sh) {
    float *normed = sh->own ? e->own[sh->me].normed : e->normed;
    const int64_t h = e->model->hidden;
    for (int64_t m = sh->r0; m < sh->r1; m++) {
        const int64_t source = pick ? pick[m] : m;
        ryot_rms_norm(x + source * x_stride, h, weight, e->model->norm_eps, normed + m * h, e->isa);
    }
    return normed;
}

/* ---- attention ---------------------------------------------------------------------------- */
/* The cache of one layer, sequence slot and KV head: max_len x head_dim entries. Values
 * are [position][head_dim]; keys are transposed, [head_dim][position], so the scores of
 * 16 positions are 16 lanes of plain multiply-adds (no horizontal sums). */
static uint8_t *cache_at(const ryot_engine *e, uint8_t *cache, int64_t layer, int64_t slot, int64_t head) {
    const ryot_model *md = e->model;
    const int64_t index = (layer * e->slots + slot) * md->kv_heads + head;
    return cache + index * e->max_len * md->head_dim * e->kv_elem;
}

static void rope(float *v, const ryot_model *md, int64_t position) {
    const int64_t half = md->head_dim / 2;
    const float *c = md->rope_cos + position * half, *s = md->rope_sin + position * half;
    for (int64_t i = 0; i < half; i++) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
    }
}

/* Key `k` (head_dim entries) into column `position` of a transposed key cache. */
static void cache_write_key(const ryot_engine *e, uint8_t *keys, int64_t position, const float *k) {
    const int64_t hd = e->model->head_dim;
    if (e->kv_kind == KV_FP16) {
        uint16_t half[hd];
        ryot_f16_from_f32(k, half, hd, e->isa);
        for (int64_t d = 0; d < hd; d++) ((uint16_t *)keys)[d * e->max_len + position] = half[d];
    } else {
        for (int64_t d = 0; d < hd; d++) ((float *)keys)[d * e->max_len + position] = k[d];
    }
}

static void cache_write_value(const ryot_engine *e, uint8_t *values, int64_t position, const float *v) {
    const int64_t hd = e->model->head_dim;
    if (e->kv_kind == KV_FP16) ryot_f16_from_f32(v, (uint16_t *)values + position * hd, hd, e->isa);
    else memcpy((float *)values + position * hd, v, sizeof(float) * (size_t)hd);
}

static void attention(ryot_engine *e, int64_t layer, int64_t rows, const int32_t *slots, const int32_t *positions,
                      int me, int count) {
    const ryot_model *md = e->model;
    const int64_t hd = md->head_dim, q_dim = md->heads * hd, kv_dim = md->kv_heads * hd;
    const int64_t stride = q_dim + 2 * kv_dim, group = md->heads / md->kv_heads;
    int64_t first, last;
    part(rows * md->kv_heads, me, count, &first, &last); /* rotate and cache the keys, cache the values */
    for (int64_t item = first; item < last; item++) {
        const int64_t m = item / md->kv_heads, g = item % md->kv_heads;
        float *k = e->qkv + m * stride + q_dim + g * hd, *v = k + kv_dim;
        rope(k, md, positions[m]);
        cache_write_key(e, cache_at(e, e->keys, layer, slots[m], g), positions[m], k);
        cache_write_value(e, cache_at(e, e->values, layer, slots[m], g), positions[m], v);
    }
    part(rows * md->heads, me, count, &first, &last);
    for (int64_t item = first; item < last; item++) rope(e->qkv + (item / md->heads) * stride + (item % md->heads) * hd,
                                                         md, positions[item / md->heads]);
#pragma omp barrier
    const float inv_sqrt = 1.0f / sqrtf((float)hd);
    const int half = e->kv_kind == KV_FP16;
    float *scores = e->own[me].scores;
    for (int64_t item = first; item < last; item++) {
        const int64_t m = item / md->heads, h = item % md->heads, g = h / group;
        ryot_attend(e->qkv + m * stride + h * hd, cache_at(e, e->keys, layer, slots[m], g), e->max_len,
                    cache_at(e, e->values, layer, slots[m], g), positions[m] + 1, hd, half, inv_sqrt, scores,
                    e->attn + m * q_dim + h * hd, e->isa);
    }
#pragma omp barrier
}

/* ---- the step ------------------------------------------------------------------------------ */
static void embed(const ryot_engine *e, int64_t rows, const int32_t *tokens, int me, int count) {
    const ryot_model *md = e->model;
    const int64_t h = md->hidden;
    int64_t first, last;
    part(rows, me, count, &first, &last);
    for (int64_t m = first; m < last; m++) {
        float *out = e->hidden + m * h;
        if (md->embed_int8) {
            const int8_t *codes = (const int8_t *)md->embed + (int64_t)tokens[m] * h;
            const float scale = md->embed_scale[tokens[m]];
            for (int64_t i = 0; i < h; i++) out[i] = (float)codes[i] * scale;
        } else {
            memcpy(out, (const float *)md->embed + (int64_t)tokens[m] * h, sizeof(float) * (size_t)h);
        }
    }
#pragma omp barrier
}

static void block(ryot_engine *e, int64_t l, int64_t rows, const int32_t *slots, const int32_t *positions,
                  int64_t width, int64_t keep, int me, int count) {
    const ryot_model *md = e->model;
    const ryot_layer *layer = &md->layer[l];
    const int64_t h = md->hidden, inter = md->intermediate;
    const int64_t q_dim = md->heads * md->head_dim, qkv_dim = q_dim + 2 * md->kv_heads * md->head_dim;
    const share sh = rows_for(me, count, rows);

    float *x = layer->attn_norm ? normed_rows(e, e->hidden, h, NULL, layer->attn_norm, &sh) : e->hidden;
    linear(e, &layer->qkv, layout_at(e, l, 0), x, h, rows, h, qkv_dim, 0, e->qkv, qkv_dim, 0, &sh);
    charge(e, PHASE_QKV, me);
    attention(e, l, rows, slots, positions, me, count);
    if (layer->o.kind == LINEAR_FP32 && layer->o.gain[0]) { /* the sub-norm before an fp32 o */
        int64_t first, last;
        part(rows, me, count, &first, &last);
        for (int64_t m = first; m < last; m++)
            ryot_rms_norm(e->attn + m * q_dim, q_dim, layer->o.gain[0], md->subln_eps, e->attn + m * q_dim, e->isa);
#pragma omp barrier
    }
    charge(e, PHASE_ATTENTION, me);
    linear(e, &layer->o, layout_at(e, l, 1), e->attn, q_dim, rows, q_dim, h, 0, e->hidden, h, 1, &sh);
    charge(e, PHASE_O, me);

    x = layer->ffn_norm ? normed_rows(e, e->hidden, h, NULL, layer->ffn_norm, &sh) : e->hidden;
    linear(e, &layer->gate_up, layout_at(e, l, 2), x, h, rows, h, width, 0, e->ffn, 2 * inter, 0, &sh);
    charge(e, PHASE_GATE_UP, me);
    float *act = sh.own ? e->own[me].normed : e->act;
    const float *down_norm = layer->down.kind == LINEAR_FP32 ? layer->down.gain[0] : NULL; /* an fp32 down's sub-norm */
    for (int64_t m = sh.r0; m < sh.r1; m++) {
        const float *gate = e->ffn + m * 2 * inter, *up = gate + inter;
        float *out = act + m * width;
        if (md->ffn_activation == FFN_RELU2) ryot_relu2_mul(gate, up, width, out);
        else ryot_silu_mul(gate, up, width, out, e->isa);
        if (down_norm) ryot_rms_norm(out, width, down_norm, md->subln_eps, out, e->isa);
    }
    linear(e, &layer->down, layout_at(e, l, 3), act, width, rows, width, h, keep, e->hidden, h, 1, &sh);
    charge(e, PHASE_DOWN, me);
}

int ryot_engine_step(ryot_engine *e, int64_t rows, const int32_t *tokens, const int32_t *slots,
                     const int32_t *positions, int64_t logit_rows, const int32_t *pick, int64_t width, int64_t keep,
                     float *logits) {
    const ryot_model *md = e->model;
    if (rows < 1 || rows > e->max_rows || logit_rows < 0 || logit_rows > rows) return -1;
    if (width < 1 || width > md->intermediate || keep < 0 || keep > width) return -1;
    if (keep > 0 && md->layer[0].down.kind != LINEAR_COLUMNS) return -1;
    if (width < md->intermediate && md->layer[0].gate_up.kind != LINEAR_TERNARY) return -1; /* no width prefix */
    if (keep == 0 && md->layer[0].down.kind == LINEAR_COLUMNS) keep = width;
    for (int64_t m = 0; m < rows; m++)
        if (tokens[m] < 0 || tokens[m] >= md->vocab || slots[m] < 0 || slots[m] >= e->slots || positions[m] < 0 ||
            positions[m] >= e->max_len)
            return -2;
    for (int64_t i = 0; i < logit_rows; i++)
        if (pick[i] < 0 || pick[i] >= rows) return -2;
    const layout *head = &e->layouts[md->layers * 4];
    if (e->profiling) e->mark = now();
#pragma omp parallel num_threads(e->threads)
    {
        const int me = omp_get_thread_num(), count = omp_get_num_threads();
        embed(e, rows, tokens, me, count);
        charge(e, PHASE_EMBED, me);
        for (int64_t l = 0; l < md->layers; l++) block(e, l, rows, slots, positions, width, keep, me, count);
        if (logit_rows > 0) {
            const share sh = rows_for(me, count, logit_rows);
            float *x = normed_rows(e, e->hidden, md->hidden, pick, md->final_norm, &sh);
            linear(e, &md->head, head, x, md->hidden, logit_rows, md->hidden, md->vocab, 0, logits, md->vocab, 0, &sh);
            charge(e, PHASE_HEAD, me);
        }
    }
    return 0;
}

/* Profiling on or off; the seconds per phase timed since the last call go to `seconds`
 * (PHASES entries) and are reset. */
void ryot_engine_profile(ryot_engine *e, int on, double *seconds) {
    memcpy(seconds, e->phase_seconds, sizeof(e->phase_seconds));
    memset(e->phase_seconds, 0, sizeof(e->phase_seconds));
    e->profiling = on;
}

int ryot_engine_copy_slot(ryot_engine *e, int64_t from, int64_t to, int64_t length) {
    const ryot_model *md = e->model;
    if (from < 0 || from >= e->slots || to < 0 || to >= e->slots || length < 0 || length > e->max_len) return -1;
    const int64_t hd = md->head_dim, elem = e->kv_elem;
    for (int64_t l = 0; l < md->layers; l++)
        for (int64_t g = 0; g < md->kv_heads; g++) {
            uint8_t *keys = cache_at(e, e->keys, l, to, g), *source = cache_at(e, e->keys, l, from, g);
            for (int64_t d = 0; d < hd; d++) /* a row of positions per head dimension */
                memcpy(keys + d * e->max_len * elem, source + d * e->max_len * elem, (size_t)(length * elem));
            memcpy(cache_at(e, e->values, l, to, g), cache_at(e, e->values, l, from, g), (size_t)(length * hd * elem));
        }
    return 0;
}

int64_t ryot_engine_cache_bytes(const ryot_engine *e) {
    const ryot_model *md = e->model;
    return 2 * md->layers * e->slots * md->kv_heads * e->max_len * md->head_dim * e->kv_elem;
}

void ryot_engine_free(ryot_engine *e) {
    if (!e) return;
    if (e->own)
        for (int t = 0; t < e->threads; t++) {
            scratch *s = &e->own[t];
            free(s->normed), free(s->xscale), free(s->scores), free(s->row), free(s->xq), free(s->xsum);
            free(s->index), free(s->partial), free(s->words), free(s->unpack);
        }
    free(e->own), free(e->layouts), free(e->keys), free(e->values), free(e->hidden), free(e->normed);
    free(e->qkv), free(e->attn), free(e->ffn), free(e->act), free(e->xscale), free(e->xq), free(e->xsum);
    free(e->index), free(e->acc);
    free(e);
}

static int linear_ok(const ryot_linear *lin, int64_t k, int64_t segments) {
    if (lin->segments != segments || lin->in_features != k || !lin->data) return 0;
    if (lin->kind == LINEAR_TERNARY) {
        int fits = 0;
        for (int i = 0; i < RYOT_TILE_CHOICES; i++) fits |= ryot_tile_rows[i] == lin->rows_per_tile;
        if (!fits || lin->tokens_per_tile < 1 || lin->tokens_per_tile > RYOT_MAX_MR) return 0;
        for (int s = 0; s < segments; s++)
            if (!lin->gain[s]) return 0;
    }
    if (lin->kind == LINEAR_COLUMNS && (segments != 1 || !lin->gain[0])) return 0;
    if (lin->kind == LINEAR_INT8 && (segments != 1 || !lin->row_scale || !lin->row_sums)) return 0;
    return lin->kind >= LINEAR_TERNARY && lin->kind <= LINEAR_INT8;
}

/* An engine for `model` (which must outlive it): a KV cache of `slots` sequences of
 * max_len positions, steps of up to max_rows rows. NULL where the model is malformed or
 * memory runs out; `status` says which (-1 model, -2 ISA, -3 memory). */
ryot_engine *ryot_engine_new(const ryot_model *md, int64_t slots, int64_t max_len, int64_t max_rows, int kv_kind,
                             int threads, int isa, int *status) {
    *status = -1;
    if (slots < 1 || max_len < 1 || max_rows < 1 || threads < 1 || (kv_kind != KV_FP32 && kv_kind != KV_FP16))
        return NULL;
    if (md->heads < 1 || md->kv_heads < 1 || md->heads % md->kv_heads || md->head_dim % 2 || max_len > md->positions ||
        (md->ffn_activation != FFN_SILU && md->ffn_activation != FFN_RELU2))
        return NULL;
    const int64_t h = md->hidden, inter = md->intermediate, q_dim = md->heads * md->head_dim;
    const int64_t kv_dim = md->kv_heads * md->head_dim;
    for (int64_t l = 0; l < md->layers; l++) {
        const ryot_layer *layer = &md->layer[l];
        const ryot_linear *down = &layer->down;
        /* in the blocks: ternary or fp32 rows, and columns for the down-projection only */
        const ryot_linear *block[3] = {&layer->qkv, &layer->o, &layer->gate_up};
        for (int i = 0; i < 3; i++)
            if (block[i]->kind != LINEAR_TERNARY && block[i]->kind != LINEAR_FP32) return NULL;
        /* without a block norm, the linear after it norms its input (a ternary one's gains) */
        if ((!layer->attn_norm && layer->qkv.kind != LINEAR_TERNARY) ||
            (!layer->ffn_norm && layer->gate_up.kind != LINEAR_TERNARY))
            return NULL;
        if (!linear_ok(&layer->qkv, h, 3) || !linear_ok(&layer->o, q_dim, 1) || !linear_ok(&layer->gate_up, h, 2) ||
            !linear_ok(down, inter, 1) || down->kind == LINEAR_INT8)
            return NULL;
        if (layer->qkv.rows[0] != q_dim || layer->qkv.rows[1] != kv_dim || layer->qkv.rows[2] != kv_dim ||
            layer->o.rows[0] != h || layer->gate_up.rows[0] != inter || layer->gate_up.rows[1] != inter ||
            down->rows[0] != h || down->kind != md->layer[0].down.kind)
            return NULL;
    }
    if (!linear_ok(&md->head, h, 1) || md->head.kind == LINEAR_TERNARY || md->head.kind == LINEAR_COLUMNS ||
        md->head.rows[0] != md->vocab)
        return NULL;
    *status = -2;
    if (!ryot_isa_supported(isa)) return NULL;
    *status = -3;
    ryot_engine *e = calloc(1, sizeof(ryot_engine));
    if (!e) return NULL;
    e->model = md, e->slots = slots, e->max_len = max_len, e->max_rows = max_rows, e->kv_kind = kv_kind;
    e->threads = threads, e->isa = isa, e->kv_elem = kv_kind == KV_FP16 ? 2 : 4;
    e->layouts = calloc((size_t)(md->layers * 4 + 1), sizeof(layout));
    e->own = calloc((size_t)threads, sizeof(scratch));
    if (!e->layouts || !e->own) return ryot_engine_free(e), NULL;
    int64_t acc_cols = 0, unpack = 0, column_outputs = 0;
    for (int64_t l = 0; l < md->layers; l++) {
        const ryot_linear *lins[4] = {&md->layer[l].qkv, &md->layer[l].o, &md->layer[l].gate_up, &md->layer[l].down};
        for (int i = 0; i < 4; i++) {
            layout *lay = layout_at(e, l, i);
            *lay = layout_of(lins[i]);
            acc_cols = max64(acc_cols, lay->padded_rows);
            if (lins[i]->kind == LINEAR_COLUMNS)
                column_outputs = max64(column_outputs, round_up(lins[i]->rows[0], RYOT_COLUMN_BLOCK));
            if (lins[i]->kind == LINEAR_TERNARY) unpack = max64(unpack, ryot_unpack_bytes(lay->k_padded, lins[i]->rows_per_tile));
        }
    }
    e->layouts[md->layers * 4] = layout_of(&md->head);
    acc_cols = max64(acc_cols, e->layouts[md->layers * 4].padded_rows);
    e->acc_stride = acc_cols;
    e->width_max = round_up(max64(inter, 4), 4);
    e->kp_max = round_up(max64(max64(h, inter), q_dim), RYOT_GROUP);
    const int64_t width = max64(max64(h, inter), q_dim);
    const size_t f = sizeof(float), r = (size_t)max_rows;
    const size_t cache = (size_t)ryot_engine_cache_bytes(e) / 2;
    e->keys = malloc(cache), e->values = malloc(cache);
    e->hidden = malloc(f * r * (size_t)h), e->normed = malloc(f * r * (size_t)width);
    e->qkv = malloc(f * r * (size_t)(q_dim + 2 * kv_dim)), e->attn = malloc(f * r * (size_t)q_dim);
    e->ffn = malloc(f * r * 2 * (size_t)inter), e->act = malloc(f * r * (size_t)inter);
    e->xq = malloc(MAX_SEGMENTS * r * (size_t)e->kp_max), e->xscale = malloc(f * MAX_SEGMENTS * r);
    e->xsum = malloc(sizeof(int32_t) * MAX_SEGMENTS * r), e->index = malloc(sizeof(int32_t) * r * (size_t)e->width_max);
    e->acc = malloc(sizeof(int32_t) * r * (size_t)acc_cols);
    if (!e->keys || !e->values || !e->hidden || !e->normed || !e->qkv || !e->attn || !e->ffn || !e->act || !e->xq ||
        !e->xscale || !e->xsum || !e->index || !e->acc)
        return ryot_engine_free(e), NULL;
    const size_t own_rows = (size_t)threads; /* a thread prepares for itself when rows < threads */
    for (int t = 0; t < threads; t++) {
        scratch *s = &e->own[t];
        s->normed = malloc(f * own_rows * (size_t)width);
        s->xscale = malloc(f * MAX_SEGMENTS * r), s->xsum = malloc(sizeof(int32_t) * MAX_SEGMENTS * r);
        s->xq = malloc(MAX_SEGMENTS * r * (size_t)e->kp_max);
        s->index = malloc(sizeof(int32_t) * own_rows * (size_t)e->width_max);
        s->scores = malloc(f * (size_t)max_len), s->row = malloc(f * (size_t)width);
        s->words = malloc(sizeof(uint32_t) * 3 * (size_t)inter), s->unpack = malloc((size_t)max64(unpack, 64));
        s->partial = malloc(sizeof(int32_t) * r * (size_t)max64(column_outputs, 1));
        if (!s->normed || !s->xscale || !s->xsum || !s->xq || !s->index || !s->scores || !s->row || !s->words ||
            !s->unpack || !s->partial)
            return ryot_engine_free(e), NULL;
    }
    *status = 0;
    return e;
}
