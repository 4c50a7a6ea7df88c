"""Backbones from torchvision and timm: one contract (features, feature size, grey input, no classifier),
weights from files (any layout the loader knows, strict about missing tensors), weights found in the torch
hub and Hugging Face caches without a network, the normalisation that comes with the weights (used in
training, stored in the checkpoint), and the fine-tuning recipe's parameter groups and frozen epochs."""

from __future__ import annotations

import random
import socket

import pytest
import torch
import torch.nn as nn
import torchvision

from attrnet.config import load_config
from attrnet.errors import AttrnetError
from attrnet.models import backbones as bb
from attrnet.models.backbones import create_backbone, weights_normalization

timm = pytest.importorskip("timm")

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
# (name, input side): one of each family; inception_v3 needs 75 px at least, ViT its 224
TORCHVISION = [("resnet18", 64), ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64),
               ("densenet121", 64), ("squeezenet1_1", 64), ("shufflenet_v2_x0_5", 64), ("mnasnet0_5", 64),
               ("regnet_x_400mf", 64), ("googlenet", 64), ("inception_v3", 80), ("convnext_tiny", 64),
               ("swin_t", 64)]
TIMM = [("timm/resnet18", 64), ("timm/tf_efficientnet_lite0", 64), ("timm/mobilenetv3_small_050", 64),
        ("timm/convnext_atto", 64), ("timm/regnetx_002", 64), ("timm/vit_tiny_patch16_224", 224),
        ("timm/mobileone_s0", 64)]  # two convolutions read the image


def _seeded(name, **kw):
    torch.manual_seed(0)
    return create_backbone(name, **kw)


@pytest.mark.parametrize("name,side", TORCHVISION + TIMM)
def test_backbone_contract_rgb_and_grey(name, side):
    rgb, grey = _seeded(name), _seeded(name, in_chans=1)
    assert rgb.backbone_info.first_convs == grey.backbone_info.first_convs != ()
    for conv_name in rgb.backbone_info.first_convs:  # two for a two-branch stem (MobileOne)
        conv_rgb, conv_grey = rgb.get_submodule(conv_name), grey.get_submodule(conv_name)
        assert conv_rgb.in_channels == 3 and conv_grey.in_channels == 1
        # the grey filters are the RGB filters summed: the same weights, but for the first convolution
        torch.testing.assert_close(conv_grey.weight, conv_rgb.weight.sum(dim=1, keepdim=True), rtol=0, atol=1e-6)
    # no classifier left: no layer gives 1000 class scores
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in rgb.modules())
    x = torch.rand(2, 1, side, side)
    rgb.eval(), grey.eval()
    with torch.no_grad():
        f_grey, f_rgb = grey(x), rgb(x.repeat(1, 3, 1, 1))
    assert f_grey.shape == (2, grey.num_features) and torch.isfinite(f_grey).all()
    # a grey image through the grey network = the same grey values in three channels through the RGB one
    scale = f_rgb.abs().max().item()  # randomly initialised inception_v3 reaches 1e4: float32 rounding scales
    torch.testing.assert_close(f_grey, f_rgb, rtol=1e-4, atol=1e-5 * max(1.0, scale))
    grey.train()
    assert grey(x).shape == (2, grey.num_features)  # train mode: features only (no auxiliary outputs)
    info = rgb.backbone_info
    assert info.normalization == IMAGENET and info.weights == "" and info.input_size is None


@pytest.mark.slow
def test_every_torchvision_classifier_fits_the_contract():
    """All of torchvision's classification models, built on the meta device (shapes only, no memory)."""
    failed, transform_input = [], []
    for name in bb.torchvision_names():
        try:
            with torch.device("meta"):
                b = create_backbone(name, in_chans=1)
                y = b.train()(torch.empty(2, 1, 224, 224))
        except NotImplementedError:  # regnet's builder reads its meta tensors' values: cannot be built there
            continue
        except Exception as exc:  # noqa: BLE001 - collected and reported
            failed.append(f"{name}: {exc}")
            continue
        if y.shape != (2, b.num_features):
            failed.append(f"{name}: {tuple(y.shape)} vs num_features {b.num_features}")
        if hasattr(b, "transform_input"):
            transform_input.append(name)
    assert not failed
    assert tuple(transform_input) == bb.TRANSFORM_INPUT_MODELS


