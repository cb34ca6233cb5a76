/*
 * test_rt_sched.c - the router core's request state machine, end to end
 * over real ZeroMQ to worker processes that speak the control-plane
 * protocol with scripted behaviour (the real prefill/decode workers are
 * tested against the router in tests/integration). Covers colocated and
 * disaggregated flows, client cancel, worker death before and after
 * tokens streamed, deadlines and the queue limit.
 *
 * Scripted worker: on PrefillJob (colocated) or KvReady (decode) it streams
 * tokens t_i = (first + i) % 1000, one TokenStream per token with text
 * "<t_i>;" ("nul" U+0000 "777;" for 777: text holding U+0000), finishing with
 * LENGTH after max_tokens. A prefill worker
 * answers PrefillJob with KvReady(first = prompt[0] + 1). Delays and
 * crashes are per-worker options. Cancels are reported to the parent
 * through a pipe as "C<id>\n".
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_cp_agent.h"
#include "rt_core.h"
#include "tt.h"

typedef struct {
    Tandem__Cp__Role role;
    uint32_t delay_ms; /* before answering a job */
    bool silent;       /* never answer jobs */
    int crash_after;   /* exit(9) after streaming this many tokens (0 = never) */
    uint32_t max_batch;
} script_t;

typedef struct worker worker_t;

/* One job being streamed; a worker runs up to 32 at once. */
typedef struct {
    worker_t *w;
    uv_timer_t timer;
    uint64_t id;
    int32_t next_token;
    uint32_t left, sent, max_tokens;
    bool busy;
} job_t;

struct worker {
    uv_loop_t *loop;
    cm_cp_agent_t *agent;
    script_t s;
    int report_fd;
    uv_signal_t sig;
    job_t jobs[32];
    /* Decode: max_tokens of reserved requests, by id. */
    uint64_t reserved_id[32];
    uint32_t reserved_max[32];
};

static cm_cp_msg_t env(void) {
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    return m;
}

static void stream_one(uv_timer_t *t) {
    job_t *j = t->data;
    worker_t *w = j->w;
    if (!j->busy) return;
    Tandem__Cp__TokenStream ts = TANDEM__CP__TOKEN_STREAM__INIT;
    int32_t tok = j->next_token;
    char text[32];
    int n = snprintf(text, sizeof text, "%d;", tok);
    /* Token 777 says "nul", U+0000, "777;": text holding U+0000 and more after it. */
    if (tok == 777) n = snprintf(text, sizeof text, "nul%c777;", 0);
    ts.request_id = j->id;
    ts.n_token_ids = 1;
    ts.token_ids = &tok;
    ts.text = (ProtobufCBinaryData){(size_t)n, (uint8_t *)text};
    j->next_token = (j->next_token + 1) % 1000;
    j->left--;
    j->sent++;
    ts.completion_tokens = j->sent;
    if (j->left == 0) {
        ts.finish_reason = TANDEM__CP__FINISH_REASON__FINISH_LENGTH;
        j->busy = false;
        uv_timer_stop(t);
    }
    cm_cp_msg_t m = env();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_TOKENS;
    m.tokens = &ts;
    cm_cp_agent_send(w->agent, &m);
    if (w->s.crash_after && (int)j->sent >= w->s.crash_after) {
        cm_time_sleep_ns(20000000); /* let the message leave */
        _exit(9);
    }
}

static void start_stream(worker_t *w, uint64_t id, int32_t first, uint32_t n) {
    job_t *j = NULL;
    for (int i = 0; i < 32 && !j; i++)
        if (!w->jobs[i].busy) j = &w->jobs[i];
    if (!j) _exit(32); /* more concurrent jobs than this script handles */
    j->id = id;
    j->next_token = first;
    j->left = n;
    j->sent = 0;
    j->busy = true;
    uv_timer_start(&j->timer, stream_one, w->s.delay_ms + 1, 5);
}

