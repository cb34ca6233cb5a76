/*
 * test_engine_dp.c - the cpu backend's TANDEM_CPU_PRECISION=bf16 mode
 * (eng_cpu_dp.c): the bf16 rounding against its definition (nearest, ties
 * to even), the hardware conversion and matmul against plain C and against
 * an f64 sum of the same rounded products on awkward shapes, rows
 * bit-identical alone or in a batch, MoE routers kept exact, and the bf16
 * fixture model close to transformers and batch invariant in this mode.
 * The hardware parts run on CPUs with AVX512_BF16 and are skipped
 * elsewhere (the plain-C parts always run).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>

#include "eng.h"
#include "eng_backend.h"
#include "eng_cpu_amx.h"
#include "eng_cpu_dp.h"
#include "eng_internal.h"
#include "tt.h"

/* Uniform in [0, 1) (xorshift64*). */
static double rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static double bf16_val(uint16_t h) { return (double)bits_f((uint32_t)h << 16); }

/* A random float of any exponent, sign and mantissa (NaNs excluded). */
static float rnd_float(uint64_t *s) {
    uint32_t u;
    do u = (uint32_t)(rnd(s) * 4294967296.0);
    while ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu));
    return bits_f(u);
}

/* The two bf16 values around @f (truncated, and one step away from zero)
 * and the rounding the definition asks for: the nearer, the even one on a
 * tie, compared in f64 (exact for these). */
