/* kvx.c - KV block transfers over UCX: puts, flush, then a notice. */
#include "kvx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "cm_flags.h"

#include "kvx_copy.h"
#include "kvx_gpu.h"

#define KVX_AM_NOTICE 0x7a
#define KVX_MAGIC     0x5856544bu /* "TKVX" */
#define KVX_VERSION   1u

typedef struct kvx_send kvx_send_t;
typedef struct kvx_pending kvx_pending_t;

typedef enum { MEM_HOST, MEM_CUDA_DIRECT, MEM_CUDA_STAGED } mem_mode_t;

struct kvx_ctx {
    ucp_context_h ucp;
    ucp_worker_h worker;
    int efd;
    kvx_notice_fn on_notice;
    void *ud;
    kvx_peer_t *peers;
    kvx_pool_t *pools;
    kvx_send_t *sends;
    kvx_stats_t stats;
    char transports[128];
    bool ucx_cuda;  /* this UCX can register CUDA memory */
    kvx_gpu_t *gpu; /* copy stream of staged pools (opened with the first) */
    int gpu_device;
    kvx_pending_t *pending; /* staged notices waiting for their copies, in order */
    kvx_pending_t **pending_tail;
    bool map_peers; /* copy into pools UCX maps here (TANDEM_KVX_MAPPED, on by default) */
    size_t nt_min;  /* sends of at least this many bytes copy with streaming stores */
};

/* A notice for a staged pool: delivered once its mirror -> device copies
 * (ticket) completed. */
struct kvx_pending {
    kvx_notice_t n;
    uint64_t ticket;
    kvx_pending_t *next;
};

struct kvx_pool {
    kvx_ctx_t *c;
    ucp_mem_h memh;
    void *base;
    size_t bytes;
    eng_kv_geom_t g;
    size_t block_bytes;
    uint64_t fingerprint, incarnation;
    void *rkey_buf;
    size_t rkey_len;
    mem_mode_t mode;
    void *dev; /* device memory of CUDA pools (base is the host mirror when staged) */
    bool pinned;
    kvx_pool_t *next;
};

struct kvx_peer {
    kvx_ctx_t *c;
    ucp_ep_h ep;
    ucp_rkey_h rkey;
    uint64_t incarnation, fingerprint, remote_base;
    eng_kv_geom_t g;
    size_t block_bytes;
    uint64_t addr_hash;
    char *mapped; /* the pool at remote_base, mapped here by UCX (shared memory), or NULL */
    bool dead;
    kvx_peer_t *next;
};

struct kvx_send {
    kvx_ctx_t *c;
    kvx_peer_t *peer;
    uint64_t req_id;
    uint32_t lo, hi;
    uint64_t deadline_ns;
    int outstanding; /* UCX requests not yet completed */
    bool flushed;    /* flush done (or not needed): the notice may go */
    bool noticed;    /* notice posted */
    bool finished;   /* user callback called */
    cm_status_t st;
    uint32_t crc;
    bool has_crc;
    bool direct; /* copies into the peer's mapped pool instead of puts */
    bool stream; /* ... with streaming stores */
    kvx_done_fn done;
    void *ud;
    uint8_t header[40];
    uint8_t *runs; /* notice payload: destination base, run count, (start, count)... */
    size_t runs_len;
    /* Staged source: layers [next_layer, hi) wait for their device -> mirror
     * copies (tickets[l - lo]) before their puts go. */
    const kvx_pool_t *src;
    kvx_pair_t *pairs;
    size_t n_pairs;
    uint32_t next_layer;
    uint64_t *tickets;
    kvx_send_t *next;
};

static void finish(kvx_send_t *s, cm_status_t st) {
    if (s->finished) return;
    s->finished = true;
    if (st == CM_OK)
        s->c->stats.sends_ok++;
    else
        s->c->stats.sends_failed++;
    s->done(s->ud, st);
}

/* Frees sends that finished and have no UCX request left. */
static void reap(kvx_ctx_t *c) {
    for (kvx_send_t **pp = &c->sends; *pp;) {
        kvx_send_t *s = *pp;
        if (s->finished && s->outstanding == 0) {
            *pp = s->next;
            cm_free(s->runs);
            cm_free(s->pairs);
            cm_free(s->tickets);
            cm_free(s);
        } else {
            pp = &s->next;
        }
    }
}

static cm_status_t status_of(ucs_status_t st) {
    if (st == UCS_OK) return CM_OK;
    if (st == UCS_ERR_CANCELED) return CM_ERR_CANCELED;
    if (st == UCS_ERR_TIMED_OUT) return CM_ERR_TIMEOUT;
    return CM_ERR_PEER_DEAD;
}

static void post_notice(kvx_send_t *s);
static void advance_staged(kvx_send_t *s);

