/* cm_gpu.cu - GPU queries through the CUDA runtime. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "cm_gpu.h"

extern "C" bool cm_gpu_built(void) { return true; }

extern "C" cm_status_t cm_gpu_query(cm_gpu_info_t *out) {
    cm_gpu_info_t info;
    memset(&info, 0, sizeof info);
    cudaRuntimeGetVersion(&info.runtime_version);
    cudaDriverGetVersion(&info.driver_version);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        *out = info;
        return CM_ERR_NO_DEVICE;
    }
    info.device_count = n;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
        snprintf(info.name, sizeof info.name, "%s", prop.name);
        info.total_mem = prop.totalGlobalMem;
        info.cc_major = prop.major;
        info.cc_minor = prop.minor;
    }
    *out = info;
    return CM_OK;
}
