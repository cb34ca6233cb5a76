"""Synthetic tasks with exact answers for the Tandem demo model.

The same formats are generated in C by `tandem bench accuracy`
(bench/bench_accuracy.c); keep the two in step. Every problem is a single
user turn; the answer is the exact assistant reply.

  retrieval  "Records: zob=kel fuz=tam ...\nWhat is the value of fuz?"
             -> "fuz=tam" (the reply restates the record: its first token
             copies the key from the question, and "=tam" is then the token
             that followed that key in the records -- plain induction)
  addition   "What is 4821+3755?" -> "08576" (the sum zero-padded to one
             digit more than the longer operand)
  copy       "Repeat exactly:\nw1 w2 ... wn" -> "w1 w2 ... wn"

Formats are chosen so a word is tokenized the same way wherever it appears
(always after a space in retrieval, first-in-line in copy).
"""
import random

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def word(rng: random.Random) -> str:
    """A made-up CVC word, e.g. 'zob' (980 of them; the demo tokenizer has
    each one as a single token, with and without a leading space)."""
    c, v = CONSONANTS, VOWELS
    return rng.choice(c) + rng.choice(v) + rng.choice(c)


def retrieval(rng: random.Random, npairs: int, nq: int = 1):
    """Returns (prompt, answer) for one query; with nq > 1, also the
    follow-up turns [(question, answer), ...] about the same records (a
    multi-turn chat: denser training signal, same first turn)."""
    keys = set()
    while len(keys) < npairs:
        keys.add(word(rng))
    keys = sorted(keys)
    rng.shuffle(keys)
    vals = [word(rng) for _ in keys]
    qs = [rng.randrange(npairs) for _ in range(nq)]
    recs = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
    prompt = f"Records: {recs}\nWhat is the value of {keys[qs[0]]}?"
    if nq == 1:
        return prompt, f"{keys[qs[0]]}={vals[qs[0]]}"
    more = [(f"What is the value of {keys[q]}?", f"{keys[q]}={vals[q]}") for q in qs[1:]]
    return prompt, f"{keys[qs[0]]}={vals[qs[0]]}", more


# Zero-pad a sum to one digit more than its longer operand ("4821+3755"
# -> "08576"): every answer digit then sits a fixed distance after its
# column's operand digits, which fixed-offset attention heads can fetch
# (train.py --addition-init). The shipped model's format; train.py
# --no-addition-pad gives the plain sum of earlier experiments.
ADD_PAD = True


def addition(rng: random.Random, digits_a: int, digits_b: int):
    a = rng.randint(10 ** (digits_a - 1) if digits_a > 1 else 0, 10 ** digits_a - 1)
    b = rng.randint(10 ** (digits_b - 1) if digits_b > 1 else 0, 10 ** digits_b - 1)
    if ADD_PAD:
        return f"What is {a}+{b}?", str(a + b).zfill(max(digits_a, digits_b) + 1)
    return f"What is {a}+{b}?", str(a + b)


def copy(rng: random.Random, nwords: int):
    ws = " ".join(word(rng) for _ in range(nwords))
    return f"Repeat exactly:\n{ws}", ws


def reply(task: str, answer: str) -> str:
    """The exact assistant reply the model is trained to give. Retrieval
    replies carry a leading space, so " fuz" and "=tam" are the very tokens
    of the record (copying a token is what attention does best; " fuz" and
    "fuz" are different tokens). Graders strip it."""
    return " " + answer if task == "retrieval" else answer


def chatml(prompt: str) -> str:
    """The generation prompt the shipped chat template renders."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def chatml_turn(prompt: str) -> str:
    """A follow-up user turn after an assistant reply ending in <|im_end|>."""
    return "\n" + chatml(prompt)