static void on_op_done(void *req, ucs_status_t st, void *user) {
    kvx_send_t *s = user;
    s->outstanding--;
    if (st != UCS_OK && s->st == CM_OK) s->st = status_of(st);
    ucp_request_free(req);
    if (s->st != CM_OK) finish(s, s->st);
}

static void on_flush_done(void *req, ucs_status_t st, void *user) {
    kvx_send_t *s = user;
    s->outstanding--;
    if (st != UCS_OK && s->st == CM_OK) s->st = status_of(st);
    ucp_request_free(req);
    s->flushed = true;
    if (s->st != CM_OK)
        finish(s, s->st);
    else
        post_notice(s);
}

static void on_notice_sent(void *req, ucs_status_t st, void *user) {
    kvx_send_t *s = user;
    s->outstanding--;
    if (st != UCS_OK && s->st == CM_OK) s->st = status_of(st);
    ucp_request_free(req);
    finish(s, s->st);
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Notice header: req_id u64, lo u32, hi u32, status i32, has_crc u32,
 * crc u32, incarnation u64 = 36 bytes. */
static void post_notice(kvx_send_t *s) {
    if (s->noticed || s->finished) return;
    s->noticed = true;
    uint8_t *h = s->header;
    put_u64(h, s->req_id);
    put_u32(h + 8, s->lo);
    put_u32(h + 12, s->hi);
    put_u32(h + 16, (uint32_t)s->st);
    put_u32(h + 20, s->has_crc);
    put_u32(h + 24, s->crc);
    put_u64(h + 28, s->peer->c->pools ? s->peer->c->pools->incarnation : 0);
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                               UCP_OP_ATTR_FIELD_USER_DATA |
                                               UCP_OP_ATTR_FIELD_FLAGS,
                               .cb.send = on_notice_sent,
                               .user_data = s,
                               .flags = UCP_AM_SEND_FLAG_EAGER};
    ucs_status_ptr_t r =
        ucp_am_send_nbx(s->peer->ep, KVX_AM_NOTICE, h, 36, s->runs, s->runs_len, &prm);
    if (r == NULL) {
        finish(s, CM_OK);
    } else if (UCS_PTR_IS_ERR(r)) {
        finish(s, status_of(UCS_PTR_STATUS(r)));
    } else {
        s->outstanding++;
    }
}

/* Queues the mirror -> device copies a notice names for a staged pool;
 * false when the payload does not fit the pool or a copy cannot be queued. */
static bool stage_in(kvx_ctx_t *c, kvx_pool_t *p, const kvx_notice_t *n, const uint8_t *d,
                     size_t len, uint64_t *ticket) {
    uint32_t nr = get_u32(d + 8);
    if (len != 12 + (size_t)nr * 8 || n->layer_hi > p->g.n_layers || n->layer_lo >= n->layer_hi)
        return false;
    for (uint32_t l = n->layer_lo; l < n->layer_hi; l++) {
        for (uint32_t i = 0; i < nr; i++) {
            uint32_t start = get_u32(d + 12 + 8 * i), cnt = get_u32(d + 16 + 8 * i);
            if (cnt == 0 || start >= p->g.n_blocks || cnt > p->g.n_blocks - start) return false;
            size_t off;
            eng_kv_geom_offset(&p->g, l, (int32_t)start, &off);
            if (kvx_gpu_copy(c->gpu, (char *)p->dev + off, (char *)p->base + off,
                             (size_t)cnt * p->block_bytes) != CM_OK)
                return false;
        }
    }
    return kvx_gpu_mark(c->gpu, ticket) == CM_OK;
}

