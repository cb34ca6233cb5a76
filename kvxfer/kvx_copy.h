/*
 * kvx_copy.h - the copies kvx makes itself into a peer's pool when UCX maps
 * that pool into this process (shared memory: ucp_rkey_ptr). Internal to
 * kvxfer.
 */
#ifndef TANDEM_KVX_COPY_H
#define TANDEM_KVX_COPY_H

#include <stdbool.h>
#include <stddef.h>

/* Copies @n bytes with non-temporal (streaming) stores where the CPU has
 * them (AVX-512, AVX or SSE2, picked at run time), so a large copy neither
 * reads the destination lines first nor evicts the caches; the unaligned
 * head and tail go through memcpy. Call kvx_copy_fence() before telling
 * another process the bytes are there. */
void kvx_copy_stream(void *dst, const void *src, size_t n);
/* The same with the instruction set chosen (tests): 0 SSE2, 1 AVX,
 * 2 AVX-512. False, copying nothing, when the CPU lacks it (or is not
 * x86-64, where only level 0 exists and is memcpy). */
bool kvx_copy_stream_level(int level, void *dst, const void *src, size_t n);
/* Orders every earlier store, streaming ones included, before later ones. */
void kvx_copy_fence(void);

#endif
