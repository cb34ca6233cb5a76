/* kvx_gpu.cu - kvxfer's copy stream: cudaMemcpyAsync on a non-blocking
 * stream, one event per ticket, polled (never waited on) from the kvx
 * progress loop. */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvx_gpu.h"

struct kvx_gpu {
    int device;
    cudaStream_t stream;
    /* Outstanding tickets in order: events[head..tail) with their numbers. */
    cudaEvent_t *events;
    uint64_t *tickets;
    size_t head, tail, cap;
    uint64_t next_ticket, done;
    bool failed;
};

static cm_status_t fail_cuda(const char *what, cudaError_t e) {
    cm_log_error("kvx", "%s: %s", what, cudaGetErrorString(e));
    return CM_ERR_IO;
}

extern "C" cm_status_t kvx_gpu_open(int device, kvx_gpu_t **out) {
    *out = NULL;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
        cudaGetLastError();
        return CM_ERR_NO_DEVICE;
    }
    kvx_gpu_t *g = (kvx_gpu_t *)cm_calloc(1, sizeof *g);
    if (!g) return CM_ERR_NO_MEMORY;
    g->device = device;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        cm_free(g);
        return fail_cuda("kvx copy stream", e);
    }
    g->next_ticket = 1;
    *out = g;
    return CM_OK;
}

extern "C" void kvx_gpu_close(kvx_gpu_t *g) {
    if (!g) return;
    cudaSetDevice(g->device);
    /* Queued copies read or write pools about to be unregistered: let them
     * end first, but never wait forever on a wedged device. */
    for (int i = 0; i < 5000 && cudaStreamQuery(g->stream) == cudaErrorNotReady; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    for (size_t i = g->head; i < g->tail; i++) cudaEventDestroy(g->events[i]);
    cudaStreamDestroy(g->stream);
    cudaGetLastError();
    cm_free(g->events);
    cm_free(g->tickets);
    cm_free(g);
}

extern "C" bool kvx_gpu_is_device(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

extern "C" cm_status_t kvx_gpu_pin(void *p, size_t n) {
    cudaError_t e = cudaHostRegister(p, n, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fail_cuda("pinning the KV staging buffer", e);
    }
    return CM_OK;
}

extern "C" void kvx_gpu_unpin(void *p) {
    if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
}

extern "C" cm_status_t kvx_gpu_copy(kvx_gpu_t *g, void *dst, const void *src, size_t n) {
    if (g->failed) return CM_ERR_IO;
    cudaSetDevice(g->device);
    cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, g->stream);
    if (e != cudaSuccess) {
        g->failed = true;
        return fail_cuda("queueing a KV copy", e);
    }
    return CM_OK;
}

extern "C" cm_status_t kvx_gpu_mark(kvx_gpu_t *g, uint64_t *ticket) {
    *ticket = 0;
    if (g->failed) return CM_ERR_IO;
    if (g->tail == g->cap) {
        /* Compact, then grow. */
        size_t live = g->tail - g->head;
        memmove(g->events, g->events + g->head, live * sizeof *g->events);
        memmove(g->tickets, g->tickets + g->head, live * sizeof *g->tickets);
        g->head = 0;
        g->tail = live;
        if (g->tail == g->cap) {
            size_t ncap = g->cap ? g->cap * 2 : 64;
            cudaEvent_t *ne = (cudaEvent_t *)cm_realloc_array(g->events, ncap, sizeof *ne);
            if (!ne) return CM_ERR_NO_MEMORY;
            g->events = ne;
            uint64_t *nt = (uint64_t *)cm_realloc_array(g->tickets, ncap, sizeof *nt);
            if (!nt) return CM_ERR_NO_MEMORY;
            g->tickets = nt;
            g->cap = ncap;
        }
    }
    cudaSetDevice(g->device);
    cudaEvent_t ev;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e == cudaSuccess) {
        e = cudaEventRecord(ev, g->stream);
        if (e != cudaSuccess) cudaEventDestroy(ev);
    }
    if (e != cudaSuccess) {
        g->failed = true;
        return fail_cuda("marking KV copies", e);
    }
    g->events[g->tail] = ev;
    g->tickets[g->tail] = g->next_ticket;
    g->tail++;
    *ticket = g->next_ticket++;
    return CM_OK;
}

extern "C" cm_status_t kvx_gpu_poll(kvx_gpu_t *g, uint64_t *done) {
    while (!g->failed && g->head < g->tail) {
        cudaError_t e = cudaEventQuery(g->events[g->head]);
        if (e == cudaErrorNotReady) break;
        cudaEventDestroy(g->events[g->head]);
        if (e != cudaSuccess) {
            g->failed = true;
            fail_cuda("a KV copy", e);
            break;
        }
        g->done = g->tickets[g->head];
        g->head++;
    }
    *done = g->done;
    return g->failed ? CM_ERR_IO : CM_OK;
}

extern "C" cm_status_t kvx_gpu_alloc(int device, size_t n, void **out) {
    *out = NULL;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
        cudaGetLastError();
        return CM_ERR_NO_DEVICE;
    }
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaMalloc(out, n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *out = NULL;
        return e == cudaErrorMemoryAllocation ? CM_ERR_NO_MEMORY : fail_cuda("cudaMalloc", e);
    }
    return CM_OK;
}

extern "C" void kvx_gpu_free(void *p) {
    if (p && cudaFree(p) != cudaSuccess) cudaGetLastError();
}

extern "C" cm_status_t kvx_gpu_memcpy(void *dst, const void *src, size_t n) {
    cudaError_t e = cudaMemcpy(dst, src, n, cudaMemcpyDefault);
    return e == cudaSuccess ? CM_OK : fail_cuda("cudaMemcpy", e);
}
