/*
 * test_kvx.c - KV block transfers between real processes over UCX (shared
 * memory and TCP): random block patterns arrive bit-exact (checked byte for
 * byte and by the sender's CRC-32C), layers can be sent in pieces, a
 * fingerprint mismatch is refused, and a receiver killed with -9 makes the
 * sender's transfer end with a typed error within its deadline, also when
 * the receiver restarted and the sender still holds its old descriptor.
 */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cm_gpu.h"
#include "kvx.h"
#include "kvx_copy.h"
#include "kvx_gpu.h"
#include "tt.h"

static const eng_kv_geom_t k_geom = {.n_layers = 3,
                                     .n_blocks = 64,
                                     .block_size = 16,
                                     .kv_heads = 2,
                                     .head_dim = 32,
                                     .dtype_bytes = 4};
#define FP 0xabcdef12345ull

/* Content of (layer, source block) for a given seed. */
static void pattern(uint8_t *dst, size_t n, uint64_t seed, uint32_t layer, int32_t blk) {
    uint64_t x = seed ^ ((uint64_t)layer << 40) ^ ((uint64_t)(uint32_t)blk << 8) ^ 0x9E37;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        dst[i] = (uint8_t)(x >> 56);
    }
}

/* The pairs both sides derive from the seed: runs and scattered blocks. */
static size_t make_pairs(uint64_t seed, kvx_pair_t *p) {
    size_t n = 0;
    for (int i = 0; i < 8; i++) p[n++] = (kvx_pair_t){10 + i, 20 + i}; /* one run */
    uint64_t x = seed;
    for (int i = 0; i < 12; i++) {
        x = x * 6364136223846793005ull + 1;
        p[n++] = (kvx_pair_t){40 + i, (int32_t)(x >> 59) + (i % 2 ? 30 : 0)};
    }
    /* Destinations must be distinct: the scattered ones use 0..31 / 30..61
     * ranges shifted per index parity, dedupe by construction below. */
    for (size_t i = 8; i < n; i++) p[i].dst = (int32_t)(28 + (i - 8) * 3);
    return n;
}

typedef struct {
    int notices, bad;
    uint8_t *base;
    uint64_t seed;
    void *dev; /* CUDA receiver: the device pool, copied to base per notice */
} recv_t;

static void on_notice(void *ud, const kvx_notice_t *n) {
    recv_t *r = ud;
    kvx_pair_t pairs[32];
    size_t np = make_pairs(r->seed, pairs);
    size_t bb = eng_kv_geom_block_bytes(&k_geom);
    uint8_t *want = malloc(bb);
    uint32_t crc = 0;
    for (uint32_t l = n->layer_lo; l < n->layer_hi; l++) {
        for (size_t i = 0; i < np; i++) {
            size_t off;
            eng_kv_geom_offset(&k_geom, l, pairs[i].dst, &off);
            pattern(want, bb, r->seed, l, pairs[i].src);
            if (memcmp(r->base + off, want, bb) != 0) r->bad++;
            crc = cm_crc32c(crc, r->base + off, bb);
        }
    }
    if (n->status != CM_OK || !n->has_crc || n->crc != crc) r->bad++;
    r->notices++;
    free(want);
}

/* Receiver: registers a pool, publishes its descriptor at @path, waits for
 * @want notices (exit 0 when all bit-exact), or forever when want = 0.
 * With @sleep_ms > 0 it sleeps on the kvx fd up to that long between
 * progress calls and fails (exit 30) if a sleep ran out while notices were
 * still due after the first: a notice that does not wake the fd. */
