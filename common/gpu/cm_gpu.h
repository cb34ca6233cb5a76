/*
 * cm_gpu.h - what GPU support this binary was built with and what the
 * machine has. The CUDA implementation is cm_gpu.cu; cm_gpu_nocuda.c is the
 * CPU-only build's answer.
 */
#ifndef TANDEM_CM_GPU_H
#define TANDEM_CM_GPU_H

#include "cm_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int device_count;       /* visible CUDA devices */
    int runtime_version;    /* e.g. 13000 for CUDA 13.0 */
    int driver_version;     /* 0 when no driver is installed */
    char name[256];         /* device 0's name, "" when none */
    uint64_t total_mem;     /* device 0's memory in bytes */
    int cc_major, cc_minor; /* device 0's compute capability */
} cm_gpu_info_t;

/* True when this binary contains the CUDA backend. */
bool cm_gpu_built(void);
/*
 * Fills *@out. Returns CM_OK with at least one device, CM_ERR_NO_DEVICE when
 * built with CUDA but no device (or driver) is usable, CM_ERR_UNSUPPORTED
 * when built without CUDA. Any thread.
 */
cm_status_t cm_gpu_query(cm_gpu_info_t *out);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_CM_GPU_H */
