#!/usr/bin/env python3
"""Seeds for fuzz_tok_load: four small tokenizers made with HF `tokenizers`
(byte-level BPE with NFC, a Split regex, added tokens and TemplateProcessing,
with and without a tokenizer_config.json; SentencePiece-style BPE with
Prepend/Replace normalizers and with the Metaspace pre-tokenizer), each
written as tokenizer.json [NUL tokenizer_config.json].

    build/venv/bin/python tests/fuzz/tok_load_seeds.py DIR
"""
import json
import os
import sys

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

TEXTS = ["hello world, the quick brown fox", "def f(x): return x*2",
         "中文 テスト 😀 123 4567", "It's we're  spaces\n\nnewlines"] * 20
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def main(out):
    os.makedirs(out, exist_ok=True)
    bl = Tokenizer(models.BPE(ignore_merges=True))
    bl.normalizer = normalizers.NFC()
    bl.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bl.decoder = decoders.ByteLevel()
    bl.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bl.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "chat_template": CHATML}
    with open(os.path.join(out, "bl"), "wb") as f:
        f.write(bl.to_str().encode() + b"\0" + json.dumps(cfg).encode())
    with open(os.path.join(out, "bl_nocfg"), "wb") as f:
        f.write(bl.to_str().encode())
    sp = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    sp.train_from_iterator([t.replace(" ", "▁") for t in TEXTS], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"] +
        [f"<0x{i:02X}>" for i in range(256)], show_progress=False))
    with open(os.path.join(out, "sp"), "wb") as f:
        f.write(sp.to_str().encode() + b"\0" +
                json.dumps({"bos_token": "<s>", "eos_token": "</s>"}).encode())
    sp.normalizer = None
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    with open(os.path.join(out, "meta"), "wb") as f:
        f.write(sp.to_str().encode())


if __name__ == "__main__":
    main(sys.argv[1])