static int receiver(const char *path, uint64_t seed, int want, int sleep_ms) {
    recv_t r = {.seed = seed};
    kvx_ctx_t *c;
    if (kvx_ctx_new(on_notice, &r, &c) != CM_OK) return 10;
    kvx_pool_t *p;
    if (kvx_pool_register(c, &k_geom, NULL, FP, (uint64_t)getpid(), &p) != CM_OK) return 11;
    r.base = kvx_pool_base(p);
    uint8_t *d;
    size_t dl;
    if (kvx_pool_export(p, &d, &dl) != CM_OK) return 12;
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(d, 1, dl, f) != dl || fclose(f) != 0 || rename(tmp, path) != 0) return 13;
    cm_free(d);
    cm_deadline_t dl2 = cm_deadline_in_ms(want ? 30000 : 60000);
    int lost_wakeups = 0;
    while ((want == 0 || r.notices < want) && !cm_deadline_expired(dl2)) {
        kvx_ctx_progress(c);
        if (want && r.notices >= want) break;
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        if (poll(&pf, 1, sleep_ms > 0 ? sleep_ms : 20) == 0 && sleep_ms > 0 && r.notices > 0)
            lost_wakeups++;
    }
    int rc = r.notices == want && r.bad == 0 ? 0 : 20 + (r.bad ? 1 : 0);
    if (rc == 0 && lost_wakeups) rc = 30;
    kvx_ctx_free(c);
    return rc;
}

TT_CHILD(kvx_receiver) {
    if (argc < 3 || argc > 4) return 99;
    return receiver(argv[0], strtoull(argv[1], 0, 10), atoi(argv[2]),
                    argc == 4 ? atoi(argv[3]) : 0);
}

static uint8_t *read_desc(const char *path, size_t *len, long ms) {
    cm_deadline_t d = cm_deadline_in_ms((uint64_t)ms);
    while (!cm_deadline_expired(d)) {
        FILE *f = fopen(path, "rb");
        if (f) {
            uint8_t *b = malloc(1 << 16);
            *len = fread(b, 1, 1 << 16, f);
            fclose(f);
            return b;
        }
        cm_time_sleep_ns(10000000);
    }
    return NULL;
}

typedef struct {
    int done;
    cm_status_t st[4];
} sent_t;

static void on_done(void *ud, cm_status_t st) {
    sent_t *s = ud;
    s->st[s->done++] = st;
}

/* @how: "copy" (default settings: a shared-memory peer is mapped and
 * these small sends copy with memcpy), "stream" (every copy with
 * streaming stores), "puts" (TANDEM_KVX_MAPPED=off). */
static void run_exact(const char *tls, const char *how) {
    setenv("UCX_TLS", tls, 1);
    if (!strcmp(how, "stream")) setenv("TANDEM_KVX_STREAM_MIN", "0", 1);
    if (!strcmp(how, "puts")) setenv("TANDEM_KVX_MAPPED", "off", 1);
    char path[1024], seed[32];
    snprintf(path, sizeof path, "%s/desc-%s", tt_tmpdir(), tls);
    uint64_t sd = 0x5eed0000u + (uint64_t)tls[0];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)sd);
    pid_t pid = tt_spawn("kvx_receiver", (const char *[]){path, seed, "2", NULL});
    size_t dl;
    uint8_t *desc = read_desc(path, &dl, 10000);
    TT_ASSERT_MSG(desc, "receiver did not publish its descriptor");
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_peer_t *peer;
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl, FP + 1, &peer), CM_ERR_FINGERPRINT);
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl - 1, FP, &peer), CM_ERR_PROTOCOL);
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl, FP, &peer), CM_OK);
    /* Only a shared-memory peer can be mapped, and only when allowed. */
    bool shm = strncmp(tls, "shm", 3) == 0;
    TT_ASSERT_EQ_INT(kvx_peer_mapped(peer), shm && strcmp(how, "puts") != 0);
    kvx_pool_t *src;
    size_t bytes = eng_kv_geom_pool_bytes(&k_geom);
    uint8_t *mem = cm_aligned_alloc(4096, bytes);
    kvx_pair_t pairs[32];
    size_t np = make_pairs(sd, pairs);
    size_t bb = eng_kv_geom_block_bytes(&k_geom);
    for (uint32_t l = 0; l < k_geom.n_layers; l++)
        for (int32_t b = 0; b < (int32_t)k_geom.n_blocks; b++) {
            size_t off;
            eng_kv_geom_offset(&k_geom, l, b, &off);
            pattern(mem + off, bb, sd, l, b);
        }
    TT_ASSERT_EQ_INT(kvx_pool_register(c, &k_geom, mem, FP, 1, &src), CM_OK);
    sent_t s = {0};
    /* Layer 0 first, then layers 1-2: streamed as prefill would. */
    TT_ASSERT_EQ_INT(kvx_send(peer, src, 7, 0, 1, pairs, np, true, 5000, on_done, &s), CM_OK);
    TT_ASSERT_EQ_INT(kvx_send(peer, src, 7, 1, 3, pairs, np, true, 5000, on_done, &s), CM_OK);
    cm_deadline_t d = cm_deadline_in_ms(10000);
    while (s.done < 2 && !cm_deadline_expired(d)) {
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, 10);
    }
    TT_ASSERT_EQ_INT(s.done, 2);
    TT_ASSERT_EQ_INT(s.st[0], CM_OK);
    TT_ASSERT_EQ_INT(s.st[1], CM_OK);
    kvx_stats_t st;
    kvx_ctx_stats(c, &st);
    /* 1 run of 8 blocks + 12 singles per layer: coalesced puts. */
    TT_ASSERT_EQ_INT(st.puts, 3 * 13);
    int status;
    waitpid(pid, &status, 0);
    TT_ASSERT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "receiver status %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    free(desc);
}

