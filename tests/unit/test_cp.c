/*
 * test_cp.c - the control-plane codec: round trips of every message, each
 * validation rule, bounded decoding of truncated/oversized/amplifying input,
 * and a fuzz-style loop over thousands of mutated messages.
 */
#include <stdlib.h>

#include "cm_cp.h"
#include "tt.h"

static cm_cp_limits_t g_lim;
static int32_t g_tokens[40];
static uint32_t g_blocks[3] = {7, 3, 11};
static int32_t g_stop_ids[2] = {2, 5};
static char *g_stop_strings[2] = {"\n\n", "END"};
static float g_logprobs[3] = {-0.5f, -1.0f, -0.01f};
static Tandem__Cp__TopLogprob g_tl[2];
static Tandem__Cp__TopLogprob *g_tlp[2] = {&g_tl[0], &g_tl[1]};

/* Every message kind, valid, keyed by body case. Fields point at statics. */
typedef struct {
    Tandem__Cp__Envelope env;
    Tandem__Cp__Register reg;
    Tandem__Cp__RegisterAck ack;
    Tandem__Cp__Heartbeat hb;
    Tandem__Cp__Deregister dereg;
    Tandem__Cp__SamplingParams sp;
    Tandem__Cp__ReserveBlocks res;
    Tandem__Cp__ReserveReply rep;
    Tandem__Cp__PrefillJob job;
    Tandem__Cp__KvReady kv;
    Tandem__Cp__TokenStream ts;
    Tandem__Cp__Cancel cancel;
    Tandem__Cp__Error error;
} msgs_t;

static const Tandem__Cp__Envelope__BodyCase k_cases[] = {
    TANDEM__CP__ENVELOPE__BODY_REGISTER,    TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK,
    TANDEM__CP__ENVELOPE__BODY_HEARTBEAT,   TANDEM__CP__ENVELOPE__BODY_DEREGISTER,
    TANDEM__CP__ENVELOPE__BODY_RESERVE,     TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY,
    TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB, TANDEM__CP__ENVELOPE__BODY_KV_READY,
    TANDEM__CP__ENVELOPE__BODY_TOKENS,      TANDEM__CP__ENVELOPE__BODY_CANCEL,
    TANDEM__CP__ENVELOPE__BODY_ERROR,
};
enum { N_CASES = sizeof k_cases / sizeof k_cases[0] };

