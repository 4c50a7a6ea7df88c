"""The plain reference loop that attrnet's CelebA recipes are scored against (docs/results.md, issue 18).

Deliberately plain, and independent of attrnet: PIL decode, one resize, a torchvision network with a new
40-way linear layer, Adam at one learning rate for every weight, random horizontal flips, BCE, a fixed
number of epochs, the last epoch's weights, decisions at 0.5, no test-time augmentation. The only thing it
shares with attrnet is the split, which it makes with the same seeded formula (attrnet.data.formats.
assign_partition: a permutation seeded by 0, the first 20% test, the next 10% validation), so the same
1,600 test images are scored. It trains on the 70% training rows (the validation rows are not used), or with
--train-on train+val on all 80% that are not test (as configs/celeba-best.yaml does).

    python benchmarks/plain_baseline.py ../shared/data/celeba-8k --arch mobilenet_v2 \
        --weights ~/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth --size 128 128 --epochs 10 --seed 0
    python benchmarks/plain_baseline.py ../shared/data/celeba-8k --arch resnet18 --size 128 128 --epochs 30

Prints one JSON line: test mean accuracy, balanced accuracy and F1 over the 40 attributes, seconds per epoch.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, resize

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("root"); p.add_argument("--arch", default="mobilenet_v2"); p.add_argument("--weights")
p.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
p.add_argument("--epochs", type=int, default=10); p.add_argument("--batch", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--seed", type=int, default=0)
p.add_argument("--train-on", choices=["train", "train+val"], default="train")
p.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto", help="bf16 autocast (auto: where the CPU has it)")
args = p.parse_args()
torch.manual_seed(args.seed)

lines = (Path(args.root) / "list_attr_celeba.txt").read_text().splitlines()
names, rows = lines[1].split(), [line.split() for line in lines[2:]]
labels = torch.tensor([[float(v == "1") for v in r[1:]] for r in rows])
images = torch.stack([resize(pil_to_tensor(Image.open(Path(args.root) / "img_align_celeba" / r[0]).convert("RGB")),
                             args.size, antialias=True) for r in rows])            # uint8 [N, 3, H, W]
order = np.random.default_rng(0).permutation(len(rows))                           # attrnet's seeded split
test, train = order[:round(0.2 * len(rows))], order[round((0.3 if args.train_on == "train" else 0.2) * len(rows)):]

model = getattr(torchvision.models, args.arch)()
if args.weights:
    model.load_state_dict(torch.load(Path(args.weights).expanduser(), weights_only=True))
if args.arch.startswith("resnet"):
    model.fc = nn.Linear(model.fc.in_features, len(names))
else:
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, len(names))
mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255, torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and torch.cpu._is_avx512_bf16_supported())
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
seconds = []
for epoch in range(args.epochs):
    model.train(); t0 = time.perf_counter()
    perm = torch.from_numpy(train)[torch.randperm(len(train))]
    for i in range(0, len(perm) - args.batch + 1, args.batch):
        idx = perm[i:i + args.batch]
        x = images[idx]
        x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x.flip(-1), x)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.binary_cross_entropy_with_logits(model((x - mean) / std).float(), labels[idx])
        opt.zero_grad(); loss.backward(); opt.step()
    seconds.append(time.perf_counter() - t0)
    print(f"epoch {epoch + 1}: loss {loss.item():.4f}  {seconds[-1]:.0f} s", flush=True)

model.eval(); probs = []
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
    for i in range(0, len(test), 256):
        probs.append(torch.sigmoid(model((images[test[i:i + 256]] - mean) / std).float()))
pred, y = (torch.cat(probs) >= 0.5).float(), labels[test]
tp, tn = (pred * y).sum(0), ((1 - pred) * (1 - y)).sum(0)
pos, neg = y.sum(0), (1 - y).sum(0)
f1 = 2 * tp / (pred.sum(0) + pos).clamp_min(1)
print(json.dumps({"arch": args.arch, "pretrained": bool(args.weights), "size": args.size, "epochs": args.epochs,
                  "lr": args.lr, "seed": args.seed, "bf16": bf16, "train_images": len(train), "test_images": len(test),
                  "mean_accuracy": round(((tp + tn) / len(test)).mean().item(), 4),
                  "mean_balanced_accuracy": round((0.5 * (tp / pos.clamp_min(1) + tn / neg.clamp_min(1))).mean().item(), 4),
                  "mean_f1": round(f1.mean().item(), 4), "seconds_per_epoch": round(float(np.median(seconds)), 1)}))
