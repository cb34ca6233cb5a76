/*
 * test_dw_sched.c - the scheduler's layer streaming (what a prefill worker
 * ships while later layers compute), on a real fixture checkpoint through
 * dw_runner. A layer's notice must come once its K/V of the whole prompt
 * are final and before the next layer is written; only the prompt's last
 * chunk streams; the first token is the same with and without it.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dw_runner.h"
#include "tt.h"

#define MAX_LAYERS 8

typedef struct {
    eng_kv_t *kv;
    uint32_t n_prompt, n_layers, row; /* row = floats per K row */
    uint32_t notices[MAX_LAYERS + 1]; /* kv_layers of each notice, in order */
    uint32_t n_notices;
    bool notice_after_finish;
    /* K of the prompt's last position, per layer, as seen at notice L
     * (seen_at[L-1][l]) */
    float seen_at[MAX_LAYERS][MAX_LAYERS][512];
    eng_kv_seq_t *seq; /* handed over by DW_FINISH_PREFILL */
    int32_t first;
    int finished;
} rec_t;

static void last_k(const rec_t *r, const int32_t *blocks, uint32_t layer, float *out) {
    uint32_t bs = eng_kv_geom(r->kv)->block_size, p = r->n_prompt - 1;
    void *kp, *vp;
    TT_ASSERT_EQ_INT(eng_kv_slot_ptrs(r->kv, layer, blocks[p / bs], p % bs, &kp, &vp), CM_OK);
    memcpy(out, kp, r->row * sizeof(float));
}

static void on_event(void *ud, const dw_event_t *e) {
    rec_t *r = ud;
    if (e->kv_layers) {
        r->notice_after_finish |= r->finished > 0;
        TT_ASSERT(r->n_notices < MAX_LAYERS && e->kv_layers <= r->n_layers);
        for (uint32_t l = 0; l < r->n_layers; l++)
            last_k(r, e->kv_blocks, l, r->seen_at[e->kv_layers - 1][l]);
        r->notices[r->n_notices++] = e->kv_layers;
        return;
    }
    TT_ASSERT_MSG(e->finish == DW_FINISH_PREFILL, "finish %d (error %d)", e->finish, e->error);
    TT_ASSERT(e->seq && e->n == 1);
    r->seq = e->seq;
    r->first = e->ids[0];
    r->finished++;
}

