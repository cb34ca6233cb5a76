#!/usr/bin/env python3
"""Train Tandem's demo model: a tiny MoE (Mixtral or Qwen3-MoE) that solves
checkable tasks.

  build/venv/bin/python scripts/demo/train.py --out DIR [flags]

The shipped model's exact command is in models/demo/README.md. Seeded and
deterministic for a given --steps and thread count (--time-limit bounds
the run by wall time instead; the card records the steps reached). Every
recipe tried and what it learned: bench/results/demo-sweep-2026-11-30.md.
Writes a Hugging Face folder (config.json, model.safetensors in bf16,
generation_config.json, tokenizer.json, tokenizer_config.json) plus
train_log.jsonl and eval.json (Pass@1 of the bf16 weights, greedy,
computed by transformers).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import transformers as tf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

# Qwen2/Qwen3's pre-tokenizer regex: digits split one by one.
QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def sample(rng, task, size):
    """One problem; size = pairs / words / digits."""
    if task == "retrieval":
        return tasks.retrieval(rng, size)
    if task == "copy":
        return tasks.copy(rng, size)
    return tasks.addition(rng, size[0], size[1])


def build_tokenizer(vocab_size, seed):
    rng = random.Random(seed)
    corpus = []
    for _ in range(300):
        corpus += [tasks.chatml(p) + a + "<|im_end|>\n"
                   for p, a in (tasks.retrieval(rng, rng.randint(2, 40)),
                                tasks.addition(rng, rng.randint(1, 4), rng.randint(1, 4)),
                                tasks.copy(rng, rng.randint(1, 40)))]
    # Every task word as one token, with and without a leading space,
    # and as "=word" (a retrieval record's value).
    words = [a + b + c for a in tasks.CONSONANTS for b in tasks.VOWELS for c in tasks.CONSONANTS]
    corpus += [" ".join(words) + "\n" + "\n".join(words) + " ".join("=" + w for w in words)] * 4
    # Some plain English so the vocabulary is not only task words.
    corpus += ["The quick brown fox jumps over the lazy dog. Hello, world! "
               "This is Tandem, a disaggregated serving cluster for language models."] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tk.train_from_iterator(corpus, tr)
    return tk


class Data:
    """Batches of one task each, right-padded; loss only on the answer."""

    def __init__(self, tk, seed, budget, max_ctx):
        self.tk, self.rng, self.budget, self.max_ctx = tk, random.Random(seed), budget, max_ctx
        # Adaptive curriculum: each task's size cap (records / words /
        # digits) grows once the model is good at the current cap.
        self.level = dict(LEVEL0)
        self.ema = {t: None for t in LEVEL0}
        self.im_end = tk.token_to_id("<|im_end|>")
        self.pad = tk.token_to_id("<|endoftext|>")

    def example(self, task, size):
        """(ids, loss mask): a chat whose assistant replies are supervised.
        Retrieval chats ask up to 8 questions about the same records."""
        if task == "induct":
            return self.induct(size)
        if task == "mqar":
            return self.mqar(size)
        if task == "retrieval":
            nq = self.rng.randint(1, 8)
            r = tasks.retrieval(self.rng, size, nq)
            p, a, more = (r[0], r[1], []) if nq == 1 else r
        elif task == "addition":
            # Several independent sums per chat: denser signal per token.
            qs = [sample(self.rng, task, size) for _ in range(self.rng.randint(1, 8))]
            (p, a), more = qs[0], qs[1:]
        else:
            (p, a), more = sample(self.rng, task, size), []
        ids, mask = [], []
        for i, (q, ans) in enumerate([(p, a)] + more):
            qi = self.tk.encode(tasks.chatml(q) if i == 0 else tasks.chatml_turn(q)).ids
            ai = self.tk.encode(tasks.reply(task, ans)).ids + [self.im_end]
            ids += qi + ai
            mask += [0] * len(qi) + [1] * len(ai)
        return ids, mask

    def induct(self, size):
        """Induction pre-training (raw text, no chat): records
        " fuz=tam ..." written twice with random records around them,
        every token of the second copy but its first supervised. Where the
        copy starts is random, so only looking up what followed the
        current token earlier predicts it -- the step a retrieval reply
        takes -- with dense supervision instead of one token per question."""
        r = self.rng

        def recs(k):
            return [" " + tasks.word(r) + "=" + tasks.word(r) for _ in range(k)]

        body = recs(size)
        parts = recs(r.randint(0, size)) + body + recs(r.randint(0, size))
        first = self.tk.encode("Records:" + "".join(parts)).ids
        again = self.tk.encode("".join(body)).ids
        return first + again, [0] * len(first) + [0] + [1] * (len(again) - 1)

    def mqar(self, size):
        """Multi-query associative recall (raw text, no chat): records
        " fuz=tam ..." then as many queries " fuz=tam" about random records
        in random order, every value supervised. Unlike a repeated
        sequence, nothing but the lookup of the key just read predicts a
        value (a contiguous copy can be continued by position)."""
        r = self.rng
        keys = set()
        while len(keys) < size:
            keys.add(tasks.word(r))
        keys = list(keys)
        r.shuffle(keys)
        vals = [tasks.word(r) for _ in keys]
        ids = self.tk.encode("Records:" + "".join(f" {k}={v}" for k, v in zip(keys, vals))).ids
        mask = [0] * len(ids)
        for _ in range(size):
            i = r.randrange(size)
            ids += self.tk.encode(f" {keys[i]}={vals[i]}").ids  # " fuz", "=tam"
            mask += [0, 1]
        return ids, mask

    def batch(self, task):
        """(ids, mask, size, at_cap): one task, sizes up to the current cap."""
        r, cap = self.rng, self.level[task]
        if task in SIZE_TOKENS:
            # Log-uniform in [1, cap], 30% at the cap itself (this draw
            # order is the shipped model's: keep it, or its run no longer
            # replays).
            size = int(round(math.exp(r.uniform(0, math.log(cap)))))
            if r.random() < 0.3:
                size = cap
            per, fixed = SIZE_TOKENS[task]
            est = size * per + fixed
            at_cap = size >= 0.7 * cap
        else:  # addition: (digits of a, digits of b)
            da = cap if r.random() < 0.6 else r.randint(1, cap)
            db = cap if r.random() < 0.6 else r.randint(1, cap)
            if ADD_FIXED:
                da = db = cap
            size = (da, db)
            est = 24 * 4.5
            at_cap = True
        n = max(1, min(256, int(self.budget // est)))
        seqs = []
        for _ in range(n):
            ids, m = self.example(task, size)
            if len(ids) > self.max_ctx:
                continue  # never cut an answer off
            seqs.append((ids, m))
        if not seqs:
            return self.batch(task)
        L = max(len(s) for s, _ in seqs)
        ids = torch.full((n, L), self.pad, dtype=torch.long)
        mask = torch.zeros((n, L), dtype=torch.bool)
        for i, (s, m) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        return ids, mask, at_cap

    def observe(self, task, ce, at_cap):
        """Raises the task's cap when the loss at the cap stays low."""
        if not at_cap or self.level[task] >= LEVELMAX[task]:
            return False
        e = self.ema[task]
        self.ema[task] = e = ce if e is None else 0.8 * e + 0.2 * ce
        if e >= LEVEL_CE[task]:
            return False
        lv = self.level[task]
        self.level[task] = min(LEVELMAX[task], lv + 1 if task == "addition" else math.ceil(lv * 1.3))
        self.ema[task] = None
        return True


