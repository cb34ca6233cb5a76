#!/usr/bin/env python3
"""transformers on the same GPU and checkpoint as `tandem bench engine
--backend cuda`: prefill tokens/s for B prompts of P tokens and decode
tokens/s over S steps with the KV cache, bf16, same batch sizes.

  python3 bench/hf_engine_bench.py MODEL_DIR [--batches 1,8,32,64] [--prompt-len 128]
                                   [--decode-steps 16]
"""
import argparse
import time

import torch
import transformers as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=16)
    a = ap.parse_args()
    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    V = model.config.vocab_size
    print(f"transformers {tf.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}, attn {model.config._attn_implementation}")
    print(f"{'batch':>6} {'prefill tok/s':>14} {'decode tok/s':>14} {'step ms':>10}")
    for B in [int(x) for x in a.batches.split(",")]:
        P = a.prompt_len
        ids = (torch.arange(P, device="cuda") * 7919 + 13) % V
        ids = ids.repeat(B, 1)
        ids[:, 0] = torch.arange(B, device="cuda") % V
        with torch.no_grad():
            model(ids[:, :8], use_cache=True)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            torch.cuda.synchronize()
            pre = time.perf_counter() - t0
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.decode_steps):
                out = model(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            dec = time.perf_counter() - t0
        print(f"{B:6d} {B * P / pre:14.0f} {B * a.decode_steps / dec:14.1f} "
              f"{dec / a.decode_steps * 1e3:10.2f}", flush=True)
        del past, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
