#!/usr/bin/env python3
"""Charts of `tandem bench serve` results (the JSON files of --out PREFIX).

    python bench/plot.py --out DIR run-a.json [run-b.json ...]

Writes into DIR:
  throughput.png  output tokens/s and requests/s vs concurrency (and vs rate)
  ttft.png        TTFT p50/p90/p99 vs concurrency (and vs rate)
  latency.png     end-to-end, TTFT and TPOT percentiles (p50/p90/p95/p99) per point
  success.png     success rate per point
One line or bar group per input file, labelled with --labels or the file name.
Needs matplotlib (in the shared venv: /work/main/build/venv/bin/python).
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def num(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else float("nan")


def metric(point, path):
    v = point
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return num(v)


def load(paths, labels):
    runs = []
    for i, p in enumerate(paths):
        with open(p) as f:
            doc = json.load(f)
        if not isinstance(doc.get("points"), list):
            sys.exit("plot.py: %s is not a `tandem bench serve` result" % p)
        name = labels[i] if labels and i < len(labels) else os.path.splitext(os.path.basename(p))[0]
        runs.append((name, doc["points"]))
    return runs


def sweep(points, phase, key):
    pts = sorted((p for p in points if p.get("phase") == phase and isinstance(p.get(key), (int, float))),
                 key=lambda p: p[key])
    return [p[key] for p in pts], pts


def axes_for(runs):
    """The sweeps present: concurrency, rate or both."""
    have = []
    for phase, key, xlabel in (("concurrency", "concurrency", "concurrency (requests in flight)"),
                               ("rate", "rate", "offered rate (requests/s, Poisson)")):
        if any(sweep(pts, phase, key)[0] for _, pts in runs):
            have.append((phase, key, xlabel))
    return have


def line_chart(runs, series, ylabel, title, path):
    sweeps = axes_for(runs)
    if not sweeps:
        return False
    fig, axs = plt.subplots(1, len(sweeps), figsize=(6.5 * len(sweeps), 4.5), squeeze=False)
    for ax, (phase, key, xlabel) in zip(axs[0], sweeps):
        for ri, (name, pts) in enumerate(runs):
            xs, sel = sweep(pts, phase, key)
            if not xs:
                continue
            for mpath, mlabel, style in series:
                ax.plot(xs, [metric(p, mpath) for p in sel], style, marker="o", color="C%d" % ri,
                        label="%s %s" % (name, mlabel) if mlabel else name)
        if phase == "concurrency" and len({x for _, pts in runs for x in sweep(pts, phase, key)[0]}) > 2:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def point_labels(runs):
    labels = []
    for _, pts in runs:
        for p in pts:
            if p.get("label") not in labels:
                labels.append(p.get("label"))
    return labels


def bar_chart(runs, mpath, ylabel, title, path, ylim=None):
    labels = point_labels(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * len(runs)), 4.5))
    width = 0.8 / max(1, len(runs))
    for i, (name, pts) in enumerate(runs):
        by = {p.get("label"): p for p in pts}
        ys = [metric(by[l], mpath) if l in by else float("nan") for l in labels]
        ax.bar([j + i * width for j in range(len(labels))], ys, width, label=name)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_chart(runs, path):
    labels = point_labels(runs)
    metrics = [("e2e_ms", "end-to-end latency (ms)"), ("ttft_ms", "TTFT (ms)"),
               ("tpot_ms", "TPOT (ms/token)")]
    fig, axs = plt.subplots(1, 3, figsize=(18, 4.8))
    for ax, (m, ylabel) in zip(axs, metrics):
        for ri, (name, pts) in enumerate(runs):
            by = {p.get("label"): p for p in pts}
            for q, style in (("p50", "-"), ("p90", "--"), ("p95", "-."), ("p99", ":")):
                ys = [metric(by[l], "%s.%s" % (m, q)) if l in by else float("nan") for l in labels]
                ax.plot(range(len(labels)), ys, style, marker="o", color="C%d" % ri,
                        label="%s %s" % (name, q))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency percentiles per sweep point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="result JSON files of `tandem bench serve --out`")
    ap.add_argument("--out", required=True, help="directory for the PNG files")
    ap.add_argument("--labels", help="comma-separated names of the runs (default: file names)")
    args = ap.parse_args()
    runs = load(args.files, args.labels.split(",") if args.labels else None)
    os.makedirs(args.out, exist_ok=True)
    out = lambda n: os.path.join(args.out, n)  # noqa: E731
    wrote = []
    if line_chart(runs, [("output_tok_s", "", "-")], "output tokens/s", "Throughput", out("throughput.png")):
        wrote.append("throughput.png")
    if line_chart(runs, [("ttft_ms.p50", "p50", "-"), ("ttft_ms.p90", "p90", "--"), ("ttft_ms.p99", "p99", ":")],
                  "TTFT (ms)", "Time to first token", out("ttft.png")):
        wrote.append("ttft.png")
    latency_chart(runs, out("latency.png"))
    bar_chart(runs, "success_rate", "success rate", "Success rate per sweep point", out("success.png"),
              ylim=(0, 1.05))
    wrote += ["latency.png", "success.png"]
    print("wrote " + ", ".join(out(w) for w in wrote))


if __name__ == "__main__":
    main()