# Tokens per unit of size (record / word) and fixed tokens of a problem, to
# fill a batch's token budget.
SIZE_TOKENS = {"retrieval": (2, 20 + 4.5 * 18), "mqar": (4, 4), "induct": (8, 4), "copy": (2, 16)}

# Curriculum caps: start, end, and the answer-token CE (EMA over batches at
# the cap) that moves a task to the next cap.
LEVEL0 = {"retrieval": 2, "copy": 4, "addition": 2, "induct": 4, "mqar": 4}
LEVELMAX = {"retrieval": 500, "copy": 160, "addition": 4, "induct": 128, "mqar": 256}
ADD_FIXED = False  # --addition-fixed
LEVEL_CE = {"retrieval": 0.05, "copy": 0.05, "addition": 0.1, "induct": 0.1, "mqar": 0.1}


def prev_token_head_init(model, const=0.2, amp=1.0, pairs=5):
    """Starts layer 0's query head 0 (kv head 0) as a previous-token head,
    the first half of the induction circuit that copying and retrieval
    need (without it, runs sat at chance on retrieval for thousands of
    steps: bench/results/demo-sweep-2026-11-30.md). Every token embedding
    gets a constant coordinate 0 (with tied embeddings it adds the same
    amount to every logit: no effect on the softmax); q and k read only
    that coordinate into the fastest RoPE pairs, k rotated one position
    ahead, so the score depends on the offset alone and peaks at -1
    (~96% of the attention on the previous token at initialization). All
    of it stays trainable."""
    hd = model.config.head_dim
    theta = model.config.rope_parameters["rope_theta"]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = const
        at = model.model.layers[0].self_attn
        at.q_proj.weight[:hd, :] = 0
        at.k_proj.weight[:hd, :] = 0
        for i in range(pairs):
            th = theta ** (-2 * i / hd)
            at.q_proj.weight[i, 0] = amp
            at.k_proj.weight[i, 0] = amp * math.cos(th)
            at.k_proj.weight[i + hd // 2, 0] = amp * math.sin(th)


def induction_init(model, seed, a=0.1, s=12.0, b=10.0, fn=4.0, es=5.0, slow=12):
    """Starts the whole lookup circuit retrieval needs, a two-layer
    induction head (runs without it sat at "one of the values in context"
    for thousands of steps: bench/results/demo-sweep-2026-11-30.md):
      - token embeddings live in dims 1..E-1 (E = hidden/2), scaled up
        es-fold so a token's identity dominates its residual; dim 0 is the
        constant of prev_token_head_init; dims E.. start empty;
      - layer 0, head 0: previous-token head (prev_token_head_init) whose
        value/output copy the previous token's embedding into dims E+1..;
      - layer 1, head 0: query = the current token's embedding, key = that
        copy, compared through one random orthonormal projection in the
        slowest RoPE pairs (no dependence on distance); value/output copy
        the attended token's embedding, whose tied unembedding then makes
        it the prediction (final norm scaled fn-fold for sharp logits).
    At step 0 this answers 30-60% of 4-246-record lookups; training
    does the rest. Every weight stays trainable."""
    cfg = model.config
    hd, H = cfg.head_dim, cfg.hidden_size
    half, E = hd // 2, min(H // 2, hd)
    if 2 * slow > hd:
        raise SystemExit("--induction-init: head_dim too small")
    prev_token_head_init(model, const=0.6)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, E:] = 0
        emb[:, 1:E] *= es
        at0 = model.model.layers[0].self_attn
        at0.v_proj.weight[:hd, :] = 0
        at0.o_proj.weight[:, :hd] = 0
        at1 = model.model.layers[1].self_attn
        at1.q_proj.weight[:hd, :] = 0
        at1.k_proj.weight[:hd, :] = 0
        at1.v_proj.weight[:hd, :] = 0
        at1.o_proj.weight[:, :hd] = 0
        for r in range(1, E):
            at0.v_proj.weight[r, r] = 1.0
            at0.o_proj.weight[E + r, r] = a
            at1.v_proj.weight[r, r] = 1.0
            at1.o_proj.weight[r, r] = b
        dims = list(range(half - slow, half)) + list(range(hd - slow, hd))
        proj = torch.linalg.qr(torch.randn(E - 1, len(dims), generator=g))[0].T
        for j, d in enumerate(dims):
            at1.q_proj.weight[d, 1:E] = s * proj[j]
            at1.k_proj.weight[d, E + 1:2 * E] = s * proj[j]
        model.model.norm.weight.mul_(fn)


