"""The paper's pipeline end to end (attrnet.paper.features, attrnet.paper.pipeline, `attrnet train` with mtl.enabled).

Everything runs on the CPU on tiny data: a synthetic CelebA-layout folder, and tiny Clothing Attributes and
AwA2 folders written here in their exact on-disk layouts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attrnet.bench.vmap import measure_batched_speedup
from attrnet.config import config_from_dict
from attrnet.data.synthetic import SYNTHETIC_ATTRIBUTES, write_synthetic_celeba
from attrnet.engine.setup import prepare_data
from attrnet.errors import AttrnetError
from attrnet.paper.cnns import BatchedCNNs, LoopCNNs, SequentialCNNs, make_attribute_models
from attrnet.paper.features import train_attribute_cnns
from attrnet.paper.pipeline import balance_weights, run_mtl, standardize

REPO = Path(__file__).resolve().parents[1]
GROUPS = {"face": ["Male", "Smiling", "Wearing_Lipstick"],
          "accessories": ["Eyeglasses", "Wearing_Hat", "Wearing_Earrings"],
          "neck": ["Wearing_Necklace", "Wearing_Necktie"]}
# Small and quick: 32 px, one epoch of two steps, a few outer iterations of the solver.
# fp32: these tests compare training modes number for number; bf16 autocast (auto on a CPU with native bf16)
# rounds each differently, and its own agreement is test_precision's.
FAST = {"train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "device": "cpu", "precision": "fp32"},
        "mtl": {"enabled": True, "feature_epochs": 1, "max_outer": 3, "inner_max_iter": 30}}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_celeba(root, n=80, size=(32, 32))
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def synth_config(root: Path, cache: Path, **mtl):
    raw = copy.deepcopy(FAST)
    raw["data"] = {"root": str(root), "image_size": 32, "groups": GROUPS, "cache_dir": str(cache)}
    raw["mtl"].update(mtl)
    return config_from_dict(raw)


def check_run_folder(run: Path, groups: list[str], baselines: set[str]) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= m["mean_accuracy"] <= 1.0
    assert set(m["groups"]) == set(groups)
    for g in m["groups"].values():
        assert {"mean_accuracy", "mean_balanced_accuracy", "attributes"} <= set(g)
    assert set(m["baselines"]) == baselines
    for b in m["baselines"].values():
        assert 0.0 <= b["mean_accuracy"] <= 1.0 and set(b["groups"]) == set(groups)
    assert {"features", "solver", "evaluation"} <= set(m["timings"])
    for name in ("config.yaml", "mtl_model.pt", "objective_history.csv", "features.pt",
                 "plots/latent_S.png", "plots/attribute_sharing.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "plots" / "latent_S.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = (run / "objective_history.csv").read_text().splitlines()
    assert history[0] == "outer_iteration,objective" and len(history) >= 2
    values = [float(line.split(",")[1]) for line in history[1:]]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(values, values[1:]))  # the solver never goes up
    assert not list(run.rglob(".*.tmp"))  # atomic writes leave no temporary files
    return m


def test_run_mtl_shared_features(synth_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = synth_config(synth_root, cache_dir, features="shared")
    result = run_mtl(cfg, tmp_path / "run", progress=False)
    m = check_run_folder(tmp_path / "run", list(GROUPS), {"independent", "shared_heads"})
    assert m["mean_accuracy"] == pytest.approx(result["mean_accuracy"])
    assert m["features"]["mode"] == "shared" and m["features"]["dim"] == 512 and not m["features"]["cached"]
    model = torch.load(tmp_path / "run" / "mtl_model.pt", weights_only=True)
    M, K = len(SYNTHETIC_ATTRIBUTES), 8
    assert model["L"].shape == (512, K) and model["S"].shape == (K, M) and model["b"].shape == (M,)
    assert model["attributes"] == SYNTHETIC_ATTRIBUTES and set(model["groups"]) == set(GROUPS)
    assert model["feature_mean"].shape == (512,) and model["feature_std"].shape == (512,)
    assert Path(model["backbone_checkpoint"]).is_file()

    # The solver stage reruns on the cached features, with other settings, without retraining the CNN; an
    # existing run is only replaced when asked to.
    cfg2 = synth_config(synth_root, cache_dir, features="shared", mu=0.5, thresholds="tuned", balance=True)
    with pytest.raises(AttrnetError, match="already holds an attrnet run"):
        run_mtl(cfg2, tmp_path / "run", progress=False)
    run_mtl(cfg2, tmp_path / "run", progress=False, overwrite=True)
    m2 = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m2["features"]["cached"] and m2["solver"]["mu"] == 0.5 and m2["timings"]["features"] < 1.0


@pytest.mark.slow
def test_run_mtl_per_attribute_features(synth_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = synth_config(synth_root, cache_dir, features="per_attribute", models_per_pass=5,
                       per_attribute_training="vmap")
    run_mtl(cfg, tmp_path / "run", progress=False)
    m = check_run_folder(tmp_path / "run", list(GROUPS), {"independent"})
    assert m["features"]["mode"] == "per_attribute" and m["features"]["models"] == 8
    saved = torch.load(tmp_path / "run" / "features.pt", weights_only=True)
    assert saved["features"].shape == (8, 80, 512)
    cnns = torch.load(tmp_path / "run" / "feature_cnns.pt", weights_only=True)
    assert cnns["num_models"] == 8 and cnns["stacked_state"]["heads.linear.weight"].shape == (8, 1, 512)
    # Slot m holds CNN m's own features, row i those of image i, in both passes (models_per_pass=5: CNNs 1-5
    # vmapped together, then 6-8): each recomputed here from the saved weights, one plain CNN at a time.
    own = _features_of_each_cnn(cfg, cnns["stacked_state"], prepare_data(cfg, progress=False).table.paths)
    feats = saved["features"]
    # Tolerance: float32 (u = 2^-24), the same eval-mode forward in another order (a grouped convolution over
    # batches of 32 against one convolution over all 80). Per layer a reordered sum of n terms is off by at
    # most n * u of the sum of its |terms| (n <= 3 * 3 * 512 = 4608 < 2^13); over resnet18's 18 layers
    # (< 2^5) that is 2^18 * 2^-24 = 2^-6 of the features' scale, a worst case (measured: 6e-7 of it).
    tol = 2.0 ** -6 * float(own.abs().max())
    dist = torch.stack([torch.stack([(feats[m] - own[k]).abs().max() for k in range(8)]) for m in range(8)])
    assert (dist.diagonal() <= tol).all(), dist.diagonal()
    # and no other CNN's features would pass for them: different CNNs give different features (measured:
    # at least half the scale apart, 34 * tol).
    assert dist[~torch.eye(8, dtype=torch.bool)].min() > 4 * tol, dist


def _features_of_each_cnn(cfg, stacked: dict, paths) -> torch.Tensor:
    """[M, N, D] eval-mode features of the images at `paths`, CNN by CNN (plain modules, no vmap)."""
    from attrnet.data.augment import normalize
    from attrnet.data.images import load_image
    from attrnet.models.build import build_model

    x = normalize(torch.stack([load_image(p, (32, 32)) for p in paths]))
    out = []
    for m in range(len(stacked["heads.linear.weight"])):
        model = build_model(cfg.model, 1, 3)
        model.load_state_dict({k: v[m] for k, v in stacked.items()})
        with torch.no_grad():
            out.append(model.eval().features(x))
    return torch.stack(out)


# ---------------------------------------------------------------- vmap'd training = the sequential loop

# The comparison runs in float64 (models, images and labels cast to double), with a tolerance derived from
# the arithmetic rather than tuned on one CPU.
#
# The two trainers do the same arithmetic in a different order (one grouped convolution over the stacked
# weights and a vmapped backward, against M plain convolutions), so they may differ by rounding only. To
# first order every such difference is linear in the unit roundoff u: D = G * u, where the growth factor G
# is a property of the computation (this network, batch and two AdamW steps), not of the precision. The very
# same case run in float32 (u = 2^-24) differs by up to 4e-4 (features; weights 3e-4), so G <= 6.6e3 < 2^13,
# and that already includes AdamW's worst case: its step lr * g / (|g| + eps) moves a weight by up to
# lr * d / eps = 1e5 * d for a gradient error d where |g| ~ eps, saturating at a whole step. In float64
# (u = 2^-53 ~= 1.1e-16) the tolerance is 2^13 * u times 2^7 = 128 for other CPUs' summation orders (SIMD
# width, BLAS blocking): TOL64 = 2^20 * 2^-53 = 2^-33 ~= 1.2e-10, on each quantity relative to its scale.
# Measured (AVX-512, AVX2 and no-SIMD kernels, via ATEN_CPU_CAPABILITY): features <= 3e-14, weights <= 2e-13,
# gradients <= 2.2e-15 relative, losses equal: at most 2e-3 * TOL64. A real divergence does not shrink with u:
# a label column swapped between two models moves their weights by 2e-4 (1.7e6 * TOL64) after one step and
# their features by ~0.2 (1.6e9 * TOL64) after two (test_batched_vs_sequential_catches_a_swapped_label_column).
#
# One float32 step is left inside the float64 run: the loss (attrnet.losses.masked_bce for the loop,
# cnns._per_model_bce for vmap) casts the logits to float32, so the BCE gradient sigmoid(logit) - y is
# evaluated in float32. Both trainers do it on bitwise the same float32 logits, but PyTorch's CPU kernels
# run SIMD code on blocks of 16 (AVX2) or 32 (AVX-512) floats and scalar code on the rest, and the two may
# differ in the last bit. With M * B = 15 < 16 logits per call both trainers take the scalar code on every
# x86 CPU, so the loss gradients are bitwise equal (with B = 8 on AVX2 they were not, and the features differed
# by 1.5e-8 = 130 * TOL64 with neither trainer wrong). A GPU runs every element through the same code; there
# the same comparison runs as the cuda case (marked gpu), in place of the old GPU test of the first losses.
U64 = 2.0 ** -53
TOL64 = 2.0 ** 20 * U64
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


def _two_steps(step, grads, states, features, x) -> dict:
    """Losses of two steps, the gradients of the first, the weights after each, eval-mode features after both."""
    out = {"loss1": step().cpu(), "grad": grads(), "state1": states()}
    out["loss2"] = step().cpu()
    out["state2"], out["features"] = states(), features(x).cpu()
    return out


@pytest.fixture(scope="module", params=DEVICES)
def float64_case(request) -> dict:
    """M = 3 models, a batch of B = 5 images, in float64; the sequential loop's two steps as the reference."""
    dev = torch.device(request.param)
    cfg = config_from_dict({"train": {"device": request.param, "lr": 1e-3}})
    M = 3
    models = [m.to(torch.float64) for m in make_attribute_models(cfg.model, M, 3, seed=0)]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 32, 32, generator=gen).double().to(dev)
    y = (torch.rand(5, M, generator=gen) < 0.5).double()
    y[0, 1] = y[3, 2] = float("nan")  # unknown labels are left out of each model's own loss
    y = y.to(dev)
    seq = SequentialCNNs([copy.deepcopy(m) for m in models], dev)
    seq.setup_optimizer(cfg, 1, 10)
    ref = _two_steps(lambda: torch.stack([seq.step(m, x, y) for m in range(M)]),
                     lambda: [{n: p.grad.cpu().clone() for n, p in mm.named_parameters()} for mm in seq.models],
                     seq.state_dicts, seq.features, x)
    return {"cfg": cfg, "device": dev, "M": M, "models": models, "x": x, "y": y, "ref": ref,
            "init": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]}


