#!/usr/bin/env bash
# The ablation behind configs/celeba-best*.yaml (docs/results.md, "What mattered"): one change at a time against
# `base`, attrnet configured as benchmarks/plain_baseline.py's plain loop (MobileNetV2 ImageNet, 128 px, Adam
# at one lr 1e-3, batch 64, flips only, 10 epochs, no TTA, thresholds 0.5), plus a weight EMA that only
# watches (it never changes the training) so that EMA against the trained weights is a paired comparison.
# Every variant x seed trains on the same seeded split; each run is then scored by eval_variants.py (best and
# last checkpoint, trained and EMA weights, no TTA and flip, thresholds 0.5 and tuned) into OUT/variants.jsonl;
# benchmarks/ablation_table.py turns that into the table. Finished runs are skipped, so the script resumes.
#
# usage: benchmarks/celeba_ablation.sh DATA_ROOT OUT [SEEDS] [VARIANT ...]     (SEEDS default 0,1; all variants)
set -uo pipefail
DATA=${1:?CelebA folder}; OUT=${2:?output folder}; SEEDS=${3:-0,1}; shift 3 2>/dev/null || shift $#
HERE=$(cd "$(dirname "$0")" && pwd)
ATTRNET=${ATTRNET:-attrnet}; PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
BASE="data.root=$DATA data.image_size=128 model.backbone=mobilenet_v2 model.pretrained=true model.tta=none
      train.epochs=10 train.batch_size=64 train.lr=0.001 train.weight_decay=0 train.schedule=constant
      train.warmup_epochs=0 train.flip=true train.shift=0 train.backbone_lr_scale=1 train.freeze_backbone_epochs=0
      train.select=best train.tune_thresholds=false train.ema=0.995"
declare -A VARIANTS=(
  [base]=""
  [cosine]="train.schedule=cosine train.warmup_epochs=1"
  [wd]="train.weight_decay=0.05"
  [shift]="train.shift=0.0625"
  [batch32]="train.batch_size=32"
  [body_lr]="train.backbone_lr_scale=0.1"
  [freeze]="train.freeze_backbone_epochs=1"
  [size160]="data.image_size=[160,128]"
  [size109]="data.image_size=[109,89]"
  [crop]="train.crop_scale=0.8 train.crop_ratio=1.15"
  [jitter]="train.color_jitter=0.2"
  [trivial]="train.auto_augment=trivial"
  [smoothing]="train.label_smoothing=0.1"
  [mixup]="train.mixup=0.2"
  [cutmix]="train.cutmix=1.0"
  [dropout]="model.dropout=0.2"
  [drop_path]="model.drop_path=0.1"
  [swa]="train.swa_epochs=3 train.select=last"
  [layer_decay]="train.layer_decay=0.8"
  [train_val]="data.val_fraction=0"
)
ORDER="base size160 cosine body_lr freeze crop jitter smoothing mixup swa train_val shift wd trivial cutmix dropout drop_path layer_decay size109 batch32"
[ $# -gt 0 ] && ORDER="$*"
for name in $ORDER; do
  for seed in ${SEEDS//,/ }; do
    run="$OUT/$name/seed$seed"
    [ -f "$run/metrics.json" ] && continue
    t0=$(date +%s)
    # shellcheck disable=SC2086
    $ATTRNET train --out "$run" --overwrite $BASE ${VARIANTS[$name]} train.seed="$seed" > "$OUT/$name.seed$seed.log" 2>&1 || {
      echo "{\"variant\": \"$name\", \"seed\": $seed, \"error\": \"see $OUT/$name.seed$seed.log\"}" >> "$OUT/variants.jsonl"; continue; }
    secs=$(( $(date +%s) - t0 ))
    $PYTHON "$HERE/eval_variants.py" "$run" --device cpu --tta none,flip --weights trained,ema --checkpoints best,last \
      2>>"$OUT/eval.log" | sed "s/^{/{\"variant\": \"$name\", \"seed\": $seed, \"train_seconds\": $secs, /" >> "$OUT/variants.jsonl"
  done
done