def addition_init(model, seed, offsets, amp=4.0, pairs=6, code=8, out=1.0):
    """With --induction-init on a model with room (hidden >= 128 + 8 *
    code, 4 KV heads): the query heads of layer 0 other than the
    previous-token head, and those of layer 1 on KV heads 1.., start as
    fixed-offset heads (offsets[i]: how far back head i looks, whatever
    the tokens; the same score shape as the previous-token head). Each
    copies a @code-dim random projection of the attended token's
    embedding into its own slot of the residual (dims 128 + code * i ..).
    In the padded addition format every answer digit sits a fixed
    distance after its column's operand digits (15 / 10 tokens for 4+4
    digits, 14 / 9 for the next column, ...), so these heads bring the
    MLPs exactly the digits they need; the MLPs learn the arithmetic.
    Layer 0 reads raw embeddings; layer 1 reads them under layer 0's
    small writes (its induction output comes after). Everything trains."""
    cfg = model.config
    hd, H, nh, nkv = cfg.head_dim, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    half, E, group = hd // 2, min(H // 2, hd), nh // nkv
    theta = cfg.rope_parameters["rope_theta"]
    # (layer, head) slots: layer 0 heads 1.., then layer 1 heads of KV heads 1..
    slots = [(0, h) for h in range(1, nh)] + [(1, h) for h in range(group, nh)]
    if len(offsets) > len(slots) or 128 + code * len(offsets) > H:
        raise SystemExit("--addition-init: not enough heads or residual for the offsets")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for i, d in enumerate(offsets):
            L, h = slots[i]
            at = model.model.layers[L].self_attn
            kv = h // group
            q0, k0, v0 = h * hd, kv * hd, kv * hd
            at.q_proj.weight[q0:q0 + hd, :] = 0
            # KV head 0 of layer 0 is the previous-token head's: its key
            # is rotated one position ahead; the other KV heads get an
            # unrotated key on the constant coordinate.
            shift = 1 if (L == 0 and kv == 0) else 0
            if not shift:
                at.k_proj.weight[k0:k0 + hd, :] = 0
                for j in range(pairs):
                    at.k_proj.weight[k0 + j, 0] = amp
            for j in range(pairs):
                th = theta ** (-2 * j / hd)
                at.q_proj.weight[q0 + j, 0] = amp * math.cos((shift - d) * th)
                at.q_proj.weight[q0 + j + half, 0] = amp * math.sin((shift - d) * th)
            proj = torch.linalg.qr(torch.randn(E - 1, code, generator=g))[0].T  # [code, E-1]
            slot = 128 + code * i
            at.o_proj.weight[:, q0:q0 + hd] = 0
            if kv == 0:  # the previous-token head's value copies dims 1..E-1
                at.o_proj.weight[slot:slot + code, q0 + 1:q0 + E] = out * proj
            else:  # this KV head's value: the token's code in its first dims
                at.v_proj.weight[v0:v0 + hd, :] = 0
                at.v_proj.weight[v0:v0 + code, 1:E] = proj
                for j in range(code):
                    at.o_proj.weight[slot + j, q0 + j] = out


