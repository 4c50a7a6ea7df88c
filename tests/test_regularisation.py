"""The small-data regularisers and their keys: each augmentation checked with numbers (the window a crop took,
the factors colour jitter applied, where CutMix pasted, per-image draws), labels kept aligned with their images,
stochastic depth, SWA and its BatchNorm statistics, layer-wise lr decay, select=last and fixed thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_csv_rows, tiny_config, write_csv_folder

from attrnet.data.augment import AUTO_AUGMENTS, auto_augment, color_jitter, cutmix, cutmix_box, random_affine
from attrnet.engine.batch import prepare_batch

NAN = float("nan")


def _ramps(b: int, h: int, w: int) -> torch.Tensor:
    """b copies of [column index, row index, 0]: resampling shows where each output pixel came from."""
    cols = torch.arange(w, dtype=torch.float64).expand(h, w)
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    return torch.stack([cols, rows, torch.zeros(h, w, dtype=torch.float64)]).expand(b, 3, h, w).contiguous()


def _fit_line(values: torch.Tensor) -> tuple[float, float]:
    """Least-squares a + b t over t = 0..n-1."""
    t = torch.arange(len(values), dtype=torch.float64)
    b = ((t - t.mean()) * (values - values.mean())).sum() / ((t - t.mean()) ** 2).sum()
    return float(values.mean() - b * t.mean()), float(b)


@pytest.mark.parametrize("crop_scale, crop_ratio", [(0.5, 1.0), (0.6, 1.5), (0.8, 1.3)])
def test_random_resized_crop_takes_windows_of_the_asked_area_and_ratio_inside_the_image(crop_scale, crop_ratio):
    """On coordinate ramps an output row is a line: with align_corners=False its slope (input pixels per output
    pixel) is the window's width over the image's, negative when flipped, and its ends say where the window
    lies; the same for the columns. The windows must have the drawn area and ratio and lie inside the image."""
    h, w, b = 40, 48, 64
    gen = torch.Generator().manual_seed(0)
    out = random_affine(_ramps(b, h, w).float(), flip=True, shift=0.0, scale=0.0, generator=gen,
                        crop_scale=crop_scale, crop_ratio=crop_ratio).double()
    areas, ratios, flips = [], [], 0
    inner_x, inner_y = slice(2, w - 2), slice(2, h - 2)  # an edge pixel may sample the repeated border
    for img in out:
        a_x, b_x = _fit_line(img[0, h // 2, inner_x])
        a_y, b_y = _fit_line(img[1, inner_y, w // 2])
        a_x, a_y = a_x - 2 * b_x, a_y - 2 * b_y  # the lines' values at output pixel 0
        t = torch.arange(w, dtype=torch.float64)
        # a linear map: the row is that line, to float32 rounding of values below 48
        assert torch.allclose(img[0, h // 2, inner_x], (a_x + b_x * t)[inner_x], atol=1e-4)
        sx, sy = abs(b_x), b_y
        areas.append(sx * sy)
        ratios.append(sx / sy)
        flips += b_x < 0
        # inside the image: the window's edges (output pixel -0.5 and side - 0.5) map into [-0.5, side - 0.5]
        for a, slope, side in ((a_x, b_x, w), (a_y, b_y, h)):
            ends = sorted((a - 0.5 * slope, a + (side - 0.5) * slope))
            assert ends[0] >= -0.5 - 1e-3 and ends[1] <= side - 0.5 + 1e-3
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= crop_scale - 1e-4 and areas.max() <= 1 + 1e-4
    assert ratios.min() >= 1 / crop_ratio - 1e-4 and ratios.max() <= crop_ratio + 1e-4
    # and the draws cover the ranges (64 uniform draws: the extreme tenths are hit with p > 0.998)
    if crop_scale < 1:
        assert areas.min() < crop_scale + 0.1 * (1 - crop_scale) and areas.max() > 1 - 0.1 * (1 - crop_scale)
    if crop_ratio > 1:
        assert ratios.min() < crop_ratio ** -0.5 and ratios.max() > crop_ratio ** 0.5
    else:
        assert np.allclose(ratios, 1, atol=1e-4)
    assert 16 <= flips <= 48  # about half of 64 (p < 1e-4 outside)


def test_colour_jitter_multiplies_brightness_by_a_per_image_factor_in_range():
    """A constant grey image has no contrast or saturation to change: the output is the value times the
    image's brightness factor, each factor in [1 - s, 1 + s], and different images get different factors."""
    s, b = 0.3, 256
    values = torch.linspace(40, 180, b)
    x = values[:, None, None, None].expand(b, 3, 8, 8).round().to(torch.uint8)
    out = color_jitter(x, s, torch.Generator().manual_seed(1))
    factor = out[:, 0, 0, 0] / x[:, 0, 0, 0].float()
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))  # still constant and grey
    assert factor.min() >= 1 - s - 1e-6 and factor.max() <= 1 + s + 1e-6
    assert factor.min() < 1 - 0.9 * s and factor.max() > 1 + 0.9 * s and len(factor.unique()) == b
    # strength 0: the same image (as floats)
    assert torch.equal(color_jitter(x, 0.0), x.float())