static void init_msgs(msgs_t *m, Tandem__Cp__Envelope__BodyCase which) {
    cm_cp_limits_default(&g_lim);
    g_lim.vocab_size = 1000;
    g_lim.pool_blocks = 64;
    for (int i = 0; i < 40; i++) g_tokens[i] = (i * 37) % 1000;
    g_blocks[0] = 7;
    g_blocks[1] = 3;
    g_blocks[2] = 11;
    g_stop_ids[0] = 2;
    g_stop_ids[1] = 5;
    g_stop_strings[0] = "\n\n";
    g_stop_strings[1] = "END";
    g_tl[0] = (Tandem__Cp__TopLogprob)TANDEM__CP__TOP_LOGPROB__INIT;
    g_tl[0].token_id = 17;
    g_tl[0].logprob = -0.25f;
    g_tl[1] = g_tl[0];
    g_tl[1].token_id = 999;
    g_tl[1].logprob = -3.0f;

    *m = (msgs_t){.env = TANDEM__CP__ENVELOPE__INIT};
    m->env.version = CM_CP_VERSION;
    m->env.seq = 42;
    m->reg = (Tandem__Cp__Register)TANDEM__CP__REGISTER__INIT;
    m->reg.worker_id = "decode-0.pod_a:1";
    m->reg.role = TANDEM__CP__ROLE__ROLE_DECODE;
    m->reg.incarnation = 0x1234;
    m->reg.model = "qwen3-moe-tiny";
    m->reg.layout_fingerprint = 0xfeedface;
    m->reg.block_size = 16;
    m->reg.total_blocks = 4096;
    m->reg.max_batch = 64;
    m->reg.max_context = 4096;
    m->reg.vocab_size = 1000;
    m->reg.kvx_descriptor.data = (uint8_t *)"\x01\x02\x03\x00\x05";
    m->reg.kvx_descriptor.len = 5;
    m->ack = (Tandem__Cp__RegisterAck)TANDEM__CP__REGISTER_ACK__INIT;
    m->ack.incarnation = 0x1234;
    m->ack.accepted = 1;
    m->ack.heartbeat_interval_ms = 500;
    m->hb = (Tandem__Cp__Heartbeat)TANDEM__CP__HEARTBEAT__INIT;
    m->hb.incarnation = 9;
    m->hb.free_blocks = 100;
    m->hb.used_blocks = 28;
    m->hb.running = 3;
    m->dereg = (Tandem__Cp__Deregister)TANDEM__CP__DEREGISTER__INIT;
    m->dereg.incarnation = 9;
    m->dereg.reason = "SIGTERM drain complete";
    m->sp = (Tandem__Cp__SamplingParams)TANDEM__CP__SAMPLING_PARAMS__INIT;
    m->sp.temperature = 0.7f;
    m->sp.top_p = 0.9f;
    m->sp.top_k = 50;
    m->sp.min_p = 0.05f;
    m->sp.repetition_penalty = 1.1f;
    m->sp.presence_penalty = 0.5f;
    m->sp.frequency_penalty = -0.5f;
    m->sp.seed = 1234;
    m->sp.has_seed = 1;
    m->sp.max_tokens = 128;
    m->sp.n_stop_token_ids = 2;
    m->sp.stop_token_ids = g_stop_ids;
    m->sp.top_logprobs = 2;
    m->sp.logprobs = 1;
    m->res = (Tandem__Cp__ReserveBlocks)TANDEM__CP__RESERVE_BLOCKS__INIT;
    m->res.request_id = 77;
    m->res.n_prompt_tokens = 40;
    m->res.prompt_tokens = g_tokens;
    m->res.sampling = &m->sp;
    m->res.n_stop = 2;
    m->res.stop = g_stop_strings;
    m->res.deadline_ms = 30000;
    m->rep = (Tandem__Cp__ReserveReply)TANDEM__CP__RESERVE_REPLY__INIT;
    m->rep.request_id = 77;
    m->rep.n_block_ids = 3;
    m->rep.block_ids = g_blocks;
    m->rep.cached_blocks = 1;
    m->job = (Tandem__Cp__PrefillJob)TANDEM__CP__PREFILL_JOB__INIT;
    m->job.request_id = 77;
    m->job.n_prompt_tokens = 40;
    m->job.prompt_tokens = g_tokens;
    m->job.sampling = &m->sp;
    m->job.decode_worker_id = "decode-0";
    m->job.decode_incarnation = 0x1234;
    m->job.n_dst_block_ids = 3;
    m->job.dst_block_ids = g_blocks;
    m->job.skip_blocks = 1;
    m->job.deadline_ms = 30000;
    m->job.decode_kvx_descriptor.data = (uint8_t *)"kvx";
    m->job.decode_kvx_descriptor.len = 3;
    m->kv = (Tandem__Cp__KvReady)TANDEM__CP__KV_READY__INIT;
    m->kv.request_id = 77;
    m->kv.first_token = 17;
    m->kv.first_logprob = -0.25f;
    m->kv.n_first_top_logprobs = 2;
    m->kv.first_top_logprobs = g_tlp;
    m->kv.rng_counter = 1;
    m->kv.prompt_tokens = 40;
    m->kv.cached_tokens = 16;
    m->ts = (Tandem__Cp__TokenStream)TANDEM__CP__TOKEN_STREAM__INIT;
    m->ts.request_id = 77;
    m->ts.n_token_ids = 3;
    m->ts.token_ids = g_tokens;
    /* U+0000 inside: bytes, not a C string, so nothing after it is lost. */
    m->ts.text = (ProtobufCBinaryData){8, (uint8_t *)"h\xc3\xa9l\0lo!"};
    m->ts.n_logprobs = 3;
    m->ts.logprobs = g_logprobs;
    m->ts.n_top_logprobs = 2;
    m->ts.top_logprobs = g_tlp;
    m->ts.finish_reason = TANDEM__CP__FINISH_REASON__FINISH_STOP;
    m->ts.prompt_tokens = 40;
    m->ts.completion_tokens = 3;
    m->cancel = (Tandem__Cp__Cancel)TANDEM__CP__CANCEL__INIT;
    m->cancel.request_id = 77;
    m->cancel.reason = "client disconnected";
    m->error = (Tandem__Cp__Error)TANDEM__CP__ERROR__INIT;
    m->error.request_id = 77;
    m->error.code = CM_ERR_NO_RESOURCES;
    m->error.message = "KV pool full";

    m->env.body_case = which;
    switch (which) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER:
        m->env.register_ = &m->reg;
        break;
    case TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK:
        m->env.register_ack = &m->ack;
        break;
    case TANDEM__CP__ENVELOPE__BODY_HEARTBEAT:
        m->env.heartbeat = &m->hb;
        break;
    case TANDEM__CP__ENVELOPE__BODY_DEREGISTER:
        m->env.deregister = &m->dereg;
        break;
    case TANDEM__CP__ENVELOPE__BODY_RESERVE:
        m->env.reserve = &m->res;
        break;
    case TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY:
        m->env.reserve_reply = &m->rep;
        break;
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB:
        m->env.prefill_job = &m->job;
        break;
    case TANDEM__CP__ENVELOPE__BODY_KV_READY:
        m->env.kv_ready = &m->kv;
        break;
    case TANDEM__CP__ENVELOPE__BODY_TOKENS:
        m->env.tokens = &m->ts;
        break;
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        m->env.cancel = &m->cancel;
        break;
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        m->env.error = &m->error;
        break;
    default:
        break;
    }
}