static ucs_status_t on_am(void *arg, const void *header, size_t hlen, void *data, size_t len,
                          const ucp_am_recv_param_t *param) {
    (void)param;
    kvx_ctx_t *c = arg;
    if (hlen < 36) return UCS_OK; /* not ours: ignore */
    const uint8_t *h = header;
    kvx_notice_t n = {.req_id = get_u64(h),
                      .layer_lo = get_u32(h + 8),
                      .layer_hi = get_u32(h + 12),
                      .status = (cm_status_t)(int32_t)get_u32(h + 16),
                      .has_crc = get_u32(h + 20) != 0,
                      .crc = get_u32(h + 24),
                      .sender_incarnation = get_u64(h + 28)};
    c->stats.notices++;
    /* The payload names the destination pool and block runs: a staged CUDA
     * pool copies them to the device before its owner hears of them. */
    kvx_pool_t *p = NULL;
    if (data && len >= 12 && !(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        uint64_t base = get_u64(data);
        for (p = c->pools; p && (uint64_t)(uintptr_t)p->base != base; p = p->next) {
        }
    }
    if (p && p->mode == MEM_CUDA_STAGED && n.status == CM_OK) {
        kvx_pending_t *q = cm_calloc(1, sizeof *q);
        if (q && stage_in(c, p, &n, data, len, &q->ticket)) {
            q->n = n;
            *c->pending_tail = q;
            c->pending_tail = &q->next;
            return UCS_OK;
        }
        cm_free(q);
        cm_log_error("kvx", "request %llu: cannot copy its KV blocks to the device",
                     (unsigned long long)n.req_id);
        n.status = CM_ERR_IO;
    }
    if (c->on_notice) c->on_notice(c->ud, &n);
    return UCS_OK;
}

/* Delivers staged notices whose copies completed (in arrival order). */
static void deliver_staged(kvx_ctx_t *c) {
    if (!c->pending) return;
    uint64_t done = 0;
    cm_status_t st = kvx_gpu_poll(c->gpu, &done);
    while (c->pending && (st != CM_OK || c->pending->ticket <= done)) {
        kvx_pending_t *q = c->pending;
        c->pending = q->next;
        if (!c->pending) c->pending_tail = &c->pending;
        if (st != CM_OK) q->n.status = CM_ERR_IO;
        if (c->on_notice) c->on_notice(c->ud, &q->n);
        cm_free(q);
    }
}

/* This core's last-level cache as the kernel describes it (sysfs; the
 * CPUID-derived sysconf value can be a whole host's on a VM), 0 unknown. */
static uint64_t l3_bytes(void) {
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    char buf[64] = "";
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = '\0';
    uint64_t v = 0;
    if (buf[0] && cm_parse_size(buf, &v) == CM_OK) return v;
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 ? (uint64_t)l3 : 0;
}

/* The default TANDEM_KVX_STREAM_MIN: a quarter of the L3, within
 * [1 MiB, 8 MiB]. Below it a send's source and destination stay in cache
 * and ordinary stores are faster; at and above it streaming stores are
 * (kvx.h, "Mapped peers", has the measurements). */
uint64_t kvx_stream_min_default(void) {
    uint64_t v = l3_bytes() / 4;
    if (v < (1u << 20)) v = 1u << 20;
    if (v > (8u << 20)) v = 8u << 20;
    return v;
}

/* TANDEM_KVX_MAPPED (bool, default on) and TANDEM_KVX_STREAM_MIN (size;
 * default kvx_stream_min_default(); kvx.h, "Mapped peers"). */
static bool copy_settings(kvx_ctx_t *c) {
    c->map_peers = true;
    const char *m = getenv("TANDEM_KVX_MAPPED");
    if (m && cm_parse_bool(m, &c->map_peers) != CM_OK) {
        cm_log_error("kvx", "TANDEM_KVX_MAPPED=%s: want a boolean (on/off)", m);
        return false;
    }
    uint64_t v = kvx_stream_min_default();
    const char *n = getenv("TANDEM_KVX_STREAM_MIN");
    if (n && cm_parse_size(n, &v) != CM_OK) {
        cm_log_error("kvx", "TANDEM_KVX_STREAM_MIN=%s: want a size (4M, 0 = always)", n);
        return false;
    }
    c->nt_min = (size_t)v;
    return true;
}

cm_status_t kvx_ctx_new(kvx_notice_fn on_notice, void *ud, kvx_ctx_t **out) {
    /* Shared memory keeps working with error mode PEER, and peer death on
     * shared memory is noticed within about a second (PITFALLS.md). */
    setenv("UCX_MM_ERROR_HANDLING", "y", 0);
    setenv("UCX_KEEPALIVE_INTERVAL", "1s", 0);
    setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 0);
    kvx_ctx_t *c = cm_calloc(1, sizeof *c);
    if (!c) return CM_ERR_NO_MEMORY;
    c->on_notice = on_notice;
    c->ud = ud;
    c->pending_tail = &c->pending;
    c->gpu_device = -1;
    if (!copy_settings(c)) {
        cm_free(c);
        return CM_ERR_INVALID_ARG;
    }
    ucp_config_t *cfg;
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK) goto fail;
    /* UCP's adaptive progress leaves a receiver's shared-memory interface
     * "inactive" while no endpoint of its own uses it: ucp_worker_arm then
     * never arms it, senders never signal, and notices wait for the
     * receiver's next progress call (kvx.h, "Wakeups"). Off, unless the
     * environment chooses. */
    if (!getenv("UCX_ADAPTIVE_PROGRESS") &&
        ucp_config_modify(cfg, "ADAPTIVE_PROGRESS", "n") != UCS_OK) {
        ucp_config_release(cfg);
        goto fail;
    }
    ucp_params_t p = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                      .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP};
    ucs_status_t st = ucp_init(&p, cfg, &c->ucp);
    ucp_config_release(cfg);
    if (st != UCS_OK) goto fail;
    ucp_context_attr_t ca = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    c->ucx_cuda = ucp_context_query(c->ucp, &ca) == UCS_OK &&
                  (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA));
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    if (ucp_worker_create(c->ucp, &wp, &c->worker) != UCS_OK) goto fail;
    if (ucp_worker_get_efd(c->worker, &c->efd) != UCS_OK) goto fail;
    ucp_am_handler_param_t ap = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                                               UCP_AM_HANDLER_PARAM_FIELD_CB |
                                               UCP_AM_HANDLER_PARAM_FIELD_ARG,
                                 .id = KVX_AM_NOTICE,
                                 .cb = on_am,
                                 .arg = c};
    if (ucp_worker_set_am_recv_handler(c->worker, &ap) != UCS_OK) goto fail;
    const char *tls = getenv("UCX_TLS");
    snprintf(c->transports, sizeof c->transports, "%s", tls ? tls : "all");
    *out = c;
    return CM_OK;
