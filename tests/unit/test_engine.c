/*
 * test_engine.c - the forward pass against Hugging Face transformers on the
 * tiny fixture checkpoints (tests/fixtures/gen_models.py): last-position
 * logits within 1e-4 relative error (f32 compute), identical 16-token greedy
 * continuations, identical results inside a mixed batch, and clear loader
 * errors.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>

#include "eng.h"
#include "eng_backend.h"
#include "eng_cpu_amx.h"
#include "eng_cpu_dp.h"
#include "tt.h"

static const char *const k_models[] = {"qwen3", "qwen3moe", "llama",
                                       "qwen2", "mixtral",  "qwen2moe"};

/* transformers' goldens for @model with its KV cache in @kv_dtype (bf16:
 * gen_kv_bf16_goldens.py's rows rounded as they enter the cache). */
static cJSON *load_golden(const char *model, const char *kv_dtype) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/%s", tt_root(), model,
             strcmp(kv_dtype, "bf16") ? "golden.json" : "golden_kv_bf16.json");
    char *buf = tt_read_file(path, NULL);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    TT_ASSERT(j);
    return j;
}

typedef struct {
    eng_model_t *m;
    eng_kv_t *kv;
    uint32_t vocab;
    void *pool; /* device pool (cuda) */
} rig_t;

static void rig_open(rig_t *r, const char *model, eng_backend_kind_t be) {
    char dir[1024], err[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", tt_root(), model);
    cm_status_t st = eng_model_load(dir, be, &r->m, err, sizeof err);
    TT_ASSERT_MSG(st == CM_OK, "load %s: %s", model, err);
    eng_kv_config_t kc = {.geom = eng_model_kv_geom(r->m, 128, 16),
                          .fingerprint = eng_model_kv_fingerprint(r->m, model, 16),
                          .mem_mode = ENG_KV_MEM_ALLOC,
                          .enable_prefix_cache = true};
    r->pool = NULL;
    if (eng_model_on_device(r->m)) {
        kc.mem_bytes = eng_kv_geom_pool_bytes(&kc.geom);
        kc.mem = r->pool = eng_model_kv_alloc(r->m, kc.mem_bytes);
        TT_ASSERT(r->pool);
        kc.mem_mode = ENG_KV_MEM_EXTERNAL;
    }
    TT_ASSERT_EQ_INT(eng_kv_init(&kc, &r->kv), CM_OK);
    r->vocab = eng_model_config(r->m)->vocab;
}

static void rig_close(rig_t *r) {
    eng_kv_free(r->kv);
    eng_model_kv_release(r->m, r->pool);
    eng_model_free(r->m);
}

static int32_t argmax(const float *v, uint32_t n) {
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = (int32_t)i;
    return best;
}

/* Max |a-b| over max |b|: the error relative to the logits' scale. */
static double rel_err(const float *a, const cJSON *b, uint32_t n) {
    double md = 0, mb = 0;
    for (uint32_t i = 0; i < n; i++) {
        double bv = cJSON_GetArrayItem(b, (int)i)->valuedouble;
        md = fmax(md, fabs(a[i] - bv));
        mb = fmax(mb, fabs(bv));
    }
    return md / (mb > 0 ? mb : 1);
}

/* @model's fixture on @be: each prompt's last logits within @tol of the
 * logits' scale of transformers', then its greedy tokens, one decode step
 * each. With @tie > 0, a step whose top logit beats transformers' token by
 * at most @tie of the scale passes (a near-tie that rounding may flip) and
 * the next step goes on from transformers' token. */
static void check_model_tie(const char *model, eng_backend_kind_t be, double tol, double tie) {
    rig_t r;
    rig_open(&r, model, be);
    cJSON *g = load_golden(model, eng_model_kv_dtype(r.m));
    const cJSON *p;
    float *logits = malloc(r.vocab * sizeof *logits);
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(g, "prompts")) {
        const cJSON *ids = cJSON_GetObjectItem(p, "ids");
        uint32_t n = (uint32_t)cJSON_GetArraySize(ids);
        int32_t toks[64];
        for (uint32_t i = 0; i < n; i++) toks[i] = cJSON_GetArrayItem(ids, (int)i)->valueint;
        eng_kv_seq_t *seq;
        TT_ASSERT_EQ_INT(eng_kv_seq_new(r.kv, toks, n, 0, &seq, NULL), CM_OK);
        eng_item_t it = {seq, 0, n, true};
        TT_ASSERT_EQ_INT(eng_forward(r.m, r.kv, &it, 1, logits), CM_OK);
        double e = rel_err(logits, cJSON_GetObjectItem(p, "last_logits"), r.vocab);
        TT_ASSERT_MSG(e <= tol, "%s prompt of %u tokens: relative error %.3g", model, n, e);
        TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(r.kv, seq, n), CM_OK);
        /* 16 greedy tokens, one decode step each. */
        const cJSON *greedy = cJSON_GetObjectItem(p, "greedy");
        for (int s = 0; s < cJSON_GetArraySize(greedy); s++) {
            int32_t next = argmax(logits, r.vocab), want = cJSON_GetArrayItem(greedy, s)->valueint;
            double scale = 0;
            for (uint32_t i = 0; i < r.vocab; i++) scale = fmax(scale, fabs(logits[i]));
            TT_ASSERT_MSG(next == want || logits[next] - logits[want] <= tie * scale,
                          "%s: greedy token %d is %d (%g), transformers says %d (%g)", model, s,
                          next, (double)logits[next], want, (double)logits[want]);
            next = want;
            uint32_t len = eng_kv_seq_len(seq);
            TT_ASSERT_EQ_INT(eng_kv_seq_append(r.kv, seq, &next, 1), CM_OK);
            eng_item_t d = {seq, len, 1, true};
            TT_ASSERT_EQ_INT(eng_forward(r.m, r.kv, &d, 1, logits), CM_OK);
            eng_kv_seq_set_computed(r.kv, seq, len + 1);
        }
        eng_kv_seq_free(r.kv, seq);
    }
    free(logits);
    cJSON_Delete(g);
    TT_ASSERT_EQ_INT(eng_kv_check(r.kv), CM_OK);
    rig_close(&r);
}

static void check_model_tol(const char *model, eng_backend_kind_t be, double tol) {
    check_model_tie(model, be, tol, 0);
}

static void check_model(const char *model, eng_backend_kind_t be) {
    check_model_tol(model, be, 1e-4);
}

