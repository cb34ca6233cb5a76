/* mdl_config.c - config.json and generation_config.json of HF models. */
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mdl.h"

static const cJSON *get(const cJSON *o, const char *k) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

/* Integer field; *ok false when present but not a non-negative integer. */
static uint32_t get_u32(const cJSON *o, const char *k, uint32_t def, bool *ok) {
    const cJSON *v = get(o, k);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 4294967295.0 ||
        v->valuedouble != floor(v->valuedouble)) {
        *ok = false;
        return def;
    }
    return (uint32_t)v->valuedouble;
}

/* Number field as float; *ok false when present but not a number above
 * @min >= 0 (or at least @min when @incl) that a float holds. */
static float get_f(const cJSON *o, const char *k, float def, double min, bool incl, bool *ok) {
    const cJSON *v = get(o, k);
    if (!v || cJSON_IsNull(v)) return def;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    bool in = (incl ? d >= min : d > min) && d <= FLT_MAX;
    float f = in ? (float)d : def;
    /* Checked again as a float: 1e-320 becomes 0. */
    if (!in || !(incl ? f >= min : f > min)) {
        *ok = false;
        return def;
    }
    return f;
}

static bool get_b(const cJSON *o, const char *k, bool def) {
    const cJSON *v = get(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* A token id: an integer in [0, INT32_MAX]. */
static bool token_id(const cJSON *v, int32_t *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 2147483647.0 ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (int32_t)v->valuedouble;
    return true;
}

/* eos_token_id: an integer or a list of them (null: none given; ids past
 * MDL_MAX_EOS are dropped). False when it is anything else. */
static bool read_eos(const cJSON *v, mdl_config_t *c) {
    if (!v || cJSON_IsNull(v)) return true;
    if (cJSON_IsNumber(v)) {
        if (!token_id(v, &c->eos[0])) return false;
        c->n_eos = 1;
        return true;
    }
    if (!cJSON_IsArray(v)) return false;
    int32_t ids[MDL_MAX_EOS];
    uint32_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        int32_t id;
        if (!token_id(e, &id)) return false;
        if (n < MDL_MAX_EOS) ids[n++] = id;
    }
    memcpy(c->eos, ids, n * sizeof ids[0]);
    c->n_eos = n;
    return true;
}

/* bos_token_id: an integer (null or absent: @c keeps its own). */
static bool read_bos(const cJSON *v, mdl_config_t *c) {
    return !v || cJSON_IsNull(v) || token_id(v, &c->bos);
}

static const struct {
    const char *name;
    mdl_arch_t arch;
} k_archs[] = {
    {"LlamaForCausalLM", MDL_ARCH_LLAMA},       {"Qwen2ForCausalLM", MDL_ARCH_QWEN2},
    {"Qwen3ForCausalLM", MDL_ARCH_QWEN3},       {"MixtralForCausalLM", MDL_ARCH_MIXTRAL},
    {"Qwen2MoeForCausalLM", MDL_ARCH_QWEN2MOE}, {"Qwen3MoeForCausalLM", MDL_ARCH_QWEN3MOE},
};

bool mdl_config_layer_is_moe(const mdl_config_t *c, uint32_t l) {
    if (!c->n_experts) return false;
    if (l < 64 && (c->mlp_only_layers >> l) & 1) return false;
    return c->sparse_step <= 1 || (l + 1) % c->sparse_step == 0;
}

cm_status_t mdl_config_load(const char *dir, mdl_config_t *out, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = NULL;
    cm_status_t rst = cm_read_file(path, 64u << 20, &text, NULL, err, errlen);
    if (rst == CM_ERR_NOT_FOUND) snprintf(err, errlen, "%s: cannot read: no such file", path);
    if (rst != CM_OK) return rst;
    cJSON *j = cJSON_Parse(text);
    cm_free(text);
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(j);
        return CM_ERR_BAD_FORMAT;
    }
    mdl_config_t c;
    memset(&c, 0, sizeof c);
    cm_status_t st = CM_OK;
    const cJSON *archs = get(j, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(a0)) {
        snprintf(err, errlen, "%s: no \"architectures\"", path);
        st = CM_ERR_BAD_FORMAT;
        goto done;
    }
    snprintf(c.arch_name, sizeof c.arch_name, "%s", a0->valuestring);
    bool known = false;
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++) {
        if (!strcmp(a0->valuestring, k_archs[i].name)) {
            c.arch = k_archs[i].arch;
            known = true;
        }
    }
    if (!known) {
        snprintf(err, errlen,
                 "%s: unsupported architecture '%s' (supported: Llama, Qwen2, "
                 "Qwen3, Mixtral, Qwen2MoE, Qwen3MoE ForCausalLM)",
                 path, a0->valuestring);
        st = CM_ERR_UNSUPPORTED;
        goto done;
    }
    bool ok = true;
    c.vocab = get_u32(j, "vocab_size", 0, &ok);
    c.hidden = get_u32(j, "hidden_size", 0, &ok);
    c.n_layers = get_u32(j, "num_hidden_layers", 0, &ok);
    c.n_heads = get_u32(j, "num_attention_heads", 0, &ok);
    c.n_kv_heads = get_u32(j, "num_key_value_heads", c.n_heads, &ok);
    c.head_dim = get_u32(j, "head_dim", c.n_heads ? c.hidden / c.n_heads : 0, &ok);
    c.intermediate = get_u32(j, "intermediate_size", 0, &ok);
    c.max_position = get_u32(j, "max_position_embeddings", 4096, &ok);
    c.rms_eps = get_f(j, "rms_norm_eps", 1e-6f, 0, true, &ok);
    c.tie_embeddings = get_b(j, "tie_word_embeddings", false);
    /* RoPE: transformers 5 writes rope_parameters; earlier versions (and
     * most published checkpoints) rope_theta + rope_scaling. */
    const cJSON *rp = get(j, "rope_parameters");
    const cJSON *rs = cJSON_IsObject(rp) ? rp : get(j, "rope_scaling");
    c.rope_theta =
        get_f(j, "rope_theta", get_f(rp, "rope_theta", 10000.0f, 0, false, &ok), 0, false, &ok);
    const cJSON *rt = get(rs, "rope_type");
    if (!cJSON_IsString(rt)) rt = get(rs, "type");
    if (cJSON_IsString(rt) && strcmp(rt->valuestring, "default") != 0) {
        if (strcmp(rt->valuestring, "llama3") != 0) {
            snprintf(err, errlen, "%s: unsupported rope type '%s' (default, llama3)", path,
                     rt->valuestring);
            st = CM_ERR_UNSUPPORTED;
            goto done;
        }
        c.rope_llama3 = true;
        bool rok = true;
        c.rope_factor = get_f(rs, "factor", 8.0f, 0, false, &rok);
        c.rope_low_freq = get_f(rs, "low_freq_factor", 1.0f, 0, false, &rok);
        c.rope_high_freq = get_f(rs, "high_freq_factor", 4.0f, 0, false, &rok);
        c.rope_orig_max = get_u32(rs, "original_max_position_embeddings", 8192, &rok);
        /* rope_init divides by each of these and by high - low. */
        if (!rok || !c.rope_orig_max || !(c.rope_high_freq > c.rope_low_freq)) {
            snprintf(err, errlen,
                     "%s: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
                     "high_freq_factor and original_max_position_embeddings > 0",
                     path);
            st = CM_ERR_BAD_FORMAT;
            goto done;
        }
    }
    c.qk_norm = c.arch == MDL_ARCH_QWEN3 || c.arch == MDL_ARCH_QWEN3MOE;
    if (c.arch == MDL_ARCH_MIXTRAL || c.arch == MDL_ARCH_QWEN2MOE || c.arch == MDL_ARCH_QWEN3MOE) {
        c.n_experts = get_u32(j, "num_local_experts", get_u32(j, "num_experts", 0, &ok), &ok);
        c.top_k = get_u32(j, "num_experts_per_tok", 2, &ok);
        c.moe_intermediate = c.arch == MDL_ARCH_MIXTRAL
                                 ? c.intermediate
                                 : get_u32(j, "moe_intermediate_size", 0, &ok);
        c.shared_intermediate = get_u32(j, "shared_expert_intermediate_size", 0, &ok);
        c.norm_topk = c.arch == MDL_ARCH_MIXTRAL ? true : get_b(j, "norm_topk_prob", false);
        c.sparse_step = get_u32(j, "decoder_sparse_step", 1, &ok);
        const cJSON *mol = get(j, "mlp_only_layers"), *e;
        cJSON_ArrayForEach(e, mol) {
            if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < 64)
                c.mlp_only_layers |= 1ull << (int)e->valuedouble;
        }
    }
    if (!read_bos(get(j, "bos_token_id"), &c) || !read_eos(get(j, "eos_token_id"), &c)) {
        snprintf(err, errlen, "%s: bos_token_id/eos_token_id must be token ids (0 to 2^31-1)",
                 path);
        st = CM_ERR_BAD_FORMAT;
        goto done;
    }
    /* Bounds keep the engine's products (heads * head_dim, rows * cols)
     * far from overflowing. */
    const uint64_t qd = (uint64_t)c.n_heads * c.head_dim;
    if (!ok || !c.vocab || !c.hidden || !c.n_layers || !c.n_heads || !c.n_kv_heads || !c.head_dim ||
        c.n_heads % c.n_kv_heads != 0 || (!c.n_experts && !c.intermediate) ||
        (c.n_experts && (!c.top_k || c.top_k > c.n_experts || !c.moe_intermediate)) ||
        c.vocab > (1u << 24) || c.n_layers > 1024 || c.hidden > (1u << 20) ||
        c.head_dim > (1u << 16) || qd > (1u << 20) || c.intermediate > (1u << 24) ||
        c.moe_intermediate > (1u << 24) || c.shared_intermediate > (1u << 24) ||
        c.n_experts > (1u << 16) || !c.max_position || c.max_position > (1u << 26)) {
        snprintf(err, errlen,
                 "%s: missing, out-of-range or inconsistent values (vocab %u, hidden %u, "
                 "layers %u, heads %u/%u, head_dim %u, intermediate %u, experts %u top-%u, "
                 "max_position %u)",
                 path, c.vocab, c.hidden, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                 c.intermediate, c.n_experts, c.top_k, c.max_position);
        st = CM_ERR_BAD_FORMAT;
        goto done;
    }
    /* generation_config.json overrides the stop tokens when present. */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    char *gtext = NULL;
    st = cm_read_file(path, 64u << 20, &gtext, NULL, err, errlen);
    if (st == CM_ERR_NOT_FOUND) {
        st = CM_OK; /* optional */
    } else if (st != CM_OK) {
        goto done;
    } else {
        cJSON *g = cJSON_Parse(gtext);
        cm_free(gtext);
        const char *why = NULL;
        if (!cJSON_IsObject(g))
            why = "not a JSON object";
        else if (!read_eos(get(g, "eos_token_id"), &c) || !read_bos(get(g, "bos_token_id"), &c))
            why = "bos_token_id/eos_token_id must be token ids (0 to 2^31-1)";
        cJSON_Delete(g);
        if (why) {
            snprintf(err, errlen, "%s: %s", path, why);
            st = CM_ERR_BAD_FORMAT;
            goto done;
        }
    }
    *out = c;
done:
    cJSON_Delete(j);
    return st;
}