def test_backbone_names_checked_without_building(monkeypatch):
    built = []
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: built.append(a))
    cfg = load_config(None, ["model.backbone=regnet_y_400mf"])
    assert cfg.model.backbone == "regnet_y_400mf"
    assert load_config(None, ["model.backbone=timm/resnet18.a1_in1k"]).model.backbone == "timm/resnet18.a1_in1k"
    assert built == []
    with pytest.raises(AttrnetError, match=r"model.backbone unknown backbone 'resnet7' \(did you mean .*resnet18.*"
                                           r"list_models\(module=torchvision.models\).*timm/<name>"):
        load_config(None, ["model.backbone=resnet7"])
    with pytest.raises(AttrnetError, match=r"unknown timm model 'resnett18' \(did you mean timm/resnet18"):
        load_config(None, ["model.backbone=timm/resnett18"])
    with pytest.raises(AttrnetError, match=r"timm has no weights 'resnet18.nope'; resnet18's are: .*a1_in1k"):
        load_config(None, ["model.backbone=timm/resnet18.nope"])
    with pytest.raises(AttrnetError, match="train.backbone_lr_scale must be > 0"):
        load_config(None, ["train.backbone_lr_scale=0"])
    with pytest.raises(AttrnetError, match="train.freeze_backbone_epochs must be >= 0"):
        load_config(None, ["train.freeze_backbone_epochs=-1"])


def test_small_input_where_it_makes_sense():
    resnet = create_backbone("resnet18", small_input=True)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    for name in ("mobilenet_v2", "timm/tf_efficientnet_lite0"):
        plain, small = _seeded(name).eval(), _seeded(name, small_input=True).eval()
        first = small.backbone_info.first_convs[0]
        conv = small.get_submodule(first)
        assert conv.stride == (1, 1)
        assert torch.equal(conv.weight, plain.get_submodule(first).weight)  # weights kept
        sizes = []
        for net in (plain, small):  # the first convolution's output: half the input, then the input's size
            hook = net.get_submodule(first).register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
            with torch.no_grad():
                assert net(torch.rand(1, 3, 32, 32)).shape == (1, net.num_features)
            hook.remove()
        assert sizes == [16, 32]
    for name in ("convnext_tiny", "timm/vit_tiny_patch16_224"):
        with pytest.raises(AttrnetError, match="small_input is not supported .* patch embedding"):
            create_backbone(name, small_input=True)


# ---- weights from files ----------------------------------------------------------------------------------

def _assert_same_tensors(model: nn.Module, state: dict, skip=()):
    own = model.state_dict()
    for key, value in state.items():
        if key not in skip:
            assert torch.equal(own[key], value), key