/* Runs a prefill_only request of @n tokens in chunks of @chunk tokens. */
static void run(rec_t *r, bool stream, uint32_t n, uint32_t chunk) {
    char dir[1024], err[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/qwen3", tt_root());
    dw_runner_config_t cfg = {.model_dir = dir,
                              .model_id = "qwen3",
                              .backend = ENG_BACKEND_CPU,
                              .kv_pool_bytes = 8u << 20,
                              .max_batch_tokens = chunk,
                              .layer_events = stream};
    dw_runner_t *run;
    memset(r, 0, sizeof *r);
    TT_ASSERT_MSG(dw_runner_new(&cfg, on_event, r, &run, err, sizeof err) == CM_OK, "%s", err);
    r->kv = dw_runner_kv(run);
    r->n_prompt = n;
    r->n_layers = eng_model_config(dw_runner_model(run))->n_layers;
    r->row = eng_kv_geom(r->kv)->kv_heads * eng_kv_geom(r->kv)->head_dim;
    TT_ASSERT(r->n_layers <= MAX_LAYERS && r->row <= 512);
    int32_t prompt[256];
    for (uint32_t i = 0; i < n; i++) prompt[i] = (int32_t)(3 + (i * 37) % 200);
    dw_request_t q = {.id = 7, .prompt = prompt, .n_prompt = n, .prefill_only = true};
    eng_sampler_params_default(&q.params);
    TT_ASSERT_EQ_INT(dw_sched_add(dw_runner_sched(run), &q), CM_OK);
    for (int steps = 0; !r->finished && steps < 100; steps++) {
        uint32_t before = r->n_notices;
        TT_ASSERT(dw_sched_step(dw_runner_sched(run)));
        /* Notices come only in the step that finishes the prompt. */
        TT_ASSERT_MSG(r->n_notices == before || r->finished, "notices in a non-final chunk");
    }
    TT_ASSERT_EQ_INT(r->finished, 1);
    if (stream) {
        /* Final K of every layer, to compare with what each notice saw. */
        float final[MAX_LAYERS][512];
        for (uint32_t l = 0; l < r->n_layers; l++)
            last_k(r, eng_kv_seq_blocks(r->seq), l, final[l]);
        for (uint32_t L = 1; L <= r->n_layers; L++) {
            for (uint32_t l = 0; l < r->n_layers; l++) {
                bool same = !memcmp(r->seen_at[L - 1][l], final[l], r->row * sizeof(float));
                TT_ASSERT_MSG(same == (l < L), "notice %u: layer %u %s", L, l,
                              l < L ? "not final yet" : "already written");
            }
        }
    }
    eng_kv_seq_free(r->kv, r->seq);
    dw_runner_free(run);
}

TT_TEST(dw_sched, layer_notices_come_as_each_layer_is_written) {
    static rec_t on, off;
    run(&on, true, 40, 16); /* 3 chunks: 16 + 16 + 8 */
    TT_ASSERT_EQ_INT(on.n_notices, on.n_layers);
    for (uint32_t i = 0; i < on.n_notices; i++) TT_ASSERT_EQ_INT(on.notices[i], i + 1);
    TT_ASSERT_MSG(!on.notice_after_finish, "a notice after DW_FINISH_PREFILL");
    run(&off, false, 40, 16);
    TT_ASSERT_EQ_INT(off.n_notices, 0);
    TT_ASSERT_EQ_INT(on.first, off.first);
}

/* A checkpoint whose final norm weights are NaN: every logit is NaN. The
 * request must fail with the reason (not hang, not sample), and its KV
 * blocks must all come back. */
typedef struct {
    int finish, n_events;
    cm_status_t error;
    const char *why;
} nan_rec_t;

static void on_nan_event(void *ud, const dw_event_t *e) {
    nan_rec_t *r = ud;
    r->n_events++;
    if (e->finish != DW_FINISH_NONE) {
        r->finish = e->finish;
        r->error = e->error;
        r->why = e->why;
    }
}

/* Copies fixture @name to the test's scratch directory with tensor
 * @tensor (F32) overwritten by NaN; returns the directory. */
static const char *nan_copy(const char *name, const char *tensor) {
    static char dst[1024];
    char cmd[3200];
    snprintf(dst, sizeof dst, "%s/nanmodel", tt_tmpdir());
    snprintf(cmd, sizeof cmd, "cp -r '%s/tests/fixtures/models/%s' '%s'", tt_root(), name, dst);
    TT_ASSERT(system(cmd) == 0);
    char path[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dst);
    FILE *f = fopen(path, "r+b");
    TT_ASSERT(f);
    uint8_t len8[8];
    TT_ASSERT(fread(len8, 1, 8, f) == 8);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)len8[i] << (8 * i);
    char *h = malloc(hlen + 1);
    TT_ASSERT(h && fread(h, 1, hlen, f) == hlen);
    h[hlen] = '\0';
    cJSON *j = cJSON_Parse(h), *t = cJSON_GetObjectItem(j, tensor);
    TT_ASSERT_MSG(t && !strcmp(cJSON_GetObjectItem(t, "dtype")->valuestring, "F32"), "%s", tensor);
    const cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
    size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble,
           e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
    TT_ASSERT(fseek(f, (long)(8 + hlen + b), SEEK_SET) == 0);
    for (size_t i = b; i < e; i += 4) {
        const float nan = NAN;
        TT_ASSERT(fwrite(&nan, 4, 1, f) == 1);
    }
    fclose(f);
    cJSON_Delete(j);
    free(h);
    return dst;
}

TT_TEST(dw_sched, nan_logits_fail_the_request_with_the_reason_and_free_its_blocks) {
    const char *dir = nan_copy("qwen3", "model.norm.weight");
    char err[512];
    dw_runner_config_t cfg = {.model_dir = dir,
                              .model_id = "qwen3",
                              .backend = ENG_BACKEND_CPU,
                              .kv_pool_bytes = 8u << 20,
                              .max_batch_tokens = 64};
    nan_rec_t r = {0};
    dw_runner_t *run;
    TT_ASSERT_MSG(dw_runner_new(&cfg, on_nan_event, &r, &run, err, sizeof err) == CM_OK, "%s", err);
    eng_kv_stats_t before, after;
    eng_kv_stats(dw_runner_kv(run), &before);
    int32_t prompt[20];
    for (int i = 0; i < 20; i++) prompt[i] = 3 + i;
    dw_request_t q = {.id = 9, .prompt = prompt, .n_prompt = 20};
    eng_sampler_params_default(&q.params);
    q.params.max_tokens = 8;
    TT_ASSERT_EQ_INT(dw_sched_add(dw_runner_sched(run), &q), CM_OK);
    for (int steps = 0; !r.finish && steps < 20; steps++) dw_sched_step(dw_runner_sched(run));
    TT_ASSERT_EQ_INT(r.finish, DW_FINISH_ERROR);
    TT_ASSERT_EQ_INT(r.error, CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_MSG(r.why && strstr(r.why, "NaN"), "why: %s", r.why ? r.why : "(none)");
    TT_ASSERT_EQ_INT(r.n_events, 1); /* no token was reported */
    eng_kv_stats(dw_runner_kv(run), &after);
    TT_ASSERT_EQ_INT(after.n_used, 0);
    TT_ASSERT_EQ_INT(after.n_seqs, 0);
    TT_ASSERT_EQ_INT(after.n_free + after.n_cached, before.n_free + before.n_cached);
    TT_ASSERT_EQ_INT(eng_kv_check(dw_runner_kv(run)), CM_OK);
    dw_runner_free(run);
}