TT_TEST_T(kvx, bit_exact_over_shm, 60) { run_exact("shm,self", "copy"); }
TT_TEST_T(kvx, bit_exact_over_shm_streaming_stores, 60) { run_exact("shm,self", "stream"); }
TT_TEST_T(kvx, bit_exact_over_shm_with_puts, 60) { run_exact("shm,self", "puts"); }
TT_TEST_T(kvx, bit_exact_over_tcp, 60) { run_exact("tcp,self", "copy"); }

TT_TEST_T(kvx, bad_copy_settings_refused, 10) {
    kvx_ctx_t *c = NULL;
    setenv("TANDEM_KVX_MAPPED", "maybe", 1);
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_ERR_INVALID_ARG);
    unsetenv("TANDEM_KVX_MAPPED");
    setenv("TANDEM_KVX_STREAM_MIN", "lots", 1);
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_ERR_INVALID_ARG);
    TT_ASSERT_MSG(c == NULL, "no context on bad settings");
}

/* Streaming-store copies equal memcpy for every instruction set this CPU
 * has, every alignment of both ends and lengths around the 64-byte line
 * and the 128-byte loop step, and write nothing outside [dst, dst + n). */
TT_TEST_T(kvx, streaming_copy_equals_memcpy, 30) {
    enum { CAP = 3 * 4096 };
    uint8_t *src = malloc(CAP), *got = malloc(CAP + 256), *want = malloc(CAP + 256);
    uint64_t x = 0x1234567;
    for (size_t i = 0; i < CAP; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (uint8_t)(x >> 56);
    }
    static const size_t lens[] = {0,   1,   63,  64,   65,   127,  128,  129,      191,
                                  255, 256, 257, 1000, 4096, 4097, 8191, CAP - 200};
    int checked = 0, levels = 0;
    for (int level = 0; level < 3; level++) {
        if (!kvx_copy_stream_level(level, src, src, 0)) continue;
        levels++;
        for (size_t so = 0; so < 70; so += 3)
            for (size_t dof = 0; dof < 70; dof += 5)
                for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
                    size_t n = lens[li];
                    memset(got, 0xa5, CAP + 256);
                    memset(want, 0xa5, CAP + 256);
                    TT_ASSERT(kvx_copy_stream_level(level, got + dof, src + so, n));
                    kvx_copy_fence();
                    memcpy(want + dof, src + so, n);
                    TT_ASSERT_MSG(memcmp(got, want, CAP + 256) == 0,
                                  "level %d src+%zu dst+%zu n=%zu", level, so, dof, n);
                    checked++;
                }
    }
    /* SSE2 is always there on x86-64 (and level 0 is memcpy elsewhere). */
    TT_ASSERT(levels >= 1 && checked > 1000 * levels);
    free(src), free(got), free(want);
}

