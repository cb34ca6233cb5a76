/* test_flags.c - flag parsing, environment fallback and error messages. */
#include <stdlib.h>

#include "cm_flags.h"
#include "tt.h"

static int64_t g_port;
static uint64_t g_pool, g_timeout;
static double g_temp;
static bool g_verbose;
static const char *g_name, *g_mode;

static const cm_flag_t k_flags[] = {
    {.name = "port",
     .type = CM_FLAG_INT,
     .dst = &g_port,
     .def = "8000",
     .help = "port",
     .min = 1,
     .max = 65535},
    {.name = "kv-pool-size", .type = CM_FLAG_SIZE, .dst = &g_pool, .def = "64M", .help = "pool"},
    {.name = "timeout", .type = CM_FLAG_DURATION, .dst = &g_timeout, .def = "5s", .help = "t"},
    {.name = "temperature",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_temp,
     .def = "1.0",
     .help = "T",
     .fmin = 0,
     .fmax = 2},
    {.name = "verbose", .type = CM_FLAG_BOOL, .dst = &g_verbose, .def = "false", .help = "v"},
    {.name = "name", .type = CM_FLAG_STRING, .dst = &g_name, .help = "n", .required = true},
    {.name = "mode",
     .type = CM_FLAG_CHOICE,
     .dst = &g_mode,
     .def = "fast",
     .choices = "fast|slow",
     .help = "m"},
    {0},
};
static const cm_flag_t *const k_tables[] = {k_flags, NULL};
static const cm_cmd_spec_t k_spec = {.prog = "tandem demo",
                                     .summary = "demo",
                                     .tables = k_tables,
                                     .max_positional = 1,
                                     .args_usage = "[thing]"};

static cm_status_t parse(int argc, char **argv, char *err, int *npos, char **pos) {
    return cm_flags_parse(&k_spec, argc, argv, pos, npos, err, 256);
}

TT_TEST(flags, command_line_values) {
    char err[256], *pos[1];
    int np = -1;
    char *argv[] = {"--port",    "9000",   "--kv-pool-size=2G",
                    "--timeout", "250ms",  "--temperature=0.5",
                    "--verbose", "--name", "w1",
                    "--mode",    "slow",   "extra"};
    TT_ASSERT_EQ_INT(parse(12, argv, err, &np, pos), CM_OK);
    TT_ASSERT_EQ_INT(g_port, 9000);
    TT_ASSERT_EQ_U64(g_pool, 2ull << 30);
    TT_ASSERT_EQ_U64(g_timeout, 250);
    TT_ASSERT_NEAR(g_temp, 0.5, 0);
    TT_ASSERT(g_verbose);
    TT_ASSERT_STR_EQ(g_name, "w1");
    TT_ASSERT_STR_EQ(g_mode, "slow");
    TT_ASSERT_EQ_INT(np, 1);
    TT_ASSERT_STR_EQ(pos[0], "extra");
    char *argv2[] = {"--name=x", "--no-verbose"};
    TT_ASSERT_EQ_INT(parse(2, argv2, err, &np, pos), CM_OK);
    TT_ASSERT(!g_verbose);
    TT_ASSERT_EQ_INT(g_port, 8000); /* default again */
    TT_ASSERT_EQ_U64(g_timeout, 5000);
}

