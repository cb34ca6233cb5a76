/* test_rt_registry.c - the router's worker table: registration rules,
 * restarts, heartbeats, deregistration and expiry, with injected time. */
#include "rt_registry.h"
#include "tt.h"

typedef struct {
    int up, down[3];
    char last_down[256];
} events_t;

static void on_up(void *ud, const rt_worker_t *w) { ((events_t *)ud)->up++; }

static void on_down(void *ud, const rt_worker_t *w, rt_down_reason_t why) {
    events_t *e = ud;
    e->down[why]++;
    snprintf(e->last_down, sizeof e->last_down, "%s", w->peer);
}

static Tandem__Cp__Register g_reg;
static Tandem__Cp__Heartbeat g_hb;
static Tandem__Cp__Deregister g_dereg;

static cm_cp_msg_t reg_msg(const char *id, int role, uint64_t inc, const char *model, uint64_t fp) {
    g_reg = (Tandem__Cp__Register)TANDEM__CP__REGISTER__INIT;
    g_reg.worker_id = (char *)id;
    g_reg.role = (Tandem__Cp__Role)role;
    g_reg.incarnation = inc;
    g_reg.model = (char *)model;
    g_reg.layout_fingerprint = fp;
    g_reg.block_size = 16;
    g_reg.total_blocks = 100;
    g_reg.max_batch = 8;
    g_reg.max_context = 2048;
    g_reg.vocab_size = 1000;
    g_reg.kvx_descriptor.data = (uint8_t *)"desc";
    g_reg.kvx_descriptor.len = 4;
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    m.body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER;
    m.register_ = &g_reg;
    return m;
}

static cm_cp_msg_t hb_msg(uint64_t inc, uint32_t free_blocks, bool draining) {
    g_hb = (Tandem__Cp__Heartbeat)TANDEM__CP__HEARTBEAT__INIT;
    g_hb.incarnation = inc;
    g_hb.free_blocks = free_blocks;
    g_hb.draining = draining;
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    m.body_case = TANDEM__CP__ENVELOPE__BODY_HEARTBEAT;
    m.heartbeat = &g_hb;
    return m;
}

static cm_cp_msg_t dereg_msg(uint64_t inc) {
    g_dereg = (Tandem__Cp__Deregister)TANDEM__CP__DEREGISTER__INIT;
    g_dereg.incarnation = inc;
    g_dereg.reason = "bye";
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    m.body_case = TANDEM__CP__ENVELOPE__BODY_DEREGISTER;
    m.deregister = &g_dereg;
    return m;
}

/* The reply must itself be a valid message. */
static void check_valid(const cm_cp_msg_t *reply) {
    cm_cp_limits_t lim;
    cm_cp_limits_default(&lim);
    char err[256];
    TT_ASSERT_MSG(cm_cp_validate(reply, &lim, err, sizeof err) == CM_OK, "invalid reply: %s", err);
}

static rt_registry_t *make(events_t *ev, uint64_t fp) {
    rt_registry_config_t cfg = {
        .model = "tiny", .fingerprint = fp, .heartbeat_interval_ms = 100, .missed_heartbeats = 3};
    rt_registry_events_t e = {on_up, on_down};
    return rt_registry_new(&cfg, &e, ev);
}

TT_TEST(rt_registry, register_accept_and_refuse) {
    events_t ev = {0};
    rt_registry_t *r = make(&ev, 0);
    cm_cp_msg_t reply, m = reg_msg("p0", RT_ROLE_PREFILL, 1, "tiny", 0xabc);
    TT_ASSERT(rt_registry_handle(r, 1000, "p0/1", &m, &reply));
    check_valid(&reply);
    TT_ASSERT_EQ_INT(reply.body_case, TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK);
    TT_ASSERT(reply.register_ack->accepted);
    TT_ASSERT_EQ_INT(reply.register_ack->heartbeat_interval_ms, 100);
    TT_ASSERT_EQ_U64(rt_registry_fingerprint(r), 0xabc); /* learned */
    TT_ASSERT_EQ_INT(ev.up, 1);
    const rt_worker_t *w = rt_registry_find(r, "p0/1");
    TT_ASSERT(w && w->role == RT_ROLE_PREFILL && w->kvx_descriptor_len == 4);
    TT_ASSERT(memcmp(w->kvx_descriptor, "desc", 4) == 0);

    m = reg_msg("d0", RT_ROLE_DECODE, 1, "other-model", 0xabc);
    TT_ASSERT(rt_registry_handle(r, 1000, "d0/1", &m, &reply));
    check_valid(&reply);
    TT_ASSERT(!reply.register_ack->accepted);
    TT_ASSERT(strstr(reply.register_ack->reason, "serves model 'other-model'"));

    m = reg_msg("d0", RT_ROLE_DECODE, 1, "tiny", 0xdef);
    TT_ASSERT(rt_registry_handle(r, 1000, "d0/1", &m, &reply));
    TT_ASSERT(!reply.register_ack->accepted);
    TT_ASSERT(strstr(reply.register_ack->reason, "fingerprint 0000000000000def differs"));
    TT_ASSERT(rt_registry_find(r, "d0/1") == NULL);
    TT_ASSERT_EQ_INT(rt_registry_count(r, RT_ROLE_DECODE), 0);
    TT_ASSERT_EQ_INT(ev.up, 1);
    rt_registry_free(r);
}