/* 200 lone transfers (13 puts and a CRC each), one after another, to a
 * receiver that only wakes when its fd says so (sleeps of 4 s): each
 * arrives bit-exact and no sleep runs out. (The pacing that exposed UCP's
 * adaptive progress over shared memory, kvx.h "Wakeups", is one put per
 * transfer at full speed: tests/integration/test_kvx_wakeup.sh.) */
static void run_wakeups(const char *tls) {
    setenv("UCX_TLS", tls, 1);
    char path[1024], seed[32];
    snprintf(path, sizeof path, "%s/desc-wake-%s", tt_tmpdir(), tls);
    uint64_t sd = 0x3a4e0000u + (uint64_t)tls[0];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)sd);
    enum { N = 200 };
    pid_t pid = tt_spawn("kvx_receiver", (const char *[]){path, seed, "200", "4000", NULL});
    size_t dl;
    uint8_t *desc = read_desc(path, &dl, 10000);
    TT_ASSERT_MSG(desc, "receiver did not publish its descriptor");
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_peer_t *peer;
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl, FP, &peer), CM_OK);
    size_t bytes = eng_kv_geom_pool_bytes(&k_geom), bb = eng_kv_geom_block_bytes(&k_geom);
    uint8_t *mem = cm_aligned_alloc(4096, bytes);
    TT_ASSERT(mem != NULL);
    for (int32_t b = 0; b < (int32_t)k_geom.n_blocks; b++) {
        size_t off;
        eng_kv_geom_offset(&k_geom, 0, b, &off);
        pattern(mem + off, bb, sd, 0, b);
    }
    kvx_pool_t *src;
    TT_ASSERT_EQ_INT(kvx_pool_register(c, &k_geom, mem, FP, 1, &src), CM_OK);
    kvx_pair_t pairs[32];
    size_t np = make_pairs(sd, pairs);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        sent_t s = {0};
        TT_ASSERT_EQ_INT(
            kvx_send(peer, src, (uint64_t)i, 0, 1, pairs, np, true, 10000, on_done, &s), CM_OK);
        cm_deadline_t d = cm_deadline_in_ms(15000);
        while (s.done == 0 && !cm_deadline_expired(d)) kvx_ctx_poll(c);
        TT_ASSERT_EQ_INT(s.done, 1);
        ok += s.st[0] == CM_OK;
    }
    TT_ASSERT_EQ_INT(ok, N);
    int status;
    waitpid(pid, &status, 0);
    TT_ASSERT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "receiver status %d (30: a notice did not wake its fd)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    free(desc);
}

TT_TEST_T(kvx, notices_wake_a_sleeping_receiver_over_shm, 90) { run_wakeups("shm,self"); }
TT_TEST_T(kvx, notices_wake_a_sleeping_receiver_over_tcp, 90) { run_wakeups("tcp,self"); }

