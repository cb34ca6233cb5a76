/*
 * fuzz_cp_decode.c - libFuzzer target for the control-plane decoder.
 * Build with `make fuzz`, run e.g.
 *   build/fuzz/fuzz_cp_decode -max_total_time=60 -max_len=4096
 * Any accepted message must pass validation and re-encode.
 */
#include <stdlib.h>

#include "cm_cp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static cm_cp_decoder_t *dec;
    static cm_cp_limits_t lim;
    if (!dec) {
        cm_cp_limits_default(&lim);
        lim.arena_bytes = 1u << 20;
        lim.vocab_size = 1000;
        lim.pool_blocks = 4096;
        dec = cm_cp_decoder_new(&lim);
    }
    const cm_cp_msg_t *out;
    if (cm_cp_decode(dec, data, size, &out, NULL, 0) == CM_OK) {
        if (cm_cp_validate(out, &lim, NULL, 0) != CM_OK) abort();
        uint8_t *buf;
        size_t len;
        if (cm_cp_encode(out, &lim, &buf, &len, NULL, 0) != CM_OK) abort();
        cm_free(buf);
    }
    return 0;
}