static uint16_t nearest_even(float f) {
    uint32_t u = f_bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if (!(u & 0xFFFF)) return lo;
    double dl = fabs((double)f - bf16_val(lo));
    double dh = isinf(bf16_val(hi)) ? INFINITY : fabs(bf16_val(hi) - (double)f);
    /* Overflow: a value past the largest bf16 by half a step or more
     * rounds to infinity, which is hi's bit pattern. */
    if ((hi & 0x7F80) == 0x7F80) return (lo & 1) || (u & 0xFFFF) >= 0x8000 ? hi : lo;
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

/* The KV rows' conversion (eng_bf16_round_row, AVX2 where present): the
 * same bits as the nearest-even reference for every length's vector body
 * and tail, halfway values, denormals, infinities and NaN included. */
TT_TEST(engine_dp, bf16_row_rounding_matches_nearest_even) {
    uint64_t rng = 4711;
    static const uint32_t special[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu,
                                       0x00008000u, 0x00018000u, 0x7F7FFFFFu, 0xFF7F8000u,
                                       0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u,
                                       0xFFFFFFFFu, 0x3F808000u, 0x3F818000u, 0x7F7F8000u};
    for (size_t n = 1; n <= 40; n++) {
        float x[40];
        uint16_t y[41];
        for (size_t i = 0; i < n; i++) {
            x[i] = rnd_float(&rng);
            if (i % 3 == 0) x[i] = bits_f(special[(i / 3 + n) % 16]);
            if (i % 5 == 1) x[i] = bits_f((f_bits(x[i]) & 0xFFFF0000u) | 0x8000u);
        }
        y[n] = 0xABCD;
        eng_bf16_round_row(x, n, y);
        TT_ASSERT_MSG(y[n] == 0xABCD, "n %zu: wrote past the end", n);
        for (size_t i = 0; i < n; i++) {
            uint32_t u = f_bits(x[i]);
            if ((u & 0x7FFFFFFFu) > 0x7F800000u) { /* NaN: a quiet NaN of the same sign */
                TT_ASSERT_MSG((y[i] & 0x7FC0) == 0x7FC0 && (y[i] >> 15) == (u >> 31),
                              "n %zu [%zu] %08x -> %04x", n, i, u, y[i]);
                continue;
            }
            TT_ASSERT_MSG(y[i] == nearest_even(x[i]), "n %zu [%zu] %08x -> %04x, want %04x", n, i,
                          u, y[i], nearest_even(x[i]));
        }
    }
}

TT_TEST(engine_dp, bf16_rounding_is_nearest_even) {
    uint64_t rng = 42;
    static const float special[] = {
        0.0f,     -0.0f,  1.0f,    -1.0f,           1.00390625f, 1.01171875f, 3.4e38f,
        -3.4e38f, 1e-40f, -1e-40f, 1.17549435e-38f, INFINITY,    -INFINITY};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        TT_ASSERT_MSG(eng_dp_bf16(special[i]) == nearest_even(special[i]), "%a: %04x vs %04x",
                      (double)special[i], eng_dp_bf16(special[i]), nearest_even(special[i]));
    for (int i = 0; i < 200000; i++) {
        float f = rnd_float(&rng);
        /* Every 4th value exactly halfway between two bf16 values. */
        if (i % 4 == 0) f = bits_f((f_bits(f) & 0xFFFF0000u) | 0x8000u);
        if (isinf(f) || isnan(f)) continue;
        TT_ASSERT_MSG(eng_dp_bf16(f) == nearest_even(f), "%a: %04x vs %04x", (double)f,
                      eng_dp_bf16(f), nearest_even(f));
    }
    /* NaN stays NaN. */
    uint16_t n = eng_dp_bf16(bits_f(0x7F800001u));
    TT_ASSERT((n & 0x7F80) == 0x7F80 && (n & 0x7F));

    /* The row conversion: pairs in order, an odd count padded with zero;
     * the hardware one (when present) gives the same bits. Normal values
     * only: the instruction treats denormal inputs as zero. */
    static const size_t ins[] = {1, 2, 15, 16, 17, 31, 32, 33, 64, 100, 1025};
    for (size_t ii = 0; ii < sizeof ins / sizeof ins[0]; ii++) {
        size_t in = ins[ii], np = eng_dp_pairs(in), rows = 3;
        float *x = malloc(rows * in * 4);
        uint32_t *a = malloc(rows * np * 4), *b = malloc(rows * np * 4);
        for (size_t i = 0; i < rows * in; i++) {
            x[i] = (float)((rnd(&rng) - 0.5) * pow(2.0, (int)(rnd(&rng) * 40) - 20));
            if (i % 7 == 0) x[i] = bits_f((f_bits(x[i]) & 0xFFFF0000u) | 0x8000u);
        }
        memset(a, 0xAB, rows * np * 4);
        memset(b, 0xCD, rows * np * 4);
        eng_dp_xconv_ref(x, 0, rows, in, a);
        eng_dp_xconv(x, 0, rows, in, b);
        for (size_t r = 0; r < rows; r++)
            for (size_t k = 0; k < 2 * np; k++) {
                uint16_t h = ((const uint16_t *)(a + r * np))[k];
                TT_ASSERT_EQ_INT(h, k < in ? nearest_even(x[r * in + k]) : 0);
            }
        TT_ASSERT_MSG(memcmp(a, b, rows * np * 4) == 0, "in %zu: hardware conversion differs", in);
        free(x), free(a), free(b);
    }
}

/* A bf16 [out][in] matrix (random, |w| < 0.5) as uint16 bits. */
static uint16_t *rnd_bf16_matrix(size_t out, size_t in, uint64_t *rng) {
    uint16_t *w = malloc(out * in * 2);
    for (size_t i = 0; i < out * in; i++) w[i] = eng_dp_bf16((float)(rnd(rng) - 0.5));
    return w;
}

/* sum_k bf16(x[k]) * w[o][k] + bias in f64, and sum_k |..| for the bound. */
static double ref_f64(const float *x, const uint16_t *w, size_t in, size_t o, double *mag) {
    double s = 0;
    *mag = 0;
    for (size_t k = 0; k < in; k++) {
        double p = bf16_val(eng_dp_bf16(x[k])) * bf16_val(w[o * in + k]);
        s += p;
        *mag += fabs(p);
    }
    return s;
}

/* The panel layout and the plain-C kernel on every machine: against the
 * f64 sum of the same rounded products. */
TT_TEST(engine_dp, panels_and_plain_c_kernel_sum_the_rounded_products) {
    uint64_t rng = 7;
    static const size_t ins[] = {1, 2, 3, 64, 129}, outs[] = {1, 16, 17, 40};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 4; b++) {
            size_t in = ins[a], out = outs[b], np = eng_dp_pairs(in);
            uint16_t *w = rnd_bf16_matrix(out, in, &rng);
            uint32_t *P = malloc(eng_dp_panels(out) * np * DP_W * 4), *xb = malloc(np * 4);
            float *x = malloc(in * 4);
            for (size_t k = 0; k < in; k++) x[k] = (float)(rnd(&rng) * 4 - 2);
            eng_dp_fill(w, in, out, 0, eng_dp_panels(out), P);
            eng_dp_xconv_ref(x, 0, 1, in, xb);
            for (size_t o = 0; o < out; o++) {
                double mag, want = ref_f64(x, w, in, o, &mag);
                float got = eng_dp_ref_dot(xb, P, in, o);
                TT_ASSERT_MSG(fabs(got - want) <= 1e-6 * mag + 1e-30, "in %zu o %zu: %g vs %g", in,
                              o, (double)got, want);
            }
            free(w), free(P), free(xb), free(x);
        }
}

