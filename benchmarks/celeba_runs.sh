#!/usr/bin/env bash
# Trains the CelebA recipes of docs/results.md and prints one summary line per run.
# usage: benchmarks/celeba_runs.sh DATA_ROOT RUNS_DIR [attrnet command]
set -euo pipefail
DATA=${1:?CelebA folder}; RUNS=${2:?runs folder}; ATTRNET=${3:-attrnet}
run() {  # name config overrides...
  local name=$1 config=$2; shift 2
  local t0=$(date +%s.%N)
  $ATTRNET train --config "$config" --out "$RUNS/$name" data.root="$DATA" "$@" > "$RUNS/$name.log" 2>&1
  local t1=$(date +%s.%N)
  python3 - "$RUNS/$name/metrics.json" "$name" "$(python3 -c "print($t1 - $t0)")" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], "seconds": round(float(sys.argv[3]), 1), "split": m["split"],
                  "n_test": m["n_images"], "mean_accuracy": round(m["mean_accuracy"], 4),
                  "mean_accuracy_at_0.5": round(m["mean_accuracy_at_0.5"], 4),
                  "mean_balanced_accuracy": round(m["mean_balanced_accuracy"], 4),
                  "majority": round(m["mean_majority_accuracy"], 4)}))
PY
}
mkdir -p "$RUNS"
run celeba40 configs/celeba.yaml "${@:4}"
run seed8-grey configs/celeba-seed8.yaml "${@:4}"
run seed8-rgb configs/celeba-seed8.yaml data.grayscale=false "${@:4}"