/* Encodes @m; fails the test if encoding fails. Caller frees. */
static uint8_t *encode_ok(const msgs_t *m, size_t *len) {
    uint8_t *buf = NULL;
    char err[256];
    cm_status_t st = cm_cp_encode(&m->env, &g_lim, &buf, len, err, sizeof err);
    TT_ASSERT_MSG(st == CM_OK, "encode %s: %s: %s", cm_cp_body_name(&m->env), cm_strerror(st), err);
    return buf;
}

/* Packs @m with protobuf-c directly (no validation), for invalid messages. */
static uint8_t *pack_raw(const msgs_t *m, size_t *len) {
    *len = tandem__cp__envelope__get_packed_size(&m->env);
    uint8_t *buf = malloc(*len ? *len : 1);
    tandem__cp__envelope__pack(&m->env, buf);
    return buf;
}

TT_TEST(cp, round_trip_every_message) {
    msgs_t m;
    cm_cp_limits_t lim;
    cm_cp_limits_default(&lim);
    for (int i = 0; i < N_CASES; i++) {
        init_msgs(&m, k_cases[i]);
        cm_cp_decoder_t *dec = cm_cp_decoder_new(&g_lim);
        size_t len;
        uint8_t *buf = encode_ok(&m, &len);
        const cm_cp_msg_t *out = NULL;
        char err[256];
        cm_status_t st = cm_cp_decode(dec, buf, len, &out, err, sizeof err);
        TT_ASSERT_MSG(st == CM_OK, "decode %s: %s", cm_cp_body_name(&m.env), err);
        TT_ASSERT_EQ_INT(out->body_case, k_cases[i]);
        TT_ASSERT_EQ_U64(out->seq, 42);
        /* Re-encoding the decoded message gives the same bytes. */
        uint8_t *again = NULL;
        size_t len2;
        TT_ASSERT_EQ_INT(cm_cp_encode(out, &g_lim, &again, &len2, err, sizeof err), CM_OK);
        TT_ASSERT_EQ_INT(len2, len);
        TT_ASSERT(memcmp(buf, again, len) == 0);
        cm_free(again);
        cm_free(buf);
        cm_cp_decoder_free(dec);
    }
    /* Spot-check decoded field values. */
    init_msgs(&m, TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB);
    cm_cp_decoder_t *dec = cm_cp_decoder_new(&g_lim);
    size_t len;
    uint8_t *buf = encode_ok(&m, &len);
    const cm_cp_msg_t *out;
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, NULL, 0), CM_OK);
    const Tandem__Cp__PrefillJob *j = out->prefill_job;
    TT_ASSERT_EQ_INT(j->n_prompt_tokens, 40);
    TT_ASSERT_EQ_INT(j->prompt_tokens[39], (39 * 37) % 1000);
    TT_ASSERT_EQ_INT(j->dst_block_ids[2], 11);
    TT_ASSERT_STR_EQ(j->decode_worker_id, "decode-0");
    TT_ASSERT_NEAR(j->sampling->top_p, 0.9f, 0);
    TT_ASSERT_EQ_U64(j->sampling->seed, 1234);
    cm_free(buf);
    cm_cp_decoder_free(dec);
    /* A text delta keeps every byte, U+0000 and what follows included. */
    init_msgs(&m, TANDEM__CP__ENVELOPE__BODY_TOKENS);
    dec = cm_cp_decoder_new(&g_lim);
    buf = encode_ok(&m, &len);
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, NULL, 0), CM_OK);
    TT_ASSERT_EQ_INT(out->tokens->text.len, 8);
    TT_ASSERT(memcmp(out->tokens->text.data, "h\xc3\xa9l\0lo!", 8) == 0);
    cm_free(buf);
    cm_cp_decoder_free(dec);
}