TT_TEST(rt_registry, restart_replaces_and_reregister_refreshes) {
    events_t ev = {0};
    rt_registry_t *r = make(&ev, 0x77);
    cm_cp_msg_t reply, m = reg_msg("d0", RT_ROLE_DECODE, 5, "tiny", 0x77);
    TT_ASSERT(rt_registry_handle(r, 0, "d0/5", &m, &reply));
    /* Lost ack: the same incarnation registers again; no new worker. */
    TT_ASSERT(rt_registry_handle(r, 10, "d0/5", &m, &reply));
    TT_ASSERT(reply.register_ack->accepted);
    TT_ASSERT_EQ_INT(ev.up, 1);
    /* A restarted process: new incarnation replaces the old entry. */
    m = reg_msg("d0", RT_ROLE_DECODE, 6, "tiny", 0x77);
    TT_ASSERT(rt_registry_handle(r, 20, "d0/6", &m, &reply));
    TT_ASSERT(reply.register_ack->accepted);
    TT_ASSERT_EQ_INT(ev.down[RT_DOWN_REPLACED], 1);
    TT_ASSERT_STR_EQ(ev.last_down, "d0/5");
    TT_ASSERT(rt_registry_find(r, "d0/5") == NULL);
    TT_ASSERT(rt_registry_find(r, "d0/6") != NULL);
    TT_ASSERT_EQ_INT(rt_registry_count(r, RT_ROLE_DECODE), 1);
    /* A heartbeat carrying the old incarnation is told to register. */
    m = hb_msg(5, 50, false);
    TT_ASSERT(rt_registry_handle(r, 30, "d0/6", &m, &reply));
    check_valid(&reply);
    TT_ASSERT_EQ_INT(reply.body_case, TANDEM__CP__ENVELOPE__BODY_ERROR);
    TT_ASSERT_EQ_INT(reply.error->code, CM_ERR_NOT_FOUND);
    rt_registry_free(r);
}

TT_TEST(rt_registry, heartbeats_drain_deregister_and_expiry) {
    events_t ev = {0};
    rt_registry_t *r = make(&ev, 0);
    cm_cp_msg_t reply, m;
    m = reg_msg("c0", RT_ROLE_COLOCATED, 1, "tiny", 9);
    rt_registry_handle(r, 0, "c0/1", &m, &reply);
    m = reg_msg("c1", RT_ROLE_COLOCATED, 1, "tiny", 9);
    rt_registry_handle(r, 0, "c1/1", &m, &reply);
    m = reg_msg("c2", RT_ROLE_COLOCATED, 1, "tiny", 9);
    rt_registry_handle(r, 0, "c2/1", &m, &reply);
    TT_ASSERT_EQ_INT(rt_registry_count(r, RT_ROLE_COLOCATED), 3);

    /* Heartbeats update load; no reply. Draining workers are not counted. */
    m = hb_msg(1, 42, false);
    TT_ASSERT(!rt_registry_handle(r, 250, "c0/1", &m, &reply));
    TT_ASSERT_EQ_INT(rt_registry_find(r, "c0/1")->free_blocks, 42);
    m = hb_msg(1, 10, true);
    TT_ASSERT(!rt_registry_handle(r, 250, "c1/1", &m, &reply));
    TT_ASSERT_EQ_INT(rt_registry_count(r, RT_ROLE_COLOCATED), 2);

    /* Unknown peer heartbeat → register again. */
    m = hb_msg(1, 1, false);
    TT_ASSERT(rt_registry_handle(r, 250, "ghost/1", &m, &reply));
    TT_ASSERT_EQ_INT(reply.error->code, CM_ERR_NOT_FOUND);

    /* Expiry: 3 intervals of 100 ms. c2 was last seen at 0. */
    TT_ASSERT_EQ_INT(rt_registry_expire(r, 300), 0);
    TT_ASSERT_EQ_INT(rt_registry_expire(r, 301), 1);
    TT_ASSERT_EQ_INT(ev.down[RT_DOWN_EXPIRED], 1);
    TT_ASSERT_STR_EQ(ev.last_down, "c2/1");

    m = dereg_msg(1);
    TT_ASSERT(!rt_registry_handle(r, 400, "c1/1", &m, &reply));
    TT_ASSERT_EQ_INT(ev.down[RT_DOWN_DEREGISTERED], 1);
    TT_ASSERT(!rt_registry_handle(r, 400, "c1/1", &m, &reply)); /* idempotent */
    TT_ASSERT_EQ_INT(ev.down[RT_DOWN_DEREGISTERED], 1);
    size_t n = 0;
    while (rt_registry_at(r, n)) n++;
    TT_ASSERT_EQ_INT(n, 1);
    TT_ASSERT_STR_EQ(rt_registry_at(r, 0)->peer, "c0/1");
    rt_registry_free(r);
}