TT_TEST(engine, qwen3_matches_transformers) { check_model("qwen3", ENG_BACKEND_REF); }
TT_TEST(engine, qwen3moe_bf16_matches_transformers) { check_model("qwen3moe", ENG_BACKEND_REF); }
TT_TEST(engine, llama3_rope_tied_sharded_matches_transformers) {
    check_model("llama", ENG_BACKEND_REF);
}
TT_TEST(engine, qwen2_bias_matches_transformers) { check_model("qwen2", ENG_BACKEND_REF); }
TT_TEST(engine, mixtral_matches_transformers) { check_model("mixtral", ENG_BACKEND_REF); }
TT_TEST(engine, qwen2moe_shared_expert_matches_transformers) {
    check_model("qwen2moe", ENG_BACKEND_REF);
}

/* An f16 checkpoint, f32 compute on its weights widened exactly: on the
 * ref backend, the cpu backend (f16 panels on AVX-512) and the cpu
 * backend's bf16 mode, which leaves f16 weights' inputs in f32 (with an
 * f32 KV cache here: the goldens' cache). */
TT_TEST(engine, f16_checkpoint_matches_transformers) {
    check_model("qwen3f16", ENG_BACKEND_REF);
    check_model("qwen3f16", ENG_BACKEND_CPU);
    if (eng_dp_available()) {
        setenv("TANDEM_CPU_PRECISION", "bf16", 1);
        setenv("TANDEM_KV_DTYPE", "f32", 1);
        check_model("qwen3f16", ENG_BACKEND_CPU);
        unsetenv("TANDEM_CPU_PRECISION");
        unsetenv("TANDEM_KV_DTYPE");
    }
}

/* A bf16 KV cache (TANDEM_KV_DTYPE=bf16) with f32 compute, on the ref and
 * the cpu backend, every fixture: transformers' logits with its cached
 * keys and values rounded to bf16 within 1e-3 (a K/V value next to a
 * rounding boundary may round the other way after a last-bit f32
 * difference, moving by one bf16 ulp, 2^-8: up to 5e-4 seen here, 1e-6
 * without such a flip), the same greedy tokens but near-ties within that
 * 1e-3 (on an AVX2-only Zen 3 the cpu backend's f32 sums round K/V the
 * other way at one qwen3moe step: its top logit 1.55041 beat
 * transformers' token's 1.55006; the next step goes on from transformers'
 * token); qwen3moe's one-token prompt continues differently from the
 * f32-cache golden: the rounding is checked, not only tolerated; the
 * pool's rows are half the f32 size. */
TT_TEST(engine, kv_bf16_matches_transformers) {
    setenv("TANDEM_KV_DTYPE", "bf16", 1);
    for (size_t i = 0; i < sizeof k_models / sizeof k_models[0]; i++)
        for (int b = 0; b < 2; b++) {
            eng_backend_kind_t be = b ? ENG_BACKEND_CPU : ENG_BACKEND_REF;
            rig_t r;
            rig_open(&r, k_models[i], be);
            TT_ASSERT_STR_EQ(eng_model_kv_dtype(r.m), "bf16");
            TT_ASSERT_EQ_INT(eng_kv_geom(r.kv)->dtype_bytes, 2);
            rig_close(&r);
            check_model_tie(k_models[i], be, 1e-3, 1e-3);
        }
    unsetenv("TANDEM_KV_DTYPE");
}

/* TANDEM_KV_DTYPE: auto follows TANDEM_CPU_PRECISION on the cpu backend,
 * f32 on ref; an unknown value is refused with a message naming it; the
 * dtype is part of the layout fingerprint. */