static void on_msg(void *ud, const cm_cp_msg_t *msg) {
    worker_t *w = ud;
    char line[64];
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        snprintf(line, sizeof line, "C%llu\n", (unsigned long long)msg->cancel->request_id);
        if (write(w->report_fd, line, strlen(line)) < 0) _exit(30);
        for (int i = 0; i < 32; i++) {
            if (w->jobs[i].busy && w->jobs[i].id == msg->cancel->request_id) {
                w->jobs[i].busy = false;
                uv_timer_stop(&w->jobs[i].timer);
            }
        }
        return;
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB: {
        if (w->s.silent) return;
        const Tandem__Cp__PrefillJob *j = msg->prefill_job;
        if (w->s.role == TANDEM__CP__ROLE__ROLE_COLOCATED) {
            start_stream(w, j->request_id, (j->prompt_tokens[0] + 1) % 1000,
                         j->sampling->max_tokens);
            return;
        }
        /* Prefill: the decode worker's descriptor and blocks must be there. */
        if (j->decode_kvx_descriptor.len == 0 || j->n_dst_block_ids == 0) _exit(31);
        Tandem__Cp__KvReady k = TANDEM__CP__KV_READY__INIT;
        k.request_id = j->request_id;
        k.first_token = (j->prompt_tokens[0] + 1) % 1000;
        k.first_logprob = -0.5f;
        k.prompt_tokens = (uint32_t)j->n_prompt_tokens;
        cm_cp_msg_t m = env();
        m.body_case = TANDEM__CP__ENVELOPE__BODY_KV_READY;
        m.kv_ready = &k;
        if (w->s.delay_ms) cm_time_sleep_ns((uint64_t)w->s.delay_ms * 1000000ull);
        cm_cp_agent_send(w->agent, &m);
        return;
    }
    case TANDEM__CP__ENVELOPE__BODY_RESERVE: {
        if (w->s.silent) return;
        const Tandem__Cp__ReserveBlocks *rb = msg->reserve;
        uint32_t n = (uint32_t)((rb->n_prompt_tokens + 15) / 16);
        uint32_t ids[64];
        for (uint32_t i = 0; i < n && i < 64; i++) ids[i] = i;
        Tandem__Cp__ReserveReply rep = TANDEM__CP__RESERVE_REPLY__INIT;
        rep.request_id = rb->request_id;
        rep.n_block_ids = n < 64 ? n : 64;
        rep.block_ids = ids;
        cm_cp_msg_t m = env();
        m.body_case = TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY;
        m.reserve_reply = &rep;
        int slot = (int)(rb->request_id % 32);
        w->reserved_id[slot] = rb->request_id;
        w->reserved_max[slot] = rb->sampling->max_tokens;
        cm_cp_agent_send(w->agent, &m);
        return;
    }
    case TANDEM__CP__ENVELOPE__BODY_KV_READY: {
        int slot = (int)(msg->kv_ready->request_id % 32);
        if (w->reserved_id[slot] != msg->kv_ready->request_id) _exit(33);
        start_stream(w, msg->kv_ready->request_id, msg->kv_ready->first_token,
                     w->reserved_max[slot]);
        return;
    }
    default:
        return;
    }
}

static void on_sigterm(uv_signal_t *s, int signum) {
    worker_t *w = s->data;
    uv_signal_stop(s);
    uv_close((uv_handle_t *)s, NULL);
    for (int i = 0; i < 32; i++) {
        uv_timer_stop(&w->jobs[i].timer);
        uv_close((uv_handle_t *)&w->jobs[i].timer, NULL);
    }
    cm_cp_agent_stop(w->agent, "SIGTERM");
}

static int run_worker(const char *router, const char *id, script_t s, int report_fd) {
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    static worker_t w;
    w = (worker_t){.loop = &loop, .s = s, .report_fd = report_fd};
    for (int i = 0; i < 32; i++) {
        w.jobs[i].w = &w;
        uv_timer_init(&loop, &w.jobs[i].timer);
        w.jobs[i].timer.data = &w.jobs[i];
    }
    uv_signal_init(&loop, &w.sig);
    w.sig.data = &w;
    uv_signal_start(&w.sig, on_sigterm, SIGTERM);
    cm_cp_agent_config_t cfg = {.router = router,
                                .worker_id = id,
                                .role = s.role,
                                .model = "tiny",
                                .fingerprint = 0x5eed,
                                .block_size = 16,
                                .total_blocks = 64,
                                .max_batch = s.max_batch ? s.max_batch : 8,
                                .max_context = 512,
                                .vocab_size = 1000,
                                .kvx_descriptor = (const uint8_t *)"kvx-desc",
                                .kvx_descriptor_len =
                                    s.role == TANDEM__CP__ROLE__ROLE_COLOCATED ? 0 : 8,
                                .register_retry_ms = 50};
    cm_cp_limits_default(&cfg.limits);
    cm_cp_agent_callbacks_t cb = {.on_msg = on_msg};
    if (cm_cp_agent_new(&loop, z, &cfg, &cb, &w, &w.agent) != CM_OK) return 20;
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    zmq_ctx_term(z);
    return 0;
}

