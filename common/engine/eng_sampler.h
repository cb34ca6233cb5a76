/*
 * eng_sampler.h - per-request token sampling from a logits row.
 *
 * Pipeline, in the order Hugging Face `generate()` applies it (and what the
 * tests check against `transformers`' processors):
 *   1. repetition penalty (HF RepetitionPenaltyLogitsProcessor) over every
 *      distinct token of prompt + output: a positive logit is divided by the
 *      penalty, a negative one multiplied;
 *   2. presence / frequency penalties (OpenAI / vLLM) over the output tokens
 *      only: logit -= frequency * count + presence * (count > 0);
 *   3. temperature == 0 (or below 1e-5): greedy, the argmax of the penalized
 *      logits, lowest token id on ties; steps 4-6 are skipped;
 *   4. temperature: logit /= temperature;
 *   5. top-k (keeps every token tied with the k-th), then top-p over the
 *      renormalized survivors (keeps the smallest prefix, by descending
 *      probability, whose mass reaches top_p), then min-p (drops tokens whose
 *      probability is below min_p times the largest one);
 *   6. softmax over the survivors and one draw.
 * (vLLM applies min-p before top-k/top-p; we follow HF.)
 *
 * Determinism: the draw at step i uses u = eng_sampler_uniform(seed, i), a
 * counter-based generator, so the token depends only on (seed, step, logits
 * row, history): identical across runs, threads and batch compositions. The
 * inverse-CDF walk visits the survivors in an order that is a deterministic
 * function of the row (ascending id without top-k/top-p).
 *
 * Cost for a vocabulary of V (about 0.05 ms greedy, 0.2-0.3 ms with
 * top-k/top-p/min-p for V = 151,936 on one AVX2 core): a few vectorized O(V)
 * passes (AVX-512/AVX2/baseline clones picked at load time); top-k keeps a
 * size-k heap (O(V log k) worst case); top-p first excludes tokens that
 * provably cannot be in the nucleus, then runs a quickselect guided by
 * probability mass over the rest (expected linear), never a full sort.
 * Exponentials use a polynomial with ~2e-7 relative error.
 *
 * A processed logit that overflows to +inf (huge logits with a tiny
 * temperature) makes the step deterministic: the first such token.
 *
 * Logprobs are those of the model: log_softmax of the raw logits row, before
 * penalties and temperature (what vLLM and the OpenAI API return).
 *
 * Threading: eng_sampler_t holds scratch memory; one per thread. Parameter
 * functions are pure and thread-safe.
 */
#ifndef TANDEM_ENG_SAMPLER_H
#define TANDEM_ENG_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ENG_SAMPLER_MAX_STOP     32 /* stop token ids per request */
#define ENG_SAMPLER_MAX_LOGPROBS 20 /* top-N logprobs per token (OpenAI's limit) */
#define ENG_SAMPLER_MAX_VOCAB    (1u << 24)
#define ENG_SAMPLER_GREEDY_EPS   1e-5f /* temperatures below this are greedy */

/* Per-request sampling parameters. Plain data: copy freely. */
typedef struct {
    float temperature;        /* [0, 100]; 0 = greedy. Default 1 */
    int32_t top_k;            /* 0 = off, else >= 1 (clamped to V). Default 0 */
    float top_p;              /* (0, 1]; 1 = off. Default 1 */
    float min_p;              /* [0, 1]; 0 = off. Default 0 */
    float repetition_penalty; /* (0, 10]; 1 = off. Default 1 */
    float presence_penalty;   /* [-2, 2]. Default 0 */
    float frequency_penalty;  /* [-2, 2]. Default 0 */
    uint64_t seed;            /* any value; the worker picks one when the client gave none */
    uint32_t max_tokens;      /* >= 1: generation stops after this many tokens. Default 16 */
    bool logprobs;            /* report the chosen token's logprob */
    uint32_t top_logprobs;    /* 0..ENG_SAMPLER_MAX_LOGPROBS alternatives (needs logprobs) */
    uint32_t n_stop;          /* 0..ENG_SAMPLER_MAX_STOP */
    int32_t stop_ids[ENG_SAMPLER_MAX_STOP]; /* ending the sequence (eos etc.) */
} eng_sampler_params_t;

