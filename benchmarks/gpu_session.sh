#!/usr/bin/env bash
# The GPU measurements docs/results.md and docs/benchmarks.md still lack, each part sized to end well inside
# ten minutes on an H100. Writes JSON lines, logs and metrics.json files (at most 8) into OUT_DIR; the run
# folders go to $RUNS (default /tmp/attrnet-celeba-runs).
#
# usage: benchmarks/gpu_session.sh speed    OUT_DIR [attrnet command]   # bench cases, decode rate, GPU tests
#        benchmarks/gpu_session.sh accuracy OUT_DIR CELEBA_DIR [attrnet command] [key=value ...]
#                                                        # the CelebA configs, then each run's TTA variants
# The attrnet command defaults to `attrnet`; on a machine without the package installed use
# "env PYTHONPATH=$PWD/src python3 -m attrnet" (and PYTHONPATH=$PWD/src for the python scripts).
set -uo pipefail
PART=${1:?speed or accuracy}; OUT=${2:?output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
case "$PART" in
speed)
  ATTRNET=${3:-attrnet}
  for c in attrnet_warm attrnet_warm_compile attrnet_cold predict_folder attrnet_warm_ddp1 seed_loop; do
    $ATTRNET bench --device cuda --workdir /tmp/attrnet-bw --cases "$c" 2>>"$OUT/bench.log" | tee -a "$OUT/bench.jsonl"
  done
  python3 benchmarks/decode_rate.py --workers 4,8,16 --n 20000 --workdir /tmp/attrnet-bw-dec \
    2>>"$OUT/decode.log" | tee "$OUT/decode.jsonl"
  python3 -m pytest -q -m gpu tests 2>&1 | tail -5 | tee "$OUT/pytest_gpu.txt"
  ;;
accuracy)
  DATA=${3:?CelebA folder}; ATTRNET=${4:-attrnet}; RUNS=${RUNS:-/tmp/attrnet-celeba-runs}
  benchmarks/celeba_runs.sh "$DATA" "$RUNS" "$ATTRNET" "${@:5}" | tee "$OUT/celeba_runs.jsonl"
  for r in celeba40 seed8-grey seed8-rgb; do
    cp "$RUNS/$r/metrics.json" "$OUT/$r.metrics.json"
    python3 benchmarks/eval_variants.py "$RUNS/$r" --weights trained --tta none,flip,flip_shift \
      2>>"$OUT/eval_variants.log" | sed "s/^{/{\"run\": \"$r\", /" | tee -a "$OUT/eval_variants.jsonl"
  done
  ;;
*) echo "unknown part $PART: speed or accuracy" >&2; exit 2 ;;
esac
