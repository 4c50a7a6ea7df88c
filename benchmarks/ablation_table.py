"""The ablation table of docs/results.md from benchmarks/celeba_ablation.sh's variants.jsonl.

Two kinds of rows:
* training changes: each variant's plain score (last epoch, trained weights, no TTA, thresholds 0.5) and the
  score of its EMA weights, against `base`'s with the same seed: the paired differences, their mean and
  standard deviation over seeds;
* inference changes (flip TTA, thresholds tuned on validation, the EMA weights, the best epoch by validation
  instead of the last): scored on the same trained networks, so every run of every variant gives a pair; the
  mean and standard deviation over all those pairs.

usage: python benchmarks/ablation_table.py OUT/variants.jsonl [--plain-baseline plain.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from collections import defaultdict

PLAIN = ("last", "trained", "none")  # checkpoint, weights, tta of the plain score (threshold 0.5)
EMA = ("last", "ema", "none")        # the same network's EMA weights


def load(path: str) -> dict:
    """{(variant, seed): {(checkpoint, weights, tta): row}}"""
    runs: dict = defaultdict(dict)
    for line in open(path):
        row = json.loads(line)
        if "error" in row:
            continue
        runs[(row["variant"], row["seed"])][(row["checkpoint"], row["weights"], row["tta"])] = row
    return runs


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:  # no spread to show: one seed is not evidence of a difference this small
        return f"{values[0]:+.4f} (one seed)"
    return f"{st.mean(values):+.4f} ± {st.stdev(values):.4f}"


def _minutes(seconds: list[float]) -> str:
    """Mean minutes of the runs that were timed (0: a run scored again from its folder, not trained)."""
    timed = [x for x in seconds if x > 0]
    return f"{st.mean(timed) / 60:.0f}" if timed else "-"


def training_rows(runs: dict) -> list[str]:
    """Per variant: the plain score and the EMA weights' score (last epoch, no TTA, 0.5), each with its paired
    difference from base over the seeds both have."""
    variants = sorted({v for v, _ in runs}, key=lambda v: (v != "base", v))
    out = []
    for v in variants:
        seeds = sorted(s for vv, s in runs if vv == v and PLAIN in runs[(vv, s)])
        if not seeds:
            continue
        cells = []
        for cell in (PLAIN, EMA):
            acc = [runs[(v, s)][cell]["test_at_0.5"] for s in seeds if cell in runs[(v, s)]]
            diffs = [runs[(v, s)][cell]["test_at_0.5"] - runs[("base", s)][cell]["test_at_0.5"]
                     for s in seeds if cell in runs[(v, s)] and cell in runs.get(("base", s), {})]
            cells.append(f"{st.mean(acc):.4f} | {mean_sd(diffs) if v != 'base' else '(reference)'}" if acc else "- | -")
        ema = [runs[(v, s)][EMA] for s in seeds if EMA in runs[(v, s)]] or [runs[(v, s)][PLAIN] for s in seeds]
        out.append(f"| {v} | {len(seeds)} | {cells[0]} | {cells[1]} | "
                   f"{st.mean(p['test_balanced_at_0.5'] for p in ema):.4f} | {st.mean(p['test_f1_at_0.5'] for p in ema):.4f} | "
                   f"{_minutes([runs[(v, s)][PLAIN].get('train_seconds', 0) for s in seeds])} |")
    return out


def inference_rows(runs: dict) -> list[str]:
    pairs = {  # name: (cell, figure) against (reference cell, figure)
        "flip TTA (last, trained)": ((("last", "trained", "flip"), "test_at_0.5"), (PLAIN, "test_at_0.5")),
        "thresholds tuned on validation (last, trained)": ((PLAIN, "test_tuned"), (PLAIN, "test_at_0.5")),
        "thresholds tuned on validation (last, EMA)": ((EMA, "test_tuned"), (EMA, "test_at_0.5")),
        "EMA weights (last)": ((EMA, "test_at_0.5"), (PLAIN, "test_at_0.5")),
        "best epoch by validation instead of last (EMA)": ((("best", "ema", "none"), "test_at_0.5"),
                                                           (EMA, "test_at_0.5")),
        "EMA + flip TTA (last)": ((("last", "ema", "flip"), "test_at_0.5"), (PLAIN, "test_at_0.5")),
    }
    out = []
    for name, ((cell, fig), (ref, ref_fig)) in pairs.items():
        diffs = [r[cell][fig] - r[ref][ref_fig] for (v, _), r in runs.items()
                 if cell in r and ref in r and r[cell].get(fig) is not None and r[ref].get(ref_fig) is not None
                 and not r[cell].get("swa")]
        out.append(f"| {name} | {len(diffs)} | {mean_sd(diffs)} | {sum(d > 0 for d in diffs)} of {len(diffs)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants")
    ap.add_argument("--plain-baseline", nargs="*", default=[], help="JSON lines of benchmarks/plain_baseline.py")
    args = ap.parse_args()
    runs = load(args.variants)
    print("| training change (one at a time) | seeds | trained weights: test mean acc. | Δ vs base, paired | "
          "EMA weights: test mean acc. | Δ vs base, paired | balanced acc. (EMA) | F1 (EMA) | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    plain = [json.loads(line) for path in args.plain_baseline for line in open(path) if line.startswith("{")]
    if plain:
        acc = [p["mean_accuracy"] for p in plain]
        diffs = [p["mean_accuracy"] - runs[("base", p["seed"])][PLAIN]["test_at_0.5"] for p in plain
                 if PLAIN in runs.get(("base", p["seed"]), {})]
        print(f"| plain loop (benchmarks/plain_baseline.py) | {len(plain)} | {st.mean(acc):.4f} | {mean_sd(diffs)} | - | - | "
              f"{st.mean(p['mean_balanced_accuracy'] for p in plain):.4f} | {st.mean(p['mean_f1'] for p in plain):.4f} | "
              f"{st.mean(p['seconds_per_epoch'] * p['epochs'] for p in plain) / 60:.0f} |")
    print("\n".join(training_rows(runs)))
    print("\n| inference change (same trained networks) | pairs | Δ test mean acc. (mean ± sd) | better in |")
    print("|---|---:|---:|---:|")
    print("\n".join(inference_rows(runs)))


if __name__ == "__main__":
    main()
