/*
 * fuzz_sampler.c - libFuzzer target for the sampler. Build with
 * `make fuzz`, run e.g.
 *   build/fuzz/fuzz_sampler -max_total_time=60 -max_len=4096
 *
 * Input: the sampling parameters (raw float bits, so NaN, infinities and
 * out-of-range values occur), a vocabulary size, logits (a byte each: a
 * scaled value, or -inf / +inf / NaN / a huge one) and a token history.
 * Properties checked (abort() on a violation):
 *   - parameters the validator refuses are refused by the sampler too;
 *   - valid parameters on a row with NaN, +inf or no finite logit give
 *     CM_ERR_OUT_OF_RANGE, otherwise CM_OK and a token with a finite
 *     logit inside the vocabulary, drawn where eng_sampler_probs gives it
 *     weight, the same token again on a second call;
 *   - logprobs are <= 0 and not NaN; the top list has top_logprobs
 *     entries (at most the vocabulary), by descending logprob;
 *   - probs are in [0, 1] and sum to 1;
 *   - greedy without penalties picks a largest logit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_sampler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    const uint8_t *p;
    size_t n;
} rd_t;

static uint32_t u32(rd_t *r) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        v = v << 8 | (r->n ? *r->p : 0);
        if (r->n) r->p++, r->n--;
    }
    return v;
}

static uint8_t u8(rd_t *r) {
    uint8_t v = r->n ? *r->p : 0;
    if (r->n) r->p++, r->n--;
    return v;
}

/* A float from 4 bytes: half the time a value in the field's usual range,
 * else the raw bits. */
static float fl(rd_t *r, float lo, float hi) {
    uint32_t b = u32(r);
    if (b & 1) return lo + (hi - lo) * (float)(b >> 8) / (float)(1u << 24);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rd_t r = {data, size};
    eng_sampler_params_t p;
    eng_sampler_params_default(&p);
    uint8_t which = u8(&r);
    if (which & 1) p.temperature = fl(&r, 0, 2);
    if (which & 2) p.top_k = (int32_t)u32(&r) % 70 - 3;
    if (which & 4) p.top_p = fl(&r, 0, 1.2f);
    if (which & 8) p.min_p = fl(&r, -0.1f, 1);
    if (which & 16) p.repetition_penalty = fl(&r, 0, 3);
    if (which & 32) p.presence_penalty = fl(&r, -2.5f, 2.5f);
    if (which & 64) p.frequency_penalty = fl(&r, -2.5f, 2.5f);
    p.seed = (uint64_t)u32(&r) << 32 | u32(&r);
    uint8_t lp = u8(&r);
    p.logprobs = lp & 1;
    p.top_logprobs = (uint32_t)(lp >> 1) % 24;
    uint32_t vocab = 1 + u8(&r) % 300;
    float *logits = malloc(vocab * sizeof *logits), *probs = malloc(vocab * sizeof *probs);
    bool nan = false, finite = false;
    for (uint32_t i = 0; i < vocab; i++) {
        uint8_t b = u8(&r);
        logits[i] = b == 255   ? -INFINITY
                    : b == 254 ? INFINITY
                    : b == 253 ? NAN
                    : b == 252 ? 3e38f
                    : b == 251 ? -3e38f
                               : ((float)b - 128.0f) * 0.25f;
        nan |= isnan(logits[i]) || logits[i] == INFINITY;
        finite |= isfinite(logits[i]);
    }
    int32_t hist[64];
    uint32_t nh = u8(&r) % 64;
    for (uint32_t i = 0; i < nh; i++) hist[i] = (int32_t)(u8(&r) % (vocab + 4)) - 2;
    eng_sampler_history_t h = {hist, nh / 2, hist + nh / 2, nh - nh / 2};
    uint64_t step = u8(&r);

    eng_sampler_t *s;
    if (eng_sampler_new(vocab, &s) != CM_OK) abort();
    eng_sample_t a, b;
    cm_status_t ok = eng_sampler_params_validate(&p, vocab, NULL, 0);
    cm_status_t st = eng_sampler_sample(s, &p, logits, &h, step, &a);
    if (ok != CM_OK) {
        if (st == CM_OK) abort(); /* refused parameters are refused */
        goto out;
    }
    if (nan || !finite) {
        if (st != CM_ERR_OUT_OF_RANGE) abort();
        goto out;
    }
    if (st != CM_OK) abort();
    if (a.token < 0 || (uint32_t)a.token >= vocab || !isfinite(logits[a.token])) abort();
    if (eng_sampler_sample(s, &p, logits, &h, step, &b) != CM_OK || b.token != a.token) abort();
    if (p.logprobs) {
        if (isnan(a.logprob) || a.logprob > 0) abort();
        if (a.n_top != (p.top_logprobs < vocab ? p.top_logprobs : vocab)) abort();
        for (uint32_t i = 0; i < a.n_top; i++) {
            if (isnan(a.top[i].logprob) || a.top[i].logprob > 0) abort();
            if (a.top[i].token < 0 || (uint32_t)a.top[i].token >= vocab) abort();
            if (i && a.top[i].logprob > a.top[i - 1].logprob) abort();
        }
    }
    if (eng_sampler_probs(s, &p, logits, &h, probs) != CM_OK) abort();
    double sum = 0;
    for (uint32_t i = 0; i < vocab; i++) {
        if (!(probs[i] >= 0 && probs[i] <= 1)) abort();
        sum += probs[i];
    }
    if (fabs(sum - 1) > 1e-3 || !(probs[a.token] > 0)) abort();
    if (eng_sampler_params_greedy(&p) && p.repetition_penalty == 1 && p.presence_penalty == 0 &&
        p.frequency_penalty == 0)
        for (uint32_t i = 0; i < vocab; i++)
            if (logits[i] > logits[a.token]) abort();
out:
    eng_sampler_free(s);
    free(logits);
    free(probs);
    return 0;
}