fail:
    cm_log_error("kvx", "UCX could not start (context/worker)");
    if (c->worker) ucp_worker_destroy(c->worker);
    if (c->ucp) ucp_cleanup(c->ucp);
    cm_free(c);
    return CM_ERR_IO;
}

int kvx_ctx_fd(kvx_ctx_t *c) { return c->efd; }
const char *kvx_ctx_transports(const kvx_ctx_t *c) { return c->transports; }

static void drive(kvx_ctx_t *c, bool arm) {
    if (arm) {
        do {
            while (ucp_worker_progress(c->worker)) {
            }
        } while (ucp_worker_arm(c->worker) == UCS_ERR_BUSY);
    } else {
        while (ucp_worker_progress(c->worker)) {
        }
    }
    if (c->gpu) {
        for (kvx_send_t *s = c->sends; s; s = s->next)
            if (s->tickets) advance_staged(s);
        deliver_staged(c);
    }
    uint64_t now = cm_time_mono_ns();
    for (kvx_send_t *s = c->sends; s; s = s->next) {
        if (!s->finished && now >= s->deadline_ns) {
            cm_log_warn("kvx", "transfer of request %llu missed its deadline",
                        (unsigned long long)s->req_id);
            finish(s, CM_ERR_TIMEOUT);
        }
    }
    reap(c);
}

void kvx_ctx_progress(kvx_ctx_t *c) { drive(c, true); }
void kvx_ctx_poll(kvx_ctx_t *c) { drive(c, false); }

static void on_peer_error(void *arg, ucp_ep_h ep, ucs_status_t st) {
    (void)ep;
    kvx_peer_t *p = arg;
    if (!p->dead)
        cm_log_warn("kvx", "peer (incarnation %llu) failed: %s", (unsigned long long)p->incarnation,
                    ucs_status_string(st));
    p->dead = true;
    /* Its outstanding operations complete with errors; sends that wait on
     * nothing from UCX fail here. */
    for (kvx_send_t *s = p->c->sends; s; s = s->next)
        if (s->peer == p && !s->finished && s->outstanding == 0) finish(s, CM_ERR_PEER_DEAD);
}

static void close_ep(kvx_ctx_t *c, ucp_ep_h ep) {
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &prm);
    if (r == NULL || UCS_PTR_IS_ERR(r)) return;
    cm_deadline_t d = cm_deadline_in_ms(1000);
    while (ucp_request_check_status(r) == UCS_INPROGRESS && !cm_deadline_expired(d))
        ucp_worker_progress(c->worker);
    ucp_request_free(r);
}

void kvx_ctx_free(kvx_ctx_t *c) {
    if (!c) return;
    for (kvx_send_t *s = c->sends; s; s = s->next) finish(s, CM_ERR_CANCELED);
    for (kvx_peer_t *p = c->peers, *n; p; p = n) {
        n = p->next;
        if (p->rkey) ucp_rkey_destroy(p->rkey);
        close_ep(c, p->ep);
        cm_free(p);
    }
    /* Closing the endpoints completed every request (with errors). */
    for (int i = 0; i < 1000 && c->sends; i++) {
        ucp_worker_progress(c->worker);
        reap(c);
    }
    for (kvx_send_t *s = c->sends, *n; s; s = n) {
        n = s->next;
        cm_free(s->runs);
        cm_free(s->pairs);
        cm_free(s->tickets);
        cm_free(s);
    }
    for (kvx_pending_t *q = c->pending, *n; q; q = n) {
        n = q->next;
        cm_free(q);
    }
    kvx_gpu_close(c->gpu); /* waits for queued copies into the pools */
    for (kvx_pool_t *p = c->pools, *n; p; p = n) {
        n = p->next;
        if (p->pinned) kvx_gpu_unpin(p->base);
        ucp_rkey_buffer_release(p->rkey_buf);
        ucp_mem_unmap(c->ucp, p->memh);
        cm_free(p);
    }
    ucp_worker_destroy(c->worker);
    ucp_cleanup(c->ucp);
    cm_free(c);
}

