/* bench.h - entry points of `tandem bench` and its benchmarks. */
#ifndef TANDEM_BENCH_H
#define TANDEM_BENCH_H

/* `tandem bench ...`; argv[0] is the benchmark name. Returns an exit code. */
int bench_main(int argc, char **argv);

/* Each benchmark: argv[0] is its first flag. Returns an exit code. */
int bench_hash_main(int argc, char **argv);
int bench_kvxfer_main(int argc, char **argv);
int bench_engine_main(int argc, char **argv);
/* `tandem bench serve`: load an OpenAI-compatible endpoint (bench_serve.c). */
int bench_serve_main(int argc, char **argv);
/* `tandem bench compare A.json B.json`: side-by-side report (bench_compare.c). */
int bench_compare_main(int argc, char **argv);

/* `tandem bench accuracy`: Pass@1 on the demo tasks (bench_accuracy.c). */
int bench_accuracy_main(int argc, char **argv);

#endif /* TANDEM_BENCH_H */
