/* eng_ref.c - the scalar reference backend: plain loops, f32 accumulation. */
#include <math.h>
#include <string.h>

#include "eng_backend.h"

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void eng_to_f32(const void *src, mdl_dtype_t t, size_t n, float *dst) {
    if (t == MDL_F32) {
        memcpy(dst, src, n * 4);
    } else if (t == MDL_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
    }
}

/* One weight row as f32 (into @tmp unless the weights are f32 already). */
static const float *row(const mdl_tensor_t *w, size_t o, size_t in, float *tmp) {
    const char *base = (const char *)w->data + o * in * mdl_dtype_size(w->dtype);
    if (w->dtype == MDL_F32) return (const float *)base;
    eng_to_f32(base, w->dtype, in, tmp);
    return tmp;
}

static void ref_matmul(void *ctx, const float *x, size_t rows, size_t in, const mdl_tensor_t *w,
                       const float *bias, size_t out, float *y) {
    (void)ctx;
    float local[4096];
    float *buf = in <= 4096 ? local : cm_malloc_array(in, sizeof *buf);
    if (!buf) {
        memset(y, 0, rows * out * sizeof *y); /* OOM: defined output */
        return;
    }
    for (size_t o = 0; o < out; o++) {
        const float *wr = row(w, o, in, buf);
        for (size_t r = 0; r < rows; r++) {
            const float *xr = x + r * in;
            float acc = 0.0f;
            for (size_t i = 0; i < in; i++) acc += xr[i] * wr[i];
            y[r * out + o] = acc + (bias ? bias[o] : 0.0f);
        }
    }
    if (buf != local) cm_free(buf);
}

static void ref_rmsnorm(void *ctx, const float *x, size_t rows, size_t dim, const float *weight,
                        float eps, float *y) {
    (void)ctx;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float ss = 0.0f;
        for (size_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (size_t i = 0; i < dim; i++) y[r * dim + i] = weight[i] * (xr[i] * inv);
    }
}

void eng_attn_head_ref(const eng_attn_t *a, size_t t, uint32_t h, float *sc) {
    const uint32_t hd = a->head_dim, n = a->ctx[t];
    const size_t qd = (size_t)a->n_heads * hd, kvo = (size_t)(h / (a->n_heads / a->kv_heads)) * hd;
    const float *qv = a->q + t * qd + (size_t)h * hd;
    float mx = -INFINITY;
    for (uint32_t p = 0; p < n; p++) {
        const eng_kv_row_t kr = a->k[t][p];
        float d = 0.0f;
        for (uint32_t i = 0; i < hd; i++)
            d += qv[i] * (a->kv_bf16 ? bf16_to_f32(kr.h[kvo + i]) : kr.f[kvo + i]);
        sc[p] = d * a->scale;
        if (sc[p] > mx) mx = sc[p];
    }
    float sum = 0.0f;
    for (uint32_t p = 0; p < n; p++) {
        sc[p] = expf(sc[p] - mx);
        sum += sc[p];
    }
    float *ov = a->out + t * qd + (size_t)h * hd;
    memset(ov, 0, hd * sizeof *ov);
    for (uint32_t p = 0; p < n; p++) {
        const eng_kv_row_t vr = a->v[t][p];
        float wgt = sc[p] / sum;
        for (uint32_t i = 0; i < hd; i++)
            ov[i] += wgt * (a->kv_bf16 ? bf16_to_f32(vr.h[kvo + i]) : vr.f[kvo + i]);
    }
}

static cm_status_t ref_attention(void *ctx, const eng_attn_t *a) {
    (void)ctx;
    uint32_t most = 0;
    for (size_t t = 0; t < a->T; t++) most = a->ctx[t] > most ? a->ctx[t] : most;
    float *sc = cm_malloc_array(most ? most : 1, sizeof *sc);
    if (!sc) return CM_ERR_NO_MEMORY;
    for (size_t t = 0; t < a->T; t++)
        for (uint32_t h = 0; h < a->n_heads; h++) eng_attn_head_ref(a, t, h, sc);
    cm_free(sc);
    return CM_OK;
}

static void ref_swiglu(void *ctx, float *g, const float *u, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_free(void *ctx) { (void)ctx; }

static const eng_backend_i k_ref = {.name = "ref",
                                    .matmul = ref_matmul,
                                    .rmsnorm = ref_rmsnorm,
                                    .swiglu = ref_swiglu,
                                    .attention = ref_attention,
                                    .free = ref_free};

cm_status_t eng_backend_ref_new(eng_backend_t *out) {
    out->iface = &k_ref;
    out->ctx = NULL;
    return CM_OK;
}