/* Expects decoding the raw packing of @m to fail with @want and an error
 * text containing @needle. */
static void expect_refused(const msgs_t *m, cm_status_t want, const char *needle) {
    cm_cp_decoder_t *dec = cm_cp_decoder_new(&g_lim);
    size_t len;
    uint8_t *buf = pack_raw(m, &len);
    const cm_cp_msg_t *out = NULL;
    char err[256] = "";
    cm_status_t st = cm_cp_decode(dec, buf, len, &out, err, sizeof err);
    free(buf);
    cm_cp_decoder_free(dec);
    TT_ASSERT_MSG(st == want, "want %s, got %s (%s) for '%s'", cm_status_name(want),
                  cm_status_name(st), err, needle);
    TT_ASSERT_MSG(out == NULL, "output written on error");
    TT_ASSERT_MSG(strstr(err, needle), "error '%s' lacks '%s'", err, needle);
    /* The sender refuses to encode it as well. */
    uint8_t *enc = NULL;
    size_t elen;
    TT_ASSERT_EQ_INT(cm_cp_encode(&m->env, &g_lim, &enc, &elen, err, sizeof err), want);
    TT_ASSERT(enc == NULL);
}

TT_TEST(cp, out_of_range_fields_are_refused) {
    msgs_t m;
#define CASE(body, mutate, want, needle)  \
    do {                                  \
        init_msgs(&m, body);              \
        mutate;                           \
        expect_refused(&m, want, needle); \
    } while (0)
    const Tandem__Cp__Envelope__BodyCase REG = TANDEM__CP__ENVELOPE__BODY_REGISTER,
                                         RES = TANDEM__CP__ENVELOPE__BODY_RESERVE,
                                         REP = TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY,
                                         JOB = TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB,
                                         KV = TANDEM__CP__ENVELOPE__BODY_KV_READY,
                                         TS = TANDEM__CP__ENVELOPE__BODY_TOKENS;
    CASE(REG, m.env.version = 2, CM_ERR_VERSION, "version: 2");
    CASE(REG, m.env.version = 0, CM_ERR_VERSION, "version: 0");
    CASE(REG, m.env.body_case = TANDEM__CP__ENVELOPE__BODY__NOT_SET, CM_ERR_PROTOCOL,
         "no message body");
    CASE(REG, m.reg.worker_id = "", CM_ERR_OUT_OF_RANGE, "register.worker_id: length 0");
    CASE(REG, m.reg.worker_id = "bad id", CM_ERR_INVALID_ARG, "character 0x20");
    CASE(REG, m.reg.worker_id = "xy123456789012345678901234567890123456789012345678901234567890123",
         CM_ERR_OUT_OF_RANGE, "register.worker_id: length 65+");
    CASE(REG, m.reg.role = TANDEM__CP__ROLE__ROLE_UNSPECIFIED, CM_ERR_OUT_OF_RANGE, "role: 0");
    CASE(REG, m.reg.role = (Tandem__Cp__Role)7, CM_ERR_OUT_OF_RANGE, "role: 7");
    CASE(REG, m.reg.incarnation = 0, CM_ERR_INVALID_ARG, "incarnation");
    CASE(REG, m.reg.model = "\xff\xfe", CM_ERR_INVALID_ARG, "model: not valid UTF-8");
    CASE(REG, m.reg.layout_fingerprint = 0, CM_ERR_INVALID_ARG, "layout_fingerprint");
    CASE(REG, m.reg.block_size = 2048, CM_ERR_OUT_OF_RANGE, "block_size: 2048");
    CASE(REG, m.reg.total_blocks = 0, CM_ERR_OUT_OF_RANGE, "total_blocks: 0");
    CASE(REG, m.reg.max_batch = 100000, CM_ERR_OUT_OF_RANGE, "max_batch");
    CASE(REG, m.reg.kvx_descriptor.len = 0, CM_ERR_INVALID_ARG, "kvx_descriptor: required");
    CASE(RES, m.res.request_id = 0, CM_ERR_INVALID_ARG, "reserve.request_id");
    CASE(RES, m.res.n_prompt_tokens = 0, CM_ERR_OUT_OF_RANGE, "prompt_tokens: 0 tokens");
    CASE(RES, g_tokens[5] = 1000, CM_ERR_OUT_OF_RANGE,
         "prompt_tokens[5]: token id 1000 not in [0, 1000)");
    CASE(RES, g_tokens[0] = -1, CM_ERR_OUT_OF_RANGE, "prompt_tokens[0]: token id -1");
    CASE(RES, m.sp.temperature = -0.1f, CM_ERR_OUT_OF_RANGE, "sampling.temperature");
    CASE(RES, m.sp.temperature = NAN, CM_ERR_OUT_OF_RANGE, "sampling.temperature: nan");
    CASE(RES, m.sp.top_p = 1.5f, CM_ERR_OUT_OF_RANGE, "sampling.top_p");
    CASE(RES, m.sp.top_k = -2, CM_ERR_OUT_OF_RANGE, "sampling.top_k: -2");
    CASE(RES, m.sp.top_k = 1001, CM_ERR_OUT_OF_RANGE, "sampling.top_k: 1001");
    CASE(RES, m.sp.min_p = INFINITY, CM_ERR_OUT_OF_RANGE, "sampling.min_p");
    CASE(RES, m.sp.presence_penalty = 2.5f, CM_ERR_OUT_OF_RANGE, "sampling.presence_penalty");
    CASE(RES, m.sp.max_tokens = 0, CM_ERR_OUT_OF_RANGE, "sampling.max_tokens: 0");
    CASE(RES, m.sp.top_logprobs = 21, CM_ERR_OUT_OF_RANGE, "sampling.top_logprobs: 21");
    CASE(RES, g_stop_ids[1] = 5000, CM_ERR_OUT_OF_RANGE, "sampling.stop_token_ids[1]");
    CASE(RES, m.res.sampling = NULL, CM_ERR_INVALID_ARG, "sampling: missing");
    CASE(RES, g_stop_strings[1] = "", CM_ERR_OUT_OF_RANGE, "stop[1]: length 0");
    CASE(RES, m.res.deadline_ms = 0, CM_ERR_OUT_OF_RANGE, "deadline_ms: 0");
    CASE(REP, g_blocks[1] = 64, CM_ERR_OUT_OF_RANGE, "block_ids[1]: block id 64 >= pool size 64");
    CASE(REP, g_blocks[1] = 11, CM_ERR_INVALID_ARG, "block id 11 appears twice");
    CASE(REP, m.rep.cached_blocks = 4, CM_ERR_OUT_OF_RANGE, "cached_blocks: 4 > 3");
    CASE(REP, m.rep.n_block_ids = 0, CM_ERR_OUT_OF_RANGE, "block_ids: 0 blocks");
    CASE(JOB, m.job.decode_incarnation = 0, CM_ERR_INVALID_ARG, "decode_incarnation");
    CASE(JOB, m.job.decode_kvx_descriptor.len = 0, CM_ERR_INVALID_ARG, "decode_kvx_descriptor");
    CASE(JOB, m.job.skip_blocks = 4, CM_ERR_OUT_OF_RANGE, "skip_blocks: 4 > 3");
    CASE(JOB, m.job.deadline_ms = 3600001, CM_ERR_OUT_OF_RANGE, "deadline_ms");
    CASE(KV, m.kv.first_token = 1000, CM_ERR_OUT_OF_RANGE, "first_token: 1000");
    CASE(KV, m.kv.first_logprob = 0.5f, CM_ERR_OUT_OF_RANGE, "first_logprob");
    CASE(KV, m.kv.status = 3, CM_ERR_OUT_OF_RANGE, "status: 3");
    CASE(KV, m.kv.cached_tokens = 41, CM_ERR_OUT_OF_RANGE, "cached_tokens: 41");
    CASE(KV, g_tl[1].token_id = -5, CM_ERR_OUT_OF_RANGE, "first_top_logprobs[1].token_id: -5");
    CASE(TS, m.ts.text = ((ProtobufCBinaryData){4, (uint8_t *)"ab\xe4\xb8"}), CM_ERR_INVALID_ARG,
         "tokens.text: not valid UTF-8");
    CASE(TS, m.ts.n_logprobs = 2, CM_ERR_OUT_OF_RANGE, "logprobs: 2 entries for 3 tokens");
    CASE(TS, m.ts.finish_reason = (Tandem__Cp__FinishReason)9, CM_ERR_OUT_OF_RANGE,
         "finish_reason");
    CASE(TANDEM__CP__ENVELOPE__BODY_ERROR, m.error.code = 5, CM_ERR_OUT_OF_RANGE, "error.code: 5");
    CASE(TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK, m.ack.heartbeat_interval_ms = 5,
         CM_ERR_OUT_OF_RANGE, "heartbeat_interval_ms: 5");
#undef CASE
    /* With vocab/pool unknown, only absolute maxima apply. */
    init_msgs(&m, REP);
    g_lim.pool_blocks = 0;
    g_blocks[0] = 1u << 20;
    cm_cp_decoder_t *dec = cm_cp_decoder_new(&g_lim);
    size_t len;
    uint8_t *buf = pack_raw(&m, &len);
    const cm_cp_msg_t *out;
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, NULL, 0), CM_OK);
    free(buf);
    cm_cp_decoder_free(dec);
}

