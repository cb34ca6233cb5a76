/*
 * test_cp_zmq.c - control-plane messages over real ZeroMQ sockets on
 * loopback TCP, driven by libuv: round trips, bursts that exercise the
 * edge-triggered ZMQ_FD handling, back-pressure queueing, invalid frames,
 * unknown peers, and a second process as the worker.
 */
#include <signal.h>
#include <sys/wait.h>
#include <zmq.h>

#include "cm_cp_zmq.h"
#include "tt.h"

typedef struct {
    uv_loop_t *loop;
    cm_cp_endpoint_t *ep;
    int n_msgs, n_bad, want;
    char last_peer[256];
    Tandem__Cp__Envelope__BodyCase last_case;
    uint64_t last_seq, sum_free_blocks;
    bool reply_acks; /* router: answer Register with RegisterAck */
} side_t;

static void on_msg(void *ud, const char *peer, const cm_cp_msg_t *msg) {
    side_t *s = ud;
    s->n_msgs++;
    snprintf(s->last_peer, sizeof s->last_peer, "%s", peer);
    s->last_case = msg->body_case;
    TT_ASSERT_MSG(msg->seq > s->last_seq, "seq not increasing: %llu after %llu",
                  (unsigned long long)msg->seq, (unsigned long long)s->last_seq);
    s->last_seq = msg->seq;
    if (msg->body_case == TANDEM__CP__ENVELOPE__BODY_HEARTBEAT)
        s->sum_free_blocks += msg->heartbeat->free_blocks;
    if (s->reply_acks && msg->body_case == TANDEM__CP__ENVELOPE__BODY_REGISTER) {
        Tandem__Cp__RegisterAck ack = TANDEM__CP__REGISTER_ACK__INIT;
        ack.incarnation = msg->register_->incarnation;
        ack.accepted = 1;
        ack.heartbeat_interval_ms = 250;
        Tandem__Cp__Envelope env = TANDEM__CP__ENVELOPE__INIT;
        env.version = CM_CP_VERSION;
        env.body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK;
        env.register_ack = &ack;
        TT_ASSERT_EQ_INT(cm_cp_endpoint_send(s->ep, peer, &env), CM_OK);
    }
    if (s->want && s->n_msgs + s->n_bad >= s->want) uv_stop(s->loop);
}

static void on_bad(void *ud, const char *peer, cm_status_t st, const char *reason) {
    side_t *s = ud;
    s->n_bad++;
    if (s->want && s->n_bad + s->n_msgs >= s->want) uv_stop(s->loop);
}

static const cm_cp_callbacks_t k_cb = {on_msg, on_bad};

static void on_deadline(uv_timer_t *t) {
    uv_stop(t->loop);
    *(bool *)t->data = true;
}

/* Runs @loop until uv_stop or @ms pass; returns false on timeout. */
static bool run_for(uv_loop_t *loop, uint64_t ms) {
    uv_timer_t t;
    bool expired = false;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, on_deadline, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_timer_stop(&t);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return !expired;
}

static void close_and_drain(uv_loop_t *loop, cm_cp_endpoint_t *ep) {
    cm_cp_endpoint_close(ep);
    uv_run(loop, UV_RUN_DEFAULT); /* closes the handles and frees */
}

static cm_cp_endpoint_config_t cfg(cm_cp_kind_t kind, const char *addr, const char *id) {
    cm_cp_endpoint_config_t c = {.kind = kind, .endpoint = addr, .routing_id = id};
    cm_cp_limits_default(&c.limits);
    return c;
}

static Tandem__Cp__Register g_reg;
static Tandem__Cp__Heartbeat g_hb;

static Tandem__Cp__Envelope make_register(void) {
    g_reg = (Tandem__Cp__Register)TANDEM__CP__REGISTER__INIT;
    g_reg.worker_id = "w1";
    g_reg.role = TANDEM__CP__ROLE__ROLE_COLOCATED;
    g_reg.incarnation = 1;
    g_reg.model = "m";
    g_reg.layout_fingerprint = 5;
    g_reg.block_size = 16;
    g_reg.total_blocks = 64;
    g_reg.max_batch = 8;
    g_reg.max_context = 1024;
    g_reg.vocab_size = 1000;
    Tandem__Cp__Envelope env = TANDEM__CP__ENVELOPE__INIT;
    env.version = CM_CP_VERSION;
    env.body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER;
    env.register_ = &g_reg;
    return env;
}