def _train_batched(case: dict, y: torch.Tensor) -> dict:
    M = case["M"]
    batched = BatchedCNNs([copy.deepcopy(m) for m in case["models"]], case["device"])
    batched.setup_optimizer(case["cfg"], 1, 10)
    return _two_steps(lambda: batched.step(case["x"], y),
                      lambda: [{n: p.grad[m].cpu().clone() for n, p in batched.params.items()} for m in range(M)],
                      batched.state_dicts, batched.features, case["x"])


def _divergence(got: dict, ref: dict, M: int) -> dict[str, list[float]]:
    """Per quantity, per model: the largest difference relative to the quantity's scale (max(1, |reference|)
    for losses, weights, running statistics and features; the reference's norm for a gradient tensor)."""
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        if not b.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")  # num_batches_tracked
        return float((a - b).abs().max() / b.abs().max().clamp_min(1))
    out: dict[str, list[float]] = {}
    for q in ("loss1", "loss2"):
        out[q] = [rel(got[q][m], ref[q][m]) for m in range(M)]
    out["grad"] = [max(float((got["grad"][m][n] - g).norm() / g.norm()) for n, g in ref["grad"][m].items())
                   for m in range(M)]
    for q in ("state1", "state2"):
        out[q] = [max(rel(got[q][m][k], v) for k, v in ref[q][m].items()) for m in range(M)]
    out["features"] = [rel(got["features"][m], ref["features"][m]) for m in range(M)]
    return out