def test_colour_jitter_keeps_the_contrast_pivot_and_scales_saturation():
    """Brightness 1, contrast c: the mean luma stays, deviations from it scale by c; saturation s scales each
    pixel's distance from its own luma by s (torchvision's definitions)."""
    torch.manual_seed(0)
    x = torch.randint(60, 200, (4, 3, 6, 6), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    f = 1.0 + (torch.rand(4, 3, 1, 1, 1, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.2
    out = color_jitter(x, 0.2, gen).double()
    xb = x.double() * f[:, 0].double()
    luma = lambda t: 0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]
    m = luma(xb).mean(dim=(1, 2, 3), keepdim=True)
    xc = (xb - m) * f[:, 1].double() + m
    expected = ((xc - luma(xc)) * f[:, 2].double() + luma(xc)).clamp(0, 255)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)  # float32 arithmetic on values below 255


def test_cutmix_pastes_the_partners_box_and_blends_targets_by_its_area():
    b, h, w = 6, 20, 30
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, h, w).contiguous()
    y = torch.tensor([[1.0, 0.0], [0.0, NAN], [1.0, 1.0], [0.0, 0.0], [NAN, 1.0], [1.0, 0.0]])
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    box = cutmix_box(h, w, 0.7, np.random.default_rng(0))
    out, y_out = cutmix(x, y, box, perm)
    top, bottom, left, right = box
    pasted = (bottom - top) * (right - left) / (h * w)
    assert 0 < pasted <= 0.3 + 2 / min(h, w)  # about 1 - lam of the area (rounded, maybe clipped)
    for i in range(b):
        from_partner = (out[i, 0] == perm[i]).double().mean().item()
        assert math.isclose(from_partner, pasted, abs_tol=1e-12)
        assert torch.all(out[i, :, top:bottom, left:right] == perm[i]) and (out[i] == i).sum() == 3 * h * w * (1 - pasted)
    expected = (1 - pasted) * y + pasted * y[perm]
    torch.testing.assert_close(y_out, expected, equal_nan=True)
    assert torch.isnan(y_out[0, 1]) and torch.isnan(y_out[1, 1]) and torch.isnan(y_out[3, 0])  # unknown stays unknown


def test_auto_augment_draws_per_image():
    """64 copies of one image: torchvision's transform on the batch would give one draw for all; here each
    image gets its own, so many different results come out; strengths of the identity op aside, most differ."""
    assert AUTO_AUGMENTS == ("none", "trivial", "randaugment")
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    x = img.expand(64, 3, 24, 24).contiguous()
    for policy in ("trivial", "randaugment"):
        torch.manual_seed(1)
        out = auto_augment(x, policy)
        distinct = len({tuple(o.flatten().tolist()) for o in out})
        assert out.dtype == torch.uint8 and out.shape == x.shape and distinct >= 20, (policy, distinct)
    assert auto_augment(x, "none") is x