static Tandem__Cp__Envelope make_heartbeat(uint32_t free_blocks) {
    g_hb = (Tandem__Cp__Heartbeat)TANDEM__CP__HEARTBEAT__INIT;
    g_hb.incarnation = 1;
    g_hb.free_blocks = free_blocks;
    Tandem__Cp__Envelope env = TANDEM__CP__ENVELOPE__INIT;
    env.version = CM_CP_VERSION;
    env.body_case = TANDEM__CP__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &g_hb;
    return env;
}

TT_TEST(cp_zmq, register_round_trip_and_unknown_peer) {
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    side_t rs = {.loop = &loop, .reply_acks = true}, ds = {.loop = &loop, .want = 1};
    cm_cp_endpoint_config_t rc = cfg(CM_CP_ROUTER, "tcp://127.0.0.1:*", NULL);
    TT_ASSERT_EQ_INT(cm_cp_endpoint_new(&loop, z, &rc, &k_cb, &rs, &rs.ep), CM_OK);
    const char *addr = cm_cp_endpoint_address(rs.ep);
    TT_ASSERT(strncmp(addr, "tcp://127.0.0.1:", 16) == 0);
    /* Binding the same address again is refused clearly. */
    cm_cp_endpoint_t *dup;
    cm_cp_endpoint_config_t rc2 = cfg(CM_CP_ROUTER, addr, NULL);
    TT_ASSERT_EQ_INT(cm_cp_endpoint_new(&loop, z, &rc2, &k_cb, &rs, &dup), CM_ERR_EXISTS);

    cm_cp_endpoint_config_t dc = cfg(CM_CP_DEALER, addr, "w1/1");
    TT_ASSERT_EQ_INT(cm_cp_endpoint_new(&loop, z, &dc, &k_cb, &ds, &ds.ep), CM_OK);
    Tandem__Cp__Envelope env = make_register();
    TT_ASSERT_EQ_INT(cm_cp_endpoint_send(ds.ep, NULL, &env), CM_OK);
    TT_ASSERT_MSG(run_for(&loop, 5000), "no RegisterAck within 5 s");
    TT_ASSERT_EQ_INT(rs.n_msgs, 1);
    TT_ASSERT_STR_EQ(rs.last_peer, "w1/1");
    TT_ASSERT_EQ_INT(rs.last_case, TANDEM__CP__ENVELOPE__BODY_REGISTER);
    TT_ASSERT_EQ_INT(ds.last_case, TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK);
    TT_ASSERT_STR_EQ(ds.last_peer, "");

    /* An invalid message is refused by the sender, not put on the wire. */
    g_reg.block_size = 0;
    TT_ASSERT_EQ_INT(cm_cp_endpoint_send(ds.ep, NULL, &env), CM_ERR_OUT_OF_RANGE);
    /* ROUTER_MANDATORY: an unknown peer is an error, not a silent drop. */
    Tandem__Cp__Envelope hb = make_heartbeat(1);
    TT_ASSERT_EQ_INT(cm_cp_endpoint_send(rs.ep, "nobody/9", &hb), CM_ERR_PEER_DEAD);

    cm_cp_endpoint_close(ds.ep);
    close_and_drain(&loop, rs.ep);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    zmq_ctx_term(z);
}