def test_batched_training_equals_sequential_loop(float64_case: dict) -> None:
    """Two steps of the vmap'd models = two steps of each model alone, from the same weights on the same batch:
    losses, gradients, weights, BatchNorm running statistics (so the optimiser states too) and eval-mode
    features agree to float64 rounding."""
    case = float64_case
    got, ref = _train_batched(case, case["y"]), case["ref"]
    assert got["features"].shape == (case["M"], 5, 512) and got["features"].dtype == torch.float64
    div = _divergence(got, ref, case["M"])
    for q, per_model in div.items():
        assert max(per_model) <= TOL64, (q, per_model)
    # Not vacuous: the two steps moved every model's weights by far more than TOL64 (lr 1e-3 in its warm-up:
    # 1e-4, then 2e-4).
    for m in range(case["M"]):
        moved = max(float((ref["state2"][m][k] - case["init"][m][k]).abs().max()) for k in ref["grad"][m])
        assert moved > 1e5 * TOL64


def test_batched_vs_sequential_catches_a_swapped_label_column(float64_case: dict) -> None:
    """The tolerance above catches a real divergence by orders of magnitude: the vmap'd models 1 and 2 trained
    on each other's label column, against the reference trained on their own."""
    case = float64_case
    y = case["y"]
    div = _divergence(_train_batched(case, y[:, [0, 2, 1]]), case["ref"], case["M"])
    for q, per_model in div.items():
        assert per_model[0] <= TOL64, q          # model 0 kept its column: untouched by the others' labels
        assert min(per_model[1:]) > 1e5 * TOL64, (q, per_model)  # measured: 1.7e6 (weights) to 1e10 x TOL64


