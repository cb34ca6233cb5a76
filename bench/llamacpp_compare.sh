#!/usr/bin/env bash
# Tandem's cpu backend vs llama.cpp on the same checkpoint, threads and
# dtype, side by side in one run (issue 3).
#
#   bench/llamacpp_compare.sh LLAMA_BENCH MODEL_DIR MODEL_GGUF OUT_DIR [rounds]
#
# LLAMA_BENCH is a llama-bench binary you built yourself from llama.cpp's
# public source (this repository does not build or ship it), MODEL_GGUF the
# same checkpoint converted with llama.cpp's own convert_hf_to_gguf.py
# --outtype bf16 (the exact commands used are in the results' README).
# Both run on 2 threads, alternating (tandem, llama.cpp, tandem, ...):
#   prefill  a 512-token prompt            (llama-bench -p 512 -n 0)
#   decode   32 tokens after a 16-token prompt, batch 1
#                                          (llama-bench -p 0 -n 32 -d 16)
# Tandem runs once per matmul precision in PRECISIONS (env, default
# "f32 bf16": TANDEM_CPU_PRECISION; bf16 = inputs rounded to bf16 as
# llama.cpp does, on CPUs with AVX512_BF16; bf16-amx = that with
# TANDEM_CPU_AMX=1, the products on AMX tiles, on CPUs with AMX-BF16). Writes
# OUT_DIR/{tandem-PREC,llamacpp}-{prefill,decode}-N.txt and rows.tsv
# (tool, round, prefill tok/s, decode tok/s).
set -eu
llama=$1
model=$(cd "$2" && pwd)
gguf=$3
out=$4
rounds=${5:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin/tandem
mkdir -p "$out"
: > "$out/rows.tsv"
for r in $(seq "$rounds"); do
  for prec in ${PRECISIONS:-f32 bf16}; do
    amx=0
    [ "$prec" = "${prec%-amx}" ] || amx=1
    TANDEM_CPU_PRECISION=${prec%-amx} TANDEM_CPU_AMX=$amx TANDEM_THREADS=2 "$bin" bench engine \
      --model "$model" --batches 1 --prompt-len 512 --decode-steps 1 \
      > "$out/tandem-$prec-prefill-$r.txt" 2>&1
    TANDEM_CPU_PRECISION=${prec%-amx} TANDEM_CPU_AMX=$amx TANDEM_THREADS=2 "$bin" bench engine \
      --model "$model" --batches 1 --prompt-len 16 --decode-steps 32 \
      > "$out/tandem-$prec-decode-$r.txt" 2>&1
    # The first data row of the table (batch 1): prefill tok/s, decode tok/s.
    tp=$(awk '$1 == 1 && NF >= 6 { print $2; exit }' "$out/tandem-$prec-prefill-$r.txt")
    td=$(awk '$1 == 1 && NF >= 6 { print $4; exit }' "$out/tandem-$prec-decode-$r.txt")
    printf 'tandem-%s\t%s\t%s\t%s\n' "$prec" "$r" "$tp" "$td" >> "$out/rows.tsv"
  done
  "$llama" -m "$gguf" -t 2 -p 512 -n 0 -r 1 -o md > "$out/llamacpp-prefill-$r.txt" 2>&1
  "$llama" -m "$gguf" -t 2 -p 0 -n 32 -d 16 -r 1 -o md > "$out/llamacpp-decode-$r.txt" 2>&1
  # llama-bench markdown: the t/s column of the pp512 / tg32 row ("123.45 ± 0.67").
  lp=$(awk -F'|' '/pp512/ { gsub(/ /, "", $(NF-1)); split($(NF-1), a, "±"); print a[1] }' \
    "$out/llamacpp-prefill-$r.txt")
  ld=$(awk -F'|' '/tg32/ { gsub(/ /, "", $(NF-1)); split($(NF-1), a, "±"); print a[1] }' \
    "$out/llamacpp-decode-$r.txt")
  printf 'llama.cpp\t%s\t%s\t%s\n' "$r" "$lp" "$ld" >> "$out/rows.tsv"
done
cat "$out/rows.tsv"