@pytest.mark.parametrize("extra", [
    {"train__crop_scale": 0.6, "train__crop_ratio": 1.3},
    {"train__color_jitter": 0.4},
    {"train__auto_augment": "trivial"},
    {"train__auto_augment": "randaugment", "train__color_jitter": 0.2, "train__crop_scale": 0.7},
    {"train__scale": 0.2},
    {},
])
def test_augmentations_keep_each_label_with_its_image(tmp_path, extra):
    """No augmentation mixes images or touches labels: the targets come back bit for bit, and output image i
    depends on input image i alone: changing input k (the random draws being the same, as they do not depend on
    pixel values) changes output k and no other."""
    cfg = tiny_config(tmp_path, train__shift=0.1, **extra)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    y = torch.rand(12, 5, generator=torch.Generator().manual_seed(0))
    y[3, 2] = NAN

    def run(images):
        torch.manual_seed(5)  # TrivialAugment / RandAugment draw from the global generator
        return prepare_batch(images, y, cfg, torch.Generator().manual_seed(0), None, False)
    out, yo = run(x)
    assert torch.equal(torch.nan_to_num(yo, 7.0), torch.nan_to_num(y, 7.0))
    for k in (0, 5, 11):
        changed = x.clone()
        changed[k] = 255 - changed[k]
        out_k, _ = run(changed)
        differs = [not torch.equal(out_k[i], out[i]) for i in range(12)]
        assert differs[k] and sum(differs) == 1, (k, differs)


def test_flips_keep_labels_and_mirror_exactly(tmp_path):
    """CelebA has no Left/Right attribute, so a flip keeps every label: the targets come back unchanged, and each
    image comes back as itself or as its exact mirror image."""
    cfg = tiny_config(tmp_path, train__shift=0.0)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    y = (torch.rand(32, 4) < 0.5).float()
    xo, yo = prepare_batch(x, y, cfg, torch.Generator().manual_seed(0), None, False)
    assert torch.equal(yo, y)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255, torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    back = (xo * std + mean).round()
    same = [torch.equal(back[i], x[i].float()) for i in range(32)]
    mirrored = [torch.equal(back[i], x[i].flip(-1).float()) for i in range(32)]
    assert all(s or m for s, m in zip(same, mirrored)) and 6 <= sum(mirrored) <= 26


def test_drop_path_on_mobilenet_v2_residual_branches():
    """torchvision's MobileNetV2 has 10 inverted residuals that keep their size: each gets stochastic depth,
    p rising linearly to the rate at the deepest; in eval mode the network is exactly the one without it."""
    from attrnet.models.backbones import create_backbone
    from attrnet.models.drop_path import residual_branches

    torch.manual_seed(0)
    plain = create_backbone("mobilenet_v2", False)
    torch.manual_seed(0)
    dropped = create_backbone("mobilenet_v2", False, drop_path=0.3)
    branches = residual_branches(dropped)
    assert len(branches) == 10
    rates = [h.__defaults__[0] for b in branches for h in b._forward_hooks.values()]
    assert np.allclose(rates, [0.3 * (i + 1) / 10 for i in range(10)])
    x = torch.randn(8, 3, 64, 64)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))
    dropped.train()
    torch.manual_seed(1)
    a = dropped(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, dropped(x))


def test_drop_path_branch_drops_whole_images_at_its_rate():
    """One branch at p = 0.3 on 4,000 images: about 30% come out zero, the others scaled by 1 / 0.7."""
    from torchvision.models import resnet

    from attrnet.models.drop_path import add_drop_path

    block = resnet.BasicBlock(4, 4)
    assert add_drop_path(block, 0.3) == 1
    branch = block.bn2.train()
    torch.manual_seed(0)
    x = torch.randn(4000, 4, 3, 3)
    out = branch(x)
    dropped = (out.flatten(1).abs().sum(1) == 0).double().mean().item()
    assert abs(dropped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)  # 4 standard deviations of the binomial share
    kept = out.flatten(1).abs().sum(1) > 0
    reference = torch.nn.functional.batch_norm(x, None, None, branch.weight, branch.bias, True)
    torch.testing.assert_close(out[kept], reference[kept] / 0.7)