static cm_status_t pool_new(kvx_ctx_t *c, const eng_kv_geom_t *g, void *mem, bool cuda,
                            uint64_t fingerprint, uint64_t incarnation, kvx_pool_t **out) {
    if (eng_kv_geom_check(g) != CM_OK) return CM_ERR_INVALID_ARG;
    kvx_pool_t *p = cm_calloc(1, sizeof *p);
    if (!p) return CM_ERR_NO_MEMORY;
    p->c = c;
    p->g = *g;
    p->block_bytes = eng_kv_geom_block_bytes(g);
    p->bytes = eng_kv_geom_pool_bytes(g);
    p->fingerprint = fingerprint;
    p->incarnation = incarnation;
    ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                             UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                                             UCP_MEM_MAP_PARAM_FIELD_FLAGS,
                               .address = mem,
                               .length = p->bytes,
                               .flags = mem ? 0 : UCP_MEM_MAP_ALLOCATE};
    if (cuda) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        mp.memory_type = UCS_MEMORY_TYPE_CUDA;
        p->mode = MEM_CUDA_DIRECT;
        p->dev = mem;
    }
    if (ucp_mem_map(c->ucp, &mp, &p->memh) != UCS_OK) {
        cm_log_error("kvx", "cannot register a KV pool of %zu bytes", p->bytes);
        cm_free(p);
        return CM_ERR_NO_MEMORY;
    }
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};
    ucp_mem_query(p->memh, &attr);
    p->base = cuda ? mem : attr.address;
    if (!mem) memset(p->base, 0, p->bytes); /* pre-fault: first-touch writes are slow */
    if (ucp_rkey_pack(c->ucp, p->memh, &p->rkey_buf, &p->rkey_len) != UCS_OK) {
        ucp_mem_unmap(c->ucp, p->memh);
        cm_free(p);
        return CM_ERR_IO;
    }
    p->next = c->pools;
    c->pools = p;
    *out = p;
    return CM_OK;
}

cm_status_t kvx_pool_register(kvx_ctx_t *c, const eng_kv_geom_t *g, void *mem, uint64_t fingerprint,
                              uint64_t incarnation, kvx_pool_t **out) {
    return pool_new(c, g, mem, false, fingerprint, incarnation, out);
}

cm_status_t kvx_pool_register_cuda(kvx_ctx_t *c, const eng_kv_geom_t *g, void *dev, int device,
                                   uint64_t fingerprint, uint64_t incarnation, kvx_pool_t **out) {
    *out = NULL;
    if (!dev || eng_kv_geom_check(g) != CM_OK) return CM_ERR_INVALID_ARG;
    if (!c->gpu) {
        cm_status_t st = kvx_gpu_open(device, &c->gpu);
        if (st != CM_OK) return st;
        c->gpu_device = device;
    } else if (c->gpu_device != device) {
        cm_log_error("kvx", "CUDA pools of one context must share a device (%d, not %d)",
                     c->gpu_device, device);
        return CM_ERR_INVALID_ARG;
    }
    if (!kvx_gpu_is_device(dev)) {
        cm_log_error("kvx", "kvx_pool_register_cuda: %p is not CUDA device memory", dev);
        return CM_ERR_INVALID_ARG;
    }
    const char *want = getenv("TANDEM_KVX_CUDA");
    bool direct = c->ucx_cuda, forced = want && *want && strcmp(want, "auto") != 0;
    if (forced) {
        if (strcmp(want, "direct") != 0 && strcmp(want, "stage") != 0) {
            cm_log_error("kvx", "TANDEM_KVX_CUDA=%s: want auto, direct or stage", want);
            return CM_ERR_INVALID_ARG;
        }
        direct = strcmp(want, "direct") == 0;
        if (direct && !c->ucx_cuda) {
            cm_log_error("kvx", "TANDEM_KVX_CUDA=direct, but this UCX cannot register CUDA "
                                "memory (built without CUDA support)");
            return CM_ERR_UNSUPPORTED;
        }
    }
    if (direct) return pool_new(c, g, dev, true, fingerprint, incarnation, out);
    /* Staged: a host mirror of the same layout, allocated by UCX (the
     * fastest shared-memory target) and pinned for asynchronous copies. */
    kvx_pool_t *p;
    cm_status_t st = pool_new(c, g, NULL, false, fingerprint, incarnation, &p);
    if (st != CM_OK) return st;
    if (kvx_gpu_pin(p->base, p->bytes) == CM_OK) p->pinned = true;
    /* Unpinned still works (the copies become synchronous): say so. */
    if (!p->pinned) cm_log_warn("kvx", "KV staging buffer not pinned: copies will be slower");
    p->mode = MEM_CUDA_STAGED;
    p->dev = dev;
    *out = p;
    return CM_OK;
}