typedef struct {
    pid_t pids[8];
    int n;
    int report[2]; /* pipe: workers write, test reads */
} fleet_t;

TT_CHILD(sched_worker) {
    if (argc != 8) return 99;
    script_t s = {.role = (Tandem__Cp__Role)atoi(argv[2]),
                  .delay_ms = (uint32_t)atoi(argv[3]),
                  .silent = atoi(argv[4]) != 0,
                  .crash_after = atoi(argv[5]),
                  .max_batch = (uint32_t)atoi(argv[6])};
    return run_worker(argv[0], argv[1], s, atoi(argv[7]));
}

static pid_t spawn(fleet_t *f, const char *router, const char *id, script_t s) {
    char a[5][16];
    snprintf(a[0], 16, "%d", (int)s.role);
    snprintf(a[1], 16, "%u", s.delay_ms);
    snprintf(a[2], 16, "%d", s.silent ? 1 : 0);
    snprintf(a[3], 16, "%d", s.crash_after);
    snprintf(a[4], 16, "%u", s.max_batch);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", f->report[1]);
    pid_t pid = tt_spawn("sched_worker",
                         (const char *[]){router, id, a[0], a[1], a[2], a[3], a[4], fd, NULL});
    f->pids[f->n++] = pid;
    return pid;
}

static void fleet_stop(fleet_t *f) {
    for (int i = 0; i < f->n; i++) kill(f->pids[i], SIGKILL);
    for (int i = 0; i < f->n; i++) waitpid(f->pids[i], NULL, 0);
    close(f->report[0]);
    close(f->report[1]);
}

/* One client request's view. */
typedef struct {
    int32_t ids[256];
    size_t n;
    char text[2048];
    size_t text_len;
    int done, errors, http_status;
    rt_finish_t reason;
    uint32_t prompt_tokens, completion_tokens;
    char error[256];
} client_t;

static void c_delta(void *ud, const rt_delta_t *d) {
    client_t *c = ud;
    for (size_t i = 0; i < d->n && c->n < 256; i++) c->ids[c->n++] = d->ids[i];
    size_t n = d->text_len < sizeof c->text - 1 - c->text_len ? d->text_len
                                                              : sizeof c->text - 1 - c->text_len;
    memcpy(c->text + c->text_len, d->text, n);
    c->text_len += n;
    c->text[c->text_len] = '\0';
}

static void c_done(void *ud, rt_finish_t why, uint32_t p, uint32_t n) {
    client_t *c = ud;
    c->done++;
    c->reason = why;
    c->prompt_tokens = p;
    c->completion_tokens = n;
}

static void c_error(void *ud, int status, const char *type, const char *msg) {
    client_t *c = ud;
    c->errors++;
    c->http_status = status;
    snprintf(c->error, sizeof c->error, "%s: %s", type, msg);
}

static const rt_req_cb_t k_client = {c_delta, c_done, c_error};

static bool finished(const client_t *c) { return c->done + c->errors > 0; }

static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, long ms) {
    uint64_t t0 = cm_time_mono_ms();
    while (!pred(arg)) {
        if ((long)(cm_time_mono_ms() - t0) > ms) return false;
        uv_run(loop, UV_RUN_NOWAIT);
        cm_time_sleep_ns(1000000);
    }
    return true;
}

static bool pred_finished(void *c) { return finished(c); }
static bool pred_ready(void *core) { return rt_core_ready(core); }

typedef struct {
    rt_core_t *core;
    int n;
} count_t;

static rt_core_t *g_core;
static bool pred_workers(void *n) {
    char m[4096];
    rt_core_metrics(g_core, m, sizeof m);
    int prefill = 0, decode = 0, colo = 0;
    const char *p;
    if ((p = strstr(m, "tandem_workers{role=\"prefill\"} "))) prefill = atoi(p + 31);
    if ((p = strstr(m, "tandem_workers{role=\"decode\"} "))) decode = atoi(p + 30);
    if ((p = strstr(m, "tandem_workers{role=\"colocated\"} "))) colo = atoi(p + 33);
    return prefill + decode + colo >= *(int *)n;
}

