/* eng_cuda_nocuda.c - the CPU-only build's answer for the cuda backend. */
#include <stdio.h>

#include "eng_cuda.h"

cm_status_t eng_cuda_new(const struct eng_model *m, struct eng_cuda **out, char *err,
                         size_t errlen) {
    (void)m;
    *out = NULL;
    snprintf(err, errlen, "backend cuda is not available in this build (make CUDA=1)");
    return CM_ERR_UNSUPPORTED;
}
void eng_cuda_free(struct eng_cuda *c) { (void)c; }
cm_status_t eng_cuda_forward(struct eng_cuda *c, const struct eng_model *m, eng_kv_t *kv,
                             const eng_item_t *items, size_t n, float *logits) {
    (void)c, (void)m, (void)kv, (void)items, (void)n, (void)logits;
    return CM_ERR_UNSUPPORTED;
}
void *eng_cuda_kv_alloc(struct eng_cuda *c, size_t bytes) {
    (void)c, (void)bytes;
    return NULL;
}
void eng_cuda_kv_free(struct eng_cuda *c, void *p) { (void)c, (void)p; }
size_t eng_cuda_weight_bytes(const struct eng_cuda *c) {
    (void)c;
    return 0;
}
const char *eng_cuda_device_name(const struct eng_cuda *c) {
    (void)c;
    return "";
}
double eng_cuda_copy_gbps(size_t bytes) {
    (void)bytes;
    return 0;
}
double eng_cuda_gemm_tflops(int n) {
    (void)n;
    return 0;
}
