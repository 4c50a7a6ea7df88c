"""The paper's pipeline end to end (attrnet.mtl.features, attrnet.mtl.pipeline, `attrnet train` with mtl.enabled).

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

from attrnet.config import config_from_dict
from attrnet.data.synthetic import SYNTHETIC_ATTRIBUTES, write_synthetic_celeba
from attrnet.engine.setup import prepare_data
from attrnet.mtl.cnns import BatchedCNNs, LoopCNNs, SequentialCNNs, make_attribute_models
from attrnet.mtl.features import compute_features, measure_batched_speedup, train_attribute_cnns
from attrnet.mtl.pipeline import balance_weights, run_mtl, standardize

REPO = Path(__file__).resolve().parents[1]
GROUPS = {"face": ["Male", "Smiling", "Wearing_Lipstick"],
          "accessories": ["Eyeglasses", "Wearing_Hat", "Wearing_Earrings"],
          "neck": ["Wearing_Necklace", "Wearing_Necktie"]}
# Small and quick: 32 px, one epoch of two steps, a few outer iterations of the solver.
FAST = {"train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "device": "cpu"},
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
    model = torch.load(tmp_path / "run" / "mtl_model.pt", weights_only=False)
    M, K = len(SYNTHETIC_ATTRIBUTES), 8
    assert model["L"].shape == (512, K) and model["S"].shape == (K, M) and model["b"].shape == (M,)
    assert model["attributes"] == SYNTHETIC_ATTRIBUTES and set(model["groups"]) == set(GROUPS)
    assert model["feature_mean"].shape == (512,) and model["feature_std"].shape == (512,)
    assert Path(model["backbone_checkpoint"]).is_file()

    # The solver stage reruns on the cached features, with other settings, without retraining the CNN.
    cfg2 = synth_config(synth_root, cache_dir, features="shared", mu=0.5, thresholds="tuned", balance=True)
    run_mtl(cfg2, tmp_path / "run", progress=False)
    m2 = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m2["features"]["cached"] and m2["solver"]["mu"] == 0.5 and m2["timings"]["features"] < 1.0


def test_run_mtl_per_attribute_features(synth_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = synth_config(synth_root, cache_dir, features="per_attribute", models_per_pass=5,
                       per_attribute_training="vmap")
    run_mtl(cfg, tmp_path / "run", progress=False)
    m = check_run_folder(tmp_path / "run", list(GROUPS), {"independent"})
    assert m["features"]["mode"] == "per_attribute" and m["features"]["models"] == 8
    saved = torch.load(tmp_path / "run" / "features.pt", weights_only=False)
    assert saved["features"].shape == (8, 80, 512)
    # Different CNNs give different features.
    assert not torch.allclose(saved["features"][0], saved["features"][1])
    cnns = torch.load(tmp_path / "run" / "feature_cnns.pt", weights_only=False)
    assert cnns["num_models"] == 8 and cnns["stacked_state"]["heads.linear.weight"].shape == (8, 1, 512)


def test_batched_training_equals_sequential_loop() -> None:
    """One step of the vmap'd models = one step of each model alone, from the same weights on the same batch."""
    cfg = config_from_dict({"train": {"device": "cpu", "lr": 1e-3}})
    M, dev = 3, torch.device("cpu")
    models = make_attribute_models(cfg.model, M, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    y = (torch.rand(8, M, generator=gen) < 0.5).float()
    y[0, 1] = y[3, 2] = float("nan")  # unknown labels are left out of each model's own loss
    batched = BatchedCNNs([copy.deepcopy(m) for m in models], dev)
    seq = SequentialCNNs([copy.deepcopy(m) for m in models], dev)
    batched.setup_optimizer(cfg, 1, 10)
    seq.setup_optimizer(cfg, 1, 10)

    loss_b = batched.step(x, y)
    loss_s = torch.stack([seq.step(m, x, y) for m in range(M)])
    torch.testing.assert_close(loss_b, loss_s, atol=1e-5, rtol=1e-5)
    # Gradients (left on the parameters by the step) agree per model and tensor.
    for name, p in batched.params.items():
        for m in range(M):
            g = seq.models[m].get_parameter(name).grad
            assert (p.grad[m] - g).norm() <= 1e-4 * g.norm() + 1e-12, name
    # Parameter updates and BatchNorm running statistics agree. Adam's first step is ~lr * sign(grad), so an
    # entry whose gradient is ~eps can flip on rounding: allow a handful such entries, nothing systematic.
    after_b, after_s, before = batched.state_dicts(), seq.state_dicts(), [m.state_dict() for m in models]
    diffs, moved = [], 0
    for m in range(M):
        for name, v in after_s[m].items():
            if v.is_floating_point():
                diffs.append((after_b[m][name] - v).abs().flatten())
                moved += int((v - before[m][name]).abs().gt(0).sum())
            else:
                assert torch.equal(after_b[m][name], v), name  # num_batches_tracked
    d = torch.cat(diffs)
    assert moved > 0.5 * d.numel()  # the step did move the weights
    assert (d > 1e-5).float().mean() < 1e-5 and d.max() <= 2.5e-3
    assert d.mean() < 1e-8
    torch.testing.assert_close(after_b[0]["backbone.bn1.running_mean"], after_s[0]["backbone.bn1.running_mean"])
    # Second step: the optimiser states agree too.
    torch.testing.assert_close(batched.step(x, y), torch.stack([seq.step(m, x, y) for m in range(M)]),
                               atol=1e-4, rtol=1e-4)
    # Eval-mode features of the stacked models are those of each model alone.
    fb = batched.features(x)
    assert fb.shape == (M, 8, 512)
    torch.testing.assert_close(fb, seq.features(x), atol=1e-4, rtol=1e-3)


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
    np.testing.assert_allclose(losses["vmap"], losses["sequential"], rtol=1e-4)
    np.testing.assert_allclose(losses["loop"], losses["sequential"], rtol=1e-5)
    head = "heads.linear.weight"
    for mode in ("vmap", "loop"):
        for a, b in zip(runs[mode][0], runs["sequential"][0]):
            assert (a[head] - b[head]).abs().max() < 1e-3


def test_measure_batched_speedup(synth_root: Path, cache_dir: Path) -> None:
    cfg = synth_config(synth_root, cache_dir)
    data = prepare_data(cfg, progress=False)
    out = measure_batched_speedup(cfg, data, steps=1, num_models=2, warmup=0)
    assert out["models"] == 2 and out["ratio"] > 0 and out["loop_ratio"] > 0
    assert out["batched_images_models_per_s"] > 0 and out["sequential_images_models_per_s"] > 0
    assert len(out["batched_round_seconds"]) == 1


def test_standardize_and_balance() -> None:
    X = np.arange(24, dtype=np.float32).reshape(2, 4, 3) ** 1.5
    Z, mean, std = standardize(X, np.array([0, 1, 2]))
    assert mean.shape == (2, 3) and np.allclose(Z[:, :3].mean(1), 0, atol=1e-5)
    y = np.array([[1, 0], [0, 0], [0, np.nan], [0, 1]], dtype=float)
    w = balance_weights(y)
    assert w[0, 0] == 2.0 and np.allclose(w[1:, 0], 4 / 6) and w[2, 1] == 0
    assert np.allclose((w * (y == 1)).sum(0), (w * (y == 0)).sum(0))


def test_unknown_feature_mode_is_an_error(synth_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    from attrnet.errors import AttrnetError
    cfg = synth_config(synth_root, cache_dir, features="pixels")
    with pytest.raises(AttrnetError, match="mtl.features"):
        compute_features(cfg, prepare_data(cfg, progress=False), tmp_path)


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


CLI_FAST = ["data.image_size=32", "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=1",
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_training_on_gpu_matches_sequential() -> None:
    cfg = config_from_dict({"train": {"device": "cuda", "lr": 1e-3}})
    M, dev = 4, torch.device("cuda")
    models = make_attribute_models(cfg.model, M, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 64, 64, generator=gen).to(dev)
    y = (torch.rand(16, M, generator=gen) < 0.5).float().to(dev)
    batched, seq = BatchedCNNs([copy.deepcopy(m) for m in models], dev), SequentialCNNs(models, dev)
    batched.setup_optimizer(cfg, 1, 10)
    seq.setup_optimizer(cfg, 1, 10)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    try:
        torch.testing.assert_close(batched.step(x, y), torch.stack([seq.step(m, x, y) for m in range(M)]),
                                   atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("features", ["shared", "per_attribute"])
def test_evaluate_and_predict_take_an_mtl_run_folder(synth_root: Path, cache_dir: Path, tmp_path: Path,
                                                    features: str) -> None:
    """The run folder's network reproduces the pipeline's own test figures and scores, image by image."""
    from attrnet.engine.evaluate import evaluate_checkpoint
    from attrnet.predict import Predictor

    extra = {"models_per_pass": 4, "per_attribute_training": "loop"} if features == "per_attribute" else {}
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
    saved = torch.load(run / "features.pt", weights_only=False)["features"]
    mtl = torch.load(run / "mtl_model.pt", weights_only=False)
    z = (saved - mtl["feature_mean"][..., None, :]) / mtl["feature_std"][..., None, :]
    expected = torch.sigmoid(decision_function(z.double(), mtl["L"].double(), mtl["S"].double(),
                                               mtl["b"].double())).float()
    predictor = Predictor.from_checkpoint(run, "cpu")
    files = sorted((synth_root / "img_align_celeba").glob("*.jpg"))[:5]
    probs = np.concatenate([p for _, p, _ in predictor.iter_predict(files, batch_size=4)])
    np.testing.assert_allclose(probs, expected[:5].numpy(), atol=1e-4)