TT_TEST(engine, kv_dtype_setting) {
    char dir[1024], err[256];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen3moe", tt_root());
    eng_model_t *m;
    uint64_t fp[2];
    for (int i = 0; i < 2; i++) {
        setenv("TANDEM_KV_DTYPE", i ? "bf16" : "f32", 1);
        TT_ASSERT_EQ_INT(eng_model_load(dir, ENG_BACKEND_REF, &m, err, sizeof err), CM_OK);
        TT_ASSERT_STR_EQ(eng_model_kv_dtype(m), i ? "bf16" : "f32");
        fp[i] = eng_model_kv_fingerprint(m, "qwen3moe", 16);
        eng_model_free(m);
    }
    TT_ASSERT(fp[0] != fp[1]);
    setenv("TANDEM_KV_DTYPE", "fp8", 1);
    TT_ASSERT_EQ_INT(eng_model_load(dir, ENG_BACKEND_REF, &m, err, sizeof err), CM_ERR_INVALID_ARG);
    TT_ASSERT_MSG(strstr(err, "TANDEM_KV_DTYPE") && strstr(err, "fp8"), "message: %s", err);
    unsetenv("TANDEM_KV_DTYPE");
    TT_ASSERT_EQ_INT(eng_model_load(dir, ENG_BACKEND_REF, &m, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(eng_model_kv_dtype(m), "f32");
    eng_model_free(m);
    if (eng_dp_available()) {
        setenv("TANDEM_CPU_PRECISION", "bf16", 1);
        TT_ASSERT_EQ_INT(eng_model_load(dir, ENG_BACKEND_CPU, &m, err, sizeof err), CM_OK);
        TT_ASSERT_STR_EQ(eng_model_kv_dtype(m), "bf16");
        eng_model_free(m);
        unsetenv("TANDEM_CPU_PRECISION");
    }
}

/* The cpu backend's bf16 mode (TANDEM_CPU_PRECISION=bf16: matmul inputs
 * rounded to bf16, and with it a bf16 KV cache) on the bf16 fixture:
 * logits within 1% of the logits' scale of transformers' f32 compute with
 * a bf16 cache (0.3-0.7% seen); greedy tokens transformers' except where
 * its token is within that 1% of the top logit (a near-tie the rounding
 * may flip: this random fixture has them), going on from its token. */
TT_TEST(engine, qwen3moe_cpu_bf16_precision_close_to_transformers) {
    if (!eng_dp_available()) TT_SKIP("no AVX512_BF16 on this CPU");
    setenv("TANDEM_CPU_PRECISION", "bf16", 1);
    check_model_tie("qwen3moe", ENG_BACKEND_CPU, 1e-2, 1e-2);
    unsetenv("TANDEM_CPU_PRECISION");
}

/* TANDEM_CPU_PRECISION=bf16 and TANDEM_CPU_AMX=1 until amx_mode_off (the
 * test skips without AMX), and a cpu backend in that mode in @cpu. */
static void amx_mode_on(eng_backend_t *cpu) {
    if (!eng_amx_available()) TT_SKIP("no AMX-BF16 on this CPU (or the kernel refuses tile data)");
    setenv("TANDEM_CPU_PRECISION", "bf16", 1);
    setenv("TANDEM_CPU_AMX", "1", 1);
    TT_ASSERT_EQ_INT(eng_backend_cpu_new(cpu), CM_OK);
    TT_ASSERT_STR_EQ(eng_cpu_precision(cpu), "bf16-amx");
}

static void amx_mode_off(void) {
    unsetenv("TANDEM_CPU_PRECISION");
    unsetenv("TANDEM_CPU_AMX");
}

/* The same with the products on AMX tiles (TANDEM_CPU_AMX=1), whose sums
 * round differently, and attention on tiles (q and probabilities rounded
 * to bf16): logits within 1% again, greedy tokens as above. */
TT_TEST(engine, qwen3moe_cpu_bf16_amx_close_to_transformers) {
    eng_backend_t cpu;
    amx_mode_on(&cpu);
    cpu.iface->free(cpu.ctx);
    check_model_tie("qwen3moe", ENG_BACKEND_CPU, 1e-2, 1e-2);
    amx_mode_off();
}

/* A sequence alone and inside a batch with another's prompt chunk and a
 * third's decode token gives bit-identical logits: on the ref backend, the
 * cpu backend's best path, and (the bf16 fixture) its bf16 mode, with the
 * products on AMX tiles too. */
TT_TEST(engine, batch_invariance) {
    const size_t nm = sizeof k_models / sizeof k_models[0];
    for (size_t bi = 0; bi < 2 * nm + 2; bi++) {
        size_t mi = bi < 2 * nm ? bi % nm : 1; /* k_models[1]: qwen3moe, bf16 */
        rig_t r; /* ref, then cpu (its best path), then cpu in bf16 mode, then AMX */
        if (bi >= 2 * nm) {
            if (!eng_dp_available() || (bi > 2 * nm && !eng_amx_available())) break;
            setenv("TANDEM_CPU_PRECISION", "bf16", 1);
            setenv("TANDEM_CPU_AMX", bi > 2 * nm ? "1" : "0", 1);
        }
        rig_open(&r, k_models[mi], bi < nm ? ENG_BACKEND_REF : ENG_BACKEND_CPU);
        unsetenv("TANDEM_CPU_PRECISION");
        unsetenv("TANDEM_CPU_AMX");
        int32_t a[7] = {5, 9, 11, 3, 200, 17, 42}, b[12], cc[4] = {7, 8, 9, 10};
        for (int i = 0; i < 12; i++) b[i] = (i * 37 + 3) % 250;
        float *alone = malloc(r.vocab * sizeof(float)), *mixed = malloc(3 * r.vocab * 4);
        eng_kv_seq_t *sa, *sb, *sc;
        TT_ASSERT_EQ_INT(eng_kv_seq_new(r.kv, a, 7, 0, &sa, NULL), CM_OK);
        eng_item_t ia = {sa, 0, 7, true};
        TT_ASSERT_EQ_INT(eng_forward(r.m, r.kv, &ia, 1, alone), CM_OK);
        eng_kv_seq_free(r.kv, sa);
        /* c is decoding: its first 3 tokens are computed, the 4th is new. */
        TT_ASSERT_EQ_INT(eng_kv_seq_new(r.kv, cc, 4, 0, &sc, NULL), CM_OK);
        eng_item_t ic = {sc, 0, 3, false};
        TT_ASSERT_EQ_INT(eng_forward(r.m, r.kv, &ic, 1, mixed), CM_OK);
        eng_kv_seq_set_computed(r.kv, sc, 3);
        TT_ASSERT_EQ_INT(eng_kv_seq_new(r.kv, a, 7, 0, &sa, NULL), CM_OK);
        TT_ASSERT_EQ_INT(eng_kv_seq_new(r.kv, b, 12, 0, &sb, NULL), CM_OK);
        eng_item_t batch[3] = {{sb, 0, 5, false}, {sa, 0, 7, true}, {sc, 3, 1, true}};
        TT_ASSERT_EQ_INT(eng_forward(r.m, r.kv, batch, 3, mixed), CM_OK);
        TT_ASSERT_MSG(memcmp(alone, mixed, r.vocab * sizeof(float)) == 0,
                      "%s: logits differ inside a batch", k_models[mi]);
        eng_kv_seq_free(r.kv, sa);
        eng_kv_seq_free(r.kv, sb);
        eng_kv_seq_free(r.kv, sc);
        free(alone);
        free(mixed);
        rig_close(&r);
    }
}

/* Normalized mean squared error of @x against @ref. */
static double nmse(const float *ref, const float *x, uint32_t n) {
    double num = 0, den = 0;
    for (uint32_t i = 0; i < n; i++) {
        num += (double)(ref[i] - x[i]) * (ref[i] - x[i]);
        den += (double)ref[i] * ref[i];
    }
    return num / den;
}

/* Prefills the 40-token probe prompt as a new sequence of @r: *@seq, logits
 * of its last token into @logits. */
static void prefill_probe(rig_t *r, eng_kv_seq_t **seq, float *logits) {
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (i * 53 + 11) % 250;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(r->kv, toks, 40, 0, seq, NULL), CM_OK);
    eng_item_t it = {*seq, 0, 40, true};
    TT_ASSERT_EQ_INT(eng_forward(r->m, r->kv, &it, 1, logits), CM_OK);
}

static const char *const k_isas[] = {"scalar", "avx2", "avx512"};

/* Uniform in [0, 1) (xorshift64*). */
static double rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* f32 -> f16 bits for |f| < 1 (tiny values flush to zero; truncation). */
static uint16_t to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int e = (int)((u >> 23) & 0xFF) - 127 + 15;
    if (e <= 0) return sign;
    return (uint16_t)(sign | (e << 10) | ((u >> 13) & 0x3FF));
}

/* f32 -> bf16 / f16 bits (round to nearest even; test data are finite). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* @n random weights in [-0.5, 0.5) stored as @dt (bf16 and f16 rounded
 * to nearest). */
