"""Backbones from a local weights file, grey input, and AttributeNet output shapes."""

from __future__ import annotations

import pytest
import torch
import torchvision

from attrnet.config import ModelConfig
from attrnet.errors import AttrnetError
from attrnet.inference.tta import tta_average
from attrnet.models.backbones import create_backbone
from attrnet.models.build import build_model


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_grey_backbone_sums_pretrained_first_conv_over_rgb(resnet18_weights):
    path, state = resnet18_weights
    grey = create_backbone("resnet18", pretrained=str(path), in_chans=1)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(grey.conv1.weight.detach(), state["conv1.weight"].sum(dim=1, keepdim=True),
                               rtol=0, atol=1e-6)
    # the rest of the network is the file's weights, and the classifier is gone
    assert torch.equal(grey.layer3[1].conv2.weight.detach(), state["layer3.1.conv2.weight"])
    assert torch.equal(grey.bn1.running_var, state["bn1.running_var"])
    assert isinstance(grey.fc, torch.nn.Identity) and grey.num_features == 512

    rgb = create_backbone("resnet18", pretrained=str(path), in_chans=3)
    assert torch.equal(rgb.conv1.weight.detach(), state["conv1.weight"])
    # a grey image through the grey stem equals the same grey values in three channels through the RGB stem
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey.conv1(x), rgb.conv1(x.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)


def test_missing_or_foreign_weights_file_is_an_error(tmp_path):
    with pytest.raises(AttrnetError, match="weights file not found"):
        create_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_text("not a state dict")
    with pytest.raises(AttrnetError, match="not a PyTorch state dict"):
        create_backbone("resnet18", pretrained=str(tmp_path / "junk.pth"))
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(AttrnetError, match="does not fit this backbone"):
        create_backbone("resnet18", pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(AttrnetError, match="model.backbone: unknown backbone 'resnet7'"):
        create_backbone("resnet7")


@pytest.mark.parametrize("head_hidden", [0, 8])
@pytest.mark.parametrize("trunk", [[], [32, 32]])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_model_output_shape(trunk, head_hidden, in_chans):
    torch.manual_seed(0)
    m = 5
    model = build_model(ModelConfig(backbone="resnet18", trunk=trunk, head_hidden=head_hidden), m, in_chans).eval()
    assert model.backbone.conv1.in_channels == in_chans
    with torch.no_grad():
        for size in [(32, 32), (48, 40)]:
            out = model(torch.randn(3, in_chans, *size))
            assert out.shape == (3, m)
            assert torch.isfinite(out).all()
        assert model.features(torch.randn(2, in_chans, 32, 32)).shape == (2, trunk[-1] if trunk else 512)
    # each attribute has its own head: changing one head's parameters changes one output column only
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        before = model(x)
        if head_hidden:
            model.heads.b2[3] += 1.0
        else:
            model.heads.linear.bias[3] += 1.0
        after = model(x)
    diff = (after - before).abs().amax(dim=0)
    assert diff[3].item() == pytest.approx(1.0, abs=1e-5)
    assert diff[[0, 1, 2, 4]].max().item() == 0.0


def test_trunk_has_dropout_in_train_mode_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", trunk=[64], trunk_dropout=0.5), 2, 3)
    feats = torch.randn(4, 512)
    model.trunk.train()
    a, b = model.trunk(feats), model.trunk(feats)
    assert not torch.equal(a, b)
    model.trunk.eval()
    assert torch.equal(model.trunk(feats), model.trunk(feats))


def test_flip_tta_averages_the_image_and_its_mirror_outside_the_network():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(), 5, 3).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        averaged = tta_average(plain, x, "flip")
        torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(averaged, plain(x), atol=1e-4)  # the mirror image does change the logits
        # an image that is its own mirror image gets the plain logits
        sym = torch.cat([x[..., :16], x[..., :16].flip(-1)], dim=-1)
        torch.testing.assert_close(tta_average(plain, sym, "flip"), plain(sym), rtol=1e-5, atol=1e-5)
    # model.tta is not part of the network any more: the same seed gives the same weights and, in train mode,
    # the same output bit for bit (training sees each batch once, as it is)
    torch.manual_seed(0)
    with_tta = build_model(ModelConfig(tta="flip"), 5, 3).train()
    plain.train()
    torch.testing.assert_close(with_tta(x), plain(x), rtol=0, atol=0)


def test_batch_logits_is_normalise_then_tta_of_the_network():
    from attrnet.data.augment import normalize
    from attrnet.inference.forward import batch_logits, make_normalize

    torch.manual_seed(0)
    net = build_model(ModelConfig(), 4, 3).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = (net(normalize(x)) + net(normalize(x.flip(-1)))) / 2
    got = batch_logits(net, x, make_normalize(None, 3), None, "flip")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the inference normalisation is training's arithmetic exactly (ImageNet statistics, grey too)
    for channels in (1, 3):
        img = torch.randint(0, 256, (2, channels, 8, 8), dtype=torch.uint8)
        assert torch.equal(make_normalize(None, channels)(img), normalize(img))


def _moved(x, oy, ox):
    """x[..., clamp(i + oy), clamp(j + ox)]: the shift with repeated edges, written as an index lookup."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h) + oy).clamp(0, h - 1)
    cols = (torch.arange(w) + ox).clamp(0, w - 1)
    return x[..., rows[:, None], cols[None, :]]


def test_flip_shift_tta_is_the_mean_over_ten_views():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(), 4, 3).eval()
    x = torch.rand(2, 3, 48, 32)   # moves of 1/16: 3 rows, 2 columns
    moves = [(0, 0), (3, 0), (-3, 0), (0, 2), (0, -2)]
    with torch.no_grad():
        views = [_moved(v, oy, ox) for v in (x, x.flip(-1)) for oy, ox in moves]
        expected = sum(plain(v) for v in views) / 10
        shifted = tta_average(plain, x, "flip_shift")
        torch.testing.assert_close(shifted, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(shifted, tta_average(plain, x, "flip"), atol=1e-4)  # the moved views count
        flat = torch.full((1, 3, 48, 32), 0.3)                 # every view of a flat image is the image
        torch.testing.assert_close(tta_average(plain, flat, "flip_shift"), plain(flat), rtol=1e-5, atol=1e-5)


def test_unknown_tta_is_an_error():
    with pytest.raises(AttrnetError, match="unknown test-time augmentation 'rot'; valid: none, flip, flip_shift"):
        tta_average(lambda b: b, torch.zeros(1, 3, 8, 8), "rot")
