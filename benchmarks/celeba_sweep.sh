#!/usr/bin/env bash
# The recipe search behind configs/celeba*.yaml (docs/results.md): each variant is trained on the same
# seeded split; variants are compared on the validation split, the test figure is reported beside it.
# usage: benchmarks/celeba_sweep.sh DATA_ROOT RUNS_DIR [attrnet command] [extra overrides...]
set -uo pipefail
DATA=${1:?CelebA folder}; RUNS=${2:?runs folder}; ATTRNET=${3:-attrnet}; shift 3 || true
mkdir -p "$RUNS"
REG="train.ema=0.999 train.scale=0.15 model.dropout=0.2 train.weight_decay=0.1 train.label_smoothing=0.05"
while read -r name config overrides; do
  [ -z "$name" ] && continue
  t0=$(date +%s)
  $ATTRNET train --config "$config" --out "$RUNS/$name" data.root="$DATA" $overrides "$@" > "$RUNS/$name.log" 2>&1
  python3 - "$RUNS/$name" "$name" "$(( $(date +%s) - t0 ))" <<'PY'
import csv, json, sys
run, name, secs = sys.argv[1:]
m = json.load(open(f"{run}/metrics.json"))
rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
best_val = max(float(r["val/mean_accuracy"]) for r in rows)
print(json.dumps({"run": name, "seconds": int(secs), "best_val_mean_accuracy": round(best_val, 4),
                  "test_mean_accuracy": round(m["mean_accuracy"], 4),
                  "test_at_0.5": round(m["mean_accuracy_at_0.5"], 4),
                  "test_balanced": round(m["mean_balanced_accuracy"], 4)}), flush=True)
PY
done <<LIST
reg40 configs/celeba.yaml $REG
reg40-e60 configs/celeba.yaml $REG train.epochs=60
reg40-val5 configs/celeba.yaml $REG data.val_fraction=0.05
reg40-wd3 configs/celeba.yaml $REG train.weight_decay=0.3 train.scale=0.25
seed8-reg-grey configs/celeba-seed8.yaml $REG
seed8-reg-rgb configs/celeba-seed8.yaml $REG data.grayscale=false
LIST