static void rnd_weights(void *wd, size_t n, mdl_dtype_t dt, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) {
        float v = (float)rnd(rng) - 0.5f;
        if (dt == MDL_F32)
            ((float *)wd)[i] = v;
        else if (dt == MDL_BF16)
            ((uint16_t *)wd)[i] = to_bf16(v);
        else
            ((uint16_t *)wd)[i] = to_f16(v);
    }
}

/* A cpu backend capped at @isa (TANDEM_CPU_ISA, unset again after). */
static cm_status_t cpu_backend_on(const char *isa, eng_backend_t *out) {
    setenv("TANDEM_CPU_ISA", isa, 1);
    cm_status_t st = eng_backend_cpu_new(out);
    unsetenv("TANDEM_CPU_ISA");
    return st;
}

/* The cpu backend's matmul on every instruction-set path this machine
 * has, against the ref backend's, on awkward shapes (tails of 1..15
 * elements, output counts not a multiple of the 4-row block) and all three
 * weight dtypes; and every row of a batch bit-identical to the row alone. */
TT_TEST(engine, cpu_matmul_matches_ref_on_every_isa) {
    static const size_t ins[] = {1, 7, 16, 17, 33, 130, 1024}, outs[] = {1, 3, 4, 5, 67, 32, 100},
                        rows[] = {1, 2, 3, 5, 9, 14, 61};
    static const mdl_dtype_t dts[] = {MDL_F32, MDL_BF16, MDL_F16};
    eng_backend_t ref;
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    uint64_t rng = 12345;
    int tested = 0, packed = 0;
    for (size_t ii = 0; ii < 3; ii++) {
        if (!eng_cpu_isa_available(k_isas[ii])) continue;
        eng_backend_t cpu;
        TT_ASSERT_EQ_INT(cpu_backend_on(k_isas[ii], &cpu), CM_OK);
        TT_ASSERT_STR_EQ(eng_cpu_isa(&cpu), k_isas[ii]);
        for (size_t a = 0; a < 7; a++)
            for (size_t b = 0; b < 7; b++)
                for (size_t c = 0; c < 7; c++)
                    for (size_t d = 0; d < 3; d++) {
                        size_t in = ins[a], out = outs[b], nr = rows[c];
                        float *x = malloc(nr * in * 4), *wf = malloc(out * in * 4);
                        float *bias = malloc(out * 4), *y0 = malloc(nr * out * 4);
                        float *y1 = malloc(nr * out * 4), *y2 = malloc(out * 4);
                        void *wd = malloc(out * in * 4);
                        for (size_t i = 0; i < nr * in; i++) x[i] = (float)rnd(&rng) - 0.5f;
                        for (size_t i = 0; i < out; i++) bias[i] = (float)rnd(&rng);
                        rnd_weights(wd, out * in, dts[d], &rng);
                        mdl_tensor_t w = {"w", dts[d], 2, {out, in}, wd, 0, NULL, false};
                        bool with_bias = (a + b + c) % 2;
                        ref.iface->matmul(ref.ctx, x, nr, in, &w, with_bias ? bias : NULL, out, y0);
                        /* As given, then in the backend's packed layout
                         * where it has one (AVX2, AVX-512): the same checks. */
                        for (int pk = 0; pk < 2; pk++) {
                            if (pk) {
                                TT_ASSERT_EQ_INT(cpu.iface->pack(cpu.ctx, &w), CM_OK);
                                if (!w.packed) break;
                                packed++;
                            }
                            cpu.iface->matmul(cpu.ctx, x, nr, in, &w, with_bias ? bias : NULL, out,
                                              y1);
                            /* Summation order only: a few ulps of the partial sums. */
                            for (size_t i = 0; i < nr * out; i++)
                                TT_ASSERT_MSG(
                                    fabs(y0[i] - y1[i]) <= 1e-5 * sqrt((double)in),
                                    "%s%s dtype %d rows %zu in %zu out %zu: [%zu] %g vs %g",
                                    k_isas[ii], pk ? " packed" : "", (int)dts[d], nr, in, out, i,
                                    y0[i], y1[i]);
                            for (size_t r = 0; r < nr; r++) {
                                cpu.iface->matmul(cpu.ctx, x + r * in, 1, in, &w,
                                                  with_bias ? bias : NULL, out, y2);
                                TT_ASSERT_MSG(memcmp(y2, y1 + r * out, out * 4) == 0,
                                              "%s%s: row %zu of %zu differs alone (in %zu out %zu)",
                                              k_isas[ii], pk ? " packed" : "", r, nr, in, out);
                            }
                        }
                        free(x), free(wf), free(bias), free(y0), free(y1), free(y2), free(wd);
                    }
        cpu.iface->free(cpu.ctx);
        tested++;
    }
    ref.iface->free(ref.ctx);
    TT_ASSERT(tested >= 1);
    /* The avx2 and avx512 paths pack: their cases with 32+ outputs (3
     * dtypes x 7 input sizes x 3 output counts x 7 row counts) each. */
    int with_panels = eng_cpu_isa_available("avx2") + eng_cpu_isa_available("avx512");
    TT_ASSERT_EQ_INT(packed, with_panels * 3 * 7 * 3 * 7);
}

/* Every block shape and tile split of the packed kernels, AVX2 and
 * AVX-512 (AVX-512: one block for up to 12 rows, blocks of 6 to 12 rows
 * above; AVX2: 1 row x 2 panels, 2 or 3 rows x 1 panel), each row count
 * from 1 to 26, tiles of 48 split evenly (49, 61, 97 rows), chunks of
 * panels that end inside a block (out 100: 4 panels, the last one
 * partial; out 1000: 32 panels), all three weight dtypes: against the ref
 * backend, no output left unwritten (y starts as NaN), every row
 * bit-identical alone, and the two instruction sets' bits the same (one
 * FMA chain per output in the inputs' order on both). */