static rt_core_t *make_core(uv_loop_t *loop, uint32_t max_queue) {
    rt_core_config_t cfg = {.served_model_name = "tiny",
                            .cp_bind = "tcp://127.0.0.1:*",
                            .heartbeat_interval_ms = 100,
                            .missed_heartbeats = 3,
                            .max_queue = max_queue};
    return rt_core_new(loop, &cfg);
}

static rt_gen_request_t request(const int32_t *ids, size_t n, uint32_t max_tokens) {
    rt_gen_request_t r = {.model = "tiny", .prompt_ids = ids, .n_prompt_ids = n};
    r.sampling.temperature = 0;
    r.sampling.top_p = 1;
    r.sampling.top_k = -1;
    r.sampling.repetition_penalty = 1;
    r.sampling.max_tokens = max_tokens;
    return r;
}

/* Reads cancel reports for up to @ms or until @expect name @id; returns
 * how many named it. */
static int cancels_for(fleet_t *f, uint64_t id, int expect, long ms) {
    char buf[4096];
    int hits = 0;
    uint64_t t0 = cm_time_mono_ms();
    char want[32];
    snprintf(want, sizeof want, "C%llu\n", (unsigned long long)id);
    while ((long)(cm_time_mono_ms() - t0) < ms && hits < expect) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(f->report[0], &fds);
        struct timeval tv = {0, 20000};
        if (select(f->report[0] + 1, &fds, NULL, NULL, &tv) > 0) {
            ssize_t n = read(f->report[0], buf, sizeof buf - 1);
            if (n > 0) {
                buf[n] = '\0';
                for (char *p = buf; (p = strstr(p, want)); p++) hits++;
            }
        }
    }
    return hits;
}

static void setup(uv_loop_t *loop, fleet_t *f, rt_core_t **core, uint32_t max_queue) {
    uv_loop_init(loop);
    *f = (fleet_t){0};
    TT_ASSERT(pipe(f->report) == 0);
    *core = g_core = make_core(loop, max_queue);
    TT_ASSERT(*core);
}

static void teardown(uv_loop_t *loop, fleet_t *f, rt_core_t *core) {
    fleet_stop(f);
    rt_core_free(core);
    uv_run(loop, UV_RUN_DEFAULT);
    TT_ASSERT_EQ_INT(uv_loop_close(loop), 0);
}

