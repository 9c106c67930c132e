/*
 * Kernel parameter structs: the single source of truth for host and device.
 *
 * build.rs runs bindgen over this header, so the Rust launch layer passes exactly these
 * layouts by value. Plain C only: no templates, no CUDA types. Element pointers are `void*`
 * because one struct serves every dtype instantiation of a kernel.
 */
#ifndef WARPNORM_PARAMS_H
#define WARPNORM_PARAMS_H

/*
 * Launch shapes shared by the kernels and the host that launches them (the Rust launch
 * layer reads them from the bindings; nothing else spells these numbers).
 */
/* Threads of a CTA of the register tiers whose groups hold a warp or less (several rows
 * share a CTA); larger groups are a CTA each. */
#define WARPNORM_ROWS_CTA_THREADS 128
/* The most threads of a CTA-per-row kernel (its __launch_bounds__). */
#define WARPNORM_CTA_MAX_THREADS 1024
/* Floats of the CTA kernels' reduction scratch, at the start of dynamic shared memory:
 * three per warp of the largest CTA. */
#define WARPNORM_CTA_SCRATCH_FLOATS 96
/* Floats after that scratch in kernels v2's long-row backward (kernels/bwd_v2_stash.cuh):
 * the CTA's row sums, in two slots of four that the other CTAs of its cluster read (the
 * split kernel: its group's total, which the CTA's threads read). */
#define WARPNORM_STASH_SLOT_FLOATS 8
/* Kernels v2's long-row backward split over a group of CTAs that meet in global memory
 * (kernels/bwd_v2_split.cuh): the most CTAs of a group, and the floats of a CTA's slot for
 * its row sums. */
#define WARPNORM_SPLIT_MAX_CTAS 16
#define WARPNORM_SPLIT_SLOT_FLOATS 4
/* Threads of a CTA of the channels-first (strided) kernels, and of the finalize kernel. */
#define WARPNORM_STRIDED_THREADS 256
#define WARPNORM_FINALIZE_THREADS 256
/* Threads of a CTA of the sharded warp-per-row kernels (row statistics, apply, backward
 * sums, dx), and of the sharded element-wise and column kernels. */
#define WARPNORM_SHARD_ROW_THREADS 128
#define WARPNORM_SHARD_FLAT_THREADS 256

/* What the kernel computes per row (see the flax / keras docs for the three forms). */
enum WarpnormKind {
    WARPNORM_LAYER_NORM = 0,  /* y = (x - mean) * rstd * scale + bias             */
    WARPNORM_RMS_NORM = 1,    /* y = x * rsqrt(mean(x^2) + eps) * scale            */
    WARPNORM_RMS_SCALING = 2  /* keras rms_scaling: y = x * rsqrt(var(x) + eps) * scale */
};

/*
 * Storage dtypes. x (and dx) fixes the kernel instantiation; scale / bias (param_dtype)
 * and y / dy (out_dtype) are each either x's dtype or f32, chosen per call.
 * WARPNORM_F32_ROUNDED_TO_X (out_dtype only) stores f32 values rounded to x's dtype: keras
 * returns cast(cast(y, x.dtype), compute dtype), and by the transpose of those casts dy is
 * rounded to x's dtype as it is loaded.
 */
enum WarpnormDtype { WARPNORM_F32 = 0, WARPNORM_F16 = 1, WARPNORM_BF16 = 2, WARPNORM_F32_ROUNDED_TO_X = 3 };

/*
 * Rows of a 2-D view [rows, cols]: element (r, c) of x lives at x[r * x_stride + c].
 * mean / rstd may be null (inference: statistics not saved).
 * scale / bias may be null (use_scale / use_bias off). mask may be null (no flax mask);
 * mask[r * mask_stride + c] != 0 means the element takes part in the statistics.
 */
typedef struct {
    const void* x;
    void* y;
    const void* scale;
    const void* bias;
    const unsigned char* mask;
    float* mean;
    float* rstd;
    long long rows;
    long long cols;
    long long x_stride;
    long long y_stride;
    long long mask_stride;
    float eps;
    int kind;          /* enum WarpnormKind */
    int fast_variance; /* flax use_fast_variance: E[x^2] - E[x]^2, clamped at 0 */
    int param_dtype;   /* enum WarpnormDtype of scale and bias */
    int out_dtype;     /* enum WarpnormDtype of y */
} WarpnormFwdParams;

/*
 * Backward over the same 2-D view. partial_dscale / partial_dbias are [gridDim.x, cols]
 * f32 scratch (one row per CTA, written by that CTA alone); either may be null when the
 * gradient is not wanted. The finalize kernel sums them over CTAs in a fixed order.
 */
typedef struct {
    const void* x;
    const void* dy;
    const void* scale;
    const unsigned char* mask;
    const float* mean;
    const float* rstd;
    void* dx;
    float* partial_dscale;
    float* partial_dbias;
    long long rows;
    long long cols;
    long long x_stride;
    long long dy_stride;
    long long dx_stride;
    long long mask_stride;
    int kind;
    int param_dtype; /* enum WarpnormDtype of scale */
    int out_dtype;   /* enum WarpnormDtype of dy */
} WarpnormBwdParams;

