/*
 * kvx.h - moving KV blocks between processes over UCX.
 *
 * A receiver (decode worker) registers its KV pool, exports a descriptor
 * (worker address, rkey, pool base and geometry, layout fingerprint,
 * incarnation) and ships it through the control plane. A sender (prefill
 * worker) imports the descriptor — a different layout fingerprint is
 * refused — and posts transfers: for a range of layers, a list of
 * (source block, destination block) pairs. Contiguous runs (consecutive
 * source and destination blocks of one layer) go as one put each. After the
 * puts, the endpoint is flushed and only then an active message tells the
 * receiver which request and layers landed (with a CRC-32C of the bytes
 * when asked), so the receiver never sees a notice before the data.
 *
 * Failures are typed and never hang: every posted transfer completes
 * exactly once, with CM_OK, CM_ERR_PEER_DEAD (the peer's process died or
 * the connection broke), CM_ERR_TIMEOUT (its deadline passed) or
 * CM_ERR_CANCELED (kvx_ctx_free). Peer death is noticed by UCX's error
 * handling (error mode PEER) within about a second on TCP; over shared
 * memory UCX only notices through keepalive, so the context sets
 * UCX_KEEPALIVE_INTERVAL=1s and UCX_MM_ERROR_HANDLING=y (without it, error
 * mode PEER silently disables shared-memory transports in UCX 1.13:
 * PITFALLS.md) unless the environment already sets them.
 *
 * Threading: a context and everything made from it belong to one thread
 * (UCX single-thread mode), normally a libuv loop: poll kvx_ctx_fd() and
 * call kvx_ctx_progress() when it is readable and after posting work.
 *
 * Wakeups over shared memory: UCP's adaptive progress (UCX_ADAPTIVE_PROGRESS,
 * on by default) keeps a receiver's shared-memory interface inactive while
 * no endpoint of the receiver's own uses it; ucp_worker_arm then never
 * arms it, senders never signal it, and notices wait in its FIFO until the
 * receiver's next progress call; once the FIFO (64 entries) is full the
 * sender's flush waits too (lone 16 KiB transfers to a receiver sleeping
 * up to 100 ms: 1,172 us each). kvx_ctx_new turns adaptive progress off
 * unless UCX_ADAPTIVE_PROGRESS is set: the fd then wakes on every notice
 * (the same transfers: ~1 us at the sender; `tandem bench kvxfer` reports
 * the receiver's latency). The workers still progress kvx every
 * millisecond while KV is expected or kvx_ctx_busy() (deadlines, and a
 * backstop should a transport not wake the fd), rarely otherwise.
 * Callbacks run inside kvx_ctx_progress, or inside kvx_send when the send
 * ends there: a failure while posting, or (mapped peers, below) a success
 * whose notice UCX sent at once. Callers must not touch what @done frees
 * after kvx_send returns.
 *
 * Mapped peers: when UCX can map a peer's pool into this process (shared
 * memory on one host: ucp_rkey_ptr succeeds; never over tcp), kvx copies
 * each run into it itself instead of posting a put, then fences the stores
 * and sends the notice (no flush is needed: nothing is in flight). UCX's
 * own shared-memory put is the same copy, but with ordinary stores (`rep
 * movsb` from 1 KiB to 8 MiB): every destination line is read before it is
 * written, and a transfer of many blocks moves at about half the speed of
 * one large copy (256 MiB in 256 KiB blocks: 5.3 vs 9.5 GB/s on a Xeon).
 * kvx uses streaming stores (AVX-512/AVX/SSE2) once a send moves at least
 * TANDEM_KVX_STREAM_MIN bytes and ordinary memcpy below. The default,
 * kvx_stream_min_default(), is a quarter of the L3 within [1 MiB, 8 MiB]:
 * while a send's source and destination fit in cache, ordinary stores win
 * (an EPYC with a 32 MiB L3: 4 MiB sends 36-39 GB/s vs 20-23 streaming),
 * beyond they lose (16-64 MiB sends: 8-10 vs 13-19 GB/s; the Xeon, whose
 * per-core L3 bandwidth is lower, crossed over near 2-4 MiB).
 * TANDEM_KVX_MAPPED=off restores puts. Sources in CUDA device memory
 * (registered directly) always go as puts.
 */
#ifndef TANDEM_KVX_H
#define TANDEM_KVX_H

#include "cm_base.h"
#include "eng_kvcache.h"

typedef struct kvx_ctx kvx_ctx_t;
typedef struct kvx_pool kvx_pool_t;
typedef struct kvx_peer kvx_peer_t;

/* A notice on the receiver: request @req_id's layers [lo, hi) landed (or
 * the sender reports an error in @status). @crc is the sender's CRC-32C of
 * the bytes when it computed one (has_crc). */
typedef struct {
    uint64_t req_id;
    uint32_t layer_lo, layer_hi;
    cm_status_t status;
    bool has_crc;
    uint32_t crc;
    uint64_t sender_incarnation;
} kvx_notice_t;

typedef void (*kvx_notice_fn)(void *ud, const kvx_notice_t *n);
/* A send finished: CM_OK once the receiver has been notified. */
typedef void (*kvx_done_fn)(void *ud, cm_status_t st);

/* Creates the UCX context and worker. Returns CM_ERR_IO with a log line
 * when UCX cannot start. */
cm_status_t kvx_ctx_new(kvx_notice_fn on_notice, void *ud, kvx_ctx_t **out);
/* Fails pending sends (CM_ERR_CANCELED), closes peers, unregisters pools,
 * frees the context. */