TT_TEST(cp_zmq, invalid_frames_are_dropped_not_trusted) {
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    side_t rs = {.loop = &loop, .want = 4};
    cm_cp_endpoint_config_t rc = cfg(CM_CP_ROUTER, "tcp://127.0.0.1:*", NULL);
    TT_ASSERT_EQ_INT(cm_cp_endpoint_new(&loop, z, &rc, &k_cb, &rs, &rs.ep), CM_OK);
    /* A raw DEALER that speaks garbage. */
    void *raw = zmq_socket(z, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    TT_ASSERT_EQ_INT(zmq_connect(raw, cm_cp_endpoint_address(rs.ep)), 0);
    zmq_send(raw, "\xff\xff\xff", 3, 0); /* not protobuf */
    zmq_send(raw, "", 0, 0);             /* no version */
    zmq_send(raw, "a", 1, ZMQ_SNDMORE);  /* two frames */
    zmq_send(raw, "b", 1, 0);
    Tandem__Cp__Envelope env = make_heartbeat(7); /* then a good one */
    env.seq = 1;
    size_t len = tandem__cp__envelope__get_packed_size(&env);
    uint8_t buf[256];
    tandem__cp__envelope__pack(&env, buf);
    zmq_send(raw, buf, len, 0);
    TT_ASSERT_MSG(run_for(&loop, 5000), "frames not all seen within 5 s");
    TT_ASSERT_EQ_INT(rs.n_bad, 3);
    TT_ASSERT_EQ_INT(rs.n_msgs, 1);
    TT_ASSERT_EQ_U64(rs.sum_free_blocks, 7);
    zmq_close(raw);
    close_and_drain(&loop, rs.ep);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    zmq_ctx_term(z);
}

/* Child process: a worker that sends @n heartbeats as fast as it can, then
 * waits for the router's reply burst of @n messages. Exit 0 on success. */
static int worker_child(const char *addr, int n) {
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    side_t ds = {.loop = &loop, .want = n};
    cm_cp_endpoint_config_t dc = cfg(CM_CP_DEALER, addr, "child/1");
    dc.max_queue = (uint32_t)n + 1;
    if (cm_cp_endpoint_new(&loop, z, &dc, &k_cb, &ds, &ds.ep) != CM_OK) return 10;
    for (int i = 0; i < n; i++) {
        Tandem__Cp__Envelope hb = make_heartbeat((uint32_t)(i % 1000));
        if (cm_cp_endpoint_send(ds.ep, NULL, &hb) != CM_OK) return 11;
    }
    if (!run_for(&loop, 20000)) return 12;
    if (ds.n_msgs != n) return 13;
    close_and_drain(&loop, ds.ep);
    uv_loop_close(&loop);
    zmq_ctx_term(z);
    return 0;
}

TT_CHILD(zmq_burst) { return argc == 2 ? worker_child(argv[0], atoi(argv[1])) : 99; }

TT_TEST_T(cp_zmq, bursts_across_processes_lose_nothing, 60) {
    const int n = 20000;
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    side_t rs = {.loop = &loop, .want = n};
    cm_cp_endpoint_config_t rc = cfg(CM_CP_ROUTER, "tcp://127.0.0.1:*", NULL);
    rc.max_queue = (uint32_t)n + 1;
    TT_ASSERT_EQ_INT(cm_cp_endpoint_new(&loop, z, &rc, &k_cb, &rs, &rs.ep), CM_OK);
    char addr[256];
    snprintf(addr, sizeof addr, "%s", cm_cp_endpoint_address(rs.ep));
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", n);
    pid_t pid = tt_spawn("zmq_burst", (const char *[]){addr, nbuf, NULL});
    /* Every one of the child's n messages arrives (edge-triggered fd). */
    TT_ASSERT_MSG(run_for(&loop, 20000), "received %d of %d within 20 s", rs.n_msgs, n);
    TT_ASSERT_EQ_INT(rs.n_msgs, n);
    uint64_t want_sum = 0;
    for (int i = 0; i < n; i++) want_sum += (uint64_t)(i % 1000);
    TT_ASSERT_EQ_U64(rs.sum_free_blocks, want_sum);
    TT_ASSERT_STR_EQ(rs.last_peer, "child/1");
    /* Reply with a burst larger than the HWM: the overflow queues and drains. */
    int queued_max = 0;
    for (int i = 0; i < n; i++) {
        Tandem__Cp__Envelope hb = make_heartbeat(1);
        TT_ASSERT_EQ_INT(cm_cp_endpoint_send(rs.ep, "child/1", &hb), CM_OK);
        if ((int)cm_cp_endpoint_queued(rs.ep) > queued_max)
            queued_max = (int)cm_cp_endpoint_queued(rs.ep);
    }
    rs.want = 0;
    /* Keep the loop turning until the child exits. */
    int status = 0;
    uint64_t t0 = cm_time_mono_ms();
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (cm_time_mono_ms() - t0 > 30000) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            TT_FAILF("worker child did not finish within 30 s (queue %zu)",
                     cm_cp_endpoint_queued(rs.ep));
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        cm_time_sleep_ns(1000000);
    }
    TT_ASSERT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed with status %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    printf("router queue peaked at %d messages\n", queued_max);
    TT_ASSERT_EQ_INT(cm_cp_endpoint_queued(rs.ep), 0);
    close_and_drain(&loop, rs.ep);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    zmq_ctx_term(z);
}