def test_loop_fallback_equals_sequential_loop() -> None:
    cfg = config_from_dict({"train": {"device": "cpu", "lr": 1e-3}})
    M, dev = 2, torch.device("cpu")
    models = make_attribute_models(cfg.model, M, 3, seed=2)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 32, 32, generator=gen), (torch.rand(6, M, generator=gen) < 0.5).float()
    loop, seq = LoopCNNs([copy.deepcopy(m) for m in models], dev), SequentialCNNs(models, dev)
    loop.setup_optimizer(cfg, 1, 10)
    seq.setup_optimizer(cfg, 1, 10)
    for _ in range(2):
        torch.testing.assert_close(loop.step(x, y), torch.stack([seq.step(m, x, y) for m in range(M)]))
    for a, b in zip(loop.state_dicts(), seq.state_dicts()):
        for name in a:
            torch.testing.assert_close(a[name], b[name])


def test_train_attribute_cnns_modes_agree(synth_root: Path, cache_dir: Path) -> None:
    """The whole (tiny) training, vmap vs loop vs sequential: same losses, same weights up to rounding."""
    cfg = synth_config(synth_root, cache_dir)
    cfg.data.attributes, cfg.data.groups = ["Male", "Smiling"], None
    cfg.train.batch_size, cfg.train.max_steps_per_epoch = 8, 2
    data = prepare_data(cfg, progress=False)
    runs = {mode: train_attribute_cnns(cfg, data, torch.device("cpu"), mode, progress=False)
            for mode in ("vmap", "loop", "sequential")}
    losses = {mode: np.array(info["history"][0]["loss"]) for mode, (_, info) in runs.items()}
    assert losses["vmap"].shape == (2,) and (losses["vmap"] > 0).all()
    # float32: two AdamW steps of this network grow rounding by G < 2^13 (see TOL64 above), so the losses may
    # differ by 2^13 * 2^-24 = 2^-11 relative (measured: 1.9e-5 on AVX-512 and AVX2; the two attributes'
    # losses, 1.10 and 0.60, are 80% apart). The loop does the sequential arithmetic op for op (measured: equal).
    np.testing.assert_allclose(losses["vmap"], losses["sequential"], rtol=2.0 ** -11)
    np.testing.assert_allclose(losses["loop"], losses["sequential"], rtol=1e-5)
    head = "heads.linear.weight"
    for mode in ("vmap", "loop"):
        for a, b in zip(runs[mode][0], runs["sequential"][0]):
            assert (a[head] - b[head]).abs().max() < 1e-3


