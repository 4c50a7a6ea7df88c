"""The inference package: one forward path for evaluate and predict, the public API on every input type,
exports (ONNX, Hub folder) that reproduce the PyTorch probabilities, and no training code imported."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrnet.cli import main
from attrnet.inference import load_model
from attrnet.preprocessing import Preprocessing

REPO = Path(__file__).resolve().parents[1]
onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")


def _files(csv_run) -> list[Path]:
    return sorted(Path(csv_run["data"]).glob("*.jpg"))


@pytest.fixture(scope="module", params=["attribute_net", "latent_task"])
def run(request, csv_run, tmp_path_factory) -> Path:
    """A plain run (csv_run), and an MTL run folder made from it: the paper's model on per-attribute CNNs."""
    if request.param == "attribute_net":
        return csv_run["run"]
    from attrnet import model_file
    from attrnet.config import config_from_dict
    from attrnet.inference.checkpoint import load_checkpoint
    from attrnet.models.build import build_model
    from attrnet.models.factory import KIND_LATENT_TASK

    folder = tmp_path_factory.mktemp("latent")
    best = load_checkpoint(csv_run["run"])
    config = copy.deepcopy(best["config"])
    # resnet18's CNNs: a third of mobilenet_v3_small's operations, and the ONNX export's time is per operation
    config["model"].update(backbone="resnet18", pretrained=False)
    cfg = config_from_dict(config)
    torch.manual_seed(0)
    cnns = [build_model(cfg.model, 1, 3).eval() for _ in range(2)]
    for cnn in cnns:  # BatchNorm statistics that are not the initial ones, so that eval mode matters
        for bn in (m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    stacked = {k: torch.stack([c.state_dict()[k] for c in cnns]) for k in cnns[0].state_dict()}
    model_file.save_file(folder / "feature_cnns.pt", {"stacked_state": stacked, "attributes": best["attributes"]})
    dim = cnns[0].features(torch.zeros(2, 3, 16, 16)).shape[1]
    model_file.save_file(folder / "mtl_model.pt", {
        "kind": KIND_LATENT_TASK, "L": torch.randn(dim, 2), "S": torch.randn(2, 2), "b": torch.tensor([0.1, -0.2]),
        "attributes": best["attributes"], "feature_mean": torch.randn(2, dim) * 0.1,
        "feature_std": torch.rand(2, dim) + 0.5, "features": "per_attribute", "config": config,
        "thresholds": [0.4, 0.6], "image_size": [16, 16], "grayscale": False, "resize": "squash"})
    return folder


def test_inference_imports_no_training_code():
    """In a fresh interpreter: loading the inference package loads nothing of engine, the MTL pipeline or bench."""
    code = ("import sys, attrnet.inference, attrnet.inference.export, attrnet.inference.onnx_model; "
            "bad = [m for m in sys.modules if m.startswith(('attrnet.engine', 'attrnet.paper.pipeline', "
            "'attrnet.paper.features', 'attrnet.paper.cnns', 'attrnet.bench'))]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
    sources = "\n".join(p.read_text() for p in (REPO / "src" / "attrnet" / "inference").glob("*.py"))
    for forbidden in ("attrnet.engine", "attrnet.paper.pipeline", "attrnet.paper.features", "attrnet.paper.cnns",
                      "attrnet.bench"):
        assert forbidden not in sources, forbidden


def test_imagenet_statistics_are_written_once():
    """Training's normalisation, inference's and the backbones' default read one record (attrnet.preprocessing)."""
    from attrnet.preprocessing import IMAGENET_MEAN, IMAGENET_NORMALIZATION, IMAGENET_STD
    assert tuple(IMAGENET_NORMALIZATION["mean"]) == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert tuple(IMAGENET_NORMALIZATION["std"]) == IMAGENET_STD == (0.229, 0.224, 0.225)
    written = [p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "attrnet").rglob("*.py")
               if "0.485" in p.read_text() or "0.229" in p.read_text()]
    assert written == ["attrnet/preprocessing.py"]


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_evaluate_and_predict_agree(run, tta):
    """The probabilities behind evaluate's metrics are predict's for the same images, to 1e-6."""
    from attrnet.config import config_from_dict
    from attrnet.engine.evaluate import predict_probs
    from attrnet.engine.setup import make_loader, prepare_data
    from attrnet.inference.checkpoint import load_checkpoint, network_from_checkpoint
    from attrnet.inference.forward import make_normalize
    from attrnet.precision import Precision

    ckpt = load_checkpoint(run)
    cfg = config_from_dict(ckpt["config"])
    data = prepare_data(cfg, progress=False)
    idx = data.indices("all")
    fp32 = Precision.resolve("fp32", False, torch.device("cpu"))
    loader = make_loader(data.decoded.images, data, idx, 7, torch.device("cpu"), False)
    evaluated, _ = predict_probs(network_from_checkpoint(ckpt), loader, fp32, tta=tta, normalize=make_normalize(None, 3))
    model = load_model(run, "cpu", tta=tta, precision="fp32")
    predicted = model.predict([data.table.image_dir / data.table.files[i] for i in idx], batch_size=5)
    assert predicted.indices == list(range(len(idx))) and not predicted.failed
    np.testing.assert_allclose(predicted.probabilities, evaluated, rtol=0, atol=1e-6)


def test_predict_takes_paths_pil_bytes_arrays_and_tensors(csv_run):
    model = load_model(csv_run["run"], "cpu", precision="fp32")
    path = _files(csv_run)[0]
    pil = Image.open(path)
    inputs = [path, str(path), path.read_bytes(), pil, np.asarray(pil.convert("RGB")),
              torch.from_numpy(np.asarray(pil.convert("RGB"))).permute(2, 0, 1).contiguous(), b"not an image"]
    result = model.predict(inputs)
    # one row per input, in input order: the unreadable one is a NaN row with decisions -1 (README, "Using a
    # trained model")
    assert result.probabilities.shape == (7, 2) and result.decisions.shape == (7, 2)
    assert result.indices == [0, 1, 2, 3, 4, 5] and [i for i, _ in result.failed] == [6]
    assert result.ok.tolist() == [True] * 6 + [False]
    assert "cannot decode image" in result.failed[0][1]
    assert np.isnan(result.probabilities[6]).all() and result.decisions[6].tolist() == [-1, -1]
    for row in result.probabilities[1:6]:
        np.testing.assert_allclose(row, result.probabilities[0], rtol=0, atol=1e-6)
    assert result.attributes == ["A", "B"]
    assert np.array_equal(result.decisions[:6], (result.probabilities[:6] >= result.thresholds).astype(int))
    assert result.rows()[0]["A"]["decision"] == result.decisions[0, 0] and result.rows()[6] is None


def test_grey_from_rgb_tensor_matches_pil():
    from attrnet.inference.preprocess import to_model_input
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    via_pil = to_model_input(Image.fromarray(rgb), (12, 10), True, "squash")
    via_tensor = to_model_input(torch.from_numpy(rgb).permute(2, 0, 1), (12, 10), True, "squash")
    assert torch.equal(via_pil, via_tensor)


def _export(argv, capsys) -> int:
    capsys.readouterr()
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """export(run, tta): `attrnet export RUN --format onnx --tta TTA` once per run and tta for the module, its
    path after. An export takes seconds (torch.export traces and decomposes the graph) and writes the same
    graph each time, so the tests that compare runtimes share it."""
    made: dict[tuple[str, str], Path] = {}

    def export(run, tta: str = "none") -> Path:
        if (str(run), tta) not in made:
            out = tmp_path_factory.mktemp("onnx") / "model.onnx"
            assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--tta", tta]) == 0
            made[str(run), tta] = out
        return made[str(run), tta]
    return export


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onnx_export_matches_pytorch(run, csv_run, onnx_export, tta):
    out = onnx_export(run, tta)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["attributes"] == ["A", "B"] and sidecar["tta"] == tta
    assert sidecar["preprocessing"]["image_size"] == [16, 16] and sidecar["preprocessing"]["resize"] == "squash"
    torch_model = load_model(run, "cpu", tta=tta, precision="fp32")
    onnx_model = load_model(out, runtime="onnx")
    files = _files(csv_run)
    for batch in (1, 7):  # the batch dimension is dynamic
        a = torch_model.predict(files, batch_size=batch).probabilities
        b = onnx_model.predict(files, batch_size=batch).probabilities
        assert np.abs(a - b).max() <= 1e-4
    np.testing.assert_array_equal(onnx_model.thresholds, torch_model.thresholds)


def test_predict_cli_precision_fp32_matches_the_onnx_graph(tmp_path, run, csv_run, onnx_export, capsys, caplog):
    """`predict --precision fp32` (the choice logged) gives the exported graph's probabilities to 1e-4, whatever
    the CPU; the CSV's 5 decimals add at most 5e-6 each."""
    import csv as csvlib
    import logging
    out = onnx_export(run, "none")
    tables = {}
    for name, model, extra in (("torch", run, ["--precision", "fp32", "--device", "cpu"]), ("onnx", out, [])):
        with caplog.at_level(logging.INFO, logger="attrnet.inference.model"):
            assert main(["predict", str(model), str(csv_run["data"]), "--out", str(tmp_path / f"{name}.csv"),
                         *extra]) == 0
        with open(tmp_path / f"{name}.csv", newline="") as fh:
            rows = list(csvlib.DictReader(fh))
        tables[name] = np.array([[float(r["A_prob"]), float(r["B_prob"])] for r in rows])
    assert any("fp32" in r.getMessage() and "asked for" in r.getMessage() for r in caplog.records)
    assert tables["torch"].shape == tables["onnx"].shape and len(tables["torch"]) > 0
    assert np.abs(tables["torch"] - tables["onnx"]).max() <= 1e-4
    capsys.readouterr()
    assert main(["predict", str(out), str(csv_run["data"]), "--precision", "bf16"]) == 2
    assert "computes in fp32" in capsys.readouterr().err


def test_hub_folder_reproduces_the_checkpoint_exactly(tmp_path, run, csv_run, capsys):
    out = tmp_path / "hub"
    assert _export(["export", run, "--format", "hub", "--out", out], capsys) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    files = _files(csv_run)
    a = load_model(run, "cpu", precision="fp32").predict(files).probabilities
    b = load_model(out, "cpu", precision="fp32").predict(files).probabilities
    assert np.array_equal(a, b) and len(a) == len(files)
    with open(out / "model.safetensors", "rb") as fh:  # weights only: a JSON header, then raw tensors
        header_len = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(header_len))  # no pickle anywhere
    assert _export(["export", run, "--format", "hub", "--out", out], capsys) == 2  # never clobbered


