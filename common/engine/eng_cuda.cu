/*
 * eng_cuda.cu - the cuda backend (see eng_cuda.h): the forward pass of
 * eng_model.c, step for step, with weights, activations and the paged KV
 * pool in device memory.
 *
 * Per layer: [residual add +] RMSNorm -> one QKV GEMM -> bias, q/k norm,
 * RoPE, K/V into the pool (one kernel) -> paged attention -> O GEMM ->
 * residual add + RMSNorm -> gate|up GEMM -> SwiGLU -> down GEMM (dense), or
 * router GEMM -> softmax/top-k -> rows grouped by expert (one gate|up and
 * one down GEMM per expert) -> weighted combine (+ sigmoid-gated shared
 * expert). The per-expert row counts are read back once per MoE layer to
 * size the GEMMs.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "eng_cuda.h"
#include "eng_internal.h"

#define CU_SUB "cuda"

namespace {

struct dmlp {
    void *gate_up = nullptr; /* [2 ff][hidden]: gate rows, then up rows */
    void *down = nullptr;    /* [hidden][ff] */
    uint32_t ff = 0;
};

struct dlayer {
    float *attn_norm = nullptr, *mlp_norm = nullptr, *q_norm = nullptr, *k_norm = nullptr;
    void *wqkv = nullptr; /* [qd + 2 kd][hidden] */
    float *bqkv = nullptr;
    void *wo = nullptr;
    bool moe = false;
    dmlp mlp;
    void *router = nullptr; /* [experts][hidden] */
    std::vector<dmlp> experts;
    bool has_shared = false;
    dmlp shared;
    void *shared_gate = nullptr; /* [1][hidden] */
};

} // namespace

struct eng_cuda {
    int dev = 0;
    char name[256] = "";
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    mdl_dtype_t dt = MDL_F32; /* compute dtype of matrices and GEMM inputs */
    cudaDataType_t cdt = CUDA_R_32F;
    size_t esz = 4;
    void *embed = nullptr, *lm_head = nullptr;
    float *final_norm = nullptr, *inv_freq = nullptr;
    std::vector<dlayer> layers;
    std::vector<void *> allocs; /* every weight allocation */
    size_t weight_bytes = 0;
    /* Per-call scratch (device) and metadata staging (pinned host). */
    char *scratch = nullptr;
    size_t scratch_cap = 0;
    int32_t *hmeta = nullptr;
    size_t hmeta_cap = 0; /* int32 elements */
    int32_t *dmeta = nullptr;
    size_t dmeta_cap = 0;
    const eng_kv_t *checked_kv = nullptr; /* last pool found in device memory */
    float *hlog = nullptr;                /* pinned logits staging */
    size_t hlog_cap = 0;
    std::vector<int32_t> cnt, start, fill, hsel; /* MoE grouping, reused */
};

/* ------------------------------------------------------------------------ */
/* Upload                                                                   */
/* ------------------------------------------------------------------------ */

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static cm_status_t dalloc(eng_cuda *c, size_t bytes, void **out) {
    void *p = nullptr;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return CM_ERR_NO_MEMORY;
    }
    c->allocs.push_back(p);
    c->weight_bytes += bytes;
    *out = p;
    return CM_OK;
}

/* Copies the first @n elements of @t into device memory at @dst in the
 * compute dtype, converting on the host when dtypes differ. */
static cm_status_t put_rows(eng_cuda *c, const mdl_tensor_t *t, size_t n, char *dst) {
    if (t->dtype == c->dt) {
        return cudaMemcpy(dst, t->data, n * c->esz, cudaMemcpyHostToDevice) == cudaSuccess
                   ? CM_OK
                   : CM_ERR_IO;
    }
    const size_t chunk = 1u << 20;
    std::vector<float> f(chunk);
    std::vector<char> o(chunk * c->esz);
    size_t sz = mdl_dtype_size(t->dtype);
    for (size_t i = 0; i < n; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        eng_to_f32((const char *)t->data + i * sz, t->dtype, m, f.data());
        for (size_t j = 0; j < m; j++) {
            if (c->dt == MDL_F32)
                ((float *)o.data())[j] = f[j];
            else if (c->dt == MDL_BF16)
                ((uint16_t *)o.data())[j] = f32_to_bf16(f[j]);
            else {
                __half h = __float2half_rn(f[j]);
                memcpy(o.data() + j * 2, &h, 2);
            }
        }
        if (cudaMemcpy(dst + i * c->esz, o.data(), m * c->esz, cudaMemcpyHostToDevice) !=
            cudaSuccess)
            return CM_ERR_IO;
    }
    return CM_OK;
}

/* Uploads matrices stacked by rows (same column count) as one matrix. */
static cm_status_t put_mats(eng_cuda *c, const mdl_tensor_t *const *ts, int nt, void **out) {
    size_t total = 0;
    for (int i = 0; i < nt; i++) total += ts[i]->shape[0] * ts[i]->shape[1];
    cm_status_t st = dalloc(c, total * c->esz, out);
    size_t off = 0;
    for (int i = 0; i < nt && st == CM_OK; i++) {
        size_t n = ts[i]->shape[0] * ts[i]->shape[1];
        st = put_rows(c, ts[i], n, (char *)*out + off * c->esz);
        off += n;
    }
    return st;
}

