#!/usr/bin/env bash
# The exact script session 9 ran (a record, with that machine's paths:
# /tmp/old = a worktree of d6d31ab built with make, llama-bench built from
# llama.cpp's public source outside this repository, GGUFs from its
# converter). bench/llamacpp_compare.sh is the reusable form.
# old = d6d31ab (pair-split kernel + this session's small ops), new = HEAD (panels)
set -u
LB=/tmp/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench
OUT=/work/exp/bench; mkdir -p $OUT
cd /work/main
for m in dense:build/bench-models/qwen3-0.6b:/tmp/q06.gguf moe:build/bench-models/qwen3moe-a3b-2l:/tmp/qmoe.gguf; do
  name=${m%%:*}; rest=${m#*:}; dir=${rest%%:*}; gguf=${rest#*:}
  mkdir -p $OUT/$name
  for r in 1 2 3; do
    for v in old new; do
      b=$([ $v = old ] && echo /tmp/old/build/bin/tandem || echo build/bin/tandem)
      TANDEM_THREADS=2 $b bench engine --model $dir --batches 1 --prompt-len 512 --decode-steps 1 > $OUT/$name/$v-prefill-$r.txt 2>&1
      TANDEM_THREADS=2 $b bench engine --model $dir --batches 1 --prompt-len 16 --decode-steps 32 > $OUT/$name/$v-decode-$r.txt 2>&1
    done
    $LB -m $gguf -t 2 -p 512 -n 0 -r 1 -o md > $OUT/$name/llamacpp-prefill-$r.txt 2>&1
    $LB -m $gguf -t 2 -p 0 -n 32 -d 16 -r 1 -o md > $OUT/$name/llamacpp-decode-$r.txt 2>&1
  done
done
echo done > $OUT/DONE
