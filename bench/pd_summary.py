#!/usr/bin/env python3
"""Summary table of a bench/pd_experiment.sh run (markdown on stdout).

    python3 bench/pd_summary.py OUT_DIR

Rows: colocated / disaggregated, decode stream alone and under prefill
bursts. TPOT is per request ((last - first token) / (n - 1)); ITL is every
gap between tokens, so its p99 shows the stalls a burst causes."""
import json
import os
import sys


def point(path):
    with open(path) as f:
        return json.load(f)["points"][0]


def q(p, key, pct):
    d = p.get(key) or {}
    v = d.get(pct)
    return "-" if v is None else f"{v:.1f}"


def main():
    out = sys.argv[1]
    print("| mode | decode stream | reqs ok | TPOT p50 | TPOT p90 | TPOT p99 | ITL p99 | ITL max "
          "| TTFT p50 | TTFT p99 | burst TTFT p50 | burst TTFT p99 | burst ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("colocated", "disagg"):
        for phase, label in (("baseline", "alone"), ("decode", "with bursts")):
            path = os.path.join(out, f"{mode}-{phase}.json")
            if not os.path.exists(path):
                continue
            p = point(path)
            b = {}
            if phase == "decode" and os.path.exists(os.path.join(out, f"{mode}-burst.json")):
                b = point(os.path.join(out, f"{mode}-burst.json"))
            burst = ((q(b, "ttft_ms", "p50"), q(b, "ttft_ms", "p99"), f"{b['ok']}/{b['requests']}")
                     if b else ("-", "-", "-"))
            print(f"| {mode} | {label} | {p['ok']}/{p['requests']} | {q(p, 'tpot_ms', 'p50')} | "
                  f"{q(p, 'tpot_ms', 'p90')} | {q(p, 'tpot_ms', 'p99')} | {q(p, 'itl_ms', 'p99')} | "
                  f"{q(p, 'itl_ms', 'max')} | {q(p, 'ttft_ms', 'p50')} | {q(p, 'ttft_ms', 'p99')} | "
                  f"{burst[0]} | {burst[1]} | {burst[2]} |")
    print("\nAll times in ms.")


if __name__ == "__main__":
    main()
