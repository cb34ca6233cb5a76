#!/usr/bin/env python3
"""Random-weight checkpoints shaped like real models, for `tandem bench
engine` (written to build/bench-models/, never committed).

Run with the dev venv: build/venv/bin/python bench/make_bench_models.py [name...]
  qwen3-0.6b     Qwen3-0.6B's shape (28 layers, hidden 1024, GQA 16/8, head_dim
                 128, vocab 151936, tied embeddings), bf16, ~1.2 GB
  qwen3moe-a3b-2l  Qwen3-30B-A3B's layer shape (hidden 2048, 128 experts top-8,
                 expert size 768, GQA 32/4) with 2 layers instead of 48, bf16
  qwen3-8b-4l    Qwen3-8B's shape (hidden 4096, GQA 32/8, head_dim 128, MLP 12288,
                 vocab 151936, untied) with 4 layers instead of 36, bf16, ~4.4 GB
                 (for the cuda backend)
  qwen3moe-serve A mid-size MoE for serving experiments: 4 layers, hidden 1024,
                 32 experts top-4 (expert size 512), GQA 16/4, Qwen3's real
                 tokenizer (vocab 151936) so the router can take text, bf16, ~1 GB
A name with -f16 or -f32 appended (qwen3-0.6b-f16) writes that model in
that dtype instead of bf16 (for the f16/f32 weight paths).
"""
import shutil
import os
import sys

import torch
import transformers as tf

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "bench-models")

SPECS = {
    "qwen3-0.6b": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
        tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "qwen3moe-a3b-2l": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=4096, tie_word_embeddings=False,
        rms_norm_eps=1e-6)),
    "qwen3-8b-4l": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=4,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
        tie_word_embeddings=False, rms_norm_eps=1e-6)),
    "qwen3moe-serve": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, moe_intermediate_size=512,
        num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
        num_experts=32, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=4096, tie_word_embeddings=False,
        rms_norm_eps=1e-6, eos_token_id=151645)),
}
# Models that get a real tokenizer from ../shared/tokenizers.
TOKENIZERS = {"qwen3moe-serve": "qwen3"}


def main():
    names = sys.argv[1:] or list(SPECS)
    for name in names:
        base, dtype = name, torch.bfloat16
        for suffix, dt in (("-f16", torch.float16), ("-f32", torch.float32)):
            if name.endswith(suffix):
                base, dtype = name[: -len(suffix)], dt
        cfg_cls, model_cls, kw = SPECS[base]
        torch.manual_seed(0)
        # On a GPU machine the random init runs there (seconds, not minutes).
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = model_cls(cfg_cls(**kw)).to(dtype)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True, max_shard_size="2GB")
        if base in TOKENIZERS:
            src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                               "tokenizers", TOKENIZERS[base])
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(src, f), d)
        print(name, sum(p.numel() for p in model.parameters()) / 1e9, "B params ->", d)


if __name__ == "__main__":
    main()