static cm_status_t put_mat(eng_cuda *c, const mdl_tensor_t *t, void **out) {
    const mdl_tensor_t *ts[1] = {t};
    return put_mats(c, ts, 1, out);
}

/* f32 host vectors (norm weights, biases) as device f32. */
static cm_status_t put_f32(eng_cuda *c, const float *const *vs, const size_t *ns, int nv,
                           float **out) {
    size_t total = 0;
    for (int i = 0; i < nv; i++) total += ns[i];
    void *p;
    cm_status_t st = dalloc(c, total * 4, &p);
    size_t off = 0;
    for (int i = 0; i < nv && st == CM_OK; i++) {
        if (cudaMemcpy((float *)p + off, vs[i], ns[i] * 4, cudaMemcpyHostToDevice) != cudaSuccess)
            st = CM_ERR_IO;
        off += ns[i];
    }
    *out = (float *)p;
    return st;
}

static cm_status_t put_vec(eng_cuda *c, const float *v, size_t n, float **out) {
    if (!v) {
        *out = nullptr;
        return CM_OK;
    }
    return put_f32(c, &v, &n, 1, out);
}

static cm_status_t put_mlp(eng_cuda *c, const mlp_t *p, uint32_t ff, dmlp *d) {
    const mdl_tensor_t *gu[2] = {&p->gate, &p->up};
    d->ff = ff;
    cm_status_t st = put_mats(c, gu, 2, &d->gate_up);
    return st ? st : put_mat(c, &p->down, &d->down);
}

static cm_status_t cuda_fail(cudaError_t e, char *err, size_t errlen, const char *what) {
    snprintf(err, errlen, "cuda: %s: %s", what, cudaGetErrorString(e));
    cudaGetLastError();
    return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? CM_ERR_NO_DEVICE
                                                                      : CM_ERR_IO;
}

extern "C" cm_status_t eng_cuda_new(const struct eng_model *m, struct eng_cuda **out, char *err,
                                    size_t errlen) {
    *out = nullptr;
    const mdl_config_t *cf = &m->c;
    if (cf->head_dim % 2 != 0 || cf->head_dim > 256) {
        snprintf(err, errlen, "cuda backend: head_dim %u is not even and at most 256",
                 cf->head_dim);
        return CM_ERR_UNSUPPORTED;
    }
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev <= 0) {
        if (e == cudaSuccess) e = cudaErrorNoDevice;
        cuda_fail(e, err, errlen, "no usable GPU");
        return CM_ERR_NO_DEVICE;
    }
    eng_cuda *c = new eng_cuda();
    const char *ds = getenv("TANDEM_CUDA_DEVICE");
    c->dev = ds ? atoi(ds) : 0;
    cm_status_t st = CM_OK;
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(c->dev)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, c->dev)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = cuda_fail(e, err, errlen, "device setup");
        eng_cuda_free(c);
        return st;
    }
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuda: cuBLAS could not be initialized");
        eng_cuda_free(c);
        return CM_ERR_IO;
    }
    /* Plain f32 products stay f32 (no TF32) so f32 checkpoints match the
     * CPU backends; bf16/f16 use the tensor cores. */
    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    c->dt = m->layers[0].wq.dtype;
    const char *cmode = getenv("TANDEM_CUDA_COMPUTE");
    if (cmode && !strcmp(cmode, "f32")) c->dt = MDL_F32;
    c->cdt = c->dt == MDL_F32 ? CUDA_R_32F : c->dt == MDL_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    c->esz = mdl_dtype_size(c->dt);
    uint32_t hd = cf->head_dim;
    size_t H = cf->hidden, qd = (size_t)cf->n_heads * hd, kd = (size_t)cf->n_kv_heads * hd;
    if ((st = put_mat(c, &m->embed, &c->embed))) goto fail;
    if (m->lm_head.data == m->embed.data)
        c->lm_head = c->embed;
    else if ((st = put_mat(c, &m->lm_head, &c->lm_head)))
        goto fail;
    if ((st = put_vec(c, m->final_norm, H, &c->final_norm)) ||
        (st = put_vec(c, m->inv_freq, hd / 2, &c->inv_freq)))
        goto fail;
    c->layers.resize(cf->n_layers);
    for (uint32_t l = 0; l < cf->n_layers; l++) {
        const layer_t *L = &m->layers[l];
        dlayer *D = &c->layers[l];
        const mdl_tensor_t *qkv[3] = {&L->wq, &L->wk, &L->wv};
        if ((st = put_vec(c, L->attn_norm, H, &D->attn_norm)) ||
            (st = put_vec(c, L->mlp_norm, H, &D->mlp_norm)) ||
            (st = put_vec(c, L->q_norm, hd, &D->q_norm)) ||
            (st = put_vec(c, L->k_norm, hd, &D->k_norm)) || (st = put_mats(c, qkv, 3, &D->wqkv)) ||
            (st = put_mat(c, &L->wo, &D->wo)))
            goto fail;
        if (L->bq) {
            const float *bs[3] = {L->bq, L->bk, L->bv};
            size_t ns[3] = {qd, kd, kd};
            if ((st = put_f32(c, bs, ns, 3, &D->bqkv))) goto fail;
        }
        D->moe = L->moe;
        if (!L->moe) {
            if ((st = put_mlp(c, &L->mlp, cf->intermediate, &D->mlp))) goto fail;
            continue;
        }
        if ((st = put_mat(c, &L->router, &D->router))) goto fail;
        D->experts.resize(cf->n_experts);
        for (uint32_t x = 0; x < cf->n_experts; x++)
            if ((st = put_mlp(c, &L->experts[x], cf->moe_intermediate, &D->experts[x]))) goto fail;
        D->has_shared = L->has_shared;
        if (L->has_shared && ((st = put_mlp(c, &L->shared, cf->shared_intermediate, &D->shared)) ||
                              (st = put_mat(c, &L->shared_gate, &D->shared_gate))))
            goto fail;
    }
    *out = c;
    return CM_OK;