TT_TEST_T(kvx, dead_receiver_typed_error_within_deadline, 60) {
    setenv("UCX_TLS", "tcp,self", 1);
    char path[1024];
    snprintf(path, sizeof path, "%s/desc-dead", tt_tmpdir());
    pid_t pid = tt_spawn("kvx_receiver", (const char *[]){path, "1", "0", NULL});
    size_t dl;
    uint8_t *desc = read_desc(path, &dl, 10000);
    TT_ASSERT(desc);
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_peer_t *peer;
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl, FP, &peer), CM_OK);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    kvx_pool_t *src;
    uint8_t *mem = cm_aligned_alloc(4096, eng_kv_geom_pool_bytes(&k_geom));
    memset(mem, 1, eng_kv_geom_pool_bytes(&k_geom));
    TT_ASSERT_EQ_INT(kvx_pool_register(c, &k_geom, mem, FP, 1, &src), CM_OK);
    kvx_pair_t pairs[64];
    for (int i = 0; i < 64; i++) pairs[i] = (kvx_pair_t){i, i};
    sent_t s = {0};
    uint64_t t0 = cm_time_mono_ms();
    cm_status_t st = kvx_send(peer, src, 9, 0, 3, pairs, 64, false, 3000, on_done, &s);
    if (st == CM_OK) {
        while (s.done < 1 && cm_time_mono_ms() - t0 < 10000) {
            kvx_ctx_progress(c);
            struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
            poll(&pf, 1, 10);
        }
        TT_ASSERT_EQ_INT(s.done, 1);
        st = s.st[0];
    }
    TT_ASSERT_MSG(st == CM_ERR_PEER_DEAD || st == CM_ERR_TIMEOUT, "got %s", cm_status_name(st));
    TT_ASSERT(cm_time_mono_ms() - t0 <= 4000);
    printf("dead receiver: %s after %llu ms\n", cm_status_name(st),
           (unsigned long long)(cm_time_mono_ms() - t0));
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    free(desc);
}

/* Drives @c until @s has @n completions or 10 s pass. */
static void wait_sends(kvx_ctx_t *c, sent_t *s, int n) {
    cm_deadline_t d = cm_deadline_in_ms(10000);
    while (s->done < n && !cm_deadline_expired(d)) {
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, 10);
    }
}

/* A decode worker restarts: the sender still holds the old process's
 * descriptor. Sending with it must fail with a typed error (never write
 * into the new process's memory, never hang); the new descriptor is a
 * different peer (new incarnation) and its transfer lands bit-exact. */
TT_TEST_T(kvx, restarted_receiver_stale_descriptor_refused, 60) {
    setenv("UCX_TLS", "tcp,self", 1);
    char p1[1024], p2[1024];
    snprintf(p1, sizeof p1, "%s/desc-old", tt_tmpdir());
    snprintf(p2, sizeof p2, "%s/desc-new", tt_tmpdir());
    const uint64_t sd = 4242;
    pid_t old = tt_spawn("kvx_receiver", (const char *[]){p1, "4242", "0", NULL});
    size_t l1, l2;
    uint8_t *d1 = read_desc(p1, &l1, 10000);
    TT_ASSERT(d1);
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_peer_t *stale, *fresh;
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, d1, l1, FP, &stale), CM_OK);
    kill(old, SIGKILL);
    waitpid(old, NULL, 0);
    pid_t neu = tt_spawn("kvx_receiver", (const char *[]){p2, "4242", "1", NULL});
    uint8_t *d2 = read_desc(p2, &l2, 10000);
    TT_ASSERT(d2);

    size_t bytes = eng_kv_geom_pool_bytes(&k_geom), bb = eng_kv_geom_block_bytes(&k_geom);
    uint8_t *mem = cm_aligned_alloc(4096, bytes);
    for (uint32_t l = 0; l < k_geom.n_layers; l++)
        for (int32_t b = 0; b < (int32_t)k_geom.n_blocks; b++) {
            size_t off;
            eng_kv_geom_offset(&k_geom, l, b, &off);
            pattern(mem + off, bb, sd, l, b);
        }
    kvx_pool_t *src;
    TT_ASSERT_EQ_INT(kvx_pool_register(c, &k_geom, mem, FP, 1, &src), CM_OK);
    kvx_pair_t pairs[32];
    size_t np = make_pairs(sd, pairs);

    sent_t s = {0};
    uint64_t t0 = cm_time_mono_ms();
    cm_status_t st = kvx_send(stale, src, 5, 0, 3, pairs, np, true, 3000, on_done, &s);
    if (st == CM_OK) {
        wait_sends(c, &s, 1);
        TT_ASSERT_EQ_INT(s.done, 1);
        st = s.st[0];
    }
    TT_ASSERT_MSG(st == CM_ERR_PEER_DEAD || st == CM_ERR_TIMEOUT, "stale send: %s",
                  cm_status_name(st));
    TT_ASSERT(cm_time_mono_ms() - t0 <= 4000);
    TT_ASSERT(!kvx_peer_alive(stale));

    TT_ASSERT_EQ_INT(kvx_peer_connect(c, d2, l2, FP, &fresh), CM_OK);
    TT_ASSERT(fresh != stale);
    TT_ASSERT(kvx_peer_incarnation(fresh) != kvx_peer_incarnation(stale));
    TT_ASSERT(kvx_peer_alive(fresh));
    sent_t s2 = {0};
    TT_ASSERT_EQ_INT(kvx_send(fresh, src, 6, 0, 3, pairs, np, true, 5000, on_done, &s2), CM_OK);
    wait_sends(c, &s2, 1);
    TT_ASSERT_EQ_INT(s2.done, 1);
    TT_ASSERT_EQ_INT(s2.st[0], CM_OK);
    int status;
    waitpid(neu, &status, 0);
    TT_ASSERT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "new receiver status %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    free(d1);
    free(d2);
}