TT_TEST(engine, cpu_packed_matmul_every_row_count) {
    static const char *const isas[] = {"avx2", "avx512"};
    const char *cap = getenv("TANDEM_CPU_ISA");
    eng_backend_t ref, cpu[2];
    int n_isa = 0;
    for (int k = 0; k < 2; k++)
        if (eng_cpu_isa_available(isas[k]) &&
            (!cap || !*cap || !strcmp(cap, "avx512") || !strcmp(cap, isas[k])))
            TT_ASSERT_EQ_INT(cpu_backend_on(isas[k], &cpu[n_isa++]), CM_OK);
    if (!n_isa) TT_SKIP("no AVX2 (or TANDEM_CPU_ISA=scalar): the packed kernels do not run");
    static const mdl_dtype_t dts[] = {MDL_F32, MDL_BF16, MDL_F16};
    static const size_t outs[] = {100, 1000};
    size_t rows_[32], nrows = 0;
    for (size_t r = 1; r <= 26; r++) rows_[nrows++] = r;
    rows_[nrows++] = 49, rows_[nrows++] = 61, rows_[nrows++] = 97;
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    uint64_t rng = 4242;
    const size_t in = 70, maxr = 97;
    float *x = malloc(maxr * in * 4), *bias = malloc(1000 * 4), *y0 = malloc(maxr * 1000 * 4);
    float *y1[2] = {malloc(maxr * 1000 * 4), malloc(maxr * 1000 * 4)}, *y2 = malloc(1000 * 4);
    void *wd = malloc(1000 * in * 4);
    for (size_t i = 0; i < maxr * in; i++) x[i] = (float)rnd(&rng) - 0.5f;
    for (size_t i = 0; i < 1000; i++) bias[i] = (float)rnd(&rng);
    for (size_t d = 0; d < 3; d++)
        for (size_t b = 0; b < 2; b++) {
            size_t out = outs[b];
            rnd_weights(wd, out * in, dts[d], &rng);
            mdl_tensor_t w[2];
            for (int k = 0; k < n_isa; k++) {
                w[k] = (mdl_tensor_t){"w", dts[d], 2, {out, in}, wd, 0, NULL, false};
                TT_ASSERT_EQ_INT(cpu[k].iface->pack(cpu[k].ctx, &w[k]), CM_OK);
                TT_ASSERT(w[k].packed);
            }
            for (size_t c = 0; c < nrows; c++) {
                size_t nr = rows_[c];
                const float *bs = (nr + b) % 2 ? bias : NULL;
                ref.iface->matmul(ref.ctx, x, nr, in, &w[0], bs, out, y0);
                for (int k = 0; k < n_isa; k++) {
                    const char *isa = eng_cpu_isa(&cpu[k]);
                    for (size_t i = 0; i < nr * out; i++) y1[k][i] = NAN;
                    cpu[k].iface->matmul(cpu[k].ctx, x, nr, in, &w[k], bs, out, y1[k]);
                    for (size_t i = 0; i < nr * out; i++)
                        TT_ASSERT_MSG(fabs(y0[i] - y1[k][i]) <= 1e-5 * sqrt((double)in),
                                      "%s dtype %d rows %zu out %zu: [%zu] %g vs ref %g", isa,
                                      (int)dts[d], nr, out, i, (double)y1[k][i], (double)y0[i]);
                    for (size_t r = 0; r < nr; r++) {
                        cpu[k].iface->matmul(cpu[k].ctx, x + r * in, 1, in, &w[k], bs, out, y2);
                        TT_ASSERT_MSG(memcmp(y2, y1[k] + r * out, out * 4) == 0,
                                      "%s dtype %d: row %zu of %zu differs alone (out %zu)", isa,
                                      (int)dts[d], r, nr, out);
                    }
                    if (k)
                        TT_ASSERT_MSG(memcmp(y1[k], y1[0], nr * out * 4) == 0,
                                      "dtype %d rows %zu out %zu: avx512 and avx2 panels differ",
                                      (int)dts[d], nr, out);
                }
            }
        }
    free(x), free(bias), free(y0), free(y1[0]), free(y1[1]), free(y2), free(wd);
    for (int k = 0; k < n_isa; k++) cpu[k].iface->free(cpu[k].ctx);
    ref.iface->free(ref.ctx);
}

/* @cpu's attention against the ref backend's, with f32 (@bf 0) or bf16
 * K/V rows: GQA groups 1-3 and 8, head sizes that are and are not a
 * multiple of the vector width, K/V rows scattered (a paged cache), batches
 * of tokens with different context lengths (big enough to use the thread
 * pool), outputs within @tol; each token's rows bit-identical when it is
 * alone in the batch (its query heads then run as the rows of one block). */
static void check_attention(eng_backend_t *cpu, const char *name, int bf, float tol) {
    static const uint32_t hds[] = {64, 128, 40, 8}, heads[][2] = {{4, 2}, {6, 2}, {3, 3}, {8, 1}};
    static const uint32_t ctxs[] = {1, 2, 17, 299, 129, 64, 5}; /* longest: 3 keys past 4s */
    enum { T = 7, NPOS = 300 };
    eng_backend_t ref;
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    uint64_t rng = 777;
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 4; b++) {
            uint32_t hd = hds[a], nh = heads[b][0], nkv = heads[b][1];
            size_t qd = (size_t)nh * hd, kd = (size_t)nkv * hd;
            float *q = malloc(T * qd * 4), *o0 = malloc(T * qd * 4), *o1 = malloc(T * qd * 4);
            float *o2 = malloc(qd * 4), *kv = malloc(2 * NPOS * kd * 4);
            uint16_t *kvh = malloc(2 * NPOS * kd * 2);
            eng_kv_row_t kr[NPOS], vr[NPOS];
            const eng_kv_row_t *tk[T], *tv[T];
            uint32_t ctx[T];
            for (size_t i = 0; i < T * qd; i++) q[i] = (float)rnd(&rng) * 4 - 2;
            for (size_t i = 0; i < 2 * NPOS * kd; i++) {
                kv[i] = (float)rnd(&rng) * 4 - 2;
                kvh[i] = eng_dp_bf16(kv[i]);
            }
            for (size_t p = 0; p < NPOS; p++) { /* rows out of order, as in blocks */
                size_t slot = (p * 7919) % NPOS;
                if (bf) {
                    kr[p].h = kvh + slot * 2 * kd;
                    vr[p].h = kvh + slot * 2 * kd + kd;
                } else {
                    kr[p].f = kv + slot * 2 * kd;
                    vr[p].f = kv + slot * 2 * kd + kd;
                }
            }
            for (size_t t = 0; t < T; t++) {
                tk[t] = kr;
                tv[t] = vr;
                ctx[t] = ctxs[t];
            }
            eng_attn_t at = {T, nh, nkv, hd, 1.0f / sqrtf((float)hd), q, o0, ctx, tk, tv, bf};
            TT_ASSERT_EQ_INT(ref.iface->attention(ref.ctx, &at), CM_OK);
            at.out = o1;
            TT_ASSERT_EQ_INT(cpu->iface->attention(cpu->ctx, &at), CM_OK);
            for (size_t i = 0; i < T * qd; i++)
                TT_ASSERT_MSG(fabsf(o0[i] - o1[i]) <= tol,
                              "%s kv %s hd %u heads %u/%u: [%zu] %g vs %g", name,
                              bf ? "bf16" : "f32", hd, nh, nkv, i, o0[i], o1[i]);
            for (size_t t = 0; t < T; t++) {
                eng_attn_t one = {1,  nh,      nkv,    hd,     at.scale, q + t * qd,
                                  o2, ctx + t, tk + t, tv + t, bf};
                TT_ASSERT_EQ_INT(cpu->iface->attention(cpu->ctx, &one), CM_OK);
                TT_ASSERT_MSG(memcmp(o2, o1 + t * qd, qd * 4) == 0,
                              "%s kv %s hd %u heads %u/%u: token %zu differs alone", name,
                              bf ? "bf16" : "f32", hd, nh, nkv, t);
            }
            /* bf16 rows are not f32 rows: the result moved. */
            if (bf) {
                eng_attn_t f = at;
                for (size_t p = 0; p < NPOS; p++) {
                    size_t slot = (p * 7919) % NPOS;
                    kr[p].f = kv + slot * 2 * kd;
                    vr[p].f = kv + slot * 2 * kd + kd;
                }
                f.kv_bf16 = false;
                f.out = o0;
                TT_ASSERT_EQ_INT(ref.iface->attention(ref.ctx, &f), CM_OK);
                TT_ASSERT(memcmp(o0, o1, T * qd * 4) != 0);
            }
            free(q), free(o0), free(o1), free(o2), free(kv), free(kvh);
        }
}