void kvx_ctx_free(kvx_ctx_t *c);
/* The worker's event fd for poll/uv_poll (readable = call progress). */
int kvx_ctx_fd(kvx_ctx_t *c);
/* Drives UCX until idle, expires overdue sends, and re-arms the fd. */
void kvx_ctx_progress(kvx_ctx_t *c);
/* The same without re-arming the fd (a few system calls per interface):
 * for a caller that spins until a send completes. Call kvx_ctx_progress
 * before sleeping on the fd. */
void kvx_ctx_poll(kvx_ctx_t *c);
/* The transports UCX chose ("tcp", "shm", ...) for logs. */
const char *kvx_ctx_transports(const kvx_ctx_t *c);

/*
 * Registers a KV pool of geometry @g. With @mem NULL, UCX allocates the
 * memory (UCP_MEM_MAP_ALLOCATE: the fastest target for shared-memory puts)
 * and pre-faults it; kvx_pool_base gives it. Otherwise @mem (at least the
 * pool size) is registered in place. @fingerprint identifies the layout,
 * @incarnation this process.
 */
cm_status_t kvx_pool_register(kvx_ctx_t *c, const eng_kv_geom_t *g, void *mem, uint64_t fingerprint,
                              uint64_t incarnation, kvx_pool_t **out);
/*
 * Registers a KV pool of geometry @g in CUDA device memory @dev (on
 * @device, at least the pool size). When this UCX can register CUDA memory
 * (ucp_context_query lists UCS_MEMORY_TYPE_CUDA) it is registered directly
 * and puts read and write the device. Otherwise (Debian's UCX is built
 * without CUDA) the pool gets a host mirror of the same layout, allocated
 * by UCX and pinned: a send queues every layer's device -> mirror copies on
 * kvx's copy stream at once and posts each layer's puts as soon as that
 * layer's copies are done (later layers copy while earlier ones travel); a
 * receiver queues mirror -> device copies of the blocks each notice names
 * and calls on_notice only once they are done (a failed copy: status
 * CM_ERR_IO). Copies are polled in kvx_ctx_progress, and kvx_ctx_busy() is
 * true while any is pending, so keep progressing then (the workers' 1 ms
 * timer). TANDEM_KVX_CUDA=direct|stage forces a path (direct without UCX
 * CUDA support: CM_ERR_UNSUPPORTED). The caller must have finished writing
 * blocks (its stream synchronized) before sending them. CRC-32C is computed
 * from the mirror when staged and not at all when direct. One device per
 * context. CM_ERR_UNSUPPORTED in a build without CUDA, CM_ERR_NO_DEVICE
 * without a usable device, CM_ERR_INVALID_ARG when @dev is not device
 * memory.
 */
cm_status_t kvx_pool_register_cuda(kvx_ctx_t *c, const eng_kv_geom_t *g, void *dev, int device,
                                   uint64_t fingerprint, uint64_t incarnation, kvx_pool_t **out);
/* "host", "cuda" (registered directly) or "cuda-staged". */
const char *kvx_pool_mode(const kvx_pool_t *p);
/* Host pools: the memory. CUDA pools: the device memory when direct, the
 * host mirror when staged. */
void *kvx_pool_base(const kvx_pool_t *p);
size_t kvx_pool_bytes(const kvx_pool_t *p);

/* Writes the pool's descriptor (cm_malloc'ed) for peers to import. */
cm_status_t kvx_pool_export(const kvx_pool_t *p, uint8_t **desc, size_t *len);

/*
 * Connects to the pool described by @desc. CM_ERR_FINGERPRINT when its
 * layout differs from @my_fingerprint, CM_ERR_PROTOCOL for a malformed
 * descriptor, CM_ERR_PEER_DEAD when the endpoint cannot be created.
 * Peers are cached by (address, incarnation): importing the same descriptor
 * again returns the same peer.
 */
cm_status_t kvx_peer_connect(kvx_ctx_t *c, const uint8_t *desc, size_t len, uint64_t my_fingerprint,
                             kvx_peer_t **out);
/* The incarnation the peer's descriptor carries. */
uint64_t kvx_peer_incarnation(const kvx_peer_t *p);
/* True when the peer's pool is mapped here and sends copy into it (kvx.h,
 * "Mapped peers"). */
bool kvx_peer_mapped(const kvx_peer_t *p);
/* The default TANDEM_KVX_STREAM_MIN on this machine (see "Mapped peers"). */
uint64_t kvx_stream_min_default(void);
/* False once the peer failed (its sends fail with CM_ERR_PEER_DEAD). */
bool kvx_peer_alive(const kvx_peer_t *p);

typedef struct {
    int32_t src, dst;
} kvx_pair_t;

/*
 * Sends layers [lo, hi) of the @n block pairs from @src (a pool of the
 * same geometry) to @peer, then notifies it with @req_id. The pairs are
 * copied. @done is called exactly once, possibly before kvx_send returns
 * (see "Callbacks" above). Returns CM_OK when posted (done follows or has
 * run), or an error with no callback (bad arguments, dead peer).
 */
cm_status_t kvx_send(kvx_peer_t *peer, const kvx_pool_t *src, uint64_t req_id, uint32_t lo,
                     uint32_t hi, const kvx_pair_t *pairs, size_t n, bool crc, uint64_t deadline_ms,
                     kvx_done_fn done, void *ud);

/* True while a posted send has not completed. */
bool kvx_ctx_busy(const kvx_ctx_t *c);

/* Counters for logs and benchmarks. */
typedef struct {
    uint64_t puts, bytes, sends_ok, sends_failed, notices;
} kvx_stats_t;
void kvx_ctx_stats(const kvx_ctx_t *c, kvx_stats_t *out);

#endif /* TANDEM_KVX_H */
