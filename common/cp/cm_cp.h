/*
 * cm_cp.h - the control-plane codec: Envelope messages of
 * proto/tandem_cp.proto, encoded and decoded with every field validated.
 *
 * The codec is pure (no I/O, DESIGN.md section 6.7): ZeroMQ glue hands it
 * bytes and gets back a validated message or a typed error with a reason
 * that names the offending field ("prefill_job.dst_block_ids[3]: 9000 >=
 * pool size 4096").
 *
 * Untrusted input is bounded three ways: the raw size (max_msg_bytes), the
 * memory the decoder may allocate (a capped arena, so packed repeated
 * fields cannot amplify a small message into a large allocation), and the
 * value ranges of every field (below and in the .proto comments).
 *
 * Threading: a decoder is used by one thread at a time; different decoders
 * are independent. cm_cp_validate and cm_cp_encode are reentrant.
 */
#ifndef TANDEM_CM_CP_H
#define TANDEM_CM_CP_H

#include "cm_base.h"
#include "tandem_cp.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version this build speaks (Envelope.version). */
#define CM_CP_VERSION 1u

typedef Tandem__Cp__Envelope cm_cp_msg_t;

/* Limits a receiver enforces. Zero in vocab_size / pool_blocks means "not
 * known here": ids are then only checked against the absolute maxima. */
typedef struct {
    size_t max_msg_bytes; /* raw encoded size */
    size_t arena_bytes;   /* decoder memory cap per message */
    uint32_t max_tokens;  /* prompt/token list length */
    uint32_t max_blocks;  /* block id list length */
    uint32_t vocab_size;  /* token ids must be < this (0 = up to 2^24) */
    uint32_t pool_blocks; /* block ids must be < this (0 = up to 2^24) */
} cm_cp_limits_t;

/* Defaults: 8 MiB messages, 64 MiB arena, 1M tokens, 64Ki blocks. */
void cm_cp_limits_default(cm_cp_limits_t *lim);

typedef struct cm_cp_decoder cm_cp_decoder_t;

/* Creates a decoder enforcing *@lim (copied). Returns NULL on OOM. */
cm_cp_decoder_t *cm_cp_decoder_new(const cm_cp_limits_t *lim);
void cm_cp_decoder_free(cm_cp_decoder_t *dec);

/*
 * Decodes and validates @len bytes. On CM_OK, *@out points to a message
 * owned by the decoder and valid until the next cm_cp_decode on it or its
 * free. Errors: CM_ERR_TOO_LARGE (size or memory cap), CM_ERR_PROTOCOL
 * (not a valid encoding, or no body), CM_ERR_VERSION, CM_ERR_OUT_OF_RANGE /
 * CM_ERR_INVALID_ARG (a field failed validation). On error a one-line
 * reason is written into @err (if @errlen > 0) and *@out is untouched.
 */
cm_status_t cm_cp_decode(cm_cp_decoder_t *dec, const void *buf, size_t len, const cm_cp_msg_t **out,
                         char *err, size_t errlen);

/* Validates a message against @lim (what cm_cp_decode does after
 * unpacking). Returns CM_OK or an error with the reason in @err. */
cm_status_t cm_cp_validate(const cm_cp_msg_t *msg, const cm_cp_limits_t *lim, char *err,
                           size_t errlen);

/*
 * Validates @msg (version must be CM_CP_VERSION) and encodes it into a new
 * buffer from cm_malloc, stored with its length in *@buf / *@len on CM_OK;
 * the caller frees it with cm_free. Senders validate too, so a bug on one
 * side shows up where it happens, not as a refused message on the other.
 */
cm_status_t cm_cp_encode(const cm_cp_msg_t *msg, const cm_cp_limits_t *lim, uint8_t **buf,
                         size_t *len, char *err, size_t errlen);

/* The body's name ("register", "heartbeat", ...), "none" when unset. */
const char *cm_cp_body_name(const cm_cp_msg_t *msg);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_CM_CP_H */