/* The cpu backend's attention on every instruction-set path, f32 and bf16
 * K/V rows: the ref backend's up to summation order. */
TT_TEST(engine, cpu_attention_matches_ref_on_every_isa) {
    int tested = 0;
    for (size_t ii = 0; ii < 3; ii++) {
        if (!eng_cpu_isa_available(k_isas[ii])) continue;
        eng_backend_t cpu;
        TT_ASSERT_EQ_INT(cpu_backend_on(k_isas[ii], &cpu), CM_OK);
        for (int bf = 0; bf < 2; bf++) check_attention(&cpu, k_isas[ii], bf, 1e-5f);
        cpu.iface->free(cpu.ctx);
        tested++;
    }
    TT_ASSERT(tested >= 1);
}

/* With TANDEM_CPU_AMX=1 and bf16 K/V, attention runs on AMX tiles (head
 * sizes 64 and 128; 40 and 8 stay on the vector kernels) with q and the
 * probabilities rounded to bf16: within 2e-2 of the ref backend's f32
 * arithmetic on outputs up to 2 (bf16 keeps 8 bits), a token's rows the
 * same bits alone and in a block. With f32 K/V, the vector kernels. */
TT_TEST(engine, cpu_attention_on_amx_tiles_close_to_ref) {
    eng_backend_t cpu;
    amx_mode_on(&cpu);
    check_attention(&cpu, "amx", 1, 2e-2f);
    check_attention(&cpu, "amx", 0, 1e-5f);
    cpu.iface->free(cpu.ctx);
    amx_mode_off();
}

/* The cpu backend's SwiGLU and RMSNorm on every instruction-set path
 * against the ref backend's: lengths that are and are not a multiple of
 * the vector width (and big enough for the thread pool), gate values
 * across exp's range (down to -100, where exp(-|g|) is clamped, and up to
 * +100); each element / row the same computed alone. */
TT_TEST(engine, cpu_swiglu_rmsnorm_match_ref_on_every_isa) {
    static const size_t ns[] = {1, 7, 16, 17, 100, 40000};
    static const size_t dims[][2] = {{1, 1}, {3, 7}, {5, 16}, {9, 129}, {64, 1024}};
    eng_backend_t ref;
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    uint64_t rng = 4242;
    int tested = 0;
    for (size_t ii = 0; ii < 3; ii++) {
        if (!eng_cpu_isa_available(k_isas[ii])) continue;
        eng_backend_t cpu;
        TT_ASSERT_EQ_INT(cpu_backend_on(k_isas[ii], &cpu), CM_OK);
        for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
            size_t n = ns[a];
            float *g0 = malloc(n * 4), *g1 = malloc(n * 4), *u = malloc(n * 4);
            for (size_t i = 0; i < n; i++) {
                double r = rnd(&rng);
                /* Most in [-8, 8], some at the extremes. */
                g0[i] = i % 97 == 3 ? (float)(200 * r - 100) : (float)(16 * r - 8);
                u[i] = (float)rnd(&rng) * 4 - 2;
            }
            if (n > 2) g0[1] = 0.0f, g0[2] = -0.0f;
            memcpy(g1, g0, n * 4);
            ref.iface->swiglu(ref.ctx, g0, u, n);
            cpu.iface->swiglu(cpu.ctx, g1, u, n);
            for (size_t i = 0; i < n; i++)
                TT_ASSERT_MSG(fabsf(g0[i] - g1[i]) <= 4e-7f * fabsf(g0[i]) + 1e-30f,
                              "%s swiglu n %zu: [%zu] %.9g vs %.9g", k_isas[ii], n, i, g0[i],
                              g1[i]);
            free(g0), free(g1), free(u);
        }
        for (size_t a = 0; a < sizeof dims / sizeof dims[0]; a++) {
            size_t rows = dims[a][0], dim = dims[a][1];
            float *x = malloc(rows * dim * 4), *w = malloc(dim * 4);
            float *y0 = malloc(rows * dim * 4), *y1 = malloc(rows * dim * 4), *y2 = malloc(dim * 4);
            for (size_t i = 0; i < rows * dim; i++) x[i] = (float)rnd(&rng) * 6 - 3;
            for (size_t i = 0; i < dim; i++) w[i] = (float)rnd(&rng) * 2;
            ref.iface->rmsnorm(ref.ctx, x, rows, dim, w, 1e-6f, y0);
            cpu.iface->rmsnorm(cpu.ctx, x, rows, dim, w, 1e-6f, y1);
            for (size_t i = 0; i < rows * dim; i++)
                TT_ASSERT_MSG(fabsf(y0[i] - y1[i]) <= 1e-6f * (1.0f + fabsf(y0[i])),
                              "%s rmsnorm %zu x %zu: [%zu] %g vs %g", k_isas[ii], rows, dim, i,
                              y0[i], y1[i]);
            for (size_t r = 0; r < rows; r++) {
                cpu.iface->rmsnorm(cpu.ctx, x + r * dim, 1, dim, w, 1e-6f, y2);
                TT_ASSERT_MSG(memcmp(y2, y1 + r * dim, dim * 4) == 0,
                              "%s rmsnorm: row %zu differs alone", k_isas[ii], r);
            }
            /* In place (y == x), as the engine's q/k norms run. */
            cpu.iface->rmsnorm(cpu.ctx, x, rows, dim, w, 1e-6f, x);
            TT_ASSERT(memcmp(x, y1, rows * dim * 4) == 0);
            free(x), free(w), free(y0), free(y1), free(y2);
        }
        cpu.iface->free(cpu.ctx);
        tested++;
    }
    ref.iface->free(ref.ctx);
    TT_ASSERT(tested >= 1);
}

