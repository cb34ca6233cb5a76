/*
 * test_dw_sched.c - the scheduler's layer streaming (what a prefill worker
 * ships while later layers compute), on a real fixture checkpoint through
 * dw_runner. A layer's notice must come once its K/V of the whole prompt
 * are final and before the next layer is written; only the prompt's last
 * chunk streams; the first token is the same with and without it.
 */
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