/* Skips a test of the AVX-512 kernels when TANDEM_CPU_ISA caps below them. */
static void skip_if_isa_capped(void) {
    const char *cap = getenv("TANDEM_CPU_ISA");
    if (cap && *cap && strcmp(cap, "avx512") != 0) TT_SKIP("TANDEM_CPU_ISA caps below avx512");
}

/* How the cpu backend's bf16 mode runs its products. */
typedef enum { BF16_DP, BF16_FMA, BF16_AMX } bf16_kernel_t;

/* The cpu backend in bf16 mode: batches on VDPBF16PS, as f32 FMAs, or on
 * AMX tiles (one row always on VDPBF16PS without AMX). */
static cm_status_t bf16_backend_kind(eng_backend_t *out, bf16_kernel_t k) {
    setenv("TANDEM_CPU_PRECISION", "bf16", 1);
    setenv("TANDEM_CPU_AMX", k == BF16_AMX ? "1" : "0", 1);
    setenv("TANDEM_CPU_BF16_FMA", k == BF16_FMA ? "1" : "0", 1);
    cm_status_t st = eng_backend_cpu_new(out);
    unsetenv("TANDEM_CPU_PRECISION");
    unsetenv("TANDEM_CPU_AMX");
    unsetenv("TANDEM_CPU_BF16_FMA");
    return st;
}

static cm_status_t bf16_backend_amx(eng_backend_t *out, bool amx) {
    return bf16_backend_kind(out, amx ? BF16_AMX : BF16_DP);
}

static cm_status_t bf16_backend(eng_backend_t *out) { return bf16_backend_amx(out, false); }

/* The backend's matmul in bf16 mode on awkward shapes (odd inputs, outputs
 * not a multiple of 16 or of the 3- and 6-panel blocks, fewer and more
 * pairs than an AMX tile's 16, row counts hitting every block shape: one
 * block for up to 8 rows, blocks of 4 to 8 rows above, tiles of 48 split
 * evenly): against plain C (same rounding and order; on AMX tiles
 * the unit's own order, so within 1e-6 of the products' magnitude), the
 * f64 sum, rows alone bit-identical; exact matrices against the ref
 * backend. */