/* The fast CPU backend against the reference backend, on every
 * instruction-set path this machine has: same tokens, logits equal up to
 * summation order, and bit-identical inside a mixed batch. */
TT_TEST(engine, cpu_backend_matches_ref) {
    for (size_t ii = 0; ii < 3; ii++)
        for (size_t mi = 0; mi < sizeof k_models / sizeof k_models[0]; mi++) {
            if (!eng_cpu_isa_available(k_isas[ii])) continue;
            setenv("TANDEM_CPU_ISA", k_isas[ii], 1);
            rig_t a, b;
            rig_open(&a, k_models[mi], ENG_BACKEND_REF);
            rig_open(&b, k_models[mi], ENG_BACKEND_CPU);
            float *la = malloc(a.vocab * sizeof(float)), *lb = malloc(a.vocab * sizeof(float));
            eng_kv_seq_t *sa, *sb;
            prefill_probe(&a, &sa, la);
            prefill_probe(&b, &sb, lb);
            double e = nmse(la, lb, a.vocab);
            TT_ASSERT_MSG(e < 1e-10, "%s %s: NMSE cpu vs ref %.3g", k_isas[ii], k_models[mi], e);
            TT_ASSERT_EQ_INT(argmax(la, a.vocab), argmax(lb, b.vocab));
            TT_ASSERT_STR_EQ(eng_model_backend_name(b.m), "cpu");
            eng_kv_seq_free(a.kv, sa);
            eng_kv_seq_free(b.kv, sb);
            free(la);
            free(lb);
            rig_close(&a);
            rig_close(&b);
            unsetenv("TANDEM_CPU_ISA");
        }
}

/* A tensor whose mapped pages were released (the cpu backend packed it)
 * reads back the same bytes from the file; memory outside the mapping is
 * left alone. */
TT_TEST(engine, released_weights_read_back_from_the_file) {
    char dir[1024], err[256] = "";
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen3moe", tt_root());
    mdl_weights_t *w = NULL;
    TT_ASSERT_EQ_INT(mdl_weights_open(dir, &w, err, sizeof err), CM_OK);
    uint64_t shape[2] = {0, 0};
    mdl_tensor_t t;
    TT_ASSERT_EQ_INT(mdl_weights_get(w, "model.embed_tokens.weight", 2, shape, &t, err, sizeof err),
                     CM_OK);
    TT_ASSERT(t.nbytes > 3 * 4096); /* whole pages inside it */
    void *copy = malloc(t.nbytes);
    memcpy(copy, t.data, t.nbytes);
    mdl_weights_release(w, &t);
    TT_ASSERT(memcmp(copy, t.data, t.nbytes) == 0);
    mdl_tensor_t heap = t;
    heap.data = copy;
    mdl_weights_release(w, &heap); /* not in the mapping: untouched */
    TT_ASSERT(memcmp(copy, t.data, t.nbytes) == 0);
    free(copy);
    mdl_weights_close(w);
}

/* Copies fixture @model into a scratch dir; returns its path. */
static const char *scratch_copy(const char *model) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tt_tmpdir(), model);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp -r '%s/tests/fixtures/models/%s' '%s'", tt_root(), model, dir);
    TT_ASSERT(system(cmd) == 0);
    return dir;
}

static void expect_load_error(const char *dir, cm_status_t want, const char *needle) {
    eng_model_t *m = NULL;
    char err[512] = "";
    cm_status_t st = eng_model_load(dir, ENG_BACKEND_REF, &m, err, sizeof err);
    TT_ASSERT_MSG(st == want, "want %s, got %s (%s)", cm_status_name(want), cm_status_name(st),
                  err);
    TT_ASSERT_MSG(strstr(err, needle), "error '%s' lacks '%s'", err, needle);
    TT_ASSERT(m == NULL);
}

TT_TEST(engine, loader_errors_name_file_and_tensor) {
    char cmd[4096], path[2048];
    const char *d = scratch_copy("qwen3");
    /* Truncated weights file. */
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    snprintf(cmd, sizeof cmd, "truncate -s 100000 '%s'", path);
    TT_ASSERT(system(cmd) == 0);
    expect_load_error(d, CM_ERR_TRUNCATED, "model.safetensors: tensor '");
    /* Wrong shape: the config says a different hidden size. */
    d = scratch_copy("qwen2");
    snprintf(cmd, sizeof cmd,
             "sed -i 's/\"hidden_size\": 96/\"hidden_size\": 128/' '%s/config.json'", d);
    TT_ASSERT(system(cmd) == 0);
    expect_load_error(d, CM_ERR_BAD_FORMAT, "tensor 'model.embed_tokens.weight': shape [256, 96]");
    /* Missing tensor: drop lm_head from the sharded index's view by
     * renaming it in place (same length keeps the header valid). */
    d = scratch_copy("mixtral");
    snprintf(cmd, sizeof cmd, "sed -i 's/lm_head.weight/lm_hexd.weight/' '%s/model.safetensors'",
             d);
    TT_ASSERT(system(cmd) == 0);
    expect_load_error(d, CM_ERR_NOT_FOUND, "'lm_head.weight' is missing");
    /* Unsupported architecture. */
    d = scratch_copy("qwen3moe");
    snprintf(cmd, sizeof cmd, "sed -i 's/Qwen3MoeForCausalLM/GPT2LMHeadModel/' '%s/config.json'",
             d);
    TT_ASSERT(system(cmd) == 0);
    expect_load_error(d, CM_ERR_UNSUPPORTED, "unsupported architecture 'GPT2LMHeadModel'");
    /* Unsupported dtype: a one-tensor file in I8. */
    d = scratch_copy("qwen2moe");
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    FILE *f = fopen(path, "wb");
    const char hdr[] = "{\"model.embed_tokens.weight\":{\"dtype\":\"I8\",\"shape\":[2],"
                       "\"data_offsets\":[0,2]}}";
    uint64_t hl = sizeof hdr - 1;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, hl, f);
    fwrite("\1\2", 1, 2, f);
    fclose(f);
    expect_load_error(d, CM_ERR_UNSUPPORTED, "unsupported dtype I8");
    /* No such directory. */
    expect_load_error("/nonexistent/model", CM_ERR_NOT_FOUND, "/nonexistent/model/config.json");
}

