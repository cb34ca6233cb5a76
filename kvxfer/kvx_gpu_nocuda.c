/* kvx_gpu_nocuda.c - kvxfer's CUDA side in a build without CUDA. */
#include "kvx_gpu.h"

cm_status_t kvx_gpu_open(int device, kvx_gpu_t **out) {
    (void)device;
    *out = NULL;
    return CM_ERR_UNSUPPORTED;
}
void kvx_gpu_close(kvx_gpu_t *g) { (void)g; }
bool kvx_gpu_is_device(const void *p) {
    (void)p;
    return false;
}
cm_status_t kvx_gpu_pin(void *p, size_t n) {
    (void)p;
    (void)n;
    return CM_ERR_UNSUPPORTED;
}
void kvx_gpu_unpin(void *p) { (void)p; }
cm_status_t kvx_gpu_copy(kvx_gpu_t *g, void *dst, const void *src, size_t n) {
    (void)g;
    (void)dst;
    (void)src;
    (void)n;
    return CM_ERR_UNSUPPORTED;
}
cm_status_t kvx_gpu_mark(kvx_gpu_t *g, uint64_t *ticket) {
    (void)g;
    *ticket = 0;
    return CM_ERR_UNSUPPORTED;
}
cm_status_t kvx_gpu_poll(kvx_gpu_t *g, uint64_t *done) {
    (void)g;
    *done = 0;
    return CM_ERR_UNSUPPORTED;
}
cm_status_t kvx_gpu_alloc(int device, size_t n, void **out) {
    (void)device;
    (void)n;
    *out = NULL;
    return CM_ERR_UNSUPPORTED;
}
void kvx_gpu_free(void *p) { (void)p; }
cm_status_t kvx_gpu_memcpy(void *dst, const void *src, size_t n) {
    (void)dst;
    (void)src;
    (void)n;
    return CM_ERR_UNSUPPORTED;
}