def test_measure_batched_speedup(synth_root: Path, cache_dir: Path) -> None:
    """The reported throughputs and ratios are those of the timed rounds: images x models over the median round
    time, ratio = sequential / batched median time; the warm-up rounds are not timed."""
    cfg = synth_config(synth_root, cache_dir)
    data = prepare_data(cfg, progress=False)
    out = measure_batched_speedup(cfg, data, steps=3, num_models=2, warmup=1)
    assert out["models"] == 2 and out["steps"] == 3 and out["warmup"] == 1
    t_b, t_s = out["batched_round_seconds"], out["sequential_round_seconds"]
    assert len(t_b) == len(t_s) == 3 and min(t_b + t_s) > 0  # three timed rounds, the warm-up one left out
    work = out["batch_size"] * out["models"]
    assert out["batch_size"] == 16
    # The figures are rounded: round seconds to 1e-4 (so each median is off by at most h = 5e-5 s),
    # images/s to 0.01, ratios to 0.001. work / t moves by at most work * h / (t (t - h)) when t moves by h.
    h = 5e-5
    med_b, med_s = float(np.median(t_b)), float(np.median(t_s))
    for key, med in (("batched_images_models_per_s", med_b), ("sequential_images_models_per_s", med_s)):
        assert abs(out[key] - work / med) <= 0.005 + work * h / (med * (med - h)), key
    # ratio = med_s / med_b: off by at most (h / med_b) (1 + (med_s + h) / (med_b - h)) from the rounded medians
    assert abs(out["ratio"] - med_s / med_b) <= 0.0005 + h / med_b * (1 + (med_s + h) / (med_b - h))
    # and the ratios agree with the throughputs they summarise (each throughput off by at most 0.005)
    ips_b, ips_s, ips_l = (out[f"{k}_images_models_per_s"] for k in ("batched", "sequential", "loop"))
    assert ips_l > 0
    e = 0.005
    for key, num in (("ratio", ips_b), ("loop_ratio", ips_l)):
        assert abs(out[key] - num / ips_s) <= 0.0005 + e * (num + e + ips_s) / (ips_s * (ips_s - e)), key