def test_weight_average_is_the_mean_of_the_snapshots_and_batchnorm_is_recomputed():
    from attrnet.engine.averaging import WeightAverage, recompute_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    swa = WeightAverage(model)
    snapshots = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        swa.add()
        snapshots.append({k: v.clone().double() for k, v in model.state_dict().items()})
    for k, v in swa.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), sum(s[k] for s in snapshots) / 3, rtol=0, atol=1e-6)
    batches = [torch.randn(16, 3) for _ in range(5)]
    assert recompute_batchnorm(swa.module, iter(batches)) == 5
    features = torch.cat([swa.module[0](b) for b in batches]).detach()
    bn = swa.module[1]
    # a cumulative average of the 5 batch means (equal sizes: the overall mean) and of the unbiased variances
    torch.testing.assert_close(bn.running_mean, features.mean(0), rtol=0, atol=1e-5)
    per_batch_var = torch.stack([swa.module[0](b).detach().var(0) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var, rtol=0, atol=1e-5)
    assert bn.momentum == 0.1 and not swa.module.training


def test_layer_decay_gives_each_backbone_block_its_own_lr(tmp_path):
    """mobilenet_v2's 19 feature blocks, from the input up: block i learns at lr x scale x decay^(18 - i); the
    heads at lr (group 0); every trainable tensor is in exactly one group."""
    from attrnet.engine.optim import backbone_blocks, build_optimizer
    from attrnet.models.build import build_model

    cfg = tiny_config(tmp_path, model__backbone="mobilenet_v2", train__lr=0.01, train__backbone_lr_scale=0.5,
                      train__layer_decay=0.8)
    model = build_model(cfg.model, 3, 3)
    blocks = backbone_blocks(model.backbone)
    assert len(blocks) == 19
    assert blocks[0][0] is model.backbone.features[0][0].weight and blocks[18][0] is model.backbone.features[18][0].weight
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(lr_of) == len(list(model.parameters()))
    for i, block in enumerate(blocks):
        for p in block:
            assert math.isclose(lr_of[id(p)], 0.01 * 0.5 * 0.8 ** (18 - i))
    assert all(math.isclose(lr_of[id(p)], 0.01) for p in model.heads.parameters())
    assert opt.param_groups[0]["lr"] == 0.01


def test_select_last_and_fixed_thresholds(tmp_path):
    """train.select=last: the model file is the last epoch's weights, whatever validation said; with
    train.tune_thresholds=false every threshold is 0.5."""
    import csv as csvlib

    from attrnet.engine.train import fit
    from attrnet.inference.checkpoint import load_checkpoint

    data = write_csv_folder(tmp_path / "d", ["image", "A", "B"], random_csv_rows(24, ["A", "B"], seed=3))
    cfg = tiny_config(tmp_path / "c", data__root=data, data__format="csv", train__epochs=3, train__select="last",
                      train__tune_thresholds="false", data__val_fraction=0.25, data__test_fraction=0.25)
    fit(cfg, tmp_path / "run", progress=False)
    best, last = (load_checkpoint(tmp_path / "run" / "checkpoints" / f) for f in ("best.pt", "last.pt"))
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert best["thresholds"] == [0.5, 0.5]
    rows = list(csvlib.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 3


def test_prior_thresholds_are_the_training_positive_rates(tmp_path):
    """train.tune_thresholds=prior: each attribute's threshold is the share of positives among its known training
    labels, exactly (no validation split needed)."""
    from attrnet.engine.setup import prepare_data
    from attrnet.engine.train import fit
    from attrnet.inference.checkpoint import load_checkpoint

    rows = random_csv_rows(24, ["A", "B"], seed=5)
    rows[3][2] = ""  # an unknown label: left out of the rate
    data = write_csv_folder(tmp_path / "d", ["image", "A", "B"], rows)
    cfg = tiny_config(tmp_path / "c", data__root=data, data__format="csv", train__epochs=1, train__select="last",
                      train__tune_thresholds="prior", data__val_fraction=0.0, data__test_fraction=0.25)
    fit(cfg, tmp_path / "run", progress=False)
    prepared = prepare_data(cfg, progress=False)
    train = prepared.table.labels[prepared.indices("train")].astype(np.float64)
    expected = [float(np.nanmean(train[:, j])) for j in range(2)]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["thresholds"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and expected[0] != 0.5


def test_swa_run_saves_the_average_of_the_last_epochs(tmp_path, monkeypatch):
    """train.swa_epochs=2 of 3: the model file holds the mean of the weights after epochs 2 and 3 (BatchNorm
    statistics recomputed, so only the learnt tensors are compared), and says so."""
    from attrnet.engine.averaging import WeightAverage
    from attrnet.engine.train import fit
    from attrnet.inference.checkpoint import load_checkpoint

    snapshots = []
    real = WeightAverage.add

    def spy(self):
        snapshots.append({k: v.clone().double() for k, v in self._source.state_dict().items()})
        real(self)
    monkeypatch.setattr(WeightAverage, "add", spy)
    data = write_csv_folder(tmp_path / "d", ["image", "A", "B"], random_csv_rows(24, ["A", "B"], seed=4))
    cfg = tiny_config(tmp_path / "c", data__root=data, data__format="csv", train__epochs=3, train__swa_epochs=2,
                      train__select="last", data__val_fraction=0.25, data__test_fraction=0.25)
    fit(cfg, tmp_path / "run", progress=False)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert len(snapshots) == 2 and best["swa"]["epochs"] == 2 and best["ema"] is None
    for name, p in best["model"].items():
        if name.endswith(("weight", "bias")) and "bn" not in name and p.is_floating_point():
            torch.testing.assert_close(p.double(), (snapshots[0][name] + snapshots[1][name]) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("train.crop_scale=0", "train.crop_scale must be > 0"),
    ("train.crop_ratio=0.5", "train.crop_ratio must be >= 1"),
    ("train.color_jitter=1.5", "train.color_jitter must be < 1"),
    ("train.auto_augment=autoaugment", "train.auto_augment must be one of none, trivial, randaugment"),
    ("train.cutmix=-1", "train.cutmix must be >= 0"),
    ("train.select=first", "train.select must be one of best, last"),
    ("train.tune_thresholds=maybe", "train.tune_thresholds must be true (tuned on validation), false (0.5) or prior"),
    ("train.layer_decay=0", "train.layer_decay must be > 0"),
    ("train.layer_decay=1.5", "train.layer_decay must be <= 1"),
    ("model.drop_path=1", "model.drop_path must be < 1"),
    ("train.teachers=runs/a", "train.teachers must be a list of paths"),
    ("train.distill_weight=2", "train.distill_weight must be <= 1"),
    ("train.swa_epochs=20", "train.swa_epochs (20) must be at most train.epochs"),
    ("train.swa_epochs=1", "set train.select=last with it"),
])
def test_new_keys_are_checked_when_the_config_is_read(override, message):
    from attrnet.config import load_config
    from attrnet.errors import AttrnetError

    with pytest.raises(AttrnetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


@pytest.mark.parametrize("name", ["celeba-best.yaml", "celeba-best-gpu.yaml"])
def test_the_best_recipes_are_what_the_ablation_measured(name):
    """The shipped recipes keep the ablation's winning choices (docs/results.md) and score on the very test
    images every other celeba-8k config and the ablation scored on: the same test fraction and split seed."""
    from pathlib import Path

    from attrnet.config import load_config
    from attrnet.data.formats import assign_partition
    from attrnet.data.table import SPLIT_IDS

    configs = Path(__file__).resolve().parent.parent / "configs"
    best, old = load_config(configs / name), load_config(configs / "celeba-pretrained.yaml")
    t = best.train
    assert (t.backbone_lr_scale, t.freeze_backbone_epochs, t.schedule, t.weight_decay) == (1.0, 0, "constant", 0.0)
    assert t.ema > 0 and t.select == "last" and not t.tune_thresholds and best.model.tta == "flip"
    assert best.data.val_fraction == 0 and best.data.root == old.data.root

    class Table:  # assign_partition needs only the length and an absent official partition
        partition, source = None, "celeba-8k"

        def __len__(self):
            return 8000

    test_id = SPLIT_IDS["test"]
    split = lambda c: assign_partition(Table(), c.data.val_fraction, c.data.test_fraction, c.data.split_seed)
    new_part, old_part = split(best), split(old)
    assert np.array_equal(new_part == test_id, old_part == test_id) and (new_part == test_id).sum() == 1600