TT_TEST(flags, environment_fallback_and_precedence) {
    char err[256], *pos[1];
    int np;
    setenv("TANDEM_PORT", "7000", 1);
    setenv("TANDEM_KV_POOL_SIZE", "1M", 1);
    setenv("TANDEM_NAME", "from-env", 1);
    char *argv[] = {"--port", "7001"};
    TT_ASSERT_EQ_INT(parse(2, argv, err, &np, pos), CM_OK);
    TT_ASSERT_EQ_INT(g_port, 7001); /* command line wins */
    TT_ASSERT_EQ_U64(g_pool, 1ull << 20);
    TT_ASSERT_STR_EQ(g_name, "from-env");
    setenv("TANDEM_PORT", "70000", 1);
    TT_ASSERT_EQ_INT(parse(0, NULL, err, &np, pos), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_STR_EQ(err,
                     "tandem demo: bad value '70000' in TANDEM_PORT: must be between 1 and 65535");
    char envname[64];
    cm_flags_env_name("kv-pool-size", envname, sizeof envname);
    TT_ASSERT_STR_EQ(envname, "TANDEM_KV_POOL_SIZE");
}

TT_TEST(flags, errors_are_one_line_reasons) {
    char err[256], *pos[1];
    int np;
    unsetenv("TANDEM_NAME");
    TT_ASSERT_EQ_INT(parse(0, NULL, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT_STR_EQ(err, "tandem demo: missing required flag --name (or TANDEM_NAME)");
    char *a1[] = {"--name", "x", "--bogus"};
    TT_ASSERT_EQ_INT(parse(3, a1, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT_STR_EQ(err, "tandem demo: unknown flag '--bogus' (see tandem demo --help)");
    char *a2[] = {"--name", "x", "--port", "12ab"};
    TT_ASSERT_EQ_INT(parse(4, a2, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT_STR_EQ(err, "tandem demo: bad value '12ab' for --port: expected an integer");
    char *a3[] = {"--name", "x", "--mode", "medium"};
    TT_ASSERT_EQ_INT(parse(4, a3, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT(strstr(err, "expected one of fast|slow"));
    char *a4[] = {"--name"};
    TT_ASSERT_EQ_INT(parse(1, a4, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT_STR_EQ(err, "tandem demo: flag '--name' needs a value");
    char *a5[] = {"--name", "x", "a", "b"};
    TT_ASSERT_EQ_INT(parse(4, a5, err, &np, pos), CM_ERR_INVALID_ARG);
    TT_ASSERT(strstr(err, "unexpected argument 'b'"));
    char *a6[] = {"--name", "x", "-p"};
    TT_ASSERT_EQ_INT(parse(3, a6, err, &np, pos), CM_ERR_INVALID_ARG);
    char *a7[] = {"--name", "x", "--timeout", "5"};
    TT_ASSERT_EQ_INT(parse(4, a7, err, &np, pos), CM_ERR_INVALID_ARG); /* unit required */
    char *a8[] = {"--name", "x", "--temperature", "nan"};
    TT_ASSERT_EQ_INT(parse(4, a8, err, &np, pos), CM_ERR_INVALID_ARG);
    char *a9[] = {"--name", "x", "--no-port"};
    TT_ASSERT_EQ_INT(parse(3, a9, err, &np, pos), CM_ERR_INVALID_ARG);
}

TT_TEST(flags, value_parsers) {
    uint64_t u;
    TT_ASSERT_EQ_INT(cm_parse_size("4096", &u), CM_OK);
    TT_ASSERT_EQ_U64(u, 4096);
    TT_ASSERT_EQ_INT(cm_parse_size("1.5K", &u), CM_OK);
    TT_ASSERT_EQ_U64(u, 1536);
    TT_ASSERT_EQ_INT(cm_parse_size("3GiB", &u), CM_OK);
    TT_ASSERT_EQ_U64(u, 3ull << 30);
    TT_ASSERT_EQ_INT(cm_parse_size("-1", &u), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(cm_parse_size("1X", &u), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(cm_parse_size("99999999999T", &u), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(cm_parse_duration_ms("2m", &u), CM_OK);
    TT_ASSERT_EQ_U64(u, 120000);
    TT_ASSERT_EQ_INT(cm_parse_duration_ms("1.5s", &u), CM_OK);
    TT_ASSERT_EQ_U64(u, 1500);
    TT_ASSERT_EQ_INT(cm_parse_duration_ms("0.5ms", &u), CM_ERR_INVALID_ARG);
    bool b;
    TT_ASSERT_EQ_INT(cm_parse_bool("YES", &b), CM_OK);
    TT_ASSERT(b);
    TT_ASSERT_EQ_INT(cm_parse_bool("maybe", &b), CM_ERR_INVALID_ARG);
    int64_t i;
    TT_ASSERT_EQ_INT(cm_parse_int64("-42", &i), CM_OK);
    TT_ASSERT_EQ_INT(i, -42);
    TT_ASSERT_EQ_INT(cm_parse_int64("99999999999999999999", &i), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(cm_parse_int64(" 1", &i), CM_ERR_INVALID_ARG);
}

TT_TEST(flags, help_lists_every_flag_and_env) {
    char path[512];
    snprintf(path, sizeof path, "%s/help.txt", tt_tmpdir());
    FILE *f = fopen(path, "w+");
    TT_ASSERT(f);
    cm_flags_usage(&k_spec, f);
    rewind(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    for (const cm_flag_t *fl = k_flags; fl->name; fl++) {
        char want[128], env[64];
        snprintf(want, sizeof want, "--%s", fl->name);
        TT_ASSERT_MSG(strstr(buf, want), "help lacks %s", want);
        cm_flags_env_name(fl->name, env, sizeof env);
        TT_ASSERT_MSG(strstr(buf, env), "help lacks %s", env);
    }
    TT_ASSERT(strstr(buf, "usage: tandem demo [flags] [thing]"));
}