/* ---- CUDA pools (staged through pinned host mirrors on Debian's UCX) ---- */

TT_TEST(kvx, cuda_pool_needs_a_cuda_build_and_a_device) {
    cm_gpu_info_t gi;
    cm_status_t q = cm_gpu_query(&gi);
    if (q == CM_OK) TT_SKIP("a GPU is present: kvx.cuda_staged_pools_bit_exact covers it");
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_pool_t *p = (kvx_pool_t *)&q;
    uint8_t host[64];
    /* Without CUDA: CM_ERR_UNSUPPORTED; CUDA without a device: NO_DEVICE. */
    TT_ASSERT_EQ_INT(kvx_pool_register_cuda(c, &k_geom, host, 0, FP, 1, &p), q);
    TT_ASSERT(p == NULL);
    kvx_ctx_free(c);
}

static void on_cuda_notice(void *ud, const kvx_notice_t *n) {
    recv_t *r = ud;
    /* The notice comes only after the blocks reached the device: read the
     * device pool back and check it as the host receiver does. */
    if (kvx_gpu_memcpy(r->base, r->dev, eng_kv_geom_pool_bytes(&k_geom)) != CM_OK) {
        r->bad++;
        r->notices++;
        return;
    }
    on_notice(ud, n);
}

static int receiver_cuda(const char *path, uint64_t seed, int want) {
    size_t bytes = eng_kv_geom_pool_bytes(&k_geom);
    recv_t r = {.seed = seed, .base = malloc(bytes)};
    if (!r.base || kvx_gpu_alloc(0, bytes, &r.dev) != CM_OK) return 14;
    kvx_ctx_t *c;
    if (kvx_ctx_new(on_cuda_notice, &r, &c) != CM_OK) return 10;
    kvx_pool_t *p;
    if (kvx_pool_register_cuda(c, &k_geom, r.dev, 0, FP, (uint64_t)getpid(), &p) != CM_OK)
        return 11;
    if (strcmp(kvx_pool_mode(p), "cuda-staged") != 0) return 15;
    uint8_t *d;
    size_t dl;
    if (kvx_pool_export(p, &d, &dl) != CM_OK) return 12;
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(d, 1, dl, f) != dl || fclose(f) != 0 || rename(tmp, path) != 0) return 13;
    cm_free(d);
    cm_deadline_t dl2 = cm_deadline_in_ms(30000);
    while (r.notices < want && !cm_deadline_expired(dl2)) {
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, kvx_ctx_busy(c) ? 1 : 20);
    }
    int rc = r.notices == want && r.bad == 0 ? 0 : 20 + (r.bad ? 1 : 0);
    kvx_ctx_free(c);
    kvx_gpu_free(r.dev);
    free(r.base);
    return rc;
}