def test_predict_cli_reads_exports(tmp_path, csv_run, capsys):
    out = tmp_path / "model.onnx"
    assert _export(["export", csv_run["run"], "--format", "onnx", "--out", out], capsys) == 0
    assert json.loads(out.with_suffix(".json").read_text())["tta"] == "none"  # export's default: no TTA baked in
    for model, extra in ((out, []), (csv_run["run"], ["--device", "cpu"])):
        assert main(["predict", str(model), str(csv_run["data"]), "--out", str(tmp_path / "p.json"), *extra]) == 0
        rows = json.loads((tmp_path / "p.json").read_text())["images"]
        assert len(rows) == len(csv_run["rows"])


CELEBA = REPO.parent / "shared" / "data" / "celeba-8k"


@pytest.mark.skipif(not CELEBA.is_dir(), reason=f"real CelebA copy not at {CELEBA}")
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onnx_and_hub_match_pytorch_on_200_real_celeba_images(tmp_path, run, onnx_export, capsys, tta):
    """The runtimes agree on real photos (resized to the model's size), not only on noise."""
    files = sorted((CELEBA / "img_align_celeba").glob("*.jpg"))[:200]
    assert _export(["export", run, "--format", "hub", "--out", tmp_path / "hub", "--tta", tta], capsys) == 0
    torch_probs = load_model(run, "cpu", tta=tta, precision="fp32").predict(files).probabilities
    onnx_probs = load_model(onnx_export(run, tta), runtime="onnx").predict(files).probabilities
    hub_probs = load_model(tmp_path / "hub", "cpu", precision="fp32").predict(files).probabilities
    assert torch_probs.shape == (200, 2)
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert np.array_equal(hub_probs, torch_probs)


def test_the_sidecar_says_which_resize_attrnet_did_and_which_the_weights_wanted():
    """An ONNX or Hub consumer must resize as attrnet did (antialiased bilinear, in training and in
    inference), not as the ImageNet weights were trained (bicubic for timm's Lite0); both are written, and
    reading the description back keeps the weights' own."""
    from attrnet.inference.sources import ModelInfo

    norm = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    info = ModelInfo(kind="attribute_net", attributes=["A"], thresholds=np.array([0.5]), config={},
                     preprocessing=Preprocessing(image_size=(32, 32), mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                                                 weights_interpolation=norm["interpolation"]))
    pre = info.to_json()["preprocessing"]
    assert (pre["interpolation"], pre["weights_interpolation"]) == ("bilinear", "bicubic")
    assert ModelInfo.from_json(info.to_json(), "x").normalization == norm
