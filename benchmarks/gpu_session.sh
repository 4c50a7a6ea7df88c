#!/usr/bin/env bash
# Everything a lent GPU should measure, in one call, each step under its own time limit (570 s at most, about
# 4 minutes expected on an H200). Writes OUT_DIR/summary.json (every figure beside its goal, passed or not; see
# benchmarks/gpu_summary.py) and the raw lines and logs it was made from.
#
# usage: benchmarks/gpu_session.sh speed    OUT_DIR [attrnet command]
#            issue 19's table (attrnet bench: warm eager, warm compiled, cold first epoch of 20,000 JPEGs, predict
#            from a folder), the epoch times of a fine-tuning run whose backbone is frozen for its first epoch,
#            where the decoding time goes (benchmarks/decode_rate.py), and the GPU tests
#        benchmarks/gpu_session.sh accuracy OUT_DIR CELEBA_DIR [attrnet command] [SEEDS]
#            configs/celeba-best-gpu.yaml over SEEDS (default 0,1,2), each scored on the test split
# Run from the repository root: src/ goes on PYTHONPATH, so the package need not be installed (the attrnet
# command defaults to `python3 -m attrnet`). DEVICE=cpu N=256 runs the speed part's plumbing on a CPU (a
# dry run: its figures mean nothing there, and the GPU tests skip).
set -uo pipefail
PART=${1:?speed or accuracy}; OUT=${2:?output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
WORK=${WORK:-/tmp/attrnet-gpu-session}; DEVICE=${DEVICE:-cuda}; N=${N:-20000}
case "$PART" in
speed)
  ATTRNET=${3:-python3 -m attrnet}
  : > "$OUT/bench.jsonl"
  # one process per case: a case's memory and compiled kernels do not help the next
  for c in attrnet_cold:120 attrnet_warm:60 attrnet_warm_compile:90 predict_folder:45; do
    timeout "${c#*:}" $ATTRNET bench --device "$DEVICE" --workdir "$WORK/bench" --n "$N" --cases "${c%%:*}" \
      2>>"$OUT/bench.log" | grep -v '"case": "summary"' >> "$OUT/bench.jsonl"
  done
  # a frozen first epoch, then the backbone unfrozen: the epochs' seconds (metrics.csv)
  data="$WORK/bench/celeba-${N}x40"
  timeout 60 $ATTRNET train --out "$WORK/unfreeze" --overwrite data.root="$data" data.image_size=128 \
    data.val_fraction=0.05 data.test_fraction=0.05 data.cache_dir="$WORK/cache" model.backbone=mobilenet_v2 \
    train.epochs=4 train.batch_size=$([ "$DEVICE" = cpu ] && echo 32 || echo 512) train.device="$DEVICE" \
    train.freeze_backbone_epochs=1 train.backbone_lr_scale=0.1 \
    > "$OUT/unfreeze.log" 2>&1
  cp "$WORK/unfreeze/metrics.csv" "$OUT/unfreeze_metrics.csv" 2>/dev/null
  timeout 45 python3 benchmarks/decode_rate.py --data "$data" --n 8000 --workers 16 --repeats 1 --device "$DEVICE" \
    --workdir "$WORK/decode" > "$OUT/decode.jsonl" 2>>"$OUT/decode.log"
  timeout 150 python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT/pytest_gpu.txt" 2>&1
  python3 benchmarks/gpu_summary.py "$OUT" > "$OUT/summary.json"
  cat "$OUT/summary.json"
  ;;
accuracy)
  DATA=${3:?CelebA folder}; ATTRNET=${4:-python3 -m attrnet}; SEEDS=${5:-0,1,2}
  : > "$OUT/accuracy.jsonl"
  for seed in ${SEEDS//,/ }; do
    t0=$(date +%s)
    timeout 330 $ATTRNET train --config configs/celeba-best-gpu.yaml --out "$WORK/best-gpu-$seed" --overwrite \
      data.root="$DATA" train.seed="$seed" > "$OUT/best-gpu-$seed.log" 2>&1
    python3 - "$WORK/best-gpu-$seed/metrics.json" "$seed" "$(( $(date +%s) - t0 ))" >> "$OUT/accuracy.jsonl" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"config": "celeba-best-gpu", "seed": int(sys.argv[2]), "seconds": int(sys.argv[3]),
                  **{k: round(m[k], 4) for k in ("mean_accuracy", "mean_accuracy_at_0.5", "mean_balanced_accuracy",
                                                 "mean_f1")}}))
PY
  done
  cat "$OUT/accuracy.jsonl"
  ;;
*) echo "unknown part $PART: speed or accuracy" >&2; exit 2 ;;
esac
