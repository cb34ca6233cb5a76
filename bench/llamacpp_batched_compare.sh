#!/usr/bin/env bash
# Batched decode: tandem's cpu backend vs llama.cpp's llama-batched-bench on
# the same checkpoint and threads, alternating in one run (issue 3: decode
# tokens/s at batch 1, 8, 32 and 64 against llama.cpp).
#
#   bench/llamacpp_batched_compare.sh LLAMA_BATCHED_BENCH MODEL_DIR MODEL_GGUF OUT_DIR [rounds]
#
# LLAMA_BATCHED_BENCH is a llama-batched-bench binary you built yourself
# from llama.cpp's public source (this repository does not build or ship
# it), MODEL_GGUF the same checkpoint converted with llama.cpp's own
# convert_hf_to_gguf.py (see bench/llamacpp_compare.sh). Each round, on 2
# threads: B sequences (BATCHES, env, default "1 8 32 64") of a 128-token
# prompt each, then 32 decode steps of all B at once:
#   tandem     tandem bench engine --batches B --prompt-len 128 --decode-steps 32
#              (once per precision in PRECISIONS, env, default "f32 bf16";
#              bf16-amx = bf16 with TANDEM_CPU_AMX=1)
#   llama.cpp  llama-batched-bench -npp 128 -ntg 32 -npl B (prompts not
#              shared: each sequence prefills its own, as in tandem)
# Writes OUT_DIR/{tandem-PREC,llamacpp}-N.txt and rows.tsv (tool, round,
# batch, prefill tok/s, decode tok/s).
set -eu
llama=$1
model=$(cd "$2" && pwd)
gguf=$3
out=$4
rounds=${5:-3}
batches=${BATCHES:-1 8 32 64}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin/tandem
mkdir -p "$out"
: > "$out/rows.tsv"
max=1
for b in $batches; do [ "$b" -gt "$max" ] && max=$b; done
list=$(echo "$batches" | tr ' ' ',')
for r in $(seq "$rounds"); do
  for prec in ${PRECISIONS:-f32 bf16}; do
    amx=0
    [ "$prec" = "${prec%-amx}" ] || amx=1
    TANDEM_CPU_PRECISION=${prec%-amx} TANDEM_CPU_AMX=$amx TANDEM_THREADS=2 "$bin" bench engine \
      --model "$model" --batches "$list" --prompt-len 128 --decode-steps 32 \
      > "$out/tandem-$prec-$r.txt" 2>&1
    # Table rows: batch, prefill tok/s, of peak, decode tok/s, ...
    awk -v t="tandem-$prec" -v r="$r" '$1 ~ /^[0-9]+$/ && NF >= 6 {
      printf "%s\t%s\t%s\t%s\t%s\n", t, r, $1, $2, $4 }' \
      "$out/tandem-$prec-$r.txt" >> "$out/rows.tsv"
  done
  "$llama" -m "$gguf" -t 2 -c $((max * 160)) -b 2048 -ub 512 -npp 128 -ntg 32 -npl "$list" \
    > "$out/llamacpp-$r.txt" 2>&1
  # Markdown rows: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
  awk -F'|' -v r="$r" '$2 ~ /^ *128 *$/ && $3 ~ /^ *32 *$/ {
      gsub(/ /, "", $4); gsub(/ /, "", $7); gsub(/ /, "", $9);
      printf "llama.cpp\t%s\t%s\t%s\t%s\n", r, $4, $7, $9 }' \
    "$out/llamacpp-$r.txt" >> "$out/rows.tsv"
done
cat "$out/rows.tsv"
