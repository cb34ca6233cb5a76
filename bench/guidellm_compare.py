#!/usr/bin/env python3
"""Side-by-side table of `tandem bench serve` and GuideLLM on one workload
(bench/guidellm_check.sh writes the inputs).

    python3 bench/guidellm_compare.py tandem-a.json guidellm.json [tandem-b.json]

Metric mapping (both tools, successful requests only):
  TTFT          tandem ttft_ms            guidellm time_to_first_token_ms
  TPOT / ITL    tandem tpot_ms            guidellm inter_token_latency_ms
                (both (last - first token time) / (output tokens - 1) per request)
  latency       tandem e2e_ms             guidellm request_latency (s -> ms)
  output tok/s  tandem output_tok_s       guidellm output_tokens_per_second (mean)
  requests/s    tandem req_s              guidellm requests_per_second (mean)
The difference column is GuideLLM vs the mean of the tandem runs; |diff| <=
10% is the issue's bar."""
import json
import sys


def tandem(path):
    with open(path) as f:
        p = json.load(f)["points"][0]
    out = {"requests": p["ok"], "prompt tokens/req": p["input_tokens"] / max(1, p["ok"]),
           "output tokens/req": p["output_tokens"] / max(1, p["ok"]),
           "output tok/s": p["output_tok_s"], "requests/s": p["req_s"]}
    for name, key in (("TTFT", "ttft_ms"), ("TPOT/ITL", "tpot_ms"), ("latency", "e2e_ms")):
        d = p[key]
        out[f"{name} mean (ms)"] = d["mean"]
        out[f"{name} p50 (ms)"] = d["p50"]
        out[f"{name} p90 (ms)"] = d["p90"]
        out[f"{name} p99 (ms)"] = d["p99"]
    return out


def guidellm(path):
    with open(path) as f:
        doc = json.load(f)
    b = doc["benchmarks"][0]
    m = b["metrics"]

    def dist(name, scale=1.0):
        d = m[name]["successful"]
        pc = d.get("percentiles", {})
        return {"mean": d["mean"] * scale, "p50": d["median"] * scale,
                "p90": pc.get("p90", float("nan")) * scale,
                "p99": pc.get("p99", float("nan")) * scale}

    out = {"requests": m["request_totals"]["successful"],
           "prompt tokens/req": m["prompt_token_count"]["successful"]["mean"],
           "output tokens/req": m["output_token_count"]["successful"]["mean"],
           "output tok/s": m["output_tokens_per_second"]["successful"]["mean"],
           "requests/s": m["requests_per_second"]["successful"]["mean"]}
    for name, key, scale in (("TTFT", "time_to_first_token_ms", 1.0),
                             ("TPOT/ITL", "inter_token_latency_ms", 1.0),
                             ("latency", "request_latency", 1000.0)):
        d = dist(key, scale)
        for k in ("mean", "p50", "p90", "p99"):
            out[f"{name} {k} (ms)"] = d[k]
    return out


def main():
    ta = tandem(sys.argv[1])
    g = guidellm(sys.argv[2])
    tb = tandem(sys.argv[3]) if len(sys.argv) > 3 else None
    cols = ["tandem (before)", "GuideLLM"] + (["tandem (after)"] if tb else []) + ["GuideLLM vs tandem"]
    print("| metric | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    worst = 0.0
    for k in ta:
        ref = (ta[k] + tb[k]) / 2 if tb else ta[k]
        diff = (g[k] - ref) / ref * 100 if ref else float("nan")
        if k not in ("requests",) and "p99" not in k and diff == diff:
            worst = max(worst, abs(diff))
        vals = [ta[k], g[k]] + ([tb[k]] if tb else [])
        print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {diff:+.1f}% |")
    print(f"\nLargest |difference| outside p99 rows: {worst:.1f}%")


if __name__ == "__main__":
    main()