def test_principal_directions_are_the_training_rows_top_components() -> None:
    """Orthonormal columns spanning the training rows' top principal subspace (projection error = the left-out
    singular values), the rows of other splits not used."""
    from attrnet.paper.pipeline import principal_directions
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(60, 9)) * np.array([9, 7, 5, 3, 1, 0.5, 0.2, 0.1, 0.05])
    train = np.arange(40)
    P = principal_directions(Z, train, 3)
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-12)
    rows = Z[train] - Z[train].mean(0)
    s = np.linalg.svd(rows, compute_uv=False)
    residual = rows - rows @ P @ P.T
    assert np.sum(residual ** 2) == pytest.approx(np.sum(s[3:] ** 2), rel=1e-9)
    Z2 = Z.copy()
    Z2[40:] = 1e3  # the other splits' rows do not move the directions
    np.testing.assert_allclose(principal_directions(Z2, train, 3), P, atol=1e-12)


def test_standardize_and_balance() -> None:
    X = np.arange(24, dtype=np.float32).reshape(2, 4, 3) ** 1.5
    Z, mean, std = standardize(X, np.array([0, 1, 2]))
    assert mean.shape == (2, 3) and np.allclose(Z[:, :3].mean(1), 0, atol=1e-5)
    y = np.array([[1, 0], [0, 0], [0, np.nan], [0, 1]], dtype=float)
    w = balance_weights(y)
    assert w[0, 0] == 2.0 and np.allclose(w[1:, 0], 4 / 6) and w[2, 1] == 0
    assert np.allclose((w * (y == 1)).sum(0), (w * (y == 0)).sum(0))


def test_unknown_feature_mode_is_an_error(synth_root: Path, cache_dir: Path) -> None:
    with pytest.raises(AttrnetError, match="mtl.features must be one of shared, per_attribute, got 'pixels'"):
        synth_config(synth_root, cache_dir, features="pixels")  # when the config is read, before any work


# ---------------------------------------------------------------- the CLI on the paper's data layouts

def write_clothing(root: Path, n: int = 12) -> Path:
    """n images and the 26 <name>_GT.mat files of the Clothing Attributes Dataset (1 = no, 2 = yes, NaN)."""
    import scipy.io
    from PIL import Image

    from attrnet.data.clothing import BINARY, MULTICLASS

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "images" / f"{i:06d}.jpg")
    stems = [(s, 2) for s, _ in BINARY] + [(s, len(v)) for s, v in MULTICLASS.items()]
    for stem, k in stems:
        gt = rng.integers(1, k + 1, n).astype(np.float64)
        gt[rng.random(n) < 0.1] = np.nan
        scipy.io.savemat(str(root / "labels" / f"{stem}_GT.mat"), {"GT": gt.reshape(-1, 1)})
    return root


def write_awa2(root: Path) -> Path:
    """AwA2 in its exact layout: classes.txt, predicates.txt, predicate-matrix-binary.txt, train/test class
    lists and JPEGImages/<class>/<class>_<id>.jpg."""
    from PIL import Image

    classes = ["antelope", "grizzly+bear", "killer+whale", "beaver"]
    predicates = ["black", "white", "stripes", "big", "swims", "hooves"]
    matrix = np.array([[1, 0, 0, 1, 0, 1], [0, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 1, 0, 1, 0]])
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes, 1)))
    (root / "predicates.txt").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(predicates, 1)))
    (root / "predicate-matrix-binary.txt").write_text("\n".join(" ".join(map(str, r)) for r in matrix) + "\n")
    (root / "trainclasses.txt").write_text("antelope\ngrizzly+bear\nbeaver\n")
    (root / "testclasses.txt").write_text("killer+whale\n")
    for c in classes:
        (root / "JPEGImages" / c).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (20, 16), (j * 50, 30 * len(c), 90)).save(
                root / "JPEGImages" / c / f"{c}_{10001 + j}.jpg")
    return root