/*
 * The backward split over groups of `ctas` CTAs (kernels/bwd_v2_split.cuh), launched
 * cooperatively with gridDim.x a multiple of `ctas`: `bwd` as above, one partial row per
 * group. Per group, an arrival counter that must be zero when the kernel starts, and
 * 2 x ctas slots of WARPNORM_SPLIT_SLOT_FLOATS floats.
 */
typedef struct {
    WarpnormBwdParams bwd;
    unsigned* arrivals; /* [groups] */
    float* slots;       /* [groups][2][ctas][WARPNORM_SPLIT_SLOT_FLOATS] */
    int ctas;
} WarpnormBwdSplitParams;

/* out[c] = sum over p in 0..parts of partial[p * cols + c], in that order. */
typedef struct {
    const float* partial;
    void* out;
    long long cols;
    int parts;
} WarpnormFinalizeParams;

/*
 * Both parameter gradients in one launch (kernels/finalize_v2.cuh): out[k][c] = the sum
 * over p in 0..parts of partial[k][p * cols + c], for k < outputs, in a fixed order that
 * depends on parts and cols only. Launch shape: one CTA of WARPNORM_FINALIZE_PAIR_THREADS
 * threads per WARPNORM_FINALIZE_COLS columns of each output.
 */
#define WARPNORM_FINALIZE_COLS 32
#define WARPNORM_FINALIZE_PAIR_THREADS 512
typedef struct {
    const float* partial[2];
    void* out[2];
    long long cols;
    int parts;
    int outputs;
} WarpnormFinalizePairParams;

/*
 * A reduction axis that is not innermost: x is [outer, cols, inner] (e.g. channels-first
 * [N, C, H*W] normalised over C). Row r = (o, i) with o = r / inner, i = r % inner;
 * element (r, c) lives at o * cols * inner + c * inner + i. No transpose is made.
 */
typedef struct {
    const void* x;
    void* y;
    const void* scale;
    const void* bias;
    float* mean;
    float* rstd;
    long long outer;
    long long cols;
    long long inner;
    float eps;
    int kind;
    int fast_variance;
    int param_dtype;
    int out_dtype;
} WarpnormStridedFwdParams;

typedef struct {
    const void* x;
    const void* dy;
    const void* scale;
    const float* mean;
    const float* rstd;
    void* dx;
    float* partial_dscale; /* [gridDim.x, cols] */
    float* partial_dbias;
    long long outer;
    long long cols;
    long long inner;
    int kind;
    int param_dtype;
    int out_dtype;
} WarpnormStridedBwdParams;

/*
 * Sharded normalization (kernels/sharded.cu): each rank holds a [rows, cols] shard of rows
 * whose features are split over its group. Per-row statistics layouts (`mode`):
 */
enum WarpnormShardStats {
    WARPNORM_SHARD_MOMENTS = 0, /* {n, mean, M2}, all-gathered as [group][rows][3] */
    WARPNORM_SHARD_MEANS = 1    /* {mean, mean of squares}, all-reduced as [rows][2] */
};

typedef struct {
    const void* x;
    const unsigned char* mask; /* may be null; mask[r * mask_stride + c] != 0 selects */
    float* out;                /* rows * (3 or 2) f32 */
    long long rows;
    long long cols;
    long long x_stride;
    long long mask_stride;
    int mode; /* enum WarpnormShardStats */
} WarpnormShardStatsParams;

/* mean / rstd / dvar may be null (inference; dvar only for the fast variance). */
typedef struct {
    const void* x;
    void* y;
    const void* scale;
    const void* bias;
    const float* stats;
    float* mean;
    float* rstd;
    float* dvar;
    long long rows;
    long long cols;
    long long x_stride;
    long long y_stride;
    int group;
    float eps;
    int kind;
    int mode;
} WarpnormShardApplyParams;

/*
 * The backward's row sums and dx. sums is [rows][2]: shard_bwd_sums writes the shard's
 * {sum g, sum g * xhat}; shard_dx reads the group's (after the all-reduce) and writes dx.
 * dvar may be null (then 1). weight = 1 / (group * cols), or with a mask (shard_dx only)
 * 1 / group, divided per row by this shard's count of selected elements.
 */
typedef struct {
    const void* x;
    const void* dy;
    const void* scale;
    const float* mean;
    const float* rstd;
    const float* dvar;
    const unsigned char* mask;
    float* sums;
    void* dx;
    long long rows;
    long long cols;
    long long x_stride;
    long long dy_stride;
    long long dx_stride;
    long long mask_stride;
    float weight;
    int kind;
} WarpnormShardBwdParams;

/* Partial dscale / dbias rows, one per chunk of chunk_rows rows (blockIdx.y); either may be null. */
typedef struct {
    const void* x;
    const void* dy;
    const float* mean;
    const float* rstd;
    float* partial_dscale;
    float* partial_dbias;
    long long rows;
    long long cols;
    long long x_stride;
    long long dy_stride;
    long long chunk_rows;
    int kind;
} WarpnormShardParamGradsParams;

/* dst[i] = src[i] / divisor through f32; src may equal dst. */
typedef struct {
    const void* src;
    void* dst;
    long long n;
    float divisor;
} WarpnormCastParams;

/* dst[i] += src[i] (f32), dst and src distinct. */
typedef struct {
    float* dst;
    const float* src;
    long long n;
} WarpnormAccumulateParams;

#endif /* WARPNORM_PARAMS_H */