def test_torchvision_weights_file_loaded_strictly(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v2().state_dict()
    torch.save(state, tmp_path / "mnv2.pth")
    b = create_backbone("mobilenet_v2", pretrained=str(tmp_path / "mnv2.pth"), in_chans=1)
    _assert_same_tensors(b, state, skip=("features.0.0.weight", "classifier.1.weight", "classifier.1.bias"))
    torch.testing.assert_close(b.features[0][0].weight, state["features.0.0.weight"].sum(1, keepdim=True))
    assert b.backbone_info.weights == str(tmp_path / "mnv2.pth")
    # a wrapped file ({"state_dict": ...} with DDP's "module." prefix) is the same weights
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    _assert_same_tensors(create_backbone("mobilenet_v2", pretrained=str(tmp_path / "wrapped.pth")), state,
                         skip=("classifier.1.weight", "classifier.1.bias"))
    # strict: a tensor the backbone needs that the file lacks is an error (the classifier may be missing)
    del state["features.18.1.running_var"], state["classifier.1.weight"], state["classifier.1.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(AttrnetError, match=r"does not fit this backbone \(1 of its .* e.g. features.18.1.running_var"):
        create_backbone("mobilenet_v2", pretrained=str(tmp_path / "partial.pth"))
    with pytest.raises(AttrnetError, match="does not fit this backbone"):  # another architecture's file
        create_backbone("mobilenet_v3_small", pretrained=str(tmp_path / "mnv2.pth"))


def test_timm_weights_file_loaded_strictly(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(2)
    state = timm.create_model("resnet18").state_dict()  # with its classifier, as timm publishes it
    save_file(state, str(tmp_path / "model.safetensors"))
    b = create_backbone("timm/resnet18", pretrained=str(tmp_path / "model.safetensors"), in_chans=1)
    _assert_same_tensors(b, state, skip=("conv1.weight", "fc.weight", "fc.bias"))
    torch.testing.assert_close(b.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert b.backbone_info.normalization == weights_normalization("timm/resnet18", "x.pth") == {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"}


LUKEMELAS_BLOCK = {"conv_pw": "_expand_conv", "conv_dw": "_depthwise_conv", "conv_pwl": "_project_conv",
                   "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}


def _lukemelas_state(model: nn.Module) -> dict:
    """timm EfficientNet's state dict renamed into lukemelas' layout, written out here independently of
    attrnet.models.weight_maps, and shuffled (the mapping must not rely on the file's key order)."""
    out = {}
    blocks = sorted({tuple(int(i) for i in k.split(".")[1:3]) for k in model.state_dict() if k.startswith("blocks.")})
    flat = {f"blocks.{s}.{b}.": f"_blocks.{n}." for n, (s, b) in enumerate(blocks)}
    for key, value in model.state_dict().items():
        head = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
                "classifier": "_fc"}
        first, rest = key.split(".", 1)
        if first in head:
            out[f"{head[first]}.{rest}"] = value
            continue
        prefix = next(p for p in flat if key.startswith(p))
        layer, leaf = key[len(prefix):].rsplit(".", 1)
        expanded = f"{prefix}conv_pwl.weight" in model.state_dict()  # InvertedResidual; else depthwise-separable
        bns = {"bn1": "_bn0", "bn2": "_bn1", "bn3": "_bn2"} if expanded else {"bn1": "_bn1", "bn2": "_bn2"}
        names = dict(LUKEMELAS_BLOCK, conv_pw="_expand_conv" if expanded else "_project_conv", **bns)
        out[f"{flat[prefix]}{names[layer]}.{leaf}"] = value
    items = list(out.items())
    random.Random(0).shuffle(items)
    return dict(items)


def test_lukemelas_efficientnet_file_loads_into_timm_lite0(tmp_path):
    from attrnet.models.convert import convert_file
    from attrnet.models.weight_maps import LUKEMELAS_EFFICIENTNET, detect_layout

    torch.manual_seed(3)
    reference = timm.create_model("tf_efficientnet_lite0")
    state = _lukemelas_state(reference)
    assert len(state) == 296 and detect_layout(state) == LUKEMELAS_EFFICIENTNET  # as the PyPI file
    torch.save(state, tmp_path / "efficientnet-lite0.pth")
    for in_chans in (3, 1):
        b = create_backbone("timm/tf_efficientnet_lite0", pretrained=str(tmp_path / "efficientnet-lite0.pth"),
                            in_chans=in_chans)
        _assert_same_tensors(b, reference.state_dict(), skip=("conv_stem.weight", "classifier.weight",
                                                               "classifier.bias"))
        expected = reference.conv_stem.weight.sum(1, keepdim=True) if in_chans == 1 else reference.conv_stem.weight
        assert torch.equal(b.conv_stem.weight, expected)
        assert b.backbone_info.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    # converted once into timm's own keys (what benchmarks/offline_weights.sh does): loads strictly into timm
    out = convert_file(tmp_path / "efficientnet-lite0.pth", tmp_path / "lite0_timm.pth")
    fresh = timm.create_model("tf_efficientnet_lite0")
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
    _assert_same_tensors(fresh, reference.state_dict())
    # the layout maps exactly onto timm's EfficientNets only
    with pytest.raises(AttrnetError, match="lukemelas' EfficientNet layout, which maps onto timm's EfficientNets"):
        create_backbone("efficientnet_b0", pretrained=str(tmp_path / "efficientnet-lite0.pth"))
    with pytest.raises(AttrnetError, match="cannot map onto this model's 384: another EfficientNet variant"):
        create_backbone("timm/tf_efficientnet_lite1", pretrained=str(tmp_path / "efficientnet-lite0.pth"))


# ---- weights found in the caches without a network --------------------------------------------------------

@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub folder and Hugging Face cache, and no network at all."""
    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries with back-off
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def test_torchvision_pretrained_found_in_torch_hub_cache(offline):
    with pytest.raises(AttrnetError, match=r"could not load torchvision's MobileNet_V2_Weights.IMAGENET1K_V2 .*"
                                           r"put mobilenet_v2-7ebf99e0.pth into .*hub/checkpoints"):
        create_backbone("mobilenet_v2", pretrained=True)
    # the file benchmarks/offline_weights.sh places: IMAGENET1K_V1 (DEFAULT is V2), found by its name
    torch.manual_seed(4)
    state = torchvision.models.mobilenet_v2().state_dict()
    (offline / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, offline / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    b = create_backbone("mobilenet_v2", pretrained=True, in_chans=1)
    assert b.backbone_info.weights == "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1"
    _assert_same_tensors(b, state, skip=("features.0.0.weight", "classifier.1.weight", "classifier.1.bias"))
    assert b.backbone_info.normalization == IMAGENET and b.backbone_info.input_size == (224, 224)


def test_timm_pretrained_found_in_hugging_face_cache(offline):
    from safetensors.torch import save_file
    torch.manual_seed(5)
    state = timm.create_model("resnet18").state_dict()
    snapshot = offline / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (offline / "hf" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (offline / "hf" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0" * 40)
    b = create_backbone("timm/resnet18.a1_in1k", pretrained=True)
    assert b.backbone_info.weights.endswith("model.safetensors")
    _assert_same_tensors(b, state, skip=("fc.weight", "fc.bias"))
    assert b.backbone_info.normalization["interpolation"] == "bicubic" and b.backbone_info.input_size == (224, 224)
    with pytest.raises(AttrnetError, match="could not load timm's weights for resnet18.a2_in1k .* model.pretrained"):
        create_backbone("timm/resnet18.a2_in1k", pretrained=True)  # not cached, no network: a clear error


# ---- normalisation: from the weights, into training and the checkpoint ------------------------------------

def test_normalization_comes_with_the_weights():
    assert weights_normalization("resnet18", False) == IMAGENET
    assert weights_normalization("timm/tf_efficientnet_lite0", False) == IMAGENET  # no weights: the default
    assert weights_normalization("efficientnet_b0", "w.pth")["interpolation"] == "bicubic"
    assert weights_normalization("googlenet", "w.pth")["mean"] == [0.5] * 3  # its weights' transform_input


def test_normalize_default_is_imagenet_bit_for_bit():
    from attrnet.data.augment import normalize
    for channels in (1, 3):
        x = torch.randint(0, 256, (2, channels, 8, 8), dtype=torch.uint8)
        assert torch.equal(normalize(x), normalize(x, mean=IMAGENET["mean"], std=IMAGENET["std"]))
        half = normalize(x, mean=[0.5] * 3, std=[0.5] * 3)
        torch.testing.assert_close(half, x.float() / 127.5 - 1, rtol=0, atol=1e-6)


def test_fine_tuning_run_stores_its_normalization_and_freezes_the_body(tmp_path):
    from conftest import random_csv_rows, tiny_config, write_csv_folder

    from attrnet.data.augment import normalize
    from attrnet.engine.train import fit
    from attrnet.inference.checkpoint import load_checkpoint, preprocessing_of
    from attrnet.inference.forward import make_normalize

    torch.manual_seed(6)
    weights = timm.create_model("tf_efficientnet_lite0").state_dict()
    torch.save(weights, tmp_path / "lite0.pth")
    rows = random_csv_rows(16, ["A", "B"], seed=2)
    data = write_csv_folder(tmp_path / "data", ["image", "A", "B"], rows)
    cfg = tiny_config(tmp_path / "cache", data__root=data, data__format="csv", data__image_size=32,
                      model__backbone="timm/tf_efficientnet_lite0", model__pretrained=tmp_path / "lite0.pth",
                      train__freeze_backbone_epochs=1, train__backbone_lr_scale=0.1, data__grayscale="true")
    fit(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    norm = preprocessing_of(ckpt).normalization
    assert norm == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    # inference reads it back into the arithmetic training used
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(make_normalize(norm, 1)(x), normalize(x, mean=[0.5] * 3, std=[0.5] * 3),
                               rtol=0, atol=0)
    # the one epoch trained the heads only: the body (BatchNorm statistics too) is the file's, but the stem,
    # summed for grey input
    body = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    for key, value in body.items():
        expected = weights[key].sum(1, keepdim=True) if key == "conv_stem.weight" else weights[key]
        assert torch.equal(value, expected), key
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.0] * 4  # cosine to 0; 4 groups
    assert [g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([2e-3, 2e-3, 2e-4, 2e-4])


def test_parameter_groups_for_fine_tuning():
    from attrnet.config import ModelConfig
    from attrnet.engine.optim import build_optimizer
    from attrnet.models.build import build_model

    model = build_model(ModelConfig(backbone="resnet18", trunk=[16]), 3, 3)
    plain = build_optimizer(model, load_config(None, ["train.lr=0.01"]), torch.device("cpu"))
    assert len(plain.param_groups) == 2 and {g["lr"] for g in plain.param_groups} == {0.01}
    opt = build_optimizer(model, load_config(None, ["train.lr=0.01", "train.backbone_lr_scale=0.1"]),
                          torch.device("cpu"))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])
    body = {id(p) for p in model.backbone.parameters()}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each tensor in one group
    assert all(id(p) in body for g in opt.param_groups[2:] for p in g["params"])
    assert not any(id(p) in body for g in opt.param_groups[:2] for p in g["params"])
    # frozen: no gradient reaches the body, its BatchNorm stays in eval mode through train()
    model.freeze_backbone(True)
    model.train()
    assert not model.backbone.training and model.trunk.training
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())
    model.freeze_backbone(False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())


def test_seed_config_with_pretrained_weights_sums_them_for_grey(tmp_path):
    """configs/celeba-seed8.yaml with model.pretrained=PATH: the seed's grey ResNet18, its first convolution
    the file's RGB filters summed; the fine-tuning configs load and validate."""
    from pathlib import Path

    from attrnet.models.build import build_model

    configs = Path(__file__).resolve().parent.parent / "configs"
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    cfg = load_config(configs / "celeba-seed8.yaml", [f"model.pretrained={tmp_path / 'resnet18.pth'}"])
    net = build_model(cfg.model, 8, 1 if cfg.data.grayscale else 3)
    assert cfg.data.grayscale and net.backbone.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(net.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True), rtol=0, atol=1e-6)
    assert torch.equal(net.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert net.normalization == IMAGENET
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 128, 128)).shape == (2, 8)
    for name in ("celeba-pretrained.yaml", "celeba-seed8-pretrained.yaml"):
        tuned = load_config(configs / name)
        assert tuned.model.pretrained is True and tuned.model.backbone == "mobilenet_v2"
        assert tuned.train.backbone_lr_scale < 1 and tuned.train.freeze_backbone_epochs >= 1


def test_the_lite0_config_reads_the_file_offline_weights_sh_writes(tmp_path, monkeypatch):
    """configs/celeba-best-lite0.yaml: timm's Lite0 with the converted file in torch hub's folder under ~;
    where that file is missing, loading the config says so (one error naming the path), before any work."""
    from pathlib import Path

    monkeypatch.setenv("HOME", str(tmp_path))
    config = Path(__file__).resolve().parent.parent / "configs" / "celeba-best-lite0.yaml"
    weights = tmp_path / ".cache/torch/hub/checkpoints/tf_efficientnet_lite0.lukemelas_in1k-57934424.pth"
    with pytest.raises(AttrnetError, match=f"no such weights file: {weights}"):
        load_config(config)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    cfg = load_config(config)
    assert (cfg.model.backbone, cfg.model.pretrained) == ("timm/tf_efficientnet_lite0", str(weights))
    assert cfg.train.backbone_lr_scale == 1 and cfg.train.ema > 0  # the celeba-best recipe
