/* cm_gpu_nocuda.c - GPU queries in a build without CUDA. */
#include <string.h>

#include "cm_gpu.h"

bool cm_gpu_built(void) { return false; }

cm_status_t cm_gpu_query(cm_gpu_info_t *out) {
    memset(out, 0, sizeof *out);
    return CM_ERR_UNSUPPORTED;
}
