"""One JSON summary of a benchmarks/gpu_session.sh speed run: every figure beside its goal (issue 19).

usage: python benchmarks/gpu_summary.py OUT_DIR      (reads bench.jsonl, unfreeze_metrics.csv, decode.jsonl,
                                                      pytest_gpu.txt written there by gpu_session.sh)
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

GOALS = {  # case -> (figure, at least)
    "attrnet_warm": ("train_images_per_s", 36_000),
    "attrnet_warm_compile": ("train_images_per_s", 45_000),
    "attrnet_cold": ("train_images_per_s", 11_000),
    "predict_folder": ("predict_images_per_s", 15_000),
}
UNFROZEN_OVER_OTHERS = 1.5  # the first unfrozen epoch at most this many times the median of the later ones


def main(out: Path) -> dict:
    summary: dict = {"rows": {}, "passed": {}}
    for line in _lines(out / "bench.jsonl"):
        case = line.get("case")
        if case in GOALS:
            figure, goal = GOALS[case]
            value = line.get(figure)
            summary["rows"][case] = {figure: value, "goal": goal, **{k: line[k] for k in (
                "precision", "seconds", "first_epoch_seconds", "warmup_epoch_seconds", "gpu") if k in line}}
            summary["passed"][case] = value is not None and value >= goal
    epochs = _rows(out / "unfreeze_metrics.csv")
    if len(epochs) >= 3:
        seconds = [float(r["seconds"]) for r in epochs]
        later = sorted(seconds[2:])[len(seconds[2:]) // 2]
        summary["rows"]["unfreeze"] = {"epoch_seconds": seconds, "first_unfrozen_over_later": round(seconds[1] / later, 2),
                                       "goal": f"<= {UNFROZEN_OVER_OTHERS}"}
        summary["passed"]["unfreeze"] = seconds[1] / later <= UNFROZEN_OVER_OTHERS
    summary["decode"] = _lines(out / "decode.jsonl")
    tests = (out / "pytest_gpu.txt").read_text() if (out / "pytest_gpu.txt").is_file() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", tests)}
    summary["rows"]["gpu_tests"] = counts
    summary["passed"]["gpu_tests"] = counts.get("passed", 0) > 0 and not counts.get("failed") and not counts.get("error")
    summary["all_passed"] = bool(summary["passed"]) and all(summary["passed"].values())
    return summary


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