/* Fills @p with the defaults above. */
void eng_sampler_params_default(eng_sampler_params_t *p);

/*
 * Checks every field against its range (NaN and infinities are rejected) and,
 * when @vocab > 0, that stop ids are < vocab. Returns CM_OK, or
 * CM_ERR_OUT_OF_RANGE / CM_ERR_INVALID_ARG with a sentence naming the field
 * and the allowed range written to @err (NUL-terminated, may be NULL).
 */
cm_status_t eng_sampler_params_validate(const eng_sampler_params_t *p, uint32_t vocab, char *err,
                                        size_t err_len);

/* True when @p samples greedily (temperature below ENG_SAMPLER_GREEDY_EPS). */
bool eng_sampler_params_greedy(const eng_sampler_params_t *p);

/* The token history penalties look at. Either array may be empty. Ids outside
 * [0, vocab) are ignored (they cannot be sampled anyway). */
typedef struct {
    const int32_t *prompt;
    uint32_t n_prompt;
    const int32_t *output; /* tokens generated so far */
    uint32_t n_output;
} eng_sampler_history_t;

typedef struct {
    int32_t token;
    float logprob; /* raw log_softmax of the model */
} eng_logprob_t;

typedef struct {
    int32_t token;  /* the chosen token */
    float logprob;  /* its logprob when params.logprobs, else 0 */
    uint32_t n_top; /* entries in top (params.top_logprobs when logprobs) */
    eng_logprob_t top[ENG_SAMPLER_MAX_LOGPROBS]; /* by descending logprob, then id */
} eng_sample_t;

typedef enum {
    ENG_SAMPLER_CONTINUE = 0,
    ENG_SAMPLER_STOP_TOKEN, /* the token is one of stop_ids */
    ENG_SAMPLER_STOP_LENGTH /* max_tokens reached */
} eng_sampler_stop_t;

typedef struct eng_sampler eng_sampler_t;

/* Creates a sampler with scratch space for rows of @vocab logits
 * (1..ENG_SAMPLER_MAX_VOCAB). Returns CM_OK, CM_ERR_INVALID_ARG,
 * CM_ERR_NO_MEMORY. Free with eng_sampler_free. */
cm_status_t eng_sampler_new(uint32_t vocab, eng_sampler_t **out);
void eng_sampler_free(eng_sampler_t *s);
uint32_t eng_sampler_vocab(const eng_sampler_t *s);

/*
 * Samples one token from @logits[0..vocab) (not modified) for a request with
 * @p (validated by the caller; invalid values give CM_ERR_INVALID_ARG) and
 * history @h (may be NULL), at generation step @step (0 for the first
 * generated token). Writes *out on success. Returns CM_OK,
 * CM_ERR_INVALID_ARG, or CM_ERR_OUT_OF_RANGE when the row has no finite
 * logit or contains NaN or +inf.
 */
cm_status_t eng_sampler_sample(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                               const eng_sampler_history_t *h, uint64_t step, eng_sample_t *out);

/*
 * Writes the distribution the draw is made from to @probs[0..vocab): after
 * penalties, temperature, top-k, top-p and min-p, renormalized; 0 for removed
 * tokens. Greedy parameters give a one-hot row. Same errors as
 * eng_sampler_sample. Meant for tests and diagnostics.
 */
cm_status_t eng_sampler_probs(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                              const eng_sampler_history_t *h, float *probs);

/* The generator: a uniform double in [0, 1) that depends only on (seed, step):
 * z = mix64(mix64(seed) + 0x9E3779B97F4A7C15 * (step + 1)), u = (z >> 11) * 2^-53,
 * with mix64 the splitmix64 finalizer. */
double eng_sampler_uniform(uint64_t seed, uint64_t step);

/* Whether generation ends after @token, which made @n_generated tokens in
 * total (counting @token). Stop tokens win over the length limit. */
eng_sampler_stop_t eng_sampler_stop_check(const eng_sampler_params_t *p, int32_t token,
                                          uint32_t n_generated);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_SAMPLER_H */