def save(model, tk, out):
    """A Hugging Face folder with bf16 weights, tokenizer and chat template;
    the training model itself is left as it is."""
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.bfloat16) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    c["dtype"] = "bfloat16"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    model.generation_config.save_pretrained(out)
    tk.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(dict(chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>",
                       pad_token="<|endoftext|>", bos_token=None,
                       model_max_length=2048, tokenizer_class="PreTrainedTokenizerFast",
                       added_tokens_decoder={str(tk.token_to_id(s)): dict(content=s, special=True)
                                             for s in SPECIALS}), f, indent=1)


@torch.no_grad()
def evaluate(model, tk, task, n, seed, size_of, dev=None):
    """Greedy Pass@1 over n fresh problems (transformers, f32 compute)."""
    rng = random.Random(seed)
    im_end = tk.token_to_id("<|im_end|>")
    ok = 0
    for _ in range(n):
        p, a = sample(rng, task, size_of(rng))
        ids = torch.tensor([tk.encode(tasks.chatml(p)).ids], device=dev)
        want = tk.encode(tasks.reply(task, a)).ids + [im_end]
        out = model.generate(ids, max_new_tokens=len(want) + 2, do_sample=False,
                             eos_token_id=im_end, pad_token_id=im_end)
        got = out[0, ids.shape[1]:].tolist()
        ok += int(tk.decode([t for t in got if t != im_end]).strip() == a)
    return ok / n