fail:
    if (st == CM_ERR_NO_MEMORY)
        snprintf(err, errlen, "cuda: weights (%zu bytes so far) do not fit on %s", c->weight_bytes,
                 c->name);
    else
        snprintf(err, errlen, "cuda: weight upload failed: %s",
                 cudaGetErrorString(cudaGetLastError()));
    eng_cuda_free(c);
    return st;
}

extern "C" void eng_cuda_free(struct eng_cuda *c) {
    if (!c) return;
    for (void *p : c->allocs) cudaFree(p);
    cudaFree(c->scratch);
    cudaFree(c->dmeta);
    cudaFreeHost(c->hmeta);
    cudaFreeHost(c->hlog);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    delete c;
}

extern "C" void *eng_cuda_kv_alloc(struct eng_cuda *c, size_t bytes) {
    void *p = nullptr;
    if (cudaSetDevice(c->dev) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    cudaMemset(p, 0, bytes);
    return p;
}

extern "C" void eng_cuda_kv_free(struct eng_cuda *c, void *p) {
    (void)c;
    cudaFree(p);
}

extern "C" size_t eng_cuda_weight_bytes(const struct eng_cuda *c) { return c->weight_bytes; }
extern "C" const char *eng_cuda_device_name(const struct eng_cuda *c) { return c->name; }

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

template <typename T> __device__ __forceinline__ float ld(const T *p, size_t i);
template <> __device__ __forceinline__ float ld<float>(const float *p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16 *p, size_t i) {
    return __bfloat162float(p[i]);
}
template <> __device__ __forceinline__ float ld<__half>(const __half *p, size_t i) {
    return __half2float(p[i]);
}
template <typename T> __device__ __forceinline__ void st(T *p, size_t i, float v);
template <> __device__ __forceinline__ void st<float>(float *p, size_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void st<__nv_bfloat16>(__nv_bfloat16 *p, size_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ void st<__half>(__half *p, size_t i, float v) {
    p[i] = __float2half_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024). */
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s += part[i];
    return s;
}

template <typename T>
__global__ void k_embed(const T *E, const int32_t *tok, float *x, uint32_t H) {
    size_t t = blockIdx.x;
    const T *row = E + (size_t)tok[t] * H;
    for (uint32_t i = threadIdx.x; i < H; i += blockDim.x) x[t * H + i] = ld(row, i);
}

/* x[row] += add[row] (when add); y[row] = x[row] / rms * w. */
template <typename TO>
__global__ void k_add_rmsnorm(float *x, const float *add, const float *w, float eps, uint32_t H,
                              TO *y) {
    size_t r = blockIdx.x;
    float *xr = x + r * H;
    float ss = 0.0f;
    for (uint32_t i = threadIdx.x; i < H; i += blockDim.x) {
        float v = xr[i];
        if (add) xr[i] = v = v + add[r * H + i];
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)H + eps);
    for (uint32_t i = threadIdx.x; i < H; i += blockDim.x) st(y, r * H + i, xr[i] * inv * w[i]);
}

struct kv_args {
    float *pool;
    size_t n_blocks, block_elems; /* K (or V) floats of one (layer, block) */
    uint32_t bs, layer;
    const int32_t *pos, *owner, *bt, *bt_off;
};

__device__ __forceinline__ size_t kv_base(const kv_args &a, int32_t item, uint32_t p) {
    int32_t blk = a.bt[a.bt_off[item] + p / a.bs];
    return ((size_t)a.layer * a.n_blocks + (size_t)blk) * 2 * a.block_elems;
}

/*
 * One block per (token, head) over Q, K and V heads, head_dim threads
 * rounded up to a warp:
 * bias, q/k RMSNorm, RoPE (rotate-half); Q stays in qkv, K and V go to the
 * token's slot in the pool.
 */
__global__ void k_qkv_post(float *qkv, const float *bias, const float *qn, const float *kn,
                           float eps, const float *inv_freq, uint32_t nh, uint32_t nkv, uint32_t hd,
                           kv_args a) {
    extern __shared__ float sh[];
    size_t t = blockIdx.x;
    uint32_t head = blockIdx.y, d = threadIdx.x;
    bool live = d < hd;
    size_t row = (size_t)(nh + 2 * nkv) * hd;
    size_t col = (size_t)head * hd + d;
    float v = live ? qkv[t * row + col] : 0.0f;
    if (bias && live) v += bias[col];
    bool is_q = head < nh, is_k = !is_q && head < nh + nkv;
    if (is_q || is_k) { /* the same branch for the whole block */
        const float *nw = is_q ? qn : kn;
        if (nw) {
            float ss = block_sum(v * v);
            if (live) v = v * rsqrtf(ss / (float)hd + eps) * nw[d];
        }
        uint32_t half = hd / 2, i = d < half ? d : d - half;
        if (live) sh[d] = v;
        __syncthreads();
        if (live) {
            float ang = (float)a.pos[t] * inv_freq[i];
            float cs = cosf(ang), sn = sinf(ang);
            v = d < half ? sh[d] * cs - sh[d + half] * sn : sh[d] * cs + sh[d - half] * sn;
        }
    }
    if (!live) return;
    if (is_q) {
        qkv[t * row + col] = v;
        return;
    }
    uint32_t p = (uint32_t)a.pos[t], kvh = is_k ? head - nh : head - nh - nkv;
    size_t base = kv_base(a, a.owner[t], p) + (is_k ? 0 : a.block_elems);
    a.pool[base + ((size_t)(p % a.bs) * nkv + kvh) * hd + d] = v;
}

/*
 * Causal GQA attention of token t, head h over positions 0..pos[t] of its
 * sequence's blocks: 4 warps split the positions, each keeps an online
 * softmax (max, sum, weighted V) in registers, then the warps merge.
 */
template <typename TO, int NJ>
__global__ void k_attention(const float *qkv, uint32_t nh, uint32_t nkv, uint32_t hd, float scale,
                            kv_args a, TO *out) {
    constexpr int NW = 4;
    size_t t = blockIdx.x;
    uint32_t h = blockIdx.y, kvh = h / (nh / nkv);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    size_t row = (size_t)(nh + 2 * nkv) * hd;
    float q[NJ], acc[NJ];
    for (int j = 0; j < NJ; j++) {
        uint32_t d = lane + 32 * j;
        q[j] = d < hd ? qkv[t * row + (size_t)h * hd + d] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float mx = -INFINITY, sum = 0.0f;
    uint32_t P = (uint32_t)a.pos[t];
    int32_t item = a.owner[t];
    for (uint32_t p = (uint32_t)w; p <= P; p += NW) {
        size_t base = kv_base(a, item, p) + ((size_t)(p % a.bs) * nkv + kvh) * hd;
        const float *k = a.pool + base, *v = a.pool + base + a.block_elems;
        float s = 0.0f;
        for (int j = 0; j < NJ; j++)
            if (lane + 32 * j < hd) s += q[j] * k[lane + 32 * j];
        s = warp_sum(s);
        float nm = fmaxf(mx, s), corr = expf(mx - nm), e = expf(s - nm);
        sum = sum * corr + e;
        for (int j = 0; j < NJ; j++)
            acc[j] = acc[j] * corr + (lane + 32 * j < hd ? e * v[lane + 32 * j] : 0.0f);
        mx = nm;
    }
    __shared__ float sm[NW], ss[NW], sacc[NW][256];
    if (lane == 0) {
        sm[w] = mx;
        ss[w] = sum;
    }
    for (int j = 0; j < NJ; j++) sacc[w][lane + 32 * j] = acc[j];
    __syncthreads();
    if (w != 0) return;
    float M = -INFINITY;
    for (int i = 0; i < NW; i++) M = fmaxf(M, sm[i]);
    float L = 0.0f, f[NW];
    for (int i = 0; i < NW; i++) {
        f[i] = sm[i] == -INFINITY ? 0.0f : expf(sm[i] - M);
        L += ss[i] * f[i];
    }
    for (int j = 0; j < NJ; j++) {
        uint32_t d = lane + 32 * j;
        if (d >= hd) break;
        float o = 0.0f;
        for (int i = 0; i < NW; i++) o += sacc[i][d] * f[i];
        st(out, t * (size_t)nh * hd + (size_t)h * hd + d, o / L);
    }
}

/* Launches k_attention with NJ = @nj (1..8 warps' worth of head_dim). */
template <typename TO, int NJ = 1>
void launch_attention(int nj, dim3 grid, cudaStream_t s, const float *qkv, uint32_t nh,
                      uint32_t nkv, uint32_t hd, float scale, const kv_args &a, TO *out) {
    if constexpr (NJ < 8) {
        if (nj > NJ) {
            launch_attention<TO, NJ + 1>(nj, grid, s, qkv, nh, nkv, hd, scale, a, out);
            return;
        }
    }
    k_attention<TO, NJ><<<grid, 128, 0, s>>>(qkv, nh, nkv, hd, scale, a, out);
}

/* a[r][i] = silu(gu[r][i]) * gu[r][ff + i]. */
template <typename TO> __global__ void k_swiglu(const float *gu, size_t rows, uint32_t ff, TO *a) {
    size_t n = rows * ff;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / ff, c = i % ff;
        float g = gu[r * 2 * ff + c], u = gu[r * 2 * ff + ff + c];
        st(a, i, g / (1.0f + expf(-g)) * u);
    }
}

/* Per token: softmax over E router logits (in place, as on the CPU), top-k
 * (first maximum wins), optional renormalization. */
__global__ void k_topk(float *rl, size_t T, uint32_t E, uint32_t K, bool norm, int32_t *sel,
                       float *selw) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= T) return;
    float *r = rl + t * E;
    float mx = -INFINITY, sum = 0.0f;
    for (uint32_t e = 0; e < E; e++) mx = fmaxf(mx, r[e]);
    for (uint32_t e = 0; e < E; e++) sum += (r[e] = expf(r[e] - mx));
    for (uint32_t e = 0; e < E; e++) r[e] /= sum;
    float ksum = 0.0f;
    for (uint32_t j = 0; j < K; j++) {
        int32_t best = 0;
        float bv = -1.0f;
        for (uint32_t e = 0; e < E; e++) {
            bool taken = false;
            for (uint32_t z = 0; z < j; z++) taken |= sel[t * K + z] == (int32_t)e;
            if (!taken && r[e] > bv) {
                bv = r[e];
                best = (int32_t)e;
            }
        }
        sel[t * K + j] = best;
        selw[t * K + j] = bv;
        ksum += bv;
    }
    if (norm)
        for (uint32_t j = 0; j < K; j++) selw[t * K + j] /= ksum;
}