TT_TEST_T(rt_sched, colocated_and_disaggregated_streams, 30) {
    uv_loop_t loop;
    fleet_t f;
    rt_core_t *core;
    setup(&loop, &f, &core, 16);
    const char *addr = rt_core_cp_address(core);
    /* No workers: 503 with Retry-After. */
    int32_t prompt[20];
    for (int i = 0; i < 20; i++) prompt[i] = 100 + i;
    rt_gen_request_t rq = request(prompt, 20, 5);
    rt_req_t *req;
    rt_error_t err;
    client_t c = {0};
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &c, &req, &err), CM_ERR_NO_RESOURCES);
    TT_ASSERT_EQ_INT(err.http_status, 503);
    TT_ASSERT_EQ_INT(err.retry_after_s, 1);

    spawn(&f, addr, "co0", (script_t){.role = TANDEM__CP__ROLE__ROLE_COLOCATED});
    TT_ASSERT_MSG(run_until(&loop, pred_ready, core, 5000), "colocated worker not ready");
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &c, &req, &err), CM_OK);
    TT_ASSERT_MSG(run_until(&loop, pred_finished, &c, 5000), "colocated request did not finish");
    TT_ASSERT_MSG(c.done == 1, "error: %s", c.error);
    TT_ASSERT_EQ_INT(c.reason, RT_FINISH_LENGTH);
    TT_ASSERT_EQ_INT(c.n, 5);
    for (int i = 0; i < 5; i++) TT_ASSERT_EQ_INT(c.ids[i], 101 + i);
    TT_ASSERT_STR_EQ(c.text, "101;102;103;104;105;");
    TT_ASSERT_EQ_INT(c.prompt_tokens, 20);
    TT_ASSERT_EQ_INT(c.completion_tokens, 5);
    /* Text holding U+0000 arrives whole, with what follows it. */
    client_t z = {0};
    prompt[0] = 776;
    rt_gen_request_t nul = request(prompt, 20, 2);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &nul, &k_client, &z, &req, &err), CM_OK);
    TT_ASSERT_MSG(run_until(&loop, pred_finished, &z, 5000), "request did not finish");
    TT_ASSERT_EQ_INT(z.text_len, 12);
    TT_ASSERT(memcmp(z.text,
                     "nul\0"
                     "777;778;",
                     12) == 0);
    prompt[0] = 100;

    /* Context limit (512 from the worker): refused before placement. */
    rt_gen_request_t big = request(prompt, 20, 500);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &big, &k_client, &c, &req, &err), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_EQ_INT(err.http_status, 400);
    TT_ASSERT(strstr(err.message, "maximum context length is 512 tokens"));
    int32_t bad[2] = {5, 1000};
    rt_gen_request_t oov = request(bad, 2, 5);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &oov, &k_client, &c, &req, &err), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT(strstr(err.message, "outside the vocabulary"));

    /* Kill the colocated worker; a prefill+decode pair takes over. */
    kill(f.pids[0], SIGKILL);
    waitpid(f.pids[0], NULL, 0);
    spawn(&f, addr, "pf0", (script_t){.role = TANDEM__CP__ROLE__ROLE_PREFILL});
    spawn(&f, addr, "dc0", (script_t){.role = TANDEM__CP__ROLE__ROLE_DECODE});
    int want = 2;
    TT_ASSERT_MSG(run_until(&loop, pred_workers, &want, 5000), "pair did not register");
    client_t d = {0};
    prompt[0] = 7;
    rq = request(prompt, 20, 4);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &d, &req, &err), CM_OK);
    TT_ASSERT_MSG(run_until(&loop, pred_finished, &d, 5000), "disaggregated request stuck");
    TT_ASSERT_MSG(d.done == 1, "error: %s", d.error);
    TT_ASSERT_STR_EQ(d.text, "8;9;10;11;");
    char m[8192];
    rt_core_metrics(core, m, sizeof m);
    TT_ASSERT(strstr(m, "tandem_requests_finished_total{outcome=\"completed\"} 3"));
    TT_ASSERT(strstr(m, "tandem_requests_refused_total{code=\"400\"} 2"));
    TT_ASSERT(strstr(m, "tandem_requests_refused_total{code=\"503\"} 1"));
    teardown(&loop, &f, core);
}

TT_TEST_T(rt_sched, client_cancel_reaches_every_worker, 30) {
    uv_loop_t loop;
    fleet_t f;
    rt_core_t *core;
    setup(&loop, &f, &core, 16);
    const char *addr = rt_core_cp_address(core);
    /* Slow prefill so the request is mid-flight on both workers. */
    spawn(&f, addr, "pf0", (script_t){.role = TANDEM__CP__ROLE__ROLE_PREFILL, .delay_ms = 300});
    spawn(&f, addr, "dc0", (script_t){.role = TANDEM__CP__ROLE__ROLE_DECODE});
    int want = 2;
    TT_ASSERT_MSG(run_until(&loop, pred_workers, &want, 5000), "pair did not register");
    int32_t prompt[3] = {1, 2, 3};
    rt_gen_request_t rq = request(prompt, 3, 50);
    client_t c = {0};
    rt_req_t *req;
    rt_error_t err;
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &c, &req, &err), CM_OK);
    for (int i = 0; i < 100; i++) uv_run(&loop, UV_RUN_NOWAIT), cm_time_sleep_ns(1000000);
    rt_core_cancel(req);
    for (int i = 0; i < 50; i++) uv_run(&loop, UV_RUN_NOWAIT), cm_time_sleep_ns(1000000);
    /* Both workers hear about it (decode frees its reservation). */
    TT_ASSERT_EQ_INT(cancels_for(&f, 1, 2, 2000), 2);
    TT_ASSERT(!finished(&c)); /* no callback after cancel */
    teardown(&loop, &f, core);
}