EVALS = {
    # name: (task, size sampler) -- the model card's table
    "retrieval@512": ("retrieval", lambda r: 246),
    "retrieval@1024": ("retrieval", lambda r: 502),
    "addition-4digit": ("addition", lambda r: (4, 4)),
    "copy@256": ("copy", lambda r: 120),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/demo")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--budget", type=int, default=4096, help="tokens per batch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rope-theta", type=float, default=1e6,
                    help="Qwen3's own; with q/k RMSNorm bounding the logits, a high base "
                         "keeps enough slow dimensions to match content 1,000 tokens apart")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--arch", default="qwen3moe", choices=["qwen3moe", "mixtral"])
    ap.add_argument("--moe-ff", type=int, default=0, help="expert intermediate size (2*hidden)")
    ap.add_argument("--qk-norm-init", type=float, default=1.0,
                    help="initial q/k RMSNorm weight (Qwen3): larger lets attention sharpen")
    ap.add_argument("--time-limit", type=float, default=0,
                    help="seconds; the schedule then runs on max(step/steps, time/limit)")
    ap.add_argument("--save-every", type=float, default=0,
                    help="seconds between bf16 snapshots in OUT/checkpoint (0: none)")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--tasks", default="retrieval,addition,copy",
                    help="round-robin schedule (retrieval, addition, copy, induct)")
    ap.add_argument("--warm-copy", type=int, default=16,
                    help="copy alone until its cap reaches this many words (the "
                         "induction circuit forms on short copies first)")
    ap.add_argument("--warm-task", default="copy", help="the task --warm-copy trains alone "
                    "(copy, or induct: the induction pre-training task)")
    ap.add_argument("--prev-head", action="store_true",
                    help="start layer 0 head 0 as a previous-token head (Mixtral)")
    ap.add_argument("--induction-init", action="store_true",
                    help="start layers 0-1 as a two-layer induction head (Mixtral, 2+ layers)")
    ap.add_argument("--init-from", default="", help="start from this snapshot (a HF folder "
                    "written by an earlier run, e.g. OUT/checkpoint) instead of random weights")
    ap.add_argument("--retrieval0", type=int, default=LEVEL0["retrieval"],
                    help="first retrieval cap (records): with few records, guessing among "
                         "the values in context is a comfortable plateau")
    ap.add_argument("--addition0", type=int, default=LEVEL0["addition"],
                    help="first addition cap (digits per operand)")
    ap.add_argument("--addition-fixed", action="store_true",
                    help="both operands always have the cap's digits")
    ap.add_argument("--addition-pad", action=argparse.BooleanOptionalAction, default=True,
                    help="zero-pad sums to one digit more than the longer operand (the "
                         "shipped format; --no-addition-pad: the plain sum)")
    ap.add_argument("--offset-amp", type=float, default=4.0,
                    help="query/key size of --addition-init's heads")
    ap.add_argument("--addition-init", default="",
                    help="with --induction-init: comma-separated offsets of fixed-offset heads")
    a = ap.parse_args()
    tasks.ADD_PAD = a.addition_pad
    global ADD_FIXED
    LEVEL0["retrieval"] = a.retrieval0
    LEVEL0["addition"] = a.addition0
    ADD_FIXED = a.addition_fixed

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    tk = build_tokenizer(4096, a.seed)
    vocab = tk.get_vocab_size()
    im_end = tk.token_to_id("<|im_end|>")
    eot = tk.token_to_id("<|endoftext|>")
    moe_ff = a.moe_ff or 2 * a.hidden
    common = dict(vocab_size=vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  head_dim=a.head_dim, num_experts_per_tok=2, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, rope_theta=a.rope_theta, tie_word_embeddings=True,
                  bos_token_id=None, eos_token_id=im_end, pad_token_id=eot,
                  router_aux_loss_coef=0.01, output_router_logits=False)
    if a.arch == "mixtral":
        cfg = tf.MixtralConfig(intermediate_size=moe_ff, num_local_experts=8,
                               sliding_window=None, **common)
        arch_cls = tf.MixtralForCausalLM
    else:
        cfg = tf.Qwen3MoeConfig(intermediate_size=4 * a.hidden, moe_intermediate_size=moe_ff,
                                num_experts=8, norm_topk_prob=True, decoder_sparse_step=1,
                                mlp_only_layers=[], **common)
        arch_cls = tf.Qwen3MoeForCausalLM
    model = arch_cls(cfg)
    if a.init_from:
        # A second stage: the weights of an earlier run's snapshot (same
        # tokenizer: build_tokenizer is deterministic for a seed).
        if tk.to_str() != Tokenizer.from_file(os.path.join(a.init_from, "tokenizer.json")).to_str():
            raise SystemExit(f"--init-from {a.init_from}: its tokenizer differs from this seed's")
        model = arch_cls.from_pretrained(a.init_from, dtype=torch.float32)
        cfg = model.config
    moe_mod = sys.modules[arch_cls.__module__]
    cfg_experts = 8
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")) and not a.init_from:
                p.fill_(a.qk_norm_init)
    if (a.prev_head or a.induction_init) and not a.init_from:
        if a.arch != "mixtral":
            raise SystemExit("--prev-head / --induction-init: Mixtral only (Qwen3's q/k "
                             "RMSNorm rescales q and k)")
        if a.induction_init:
            induction_init(model, a.seed)
            if a.addition_init:
                addition_init(model, a.seed, [int(v) for v in a.addition_init.split(",")],
                              amp=a.offset_amp)
        else:
            prev_token_head_init(model)
    dev = torch.device(a.device)
    model.to(dev)
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = eot
    nparam = sum(p.numel() for p in model.parameters())
    print(f"vocab {vocab}, params {nparam / 1e6:.2f}M", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = 100

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress(s))))

    data = Data(tk, a.seed + 1, a.budget, 1088)

    def progress(s):
        f = s / a.steps
        if a.time_limit:
            f = max(f, (time.time() - t0) / a.time_limit)
        return min(1.0, f)

    schedule = a.tasks.split(",")
    log = open(os.path.join(a.out, "train_log.jsonl"), "w")
    t0 = time.time()
    model.train()
    done = 0
    last_save = t0
    for step in range(a.steps):
        if progress(step) >= 1.0:
            break
        done = step + 1
        warm_up = a.warm_task in schedule and data.level[a.warm_task] < a.warm_copy
        task = a.warm_task if warm_up else schedule[step % len(schedule)]
        ids, mask, at_cap = data.batch(task)
        ids, mask = ids.to(dev), mask.to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # Logits only where the loss is (the answers): the vocabulary
        # projection of every prompt position would be most of the step.
        out = model.model(input_ids=ids, output_router_logits=True)
        m = mask[:, 1:]
        logits = model.lm_head(out.last_hidden_state[:, :-1][m]).float()
        ce = torch.nn.functional.cross_entropy(logits, ids[:, 1:][m])
        aux = moe_mod.load_balancing_loss_func(out.router_logits, cfg_experts, 2)
        loss = ce + cfg.router_aux_loss_coef * aux
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: loss is not finite")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if data.observe(task, ce.item(), at_cap):
            rec = dict(step=step, level=dict(data.level), elapsed_s=round(time.time() - t0, 1))
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
        if step % 20 < 3 or step == a.steps - 1:
            rec = dict(step=step, task=task, ce=round(ce.item(), 4), aux=round(aux.item(), 4),
                       lr=lr_at(step), seq=ids.shape[1], batch=ids.shape[0],
                       elapsed_s=round(time.time() - t0, 1))
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if a.save_every and time.time() - last_save >= a.save_every:
            save(model, tk, os.path.join(a.out, "checkpoint"))
            last_save = time.time()
        if a.eval_every and step and step % a.eval_every == 0:
            model.eval()
            acc = {k: evaluate(model, tk, t, 30, 99, f, dev) for k, (t, f) in EVALS.items()}
            print(json.dumps(dict(step=step, eval30=acc)), flush=True)
            log.write(json.dumps(dict(step=step, eval30=acc)) + "\n")
            model.train()

    # Ship bf16; evaluate exactly the shipped weights (upcast to f32).
    model.eval()
    save(model, tk, a.out)
    model = arch_cls.from_pretrained(a.out, dtype=torch.float32).to(dev)
    model.eval()
    acc = {k: evaluate(model, tk, t, a.eval_n, 4242, f, dev) for k, (t, f) in EVALS.items()}
    res = dict(steps=done, args=vars(a), device=str(dev), seed=a.seed, params=nparam, train_seconds=round(time.time() - t0),
               threads=a.threads, eval_n=a.eval_n, pass_at_1=acc)
    print(json.dumps(res), flush=True)
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