template <typename T>
__global__ void k_gather(const T *src, const int32_t *rows, uint32_t H, T *dst) {
    size_t r = blockIdx.x;
    const T *s = src + (size_t)rows[r] * H;
    for (uint32_t i = threadIdx.x; i < H; i += blockDim.x) dst[r * H + i] = s[i];
}

/* o[t] = sum_j selw[t,j] * ye[rowpos[t,j]] (+ sigmoid(sg[t]) * ys[t]). */
__global__ void k_moe_combine(const float *ye, const int32_t *rowpos, const float *selw, uint32_t K,
                              uint32_t H, const float *ys, const float *sg, float *o) {
    size_t t = blockIdx.x;
    for (uint32_t i = threadIdx.x; i < H; i += blockDim.x) {
        float v = 0.0f;
        for (uint32_t j = 0; j < K; j++)
            v += selw[t * K + j] * ye[(size_t)rowpos[t * K + j] * H + i];
        if (ys) v += ys[t * H + i] / (1.0f + expf(-sg[t]));
        o[t * H + i] = v;
    }
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                  */
/* ------------------------------------------------------------------------ */

namespace {

/* y[rows][out] (f32) = x[rows][in] . W[out][in]^T */
bool gemm(eng_cuda *c, const void *x, size_t rows, size_t in, const void *w, size_t out, float *y) {
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)rows, (int)in, &one, w,
                        c->cdt, (int)in, x, c->cdt, (int)in, &zero, y, CUDA_R_32F, (int)out,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
}

int grid_for(size_t n) {
    size_t g = (n + 255) / 256;
    return (int)(g < 65535 ? (g ? g : 1) : 65535);
}

struct bump {
    char *base;
    size_t off;
    template <typename T> T *take(size_t n) {
        T *p = (T *)(base + off);
        off += (n * sizeof(T) + 255) & ~(size_t)255;
        return p;
    }
};

template <typename TO>
cm_status_t forward_t(eng_cuda *c, const eng_model *m, eng_kv_t *kv, const eng_item_t *items,
                      size_t n, float *logits) {
    const mdl_config_t *cf = &m->c;
    const eng_kv_geom_t *g = eng_kv_geom(kv);
    uint32_t H = cf->hidden, hd = cf->head_dim, nh = cf->n_heads, nkv = cf->n_kv_heads;
    size_t qd = (size_t)nh * hd, kd = (size_t)nkv * hd, qkvd = qd + 2 * kd;
    uint32_t E = cf->n_experts, K = cf->top_k ? cf->top_k : 1;
    size_t T = 0, n_logits = 0, n_bt = 0;
    for (size_t i = 0; i < n; i++) {
        T += items[i].n;
        n_logits += items[i].logits;
        n_bt += (items[i].start + items[i].n + g->block_size - 1) / g->block_size;
    }
    size_t R = T * K;
    size_t ff = cf->intermediate;
    if (cf->moe_intermediate > ff) ff = cf->moe_intermediate;
    if (cf->shared_intermediate > ff) ff = cf->shared_intermediate;
    size_t ffrows = E ? R : T;
    /* Metadata: tok, pos, owner [T]; bt_off [n + 1]; bt [n_bt]; logit rows
     * [n_logits]; rowpos [R]; srcrow [R]. */
    size_t meta = 3 * T + (n + 1) + n_bt + n_logits + 2 * R + 8;
    if (meta > c->hmeta_cap) {
        cudaFreeHost(c->hmeta);
        cudaFree(c->dmeta);
        c->hmeta = nullptr;
        c->dmeta = nullptr;
        c->hmeta_cap = c->dmeta_cap = 0;
        if (cudaMallocHost(&c->hmeta, meta * 4) != cudaSuccess ||
            cudaMalloc(&c->dmeta, meta * 4) != cudaSuccess) {
            cudaGetLastError();
            return CM_ERR_NO_MEMORY;
        }
        c->hmeta_cap = c->dmeta_cap = meta;
    }
    int32_t *h_tok = c->hmeta, *h_pos = h_tok + T, *h_own = h_pos + T, *h_btoff = h_own + T;
    int32_t *h_bt = h_btoff + n + 1, *h_lrow = h_bt + n_bt, *h_rowpos = h_lrow + n_logits;
    int32_t *h_src = h_rowpos + R;
    size_t t = 0, b = 0, lr = 0;
    for (size_t i = 0; i < n; i++) {
        const int32_t *ids = eng_kv_seq_tokens(items[i].seq);
        h_btoff[i] = (int32_t)b;
        uint32_t nblk = (items[i].start + items[i].n + g->block_size - 1) / g->block_size;
        for (uint32_t k = 0; k < nblk; k++) {
            uint32_t slot;
            int32_t blk;
            if (!eng_kv_seq_slot(items[i].seq, k * g->block_size, &blk, &slot) || blk < 0 ||
                (uint32_t)blk >= g->n_blocks)
                return CM_ERR_INVALID_ARG;
            h_bt[b++] = blk;
        }
        for (uint32_t j = 0; j < items[i].n; j++, t++) {
            h_tok[t] = ids[items[i].start + j];
            if (h_tok[t] < 0 || (uint32_t)h_tok[t] >= cf->vocab) return CM_ERR_INVALID_ARG;
            h_pos[t] = (int32_t)(items[i].start + j);
            h_own[t] = (int32_t)i;
        }
        if (items[i].logits) h_lrow[lr++] = (int32_t)(t - 1);
    }
    h_btoff[n] = (int32_t)b;
    /* Scratch (device). */
    size_t need = 0;
    {
        size_t sizes[] = {T * H * 4,
                          T * H * 4,
                          T * H * sizeof(TO),
                          T * qkvd * 4,
                          T * qd * sizeof(TO),
                          ffrows * 2 * ff * 4,
                          ffrows * ff * sizeof(TO),
                          R * H * sizeof(TO),
                          R * H * 4,
                          T * H * 4,
                          T * (E + 1) * 4,
                          T * 4,
                          R * 4,
                          R * 4,
                          n_logits * H * sizeof(TO),
                          n_logits * (size_t)cf->vocab * 4};
        for (size_t s : sizes) need += (s + 255) & ~(size_t)255;
    }
    if (need > c->scratch_cap) {
        cudaFree(c->scratch);
        c->scratch = nullptr;
        c->scratch_cap = 0;
        if (cudaMalloc(&c->scratch, need) != cudaSuccess) {
            cudaGetLastError();
            return CM_ERR_NO_MEMORY;
        }
        c->scratch_cap = need;
    }
    bump bm{c->scratch, 0};
    float *x = bm.take<float>(T * H), *o = bm.take<float>(T * H);
    TO *h = bm.take<TO>(T * H);
    float *qkv = bm.take<float>(T * qkvd);
    TO *att = bm.take<TO>(T * qd);
    float *gu = bm.take<float>(ffrows * 2 * ff);
    TO *act = bm.take<TO>(ffrows * ff), *xe = bm.take<TO>(R * H);
    float *ye = bm.take<float>(R * H), *ys = bm.take<float>(T * H);
    float *rl = bm.take<float>(T * (E + 1)), *sgl = bm.take<float>(T);
    int32_t *sel = bm.take<int32_t>(R);
    float *selw = bm.take<float>(R);
    TO *hl = bm.take<TO>(n_logits * H);
    float *dlog = bm.take<float>(n_logits * cf->vocab);
    cudaStream_t s = c->stream;
    int32_t *d_tok = c->dmeta, *d_pos = d_tok + T, *d_own = d_pos + T, *d_btoff = d_own + T;
    int32_t *d_bt = d_btoff + n + 1, *d_lrow = d_bt + n_bt, *d_rowpos = d_lrow + n_logits;
    int32_t *d_src = d_rowpos + R;
    size_t head_meta = 3 * T + (n + 1) + n_bt + n_logits;
    cudaMemcpyAsync(c->dmeta, c->hmeta, head_meta * 4, cudaMemcpyHostToDevice, s);
    kv_args ka{(float *)eng_kv_pool_base(kv),
               g->n_blocks,
               (size_t)g->block_size * g->kv_heads * g->head_dim,
               g->block_size,
               0u,
               d_pos,
               d_own,
               d_bt,
               d_btoff};
    const int NT = 256;
    if (c->dt == MDL_F32)
        k_embed<float><<<(unsigned)T, NT, 0, s>>>((const float *)c->embed, d_tok, x, H);
    else if (c->dt == MDL_BF16)
        k_embed<__nv_bfloat16>
            <<<(unsigned)T, NT, 0, s>>>((const __nv_bfloat16 *)c->embed, d_tok, x, H);
    else
        k_embed<__half><<<(unsigned)T, NT, 0, s>>>((const __half *)c->embed, d_tok, x, H);
    float scale = 1.0f / sqrtf((float)hd);
    std::vector<int32_t> &cnt = c->cnt, &start = c->start, &fill = c->fill, &hsel = c->hsel;
    cnt.resize(E ? E : 1);
    start.resize(E + 1);
    fill.resize(E + 1);
    hsel.resize(R);
    size_t nlf = n_logits * (size_t)cf->vocab;
    if (nlf > c->hlog_cap) {
        cudaFreeHost(c->hlog);
        c->hlog = nullptr;
        c->hlog_cap = 0;
        if (cudaMallocHost(&c->hlog, nlf * 4) != cudaSuccess) {
            cudaGetLastError();
            return CM_ERR_NO_MEMORY;
        }
        c->hlog_cap = nlf;
    }
    const float *pending = nullptr; /* o to add into x before the next norm */
    bool ok = true;
    for (uint32_t l = 0; l < cf->n_layers && ok; l++) {
        const dlayer &D = c->layers[l];
        ka.layer = l;
        k_add_rmsnorm<TO><<<(unsigned)T, NT, 0, s>>>(x, pending, D.attn_norm, cf->rms_eps, H, h);
        ok &= gemm(c, h, T, H, D.wqkv, qkvd, qkv);
        k_qkv_post<<<dim3((unsigned)T, nh + 2 * nkv), (hd + 31) / 32 * 32, hd * sizeof(float), s>>>(
            qkv, D.bqkv, D.q_norm, D.k_norm, cf->rms_eps, c->inv_freq, nh, nkv, hd, ka);
        dim3 ag((unsigned)T, nh);
        launch_attention<TO>((int)(hd + 31) / 32, ag, s, qkv, nh, nkv, hd, scale, ka, att);
        ok &= gemm(c, att, T, qd, D.wo, H, o);
        k_add_rmsnorm<TO><<<(unsigned)T, NT, 0, s>>>(x, o, D.mlp_norm, cf->rms_eps, H, h);
        if (!D.moe) {
            ok &= gemm(c, h, T, H, D.mlp.gate_up, 2 * D.mlp.ff, gu);
            k_swiglu<TO><<<grid_for(T * D.mlp.ff), NT, 0, s>>>(gu, T, D.mlp.ff, act);
            ok &= gemm(c, act, T, D.mlp.ff, D.mlp.down, H, o);
            pending = o;
            continue;
        }
        ok &= gemm(c, h, T, H, D.router, E, rl);
        k_topk<<<grid_for(T), NT, 0, s>>>(rl, T, E, K, cf->norm_topk, sel, selw);
        /* Group rows by expert on the host (counting sort, token order kept
         * inside an expert). */
        cudaMemcpyAsync(hsel.data(), sel, R * 4, cudaMemcpyDeviceToHost, s);
        if (cudaStreamSynchronize(s) != cudaSuccess) {
            ok = false;
            break;
        }
        std::fill(cnt.begin(), cnt.end(), 0);
        for (size_t r = 0; r < R; r++) cnt[hsel[r]]++;
        start[0] = 0;
        for (uint32_t e = 0; e < E; e++) {
            start[e + 1] = start[e] + cnt[e];
            fill[e] = start[e];
        }
        for (size_t r = 0; r < R; r++) {
            int32_t at = fill[hsel[r]]++;
            h_rowpos[r] = at;
            h_src[at] = (int32_t)(r / K);
        }
        cudaMemcpyAsync(d_rowpos, h_rowpos, 2 * R * 4, cudaMemcpyHostToDevice, s);
        k_gather<TO><<<(unsigned)R, NT, 0, s>>>(h, d_src, H, xe);
        uint32_t eff = cf->moe_intermediate;
        for (uint32_t e = 0; e < E; e++) {
            if (!cnt[e]) continue;
            size_t r0 = (size_t)start[e];
            ok &= gemm(c, xe + r0 * H, (size_t)cnt[e], H, D.experts[e].gate_up, 2 * eff,
                       gu + r0 * 2 * eff);
        }
        k_swiglu<TO><<<grid_for(R * eff), NT, 0, s>>>(gu, R, eff, act);
        for (uint32_t e = 0; e < E; e++) {
            if (!cnt[e]) continue;
            size_t r0 = (size_t)start[e];
            ok &= gemm(c, act + r0 * eff, (size_t)cnt[e], eff, D.experts[e].down, H, ye + r0 * H);
        }
        const float *ysp = nullptr;
        if (D.has_shared) {
            uint32_t sff = D.shared.ff;
            ok &= gemm(c, h, T, H, D.shared.gate_up, 2 * sff, gu);
            k_swiglu<TO><<<grid_for(T * sff), NT, 0, s>>>(gu, T, sff, act);
            ok &= gemm(c, act, T, sff, D.shared.down, H, ys);
            ok &= gemm(c, h, T, H, D.shared_gate, 1, sgl);
            ysp = ys;
        }
        k_moe_combine<<<(unsigned)T, NT, 0, s>>>(ye, d_rowpos, selw, K, H, ysp, sgl, o);
        /* The next MoE layer rewrites h_rowpos/h_src only after its own
         * stream sync, so this layer's upload has been read by then. */
        pending = o;
    }
    if (ok && n_logits) {
        k_add_rmsnorm<TO><<<(unsigned)T, NT, 0, s>>>(x, pending, c->final_norm, cf->rms_eps, H, h);
        k_gather<TO><<<(unsigned)n_logits, NT, 0, s>>>(h, d_lrow, H, hl);
        ok &= gemm(c, hl, n_logits, H, c->lm_head, cf->vocab, dlog);
        cudaMemcpyAsync(c->hlog, dlog, nlf * 4, cudaMemcpyDeviceToHost, s);
    }
    cudaError_t e = cudaStreamSynchronize(s);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (!ok || e != cudaSuccess) {
        cm_log_error(CU_SUB, "forward failed: %s", ok ? cudaGetErrorString(e) : "cuBLAS error");
        return CM_ERR_IO;
    }
    if (nlf) memcpy(logits, c->hlog, nlf * 4);
    return CM_OK;
}

} // namespace