TT_TEST_T(rt_sched, lost_worker_retries_or_fails, 30) {
    uv_loop_t loop;
    fleet_t f;
    rt_core_t *core;
    setup(&loop, &f, &core, 16);
    const char *addr = rt_core_cp_address(core);
    /* A worker that takes jobs and never answers, then dies: the request
     * streamed nothing, so it moves to the healthy worker. */
    pid_t silent = spawn(&f, addr, "co-silent",
                         (script_t){.role = TANDEM__CP__ROLE__ROLE_COLOCATED, .silent = true});
    int want = 1;
    TT_ASSERT_MSG(run_until(&loop, pred_workers, &want, 5000), "worker did not register");
    int32_t prompt[2] = {41, 1};
    rt_gen_request_t rq = request(prompt, 2, 3);
    client_t c = {0};
    rt_req_t *req;
    rt_error_t err;
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &c, &req, &err), CM_OK);
    for (int i = 0; i < 50; i++) uv_run(&loop, UV_RUN_NOWAIT), cm_time_sleep_ns(1000000);
    spawn(&f, addr, "co-ok", (script_t){.role = TANDEM__CP__ROLE__ROLE_COLOCATED});
    want = 2;
    TT_ASSERT_MSG(run_until(&loop, pred_workers, &want, 5000), "second worker did not register");
    kill(silent, SIGKILL);
    TT_ASSERT_MSG(run_until(&loop, pred_finished, &c, 5000), "request not retried");
    TT_ASSERT_MSG(c.done == 1, "error: %s", c.error);
    TT_ASSERT_STR_EQ(c.text, "42;43;44;");

    /* A worker that dies after streaming a token: the client gets an
     * error, never a hang (tokens cannot be taken back). */
    spawn(&f, addr, "co-crash",
          (script_t){.role = TANDEM__CP__ROLE__ROLE_COLOCATED, .crash_after = 1, .max_batch = 64});
    want = 2;
    TT_ASSERT(run_until(&loop, pred_workers, &want, 5000));
    kill(f.pids[1], SIGKILL); /* co-ok leaves: co-crash is the only one */
    want = 1;
    for (int i = 0; i < 100; i++) uv_run(&loop, UV_RUN_NOWAIT), cm_time_sleep_ns(5000000);
    client_t e = {0};
    rq = request(prompt, 2, 10);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &e, &req, &err), CM_OK);
    TT_ASSERT_MSG(run_until(&loop, pred_finished, &e, 5000), "request hung after worker death");
    TT_ASSERT_EQ_INT(e.errors, 1);
    TT_ASSERT_EQ_INT(e.http_status, 503);
    TT_ASSERT(strstr(e.error, "was lost"));
    TT_ASSERT_EQ_INT(e.n, 1);
    teardown(&loop, &f, core);
}

TT_TEST_T(rt_sched, deadline_and_queue_limit, 30) {
    uv_loop_t loop;
    fleet_t f;
    rt_core_t *core;
    setup(&loop, &f, &core, 1);
    spawn(&f, rt_core_cp_address(core), "co-silent",
          (script_t){.role = TANDEM__CP__ROLE__ROLE_COLOCATED, .silent = true, .max_batch = 1});
    int want = 1;
    TT_ASSERT_MSG(run_until(&loop, pred_workers, &want, 5000), "worker did not register");
    int32_t prompt[1] = {1};
    rt_gen_request_t rq = request(prompt, 1, 3);
    rq.deadline_ms = 300;
    client_t c[4];
    memset(c, 0, sizeof c);
    rt_req_t *req;
    rt_error_t err;
    /* max_batch 1: two placed (2 x batch), one queued, the fourth refused. */
    for (int i = 0; i < 3; i++)
        TT_ASSERT_MSG(rt_core_submit(core, &rq, &k_client, &c[i], &req, &err) == CM_OK, "%d: %s", i,
                      err.message);
    TT_ASSERT_EQ_INT(rt_core_submit(core, &rq, &k_client, &c[3], &req, &err), CM_ERR_BUSY);
    TT_ASSERT_EQ_INT(err.http_status, 429);
    TT_ASSERT_EQ_INT(err.retry_after_s, 1);
    uint64_t t0 = cm_time_mono_ms();
    for (int i = 0; i < 3; i++) {
        TT_ASSERT_MSG(run_until(&loop, pred_finished, &c[i], 3000), "request %d hung", i);
        TT_ASSERT_EQ_INT(c[i].http_status, 504);
    }
    TT_ASSERT(cm_time_mono_ms() - t0 < 1500);
    /* The worker is told to drop each timed-out request. */
    TT_ASSERT(cancels_for(&f, 1, 1, 1000) == 1);
    teardown(&loop, &f, core);
}
