/*
 * fuzz_model_config.c - libFuzzer target for config.json (and
 * generation_config.json) parsing.
 * Build with `make fuzz`, run e.g.
 *   build/fuzz/fuzz_model_config -max_total_time=300 -max_len=65536 CORPUS
 *
 * Input: the bytes up to the first NUL are config.json; when there is a NUL,
 * the bytes after it are generation_config.json. An accepted config must be
 * self-consistent (the checks the engine relies on); a refusal must come
 * with a message.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_files.h"
#include "mdl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = size ? memchr(data, 0, size) : NULL;
    size_t clen = nul ? (size_t)(nul - data) : size;
    fuzz_put("config.json", data, clen);
    if (nul)
        fuzz_put("generation_config.json", nul + 1, size - clen - 1);
    else
        fuzz_drop("generation_config.json");
    mdl_config_t c;
    char err[512] = "";
    cm_status_t st = mdl_config_load(fuzz_dir(), &c, err, sizeof err);
    if (st != CM_OK) {
        if (st > 0 || !err[0]) abort();
        return 0;
    }
    if (!c.vocab || !c.hidden || !c.n_layers || !c.n_heads || !c.n_kv_heads || !c.head_dim) abort();
    if (c.n_heads % c.n_kv_heads != 0 || c.n_eos > MDL_MAX_EOS) abort();
    if (c.n_experts && (!c.top_k || c.top_k > c.n_experts)) abort();
    if (!c.n_experts && !c.intermediate) abort();
    if (!memchr(c.arch_name, 0, sizeof c.arch_name)) abort();
    /* Sizes inside what the engine's arithmetic is sized for. */
    if (c.vocab > (1u << 24) || c.hidden > (1u << 20) || c.n_layers > 1024 ||
        (uint64_t)c.n_heads * c.head_dim > (1u << 20) || !c.max_position)
        abort();
    if (c.bos < 0) abort();
    for (uint32_t i = 0; i < c.n_eos; i++)
        if (c.eos[i] < 0) abort();
    /* Floats the engine divides by or takes powers of. */
    if (!isfinite(c.rms_eps) || c.rms_eps < 0 || !isfinite(c.rope_theta) || c.rope_theta <= 0)
        abort();
    if (c.rope_llama3 &&
        (!isfinite(c.rope_factor) || c.rope_factor <= 0 || c.rope_low_freq <= 0 ||
         !(c.rope_high_freq > c.rope_low_freq) || !isfinite(c.rope_high_freq) || !c.rope_orig_max))
        abort();
    unsigned moe = 0;
    for (uint32_t l = 0; l < c.n_layers && l < 256; l++) moe += mdl_config_layer_is_moe(&c, l);
    if (moe && !c.n_experts) abort();
    return 0;
}
