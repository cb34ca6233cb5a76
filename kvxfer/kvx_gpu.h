/*
 * kvx_gpu.h - the CUDA side of kvxfer: a copy stream with completion
 * tickets, pinning host memory, telling device pointers apart. kvx_gpu.cu
 * implements it; kvx_gpu_nocuda.c is the CPU-only build's answer
 * (CM_ERR_UNSUPPORTED). Internal to kvxfer; one thread, like kvx.
 */
#ifndef TANDEM_KVX_GPU_H
#define TANDEM_KVX_GPU_H

#include "cm_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvx_gpu kvx_gpu_t;

/* A non-blocking copy stream on @device. CM_ERR_UNSUPPORTED without CUDA,
 * CM_ERR_NO_DEVICE when @device is not usable. */
cm_status_t kvx_gpu_open(int device, kvx_gpu_t **out);
/* Waits (at most 5 s) for queued copies, then frees the stream. */
void kvx_gpu_close(kvx_gpu_t *g);

/* True when @p is CUDA device (or managed) memory. */
bool kvx_gpu_is_device(const void *p);

/* Page-locks @n bytes at @p so copies to and from it run asynchronously. */
cm_status_t kvx_gpu_pin(void *p, size_t n);
void kvx_gpu_unpin(void *p);

/* Queues a copy of @n bytes (device <-> pinned host). */
cm_status_t kvx_gpu_copy(kvx_gpu_t *g, void *dst, const void *src, size_t n);
/* A ticket that completes once every copy queued so far has. Tickets
 * complete in order. */
cm_status_t kvx_gpu_mark(kvx_gpu_t *g, uint64_t *ticket);
/* The highest completed ticket (0 when none) in *@done; CM_ERR_IO when a
 * copy failed (the stream is then unusable). Never blocks. */
cm_status_t kvx_gpu_poll(kvx_gpu_t *g, uint64_t *done);

/* Device memory for tests and benchmarks: cudaMalloc on @device, and
 * blocking copies in either direction. */
cm_status_t kvx_gpu_alloc(int device, size_t n, void **out);
void kvx_gpu_free(void *p);
cm_status_t kvx_gpu_memcpy(void *dst, const void *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_KVX_GPU_H */