const char *kvx_pool_mode(const kvx_pool_t *p) {
    return p->mode == MEM_CUDA_DIRECT   ? "cuda"
           : p->mode == MEM_CUDA_STAGED ? "cuda-staged"
                                        : "host";
}

void *kvx_pool_base(const kvx_pool_t *p) { return p->base; }
size_t kvx_pool_bytes(const kvx_pool_t *p) { return p->bytes; }

/* Descriptor: magic, version, fingerprint, incarnation, geometry (6 u32),
 * base, bytes, rkey len, address len, rkey, address. */
enum { DESC_FIXED = 4 + 4 + 8 + 8 + 24 + 8 + 8 + 4 + 4 };

cm_status_t kvx_pool_export(const kvx_pool_t *p, uint8_t **desc, size_t *len) {
    ucp_address_t *addr;
    size_t alen;
    if (ucp_worker_get_address(p->c->worker, &addr, &alen) != UCS_OK) return CM_ERR_IO;
    size_t n = DESC_FIXED + p->rkey_len + alen;
    uint8_t *d = cm_malloc(n);
    if (!d) {
        ucp_worker_release_address(p->c->worker, addr);
        return CM_ERR_NO_MEMORY;
    }
    uint8_t *q = d;
    put_u32(q, KVX_MAGIC), q += 4;
    put_u32(q, KVX_VERSION), q += 4;
    put_u64(q, p->fingerprint), q += 8;
    put_u64(q, p->incarnation), q += 8;
    const uint32_t geo[6] = {p->g.n_layers, p->g.n_blocks, p->g.block_size,
                             p->g.kv_heads, p->g.head_dim, p->g.dtype_bytes};
    for (int i = 0; i < 6; i++) put_u32(q, geo[i]), q += 4;
    put_u64(q, (uint64_t)(uintptr_t)p->base), q += 8;
    put_u64(q, p->bytes), q += 8;
    put_u32(q, (uint32_t)p->rkey_len), q += 4;
    put_u32(q, (uint32_t)alen), q += 4;
    memcpy(q, p->rkey_buf, p->rkey_len), q += p->rkey_len;
    memcpy(q, addr, alen);
    ucp_worker_release_address(p->c->worker, addr);
    *desc = d;
    *len = n;
    return CM_OK;
}

cm_status_t kvx_peer_connect(kvx_ctx_t *c, const uint8_t *desc, size_t len, uint64_t my_fingerprint,
                             kvx_peer_t **out) {
    if (len < DESC_FIXED || get_u32(desc) != KVX_MAGIC || get_u32(desc + 4) != KVX_VERSION)
        return CM_ERR_PROTOCOL;
    uint64_t fp = get_u64(desc + 8), inc = get_u64(desc + 16);
    eng_kv_geom_t g = {get_u32(desc + 24), get_u32(desc + 28), get_u32(desc + 32),
                       get_u32(desc + 36), get_u32(desc + 40), get_u32(desc + 44)};
    uint64_t base = get_u64(desc + 48), bytes = get_u64(desc + 56);
    uint32_t rlen = get_u32(desc + 64), alen = get_u32(desc + 68);
    if ((uint64_t)DESC_FIXED + rlen + alen != len || eng_kv_geom_check(&g) != CM_OK ||
        eng_kv_geom_pool_bytes(&g) != bytes)
        return CM_ERR_PROTOCOL;
    if (fp != my_fingerprint) {
        cm_log_error("kvx",
                     "peer KV layout fingerprint %016llx differs from ours %016llx: "
                     "refusing to send (model, dtype, block size, heads or TP differ)",
                     (unsigned long long)fp, (unsigned long long)my_fingerprint);
        return CM_ERR_FINGERPRINT;
    }
    const uint8_t *rkey = desc + DESC_FIXED, *addr = rkey + rlen;
    uint64_t ah = cm_hash64(addr, alen, inc);
    for (kvx_peer_t *p = c->peers; p; p = p->next) {
        if (p->addr_hash == ah && p->incarnation == inc && !p->dead) {
            *out = p;
            return CM_OK;
        }
    }
    kvx_peer_t *p = cm_calloc(1, sizeof *p);
    if (!p) return CM_ERR_NO_MEMORY;
    p->c = c;
    p->incarnation = inc;
    p->fingerprint = fp;
    p->remote_base = base;
    p->g = g;
    p->block_bytes = eng_kv_geom_block_bytes(&g);
    p->addr_hash = ah;
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .address = (const ucp_address_t *)addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = on_peer_error, .arg = p}};
    if (ucp_ep_create(c->worker, &ep, &p->ep) != UCS_OK) {
        cm_free(p);
        return CM_ERR_PEER_DEAD;
    }
    if (ucp_ep_rkey_unpack(p->ep, rkey, &p->rkey) != UCS_OK) {
        close_ep(c, p->ep);
        cm_free(p);
        return CM_ERR_PROTOCOL;
    }
    void *local;
    if (c->map_peers && ucp_rkey_ptr(p->rkey, base, &local) == UCS_OK) p->mapped = local;
    p->next = c->peers;
    c->peers = p;
    *out = p;
    return CM_OK;
}