static void check_bf16_matmul(bf16_kernel_t kind) {
    const bool amx = kind == BF16_AMX;
    eng_backend_t cpu, ref;
    TT_ASSERT_EQ_INT(bf16_backend_kind(&cpu, kind), CM_OK);
    TT_ASSERT_STR_EQ(eng_cpu_precision(&cpu), amx ? "bf16-amx" : "bf16");
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    uint64_t rng = 99;
    static const size_t ins[] = {1, 7, 31, 64, 333, 1024}, outs[] = {16, 17, 100, 250};
    static const size_t rows_[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 25, 49, 97};
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 14; c++) {
                size_t in = ins[a], out = outs[b], nr = rows_[c], np = eng_dp_pairs(in);
                if (in * out * nr > 4000000) continue;
                uint16_t *wd = rnd_bf16_matrix(out, in, &rng);
                float *x = malloc(nr * in * 4), *bias = malloc(out * 4), *y = malloc(nr * out * 4);
                float *y1 = malloc(out * 4), *y0 = malloc(nr * out * 4);
                uint32_t *xb = malloc(nr * np * 4);
                for (size_t i = 0; i < nr * in; i++) x[i] = (float)(rnd(&rng) * 2 - 1);
                for (size_t i = 0; i < out; i++) bias[i] = (float)rnd(&rng);
                const float *bs = (a + b + c) % 2 ? bias : NULL;
                mdl_tensor_t w = {"w", MDL_BF16, 2, {out, in}, wd, out * in * 2, NULL, false};
                TT_ASSERT_EQ_INT(cpu.iface->pack(cpu.ctx, &w), CM_OK);
                TT_ASSERT(w.packed);
                cpu.iface->matmul(cpu.ctx, x, nr, in, &w, bs, out, y);
                eng_dp_xconv_ref(x, 0, nr, in, xb);
                for (size_t r = 0; r < nr; r++)
                    for (size_t o = 0; o < out; o++) {
                        float pc = eng_dp_ref_dot(xb + r * np, w.packed, in, o) + (bs ? bs[o] : 0);
                        double mag, want = ref_f64(x + r * in, wd, in, o, &mag) + (bs ? bs[o] : 0);
                        float got = y[r * out + o];
                        TT_ASSERT_MSG(amx ? fabs(got - pc) <= 1e-6 * (mag + 1) : got == pc,
                                      "%s in %zu out %zu rows %zu [%zu][%zu]: %g vs plain C %g",
                                      amx ? "amx" : "dp", in, out, nr, r, o, (double)got,
                                      (double)pc);
                        TT_ASSERT_MSG(fabs(got - want) <= 1e-5 * (mag + 1),
                                      "in %zu out %zu rows %zu [%zu][%zu]: %g vs f64 %g", in, out,
                                      nr, r, o, (double)got, want);
                    }
                for (size_t r = 0; r < nr; r += 1 + nr / 4) {
                    cpu.iface->matmul(cpu.ctx, x + r * in, 1, in, &w, bs, out, y1);
                    TT_ASSERT_MSG(memcmp(y1, y + r * out, out * 4) == 0,
                                  "row %zu of %zu differs alone (in %zu out %zu)", r, nr, in, out);
                }
                /* Marked exact: f32 inputs, the ref backend's result up to
                 * summation order. */
                w.packed = NULL;
                w.exact = true;
                TT_ASSERT_EQ_INT(cpu.iface->pack(cpu.ctx, &w), CM_OK);
                cpu.iface->matmul(cpu.ctx, x, nr, in, &w, bs, out, y);
                ref.iface->matmul(ref.ctx, x, nr, in, &w, bs, out, y0);
                for (size_t i = 0; i < nr * out; i++)
                    TT_ASSERT_MSG(fabs(y[i] - y0[i]) <= 1e-5 * sqrt((double)in),
                                  "exact in %zu out %zu: [%zu] %g vs %g", in, out, i, (double)y[i],
                                  (double)y0[i]);
                free(wd), free(x), free(bias), free(y), free(y1), free(y0), free(xb);
            }
    cpu.iface->free(cpu.ctx);
    ref.iface->free(ref.ctx);
}

TT_TEST(engine_dp, cpu_matmul_bf16_matches_plain_c_and_is_batch_invariant) {
    if (!eng_dp_available()) TT_SKIP("no AVX512_BF16 on this CPU");
    skip_if_isa_capped();
    check_bf16_matmul(BF16_DP);
}