CLI_FAST = ["data.image_size=32", "train.precision=fp32", "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=1",
            "train.device=cpu", "mtl.max_outer=2", "mtl.inner_max_iter=20"]


def test_cli_train_clothing_config(tmp_path: Path, cache_dir: Path, capsys) -> None:
    from attrnet.cli import main

    root = write_clothing(tmp_path / "clothing")
    out = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs" / "clothing-mtl.yaml"), "--out", str(out),
               f"data.root={root}", f"data.cache_dir={cache_dir}", *CLI_FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "MEAN" in printed and "groups" in printed
    m = check_run_folder(out, ["colour", "pattern", "parts", "global"], {"independent", "shared_heads"})
    assert len(m["attributes"]) == 36 and m["solver"]["K"] == 16


def test_cli_train_awa2_config(tmp_path: Path, cache_dir: Path) -> None:
    from attrnet.cli import main

    root = write_awa2(tmp_path / "awa2")
    out = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs" / "awa2-mtl.yaml"), "--out", str(out),
               f"data.root={root}", f"data.cache_dir={cache_dir}", "data.val_fraction=0.25", *CLI_FAST])
    assert rc == 0
    m = check_run_folder(out, ["colour", "texture", "shape", "body_parts", "behaviour"],
                         {"independent", "shared_heads"})
    assert m["split"] == "test" and m["n_images"] == 4  # the unseen class killer+whale


@pytest.mark.parametrize("features", ["shared", "per_attribute", "shared-pca"])
def test_evaluate_and_predict_take_an_mtl_run_folder(synth_root: Path, cache_dir: Path, tmp_path: Path,
                                                    features: str) -> None:
    """The run folder's network reproduces the pipeline's own test figures and scores, image by image (with
    mtl.pca, the solver's classifiers on 6 principal components folded back onto the features)."""
    from attrnet.engine.evaluate import evaluate_checkpoint
    from attrnet.inference import load_model

    extra = {"models_per_pass": 4, "per_attribute_training": "loop"} if features == "per_attribute" else {}
    if features == "shared-pca":
        features, extra = "shared", {"pca": 6}
    cfg = synth_config(synth_root, cache_dir, features=features, thresholds="tuned", **extra)
    run = tmp_path / "run"
    result = run_mtl(cfg, run, progress=False)
    ev = evaluate_checkpoint(run, device="cpu", progress=False)
    assert ev["checkpoint"].endswith("mtl_model.pt")
    assert ev["mean_accuracy"] == pytest.approx(result["mean_accuracy"], abs=1e-12)
    for name, row in result["attributes"].items():
        assert ev["attributes"][name]["threshold"] == pytest.approx(row["threshold"])
        assert ev["attributes"][name]["average_precision"] == pytest.approx(row["average_precision"], abs=1e-6, nan_ok=True)

    # the scores of single images equal the solver's decision function on the stored (standardised) features
    from attrnet.mtl.solver import decision_function
    saved = torch.load(run / "features.pt", weights_only=True)["features"]
    mtl = torch.load(run / "mtl_model.pt", weights_only=True)
    z = (saved - mtl["feature_mean"][..., None, :]) / mtl["feature_std"][..., None, :]
    expected = torch.sigmoid(decision_function(z.double(), mtl["L"].double(), mtl["S"].double(),
                                               mtl["b"].double())).float()
    model = load_model(run, "cpu", precision="fp32")
    files = sorted((synth_root / "img_align_celeba").glob("*.jpg"))[:5]
    probs = model.predict(files, batch_size=4).probabilities
    np.testing.assert_allclose(probs, expected[:5].numpy(), atol=1e-4)