uint64_t kvx_peer_incarnation(const kvx_peer_t *p) { return p->incarnation; }
bool kvx_peer_mapped(const kvx_peer_t *p) { return p->mapped != NULL; }
bool kvx_peer_alive(const kvx_peer_t *p) { return !p->dead; }

/* Posts the puts of layer @l: one per run of consecutive source and
 * destination blocks, from the pool's host memory (the mirror when staged,
 * the device memory when UCX registers it directly). */
static void post_layer(kvx_send_t *s, uint32_t l, const kvx_pair_t *pairs, size_t n) {
    const kvx_pool_t *src = s->src;
    kvx_peer_t *peer = s->peer;
    kvx_ctx_t *c = s->c;
    ucp_request_param_t prm = {.op_attr_mask =
                                   UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.send = on_op_done,
                               .user_data = s};
    for (size_t i = 0; i < n && s->st == CM_OK;) {
        size_t j = i + 1; /* extend the run while both sides stay contiguous */
        while (j < n && pairs[j].src == pairs[j - 1].src + 1 &&
               pairs[j].dst == pairs[j - 1].dst + 1)
            j++;
        size_t soff, doff;
        eng_kv_geom_offset(&src->g, l, pairs[i].src, &soff);
        eng_kv_geom_offset(&peer->g, l, pairs[i].dst, &doff);
        size_t bytes = (j - i) * src->block_bytes;
        const char *sp = (const char *)src->base + soff;
        if (s->has_crc) s->crc = cm_crc32c(s->crc, sp, bytes);
        c->stats.puts++;
        c->stats.bytes += bytes;
        i = j;
        if (s->direct) {
            if (s->stream)
                kvx_copy_stream(peer->mapped + doff, sp, bytes);
            else
                memcpy(peer->mapped + doff, sp, bytes);
            continue;
        }
        ucs_status_ptr_t r =
            ucp_put_nbx(peer->ep, sp, bytes, peer->remote_base + doff, peer->rkey, &prm);
        if (UCS_PTR_IS_ERR(r))
            s->st = status_of(UCS_PTR_STATUS(r));
        else if (r)
            s->outstanding++;
    }
}

/* All puts posted: flush, then the notice. */
static void post_flush(kvx_send_t *s) {
    if (s->st != CM_OK) {
        finish(s, s->st);
        return;
    }
    if (s->direct) { /* no puts: the copies only have to be visible first */
        kvx_copy_fence();
        s->flushed = true;
        post_notice(s);
        return;
    }
    ucp_request_param_t fp = {.op_attr_mask =
                                  UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                              .cb.send = on_flush_done,
                              .user_data = s};
    ucs_status_ptr_t r = ucp_ep_flush_nbx(s->peer->ep, &fp);
    if (r == NULL) {
        s->flushed = true;
        post_notice(s);
    } else if (UCS_PTR_IS_ERR(r)) {
        finish(s, status_of(UCS_PTR_STATUS(r)));
    } else {
        s->outstanding++;
    }
}

/* Staged source: posts the layers whose device -> mirror copies are done;
 * the flush once all are. */
static void advance_staged(kvx_send_t *s) {
    if (s->finished || s->next_layer >= s->hi) return;
    uint64_t done = 0;
    if (kvx_gpu_poll(s->c->gpu, &done) != CM_OK) {
        finish(s, CM_ERR_IO);
        return;
    }
    while (s->next_layer < s->hi && s->st == CM_OK && s->tickets[s->next_layer - s->lo] <= done)
        post_layer(s, s->next_layer++, s->pairs, s->n_pairs);
    if (s->st != CM_OK)
        finish(s, s->st);
    else if (s->next_layer == s->hi)
        post_flush(s);
}

/* The notice payload: destination pool base, run count, then (first
 * destination block, blocks) per run of the puts. */