TT_TEST(cp, truncated_messages_never_crash) {
    msgs_t m;
    for (int i = 0; i < N_CASES; i++) {
        init_msgs(&m, k_cases[i]);
        size_t len;
        uint8_t *buf = encode_ok(&m, &len);
        cm_cp_decoder_t *dec = cm_cp_decoder_new(&g_lim);
        int refused = 0;
        for (size_t cut = 0; cut < len; cut++) {
            /* Copy into an exact-size heap buffer so ASan sees overreads. */
            uint8_t *p = malloc(cut ? cut : 1);
            memcpy(p, buf, cut);
            const cm_cp_msg_t *out = NULL;
            cm_status_t st = cm_cp_decode(dec, p, cut, &out, NULL, 0);
            /* A cut on a field boundary can be a valid shorter message;
             * anything accepted has passed validation. */
            if (st == CM_OK) {
                TT_ASSERT(out != NULL);
                TT_ASSERT_EQ_INT(cm_cp_validate(out, &g_lim, NULL, 0), CM_OK);
            } else {
                TT_ASSERT(st == CM_ERR_PROTOCOL || st == CM_ERR_VERSION ||
                          st == CM_ERR_OUT_OF_RANGE || st == CM_ERR_INVALID_ARG);
                refused++;
            }
            free(p);
        }
        /* The empty message has no version and no body. */
        TT_ASSERT(refused > 0);
        const cm_cp_msg_t *out;
        TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, 0, &out, NULL, 0), CM_ERR_VERSION);
        /* Cut inside the last field's payload: the whole-message case. */
        TT_ASSERT(cm_cp_decode(dec, buf, len - 1, &out, NULL, 0) != CM_OK || len < 3);
        cm_free(buf);
        cm_cp_decoder_free(dec);
    }
}