extern "C" cm_status_t eng_cuda_forward(struct eng_cuda *c, const struct eng_model *m, eng_kv_t *kv,
                                        const eng_item_t *items, size_t n, float *logits) {
    if (cudaSetDevice(c->dev) != cudaSuccess) return CM_ERR_IO;
    if (c->checked_kv != kv) {
        cudaPointerAttributes pa;
        if (cudaPointerGetAttributes(&pa, eng_kv_pool_base(kv)) != cudaSuccess ||
            pa.type != cudaMemoryTypeDevice) {
            cudaGetLastError();
            cm_log_error(CU_SUB, "the KV pool is not device memory (use eng_model_kv_alloc)");
            return CM_ERR_UNSUPPORTED;
        }
        c->checked_kv = kv;
    }
    switch (c->dt) {
    case MDL_F32:
        return forward_t<float>(c, m, kv, items, n, logits);
    case MDL_BF16:
        return forward_t<__nv_bfloat16>(c, m, kv, items, n, logits);
    default:
        return forward_t<__half>(c, m, kv, items, n, logits);
    }
}

/* ------------------------------------------------------------------------ */
/* Roofline measurements                                                    */
/* ------------------------------------------------------------------------ */

extern "C" double eng_cuda_copy_gbps(size_t bytes) {
    void *a = nullptr, *b = nullptr;
    cudaEvent_t e0, e1;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(a);
        return 0;
    }
    cudaMemset(a, 1, bytes);
    cudaMemset(b, 2, bytes);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < 3; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    const int reps = 20;
    cudaEventRecord(e0);
    for (int i = 0; i < reps; i++) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return ms > 0 ? 2.0 * (double)bytes * reps / (ms * 1e-3) / 1e9 : 0;
}