/* The same products as f32 FMAs (eng_dp_mm_fma, batches of 3 or more
 * rows): the same bits as plain C and so as VDPBF16PS, a row alone (on
 * VDPBF16PS) bit-identical to it in a batch. */
TT_TEST(engine_dp, cpu_matmul_bf16_fma_matches_plain_c_and_is_batch_invariant) {
    if (!eng_dp_available()) TT_SKIP("no AVX512_BF16 on this CPU");
    skip_if_isa_capped();
    check_bf16_matmul(BF16_FMA);
}

/* Weights and inputs of every exponent (bf16 denormals, products that
 * underflow or cancel to zero; none that overflow): VDPBF16PS and the FMA
 * kernel give the same bits, each equal to plain C with DAZ and FTZ; a
 * bias (denormals among its values) added after, without them. */
TT_TEST(engine_dp, bf16_fma_kernel_equals_vdpbf16ps_on_denormals_and_underflow) {
    if (!eng_dp_available()) TT_SKIP("no AVX512_BF16 on this CPU");
    skip_if_isa_capped();
    eng_backend_t dp, fma;
    TT_ASSERT_EQ_INT(bf16_backend_kind(&dp, BF16_DP), CM_OK);
    TT_ASSERT_EQ_INT(bf16_backend_kind(&fma, BF16_FMA), CM_OK);
    uint64_t rng = 5;
    const size_t in = 37, out = 50, nr = 9, np = eng_dp_pairs(in);
    uint16_t *wd = malloc(out * in * 2);
    float *x = malloc(nr * in * 4), *y0 = malloc(nr * out * 4), *y1 = malloc(nr * out * 4);
    float *bias = malloc(out * 4);
    uint32_t *xb = malloc(nr * np * 4);
    size_t zeros = 0, tiny = 0;
    for (int round = 0; round < 40; round++) {
        /* Weights 2^-127 .. 2^-45 (bf16 denormals below 2^-126), by
         * round a window of 21 exponents moving up: products from all
         * below f32's smallest normal (2^-126) to all above it, sums near
         * it. */
        const int elo = round * 2 - 8;
        for (size_t i = 0; i < out * in; i++) {
            int e = elo + (int)(rnd(&rng) * 21); /* biased exponent, <= 0: denormal */
            uint32_t sign = rnd(&rng) < 0.5 ? 0x8000u : 0;
            uint32_t mant = (uint32_t)(rnd(&rng) * 128);
            wd[i] = (uint16_t)(sign | (uint32_t)(e < 0 ? 0 : e) << 7 | mant);
        }
        for (size_t i = 0; i < nr * in; i++) {
            float v = (float)(rnd(&rng) * 2 - 1) * ldexpf(1.0f, -(int)(rnd(&rng) * 30));
            x[i] = round % 4 == 0 && i % 5 == 0 ? bits_f(f_bits(v) & 0x807FFFFFu) : v;
        }
        for (size_t o = 0; o < out; o++) /* denormal, or tiny normal */
            bias[o] =
                o % 2 ? bits_f((uint32_t)(rnd(&rng) * 0x7FFFFF) | (o % 4 == 1 ? 0x80000000u : 0))
                      : (float)(rnd(&rng) - 0.5) * 0x1p-120f;
        const float *bs = round % 2 ? bias : NULL;
        mdl_tensor_t w0 = {"w", MDL_BF16, 2, {out, in}, wd, out * in * 2, NULL, false};
        mdl_tensor_t w1 = w0;
        TT_ASSERT_EQ_INT(dp.iface->pack(dp.ctx, &w0), CM_OK);
        TT_ASSERT_EQ_INT(fma.iface->pack(fma.ctx, &w1), CM_OK);
        dp.iface->matmul(dp.ctx, x, nr, in, &w0, bs, out, y0);
        fma.iface->matmul(fma.ctx, x, nr, in, &w1, bs, out, y1);
        eng_dp_xconv_ref(x, 0, nr, in, xb);
        for (size_t r = 0; r < nr; r++)
            for (size_t o = 0; o < out; o++) {
                float pc = eng_dp_ref_dot(xb + r * np, w0.packed, in, o);
                if (bs) pc += bs[o]; /* without one, -0 stays -0 */
                float a = y0[r * out + o], b = y1[r * out + o];
                TT_ASSERT_MSG(f_bits(a) == f_bits(pc) && f_bits(b) == f_bits(pc),
                              "[%zu][%zu]: VDPBF16PS %a, FMA %a, plain C %a", r, o, (double)a,
                              (double)b, (double)pc);
                zeros += a == 0.0f;
                tiny += a != 0.0f && fabsf(a) < 0x1p-100f;
            }
    }
    /* The data reached the flushing range, not only ordinary values. */
    TT_ASSERT_MSG(zeros > 0 && tiny > 0, "%zu zero and %zu tiny outputs", zeros, tiny);
    free(wd), free(x), free(y0), free(y1), free(xb), free(bias);
    dp.iface->free(dp.ctx);
    fma.iface->free(fma.ctx);
}