TT_TEST(cp, oversized_and_amplifying_input_is_bounded) {
    msgs_t m;
    init_msgs(&m, TANDEM__CP__ENVELOPE__BODY_RESERVE);
    /* Raw size above the limit: refused before parsing. */
    cm_cp_limits_t lim = g_lim;
    lim.max_msg_bytes = 100;
    cm_cp_decoder_t *dec = cm_cp_decoder_new(&lim);
    size_t len;
    uint8_t *buf = pack_raw(&m, &len);
    TT_ASSERT(len > 100);
    const cm_cp_msg_t *out = NULL;
    char err[256];
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, err, sizeof err), CM_ERR_TOO_LARGE);
    TT_ASSERT(strstr(err, "exceeds the limit of 100"));
    free(buf);
    cm_cp_decoder_free(dec);

    /* 200k one-byte varints unpack to 800 KB of int32: a 256 KB arena cap
     * stops it without allocating more than the cap. */
    size_t n = 200000;
    int32_t *zeros = calloc(n, sizeof *zeros);
    m.res.n_prompt_tokens = n;
    m.res.prompt_tokens = zeros;
    lim = g_lim;
    lim.arena_bytes = 256 * 1024;
    dec = cm_cp_decoder_new(&lim);
    buf = pack_raw(&m, &len);
    TT_ASSERT(len < 256 * 1024);
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, err, sizeof err), CM_ERR_TOO_LARGE);
    TT_ASSERT(strstr(err, "more than 262144 bytes of memory"));
    cm_cp_decoder_free(dec);
    /* The same message within a larger cap, but above max_tokens. */
    lim.arena_bytes = 8u << 20;
    lim.max_tokens = 100000;
    dec = cm_cp_decoder_new(&lim);
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, err, sizeof err), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT(strstr(err, "prompt_tokens: 200000 tokens not in [1, 100000]"));
    lim.max_tokens = 1u << 20;
    cm_cp_decoder_free(dec);
    dec = cm_cp_decoder_new(&lim);
    TT_ASSERT_EQ_INT(cm_cp_decode(dec, buf, len, &out, err, sizeof err), CM_OK);
    TT_ASSERT_EQ_INT(out->reserve->n_prompt_tokens, n);
    free(buf);
    free(zeros);
    cm_cp_decoder_free(dec);
}