__global__ void k_fill_bf16(__nv_bfloat16 *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16_rn(((float)(h & 0xffff) / 65535.0f - 0.5f));
    }
}

extern "C" double eng_cuda_gemm_tflops(int n) {
    size_t nn = (size_t)n * n;
    __nv_bfloat16 *a = nullptr, *b = nullptr;
    float *cc = nullptr;
    cublasHandle_t h = nullptr;
    double r = 0;
    if (cudaMalloc(&a, nn * 2) == cudaSuccess && cudaMalloc(&b, nn * 2) == cudaSuccess &&
        cudaMalloc(&cc, nn * 4) == cudaSuccess && cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
        k_fill_bf16<<<1024, 256>>>(a, nn, 1);
        k_fill_bf16<<<1024, 256>>>(b, nn, 2);
        const float one = 1.0f, zero = 0.0f;
        auto run = [&]() {
            cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                         CUDA_R_16BF, n, &zero, cc, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
        };
        for (int i = 0; i < 3; i++) run();
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        const int reps = 10;
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) run();
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        if (ms > 0) r = 2.0 * (double)n * n * n * reps / (ms * 1e-3) / 1e12;
    }
    cudaGetLastError();
    if (h) cublasDestroy(h);
    cudaFree(a);
    cudaFree(b);
    cudaFree(cc);
    return r;
}
