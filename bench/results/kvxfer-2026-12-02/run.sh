#!/bin/sh
# Session 12's kvxfer runs (from the repository root, after `make`), one
# after another on an otherwise idle machine.
set -e
D=bench/results/kvxfer-2026-12-02
B=build/bin/tandem
# Shared memory, receiver spinning like perftest's server: mapped copies (default) ...
$B bench kvxfer --tls shm,self --receiver-poll 0ms --out $D/shm-spin.jsonl > $D/shm-spin.txt 2>&1
# ... and UCX puts (the previous path), same sizes.
TANDEM_KVX_MAPPED=off $B bench kvxfer --tls shm,self --receiver-poll 0ms --out $D/shm-spin-puts.jsonl > $D/shm-spin-puts.txt 2>&1
# Receiver sleeping on the kvx fd up to 100 ms between progress calls.
$B bench kvxfer --tls shm,self --sizes 16K,64K,256K,1M,4M --counts 1,16 --out $D/shm-sleep.jsonl > $D/shm-sleep.txt 2>&1
# TCP on loopback, receiver spinning; 5 rounds (loopback TCP swings here).
$B bench kvxfer --tls tcp,self --sizes 64K,256K,1M,4M --counts 1,16,64 --rounds 5 --receiver-poll 0ms --out $D/tcp-spin.jsonl > $D/tcp-spin.txt 2>&1