TT_TEST_T(cp, fuzz_mutated_messages, 120) {
    msgs_t m;
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    uint8_t *seeds[N_CASES];
    size_t seed_len[N_CASES];
    for (int i = 0; i < N_CASES; i++) {
        init_msgs(&m, k_cases[i]);
        seeds[i] = encode_ok(&m, &seed_len[i]);
    }
    cm_cp_limits_t lim = g_lim;
    lim.arena_bytes = 1u << 20;
    cm_cp_decoder_t *dec = cm_cp_decoder_new(&lim);
    int accepted = 0, refused = 0;
    const int iters = 100000;
    for (int it = 0; it < iters; it++) {
        int which = (int)(tt_rng_next(&seed) % N_CASES);
        size_t len = seed_len[which];
        size_t cap = len + 64;
        uint8_t *p = malloc(cap);
        memcpy(p, seeds[which], len);
        int nmut = 1 + (int)(tt_rng_next(&seed) % 8);
        for (int k = 0; k < nmut; k++) {
            uint64_t r = tt_rng_next(&seed);
            size_t pos = len ? (size_t)(r >> 8) % len : 0;
            switch (r % 6) {
            case 0: /* flip a bit */
                if (len) p[pos] ^= (uint8_t)(1u << ((r >> 40) % 8));
                break;
            case 1: /* random byte */
                if (len) p[pos] = (uint8_t)(r >> 32);
                break;
            case 2: /* truncate */
                len = pos;
                break;
            case 3: /* insert a byte */
                if (len < cap) {
                    memmove(p + pos + 1, p + pos, len - pos);
                    p[pos] = (uint8_t)(r >> 24);
                    len++;
                }
                break;
            case 4: /* delete a byte */
                if (len) {
                    memmove(p + pos, p + pos + 1, len - pos - 1);
                    len--;
                }
                break;
            default: /* huge varint length prefix */
                if (len) p[pos] = 0xff;
                break;
            }
        }
        /* Exact-size copy so ASan catches any overread. */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, p, len);
        free(p);
        const cm_cp_msg_t *out = NULL;
        cm_status_t st = cm_cp_decode(dec, exact, len, &out, NULL, 0);
        if (st == CM_OK) {
            accepted++;
            /* Whatever is accepted is valid and re-encodes. */
            uint8_t *re = NULL;
            size_t rlen;
            TT_ASSERT_EQ_INT(cm_cp_encode(out, &lim, &re, &rlen, NULL, 0), CM_OK);
            cm_free(re);
        } else {
            TT_ASSERT(st < 0);
            TT_ASSERT(strcmp(cm_status_name(st), "UNKNOWN") != 0);
            refused++;
        }
        free(exact);
    }
    /* Pure random bytes. */
    for (int it = 0; it < 5000; it++) {
        size_t len = tt_rng_next(&seed) % 256;
        uint8_t *p = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++) p[i] = (uint8_t)tt_rng_next(&seed);
        const cm_cp_msg_t *out;
        if (cm_cp_decode(dec, p, len, &out, NULL, 0) == CM_OK)
            accepted++;
        else
            refused++;
        free(p);
    }
    printf("fuzz: %d accepted, %d refused\n", accepted, refused);
    TT_ASSERT(refused > iters / 2); /* mutations mostly break messages */
    TT_ASSERT(accepted > 0);        /* and some survive as valid ones */
    for (int i = 0; i < N_CASES; i++) cm_free(seeds[i]);
    cm_cp_decoder_free(dec);
}
