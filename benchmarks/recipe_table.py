"""The recipes table of docs/results.md: each recipe's test figures over its seeds' run folders (mean and
sample standard deviation), beside the plain loop's (benchmarks/plain_baseline.py's JSON lines) and, for a
distilled student, its teachers' ensemble (RUN/teachers.json).

usage: python benchmarks/recipe_table.py --plain plain.jsonl "LABEL=RUN[,RUN...]" ...
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

FIGURES = ("mean_accuracy", "mean_balanced_accuracy", "mean_f1")


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{st.mean(values):.4f} ± {st.stdev(values):.4f}"


def train_minutes(run: Path) -> float:
    """The training epochs' seconds from metrics.csv (start-up, decoding and the test evaluation excluded)."""
    rows = (run / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("seconds")
    return sum(float(r.split(",")[col]) for r in rows[1:]) / 60


def row(label: str, figures: list[dict], minutes: str) -> str:
    return (f"| {label} | {len(figures)} | " + " | ".join(cell([f[k] for f in figures]) for k in FIGURES)
            + f" | {minutes} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain", help="benchmarks/plain_baseline.py's output, one JSON line per seed")
    ap.add_argument("recipes", nargs="+", help="LABEL=RUN[,RUN...]")
    args = ap.parse_args()
    print("| recipe | seeds | test mean acc. | balanced acc. | mean F1 | training minutes per seed |")
    print("|---|---:|---:|---:|---:|---:|")
    if args.plain:
        lines = [json.loads(x) for x in open(args.plain) if x.strip()]
        print(row("plain loop (benchmarks/plain_baseline.py)", lines,
                  f"{st.mean(x['seconds_per_epoch'] * x['epochs'] for x in lines) / 60:.0f}"))
    for spec in args.recipes:
        label, runs = spec.split("=", 1)
        runs = [Path(r) for r in runs.split(",")]
        figures = [json.loads((r / "metrics.json").read_text()) for r in runs]
        print(row(label, figures, f"{st.mean(train_minutes(r) for r in runs):.0f}"))
        teachers = runs[0] / "teachers.json"
        if teachers.exists():
            print(row(f"{label}: its teachers' ensemble (mean probability)", [json.loads(teachers.read_text())["ensemble"]], "-"))


if __name__ == "__main__":
    main()