TT_CHILD(kvx_receiver_cuda) {
    return argc == 3 ? receiver_cuda(argv[0], strtoull(argv[1], 0, 10), atoi(argv[2])) : 99;
}

/* Device pool to device pool in another process, staged both ways: layer
 * 0, then layers 1-2, bit-exact on the receiving device, CRC-32C of the
 * bytes sent matching. */
static void run_cuda_staged(const char *tls) {
    cm_gpu_info_t gi;
    if (cm_gpu_query(&gi) != CM_OK) TT_SKIP("no CUDA device (or a build without CUDA)");
    setenv("UCX_TLS", tls, 1);
    setenv("TANDEM_KVX_CUDA", "stage", 1);
    char path[1024], seed[32];
    snprintf(path, sizeof path, "%s/desc-cuda-%s", tt_tmpdir(), tls);
    uint64_t sd = 0xc0da0000u + (uint64_t)tls[0];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)sd);
    pid_t pid = tt_spawn("kvx_receiver_cuda", (const char *[]){path, seed, "2", NULL});
    size_t dl;
    uint8_t *desc = read_desc(path, &dl, 20000);
    TT_ASSERT_MSG(desc, "receiver did not publish its descriptor");
    size_t bytes = eng_kv_geom_pool_bytes(&k_geom), bb = eng_kv_geom_block_bytes(&k_geom);
    uint8_t *host = cm_aligned_alloc(4096, bytes);
    TT_ASSERT(host != NULL);
    for (uint32_t l = 0; l < k_geom.n_layers; l++)
        for (int32_t b = 0; b < (int32_t)k_geom.n_blocks; b++) {
            size_t off;
            eng_kv_geom_offset(&k_geom, l, b, &off);
            pattern(host + off, bb, sd, l, b);
        }
    void *dev;
    TT_ASSERT_EQ_INT(kvx_gpu_alloc(0, bytes, &dev), CM_OK);
    TT_ASSERT_EQ_INT(kvx_gpu_memcpy(dev, host, bytes), CM_OK);
    kvx_ctx_t *c;
    TT_ASSERT_EQ_INT(kvx_ctx_new(NULL, NULL, &c), CM_OK);
    kvx_peer_t *peer;
    TT_ASSERT_EQ_INT(kvx_peer_connect(c, desc, dl, FP, &peer), CM_OK);
    kvx_pool_t *src;
    TT_ASSERT_EQ_INT(kvx_pool_register_cuda(c, &k_geom, dev, 0, FP, 1, &src), CM_OK);
    TT_ASSERT_STR_EQ(kvx_pool_mode(src), "cuda-staged");
    kvx_pair_t pairs[32];
    size_t np = make_pairs(sd, pairs);
    sent_t s = {0};
    TT_ASSERT_EQ_INT(kvx_send(peer, src, 7, 0, 1, pairs, np, true, 10000, on_done, &s), CM_OK);
    TT_ASSERT_EQ_INT(kvx_send(peer, src, 7, 1, 3, pairs, np, true, 10000, on_done, &s), CM_OK);
    cm_deadline_t d = cm_deadline_in_ms(20000);
    while (s.done < 2 && !cm_deadline_expired(d)) {
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, 1);
    }
    TT_ASSERT_EQ_INT(s.done, 2);
    TT_ASSERT_EQ_INT(s.st[0], CM_OK);
    TT_ASSERT_EQ_INT(s.st[1], CM_OK);
    int status;
    waitpid(pid, &status, 0);
    TT_ASSERT_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "CUDA receiver status %d",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    kvx_ctx_free(c);
    kvx_gpu_free(dev);
    cm_aligned_free(host);
    free(desc);
}

TT_TEST_T(kvx, cuda_staged_pools_bit_exact_over_shm, 90) { run_cuda_staged("shm,self"); }
TT_TEST_T(kvx, cuda_staged_pools_bit_exact_over_tcp, 90) { run_cuda_staged("tcp,self"); }