TT_TEST(engine_dp, cpu_matmul_bf16_amx_close_to_plain_c_and_is_batch_invariant) {
    if (!eng_amx_available()) TT_SKIP("no AMX-BF16 on this CPU (or the kernel refuses tile data)");
    skip_if_isa_capped();
    check_bf16_matmul(BF16_AMX);
}

/* matmul_n (Q/K/V, gate/up as one job) gives the bits of separate matmul
 * calls and, with f32 inputs, the ref backend's values up to summation
 * order: every instruction-set path, both precisions, one row (chunks
 * that shrink and straddle matrices) to more rows than a bf16 tile, with
 * and without bias, and mixes of routes (an f32 tensor, an exact one)
 * that fall back to one matmul each; bf16 on AMX tiles too. */
TT_TEST(engine_dp, cpu_matmul_n_equals_separate_matmuls) {
    static const char *const isas[] = {"scalar", "avx2", "avx512"};
    static const size_t ins[] = {7, 64, 333}, rows_[] = {1, 3, 17, 50};
    static const size_t outs[3][3] = {{16, 37, 1000}, {100, 250, 33}, {2048, 17, 64}};
    uint64_t rng = 7;
    eng_backend_t ref;
    TT_ASSERT_EQ_INT(eng_backend_ref_new(&ref), CM_OK);
    for (int ii = 0; ii < 3; ii++)
        for (int prec = 0; prec < 3; prec++) { /* f32, bf16, bf16 on AMX tiles */
            if (!eng_cpu_isa_available(isas[ii]) || (prec && !eng_dp_available()) ||
                (prec == 2 && !eng_amx_available()))
                continue;
            eng_backend_t cpu;
            setenv("TANDEM_CPU_ISA", isas[ii], 1);
            cm_status_t st = prec ? bf16_backend_amx(&cpu, prec == 2) : eng_backend_cpu_new(&cpu);
            unsetenv("TANDEM_CPU_ISA");
            TT_ASSERT_EQ_INT(st, CM_OK);
            TT_ASSERT(cpu.iface->matmul_n);
            for (size_t a = 0; a < 3; a++)
                for (size_t c = 0; c < 4; c++)
                    for (int mix = 0; mix < 3; mix++) {
                        size_t in = ins[a], nr = rows_[c];
                        const size_t *out = outs[(a + c + (size_t)mix) % 3];
                        mdl_tensor_t w[3];
                        uint16_t *wd[3];
                        float *f32w = NULL, *bias = malloc(2048 * 4);
                        float *x = malloc(nr * in * 4), *y[3], *z[3];
                        for (size_t i = 0; i < nr * in; i++) x[i] = (float)(rnd(&rng) * 2 - 1);
                        for (size_t i = 0; i < 2048; i++) bias[i] = (float)rnd(&rng);
                        eng_mm_t mm[3];
                        for (int i = 0; i < 3; i++) {
                            wd[i] = rnd_bf16_matrix(out[i], in, &rng);
                            w[i] = (mdl_tensor_t){"w",   MDL_BF16,        2,    {out[i], in},
                                                  wd[i], out[i] * in * 2, NULL, false};
                            if (mix == 1 && i == 2) { /* an f32 tensor: not packed */
                                f32w = malloc(out[i] * in * 4);
                                eng_to_f32(wd[i], MDL_BF16, out[i] * in, f32w);
                                w[i].dtype = MDL_F32;
                                w[i].data = f32w;
                                w[i].nbytes = out[i] * in * 4;
                            }
                            w[i].exact = mix == 2 && i == 1;
                            TT_ASSERT_EQ_INT(cpu.iface->pack(cpu.ctx, &w[i]), CM_OK);
                            y[i] = malloc(nr * out[i] * 4);
                            z[i] = malloc(nr * out[i] * 4);
                            mm[i] = (eng_mm_t){&w[i], (i + mix) % 2 ? bias : NULL, out[i], y[i]};
                        }
                        cpu.iface->matmul_n(cpu.ctx, x, nr, in, 3, mm);
                        for (int i = 0; i < 3; i++) {
                            cpu.iface->matmul(cpu.ctx, x, nr, in, &w[i], mm[i].bias, out[i], z[i]);
                            TT_ASSERT_MSG(memcmp(y[i], z[i], nr * out[i] * 4) == 0,
                                          "%s %s in %zu rows %zu mix %d: matrix %d (out %zu) "
                                          "differs",
                                          isas[ii],
                                          prec == 2 ? "bf16-amx"
                                          : prec    ? "bf16"
                                                    : "f32",
                                          in, nr, mix, i, out[i]);
                            /* f32 inputs (and exact matrices in bf16 mode):
                             * the ref backend's plain loops. */
                            if (!prec || w[i].exact || w[i].dtype == MDL_F32) {
                                ref.iface->matmul(ref.ctx, x, nr, in, &w[i], mm[i].bias, out[i],
                                                  z[i]);
                                for (size_t e = 0; e < nr * out[i]; e++)
                                    TT_ASSERT_MSG(
                                        fabs(y[i][e] - z[i][e]) <= 1e-5 * sqrt((double)in),
                                        "%s in %zu rows %zu matrix %d [%zu]: %g vs ref %g",
                                        isas[ii], in, nr, i, e, (double)y[i][e], (double)z[i][e]);
                            }
                            free(wd[i]), free(y[i]), free(z[i]);
                        }
                        free(f32w), free(bias), free(x);
                    }
            cpu.iface->free(cpu.ctx);
        }
    ref.iface->free(ref.ctx);
}

/* Unknown values and CPUs without the instruction fall back to f32. */
TT_TEST(engine_dp, precision_setting_falls_back_to_f32) {
    eng_backend_t cpu;
    setenv("TANDEM_CPU_PRECISION", "fp8", 1);
    TT_ASSERT_EQ_INT(eng_backend_cpu_new(&cpu), CM_OK);
    TT_ASSERT_STR_EQ(eng_cpu_precision(&cpu), "f32");
    cpu.iface->free(cpu.ctx);
    setenv("TANDEM_CPU_ISA", "avx2", 1);
    TT_ASSERT_EQ_INT(bf16_backend(&cpu), CM_OK);
    TT_ASSERT_STR_EQ(eng_cpu_precision(&cpu), "f32");
    cpu.iface->free(cpu.ctx);
    unsetenv("TANDEM_CPU_ISA");
    TT_ASSERT_EQ_INT(bf16_backend(&cpu), CM_OK);
    TT_ASSERT_STR_EQ(eng_cpu_precision(&cpu), eng_dp_available() ? "bf16" : "f32");
    cpu.iface->free(cpu.ctx);
}