/* ---- cuda backend (skips without a GPU) ------------------------------- */

static void need_gpu(void) {
    char dir[1024], err[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen3", tt_root());
    eng_model_t *m;
    cm_status_t st = eng_model_load(dir, ENG_BACKEND_CUDA, &m, err, sizeof err);
    if (st == CM_ERR_UNSUPPORTED || st == CM_ERR_NO_DEVICE) TT_SKIP(err);
    TT_ASSERT_MSG(st == CM_OK, "cuda load: %s", err);
    TT_ASSERT_STR_EQ(eng_model_backend_name(m), "cuda");
    eng_model_free(m);
}

/* Without a GPU (or without CUDA in the build) the cuda backend is refused
 * with a reason, and nothing leaks. */
TT_TEST(engine, cuda_refused_clearly_without_gpu) {
    char dir[1024], err[512] = "";
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen3", tt_root());
    eng_model_t *m = NULL;
    cm_status_t st = eng_model_load(dir, ENG_BACKEND_CUDA, &m, err, sizeof err);
    if (st == CM_OK) {
        eng_model_free(m);
        TT_SKIP("a GPU is present");
    }
    TT_ASSERT_MSG(st == CM_ERR_UNSUPPORTED || st == CM_ERR_NO_DEVICE, "status %s: %s",
                  cm_strerror(st), err);
    TT_ASSERT_MSG(strstr(err, "cuda") || strstr(err, "GPU"), "unclear error: %s", err);
    TT_ASSERT(m == NULL);
}

/* f32 compute on the GPU (weights widened): logits and greedy tokens as
 * transformers' on every fixture architecture. */
TT_TEST(engine, cuda_f32_matches_transformers) {
    need_gpu();
    setenv("TANDEM_CUDA_COMPUTE", "f32", 1);
    for (size_t mi = 0; mi < sizeof k_models / sizeof k_models[0]; mi++)
        check_model_tol(k_models[mi], ENG_BACKEND_CUDA, 1e-4);
    unsetenv("TANDEM_CUDA_COMPUTE");
}

/* Checkpoint-dtype compute (bf16 tensor cores for the bf16 fixture) against
 * the cpu backend on a 40-token prompt, then the same sequence inside a
 * mixed batch. */
TT_TEST(engine, cuda_native_dtype_close_to_cpu_and_batch_stable) {
    need_gpu();
    for (size_t mi = 0; mi < sizeof k_models / sizeof k_models[0]; mi++) {
        rig_t a, b;
        rig_open(&a, k_models[mi], ENG_BACKEND_CPU);
        rig_open(&b, k_models[mi], ENG_BACKEND_CUDA);
        int32_t toks[40], other[12], dec[4] = {7, 8, 9, 10};
        for (int i = 0; i < 40; i++) toks[i] = (i * 53 + 11) % 250;
        for (int i = 0; i < 12; i++) other[i] = (i * 37 + 3) % 250;
        float *la = malloc(a.vocab * 4), *lb = malloc(a.vocab * 4), *mix = malloc(a.vocab * 8);
        eng_kv_seq_t *sa, *sb, *so, *sd;
        prefill_probe(&a, &sa, la);
        prefill_probe(&b, &sb, lb);
        bool bf16 = !strcmp(k_models[mi], "qwen3moe");
        double e = nmse(la, lb, a.vocab);
        TT_ASSERT_MSG(e < (bf16 ? 1e-3 : 1e-10), "%s: NMSE cuda vs cpu %.3g", k_models[mi], e);
        if (!bf16) TT_ASSERT_EQ_INT(argmax(la, a.vocab), argmax(lb, b.vocab));
        /* The same prompt again, beside another prompt and a decode token. */
        eng_kv_seq_free(b.kv, sb);
        TT_ASSERT_EQ_INT(eng_kv_seq_new(b.kv, dec, 4, 0, &sd, NULL), CM_OK);
        eng_item_t idd = {sd, 0, 3, false};
        TT_ASSERT_EQ_INT(eng_forward(b.m, b.kv, &idd, 1, mix), CM_OK);
        eng_kv_seq_set_computed(b.kv, sd, 3);
        TT_ASSERT_EQ_INT(eng_kv_seq_new(b.kv, toks, 40, 0, &sb, NULL), CM_OK);
        TT_ASSERT_EQ_INT(eng_kv_seq_new(b.kv, other, 12, 0, &so, NULL), CM_OK);
        eng_item_t batch[3] = {{so, 0, 12, false}, {sb, 0, 40, true}, {sd, 3, 1, true}};
        TT_ASSERT_EQ_INT(eng_forward(b.m, b.kv, batch, 3, mix), CM_OK);
        double md = 0, mb = 0;
        for (uint32_t i = 0; i < a.vocab; i++) {
            md = fmax(md, fabs(mix[i] - lb[i]));
            mb = fmax(mb, fabs(lb[i]));
        }
        TT_ASSERT_MSG(md / mb < (bf16 ? 1e-2 : 1e-5), "%s: batch changed logits by %.3g",
                      k_models[mi], md / mb);
        eng_kv_seq_free(a.kv, sa);
        eng_kv_seq_free(b.kv, sb);
        eng_kv_seq_free(b.kv, so);
        eng_kv_seq_free(b.kv, sd);
        TT_ASSERT_EQ_INT(eng_kv_check(b.kv), CM_OK);
        free(la);
        free(lb);
        free(mix);
        rig_close(&a);
        rig_close(&b);
    }
}