static uint8_t *make_runs(const kvx_peer_t *peer, const kvx_pair_t *pairs, size_t n, size_t *len) {
    size_t nr = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || pairs[i].src != pairs[i - 1].src + 1 || pairs[i].dst != pairs[i - 1].dst + 1)
            nr++;
    uint8_t *d = cm_malloc(12 + nr * 8);
    if (!d) return NULL;
    put_u64(d, peer->remote_base);
    put_u32(d + 8, (uint32_t)nr);
    uint8_t *q = d + 12;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && pairs[j].src == pairs[j - 1].src + 1 &&
               pairs[j].dst == pairs[j - 1].dst + 1)
            j++;
        put_u32(q, (uint32_t)pairs[i].dst);
        put_u32(q + 4, (uint32_t)(j - i));
        q += 8;
        i = j;
    }
    *len = 12 + nr * 8;
    return d;
}

cm_status_t kvx_send(kvx_peer_t *peer, const kvx_pool_t *src, uint64_t req_id, uint32_t lo,
                     uint32_t hi, const kvx_pair_t *pairs, size_t n, bool crc, uint64_t deadline_ms,
                     kvx_done_fn done, void *ud) {
    kvx_ctx_t *c = peer->c;
    if (peer->dead) return CM_ERR_PEER_DEAD;
    if (lo >= hi || hi > src->g.n_layers || hi > peer->g.n_layers ||
        src->block_bytes != peer->block_bytes || !done || (n > 0 && !pairs) || n > UINT32_MAX)
        return CM_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (pairs[i].src < 0 || (uint32_t)pairs[i].src >= src->g.n_blocks || pairs[i].dst < 0 ||
            (uint32_t)pairs[i].dst >= peer->g.n_blocks)
            return CM_ERR_OUT_OF_RANGE;
    kvx_send_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->runs = make_runs(peer, pairs, n, &s->runs_len);
    bool staged = src->mode == MEM_CUDA_STAGED;
    if (staged) {
        s->pairs = cm_malloc_array(n ? n : 1, sizeof *pairs);
        s->tickets = cm_malloc_array(hi - lo, sizeof *s->tickets);
    }
    if (!s->runs || (staged && (!s->pairs || !s->tickets))) {
        cm_free(s->runs);
        cm_free(s->pairs);
        cm_free(s->tickets);
        cm_free(s);
        return CM_ERR_NO_MEMORY;
    }
    s->c = c;
    s->peer = peer;
    s->src = src;
    s->req_id = req_id;
    s->lo = lo;
    s->hi = hi;
    s->deadline_ns = cm_time_mono_ns() + deadline_ms * 1000000ull;
    s->done = done;
    s->ud = ud;
    /* Device memory cannot be summed from here; a staged pool's mirror can. */
    s->has_crc = crc && src->mode != MEM_CUDA_DIRECT;
    s->direct = peer->mapped && src->mode != MEM_CUDA_DIRECT;
    s->stream = (uint64_t)n * src->block_bytes * (hi - lo) >= c->nt_min;
    s->next = c->sends;
    c->sends = s;
    if (staged) {
        /* Every layer's device -> mirror copies go on the copy stream now;
         * each layer's puts follow as soon as its copies are done, while
         * later layers still copy. */
        if (n) memcpy(s->pairs, pairs, n * sizeof *pairs);
        s->n_pairs = n;
        s->next_layer = lo;
        for (uint32_t l = lo; l < hi && s->st == CM_OK; l++) {
            for (size_t i = 0; i < n && s->st == CM_OK; i++) {
                size_t off;
                eng_kv_geom_offset(&src->g, l, pairs[i].src, &off);
                size_t j = i + 1, run = 1;
                while (j < n && pairs[j].src == pairs[j - 1].src + 1) j++, run++;
                if (kvx_gpu_copy(c->gpu, (char *)src->base + off, (const char *)src->dev + off,
                                 run * src->block_bytes) != CM_OK)
                    s->st = CM_ERR_IO;
                i = j - 1;
            }
            if (s->st == CM_OK && kvx_gpu_mark(c->gpu, &s->tickets[l - lo]) != CM_OK)
                s->st = CM_ERR_IO;
        }
        if (s->st != CM_OK)
            finish(s, s->st);
        else
            advance_staged(s);
        return CM_OK;
    }
    for (uint32_t l = lo; l < hi && s->st == CM_OK; l++) post_layer(s, l, pairs, n);
    post_flush(s);
    return CM_OK;
}

bool kvx_ctx_busy(const kvx_ctx_t *c) {
    if (c->pending) return true;
    for (const kvx_send_t *s = c->sends; s; s = s->next)
        if (!s->finished) return true;
    return false;
}

void kvx_ctx_stats(const kvx_ctx_t *c, kvx_stats_t *out) { *out = c->stats; }
