"""Config: YAML-valued overrides, type checks, unknown keys, presets."""

from __future__ import annotations

import pytest

from attrnet.config import Config, apply_overrides, config_from_dict, load_config
from attrnet.config_rules import SEED8
from attrnet.errors import AttrnetError


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["data.attributes=[Smiling, Male]", "train.epochs=3", "train.flip=false",
                             "data.image_size=[32, 48]", "model.trunk=[64,32]", "train.lr=0.01",
                             "data.cache_dir=/tmp/x", "model.pretrained=true", "data.groups="])
    assert cfg.data.attributes == ["Smiling", "Male"]
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.flip is False
    assert cfg.image_hw() == (32, 48)
    assert cfg.model.trunk == [64, 32]
    assert cfg.train.lr == 0.01
    assert cfg.data.cache_dir == "/tmp/x"
    assert cfg.model.pretrained is True
    assert cfg.data.groups is None
    # untouched keys keep their defaults
    assert cfg.train.batch_size == Config().train.batch_size


def test_overrides_apply_on_top_of_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  image_size: 64\ntrain:\n  epochs: 4\n  batch_size: 64\n")
    cfg = load_config(path, ["train.epochs=7"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.image_hw()) == (7, 64, (64, 64))


def test_numbers_are_coerced():
    cfg = load_config(None, ["train.epochs=3.0", "train.lr=1", "train.shift=0"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("value", ["1e-3", "5E-4", "2.5e-3"])
def test_scientific_notation_is_a_number(value):
    """PyYAML reads 1e-3 (no dot) as a string; a learning rate written that way must still work."""
    cfg = load_config(None, [f"train.lr={value}"])
    assert cfg.train.lr == pytest.approx(float(value)) and isinstance(cfg.train.lr, float)


def test_keys_with_several_forms_accept_each_form(tmp_path):
    """image_size: int or [h, w]; pretrained: bool or a weights path (the defaults are an int and a bool)."""
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"")
    cfg = load_config(None, ["data.image_size=[24, 40]", f"model.pretrained={weights}",
                             "train.channels_last=false", "data.cache_on_device=true"])
    assert cfg.image_hw() == (24, 40)
    assert cfg.model.pretrained == str(weights)
    assert cfg.train.channels_last is False and cfg.data.cache_on_device is True
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True
    assert load_config(None, ["train.epochs=1e1"]).train.epochs == 10
    with pytest.raises(AttrnetError, match="image_size"):
        load_config(None, ["data.image_size=big"]).image_hw()


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "train.epochs must be a whole number, got 'abc'"),
    ("train.epochs=2.5", "train.epochs must be a whole number"),
    ("train.epochs=true", "train.epochs must be a whole number"),
    ("train.lr=[1, 2]", "train.lr must be a number"),
    ("train.lr=nan", "train.lr must be a number"),
    ("train.flip=maybe", "train.flip must be true or false"),
    ("train.flip=1", "train.flip must be true or false"),
    ("train.epochs", "must look like section.key=value"),
    ("epochs=3", "must be section.key"),
    ("train.epochs=[1, 2", "not valid YAML"),
])
def test_bad_values_are_errors(override, match):
    with pytest.raises(AttrnetError, match=match.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_unknown_key_and_section_list_the_valid_ones():
    with pytest.raises(AttrnetError) as exc:
        load_config(None, ["train.epoch=3"])
    msg = str(exc.value)
    assert "train.epoch" in msg and "epochs" in msg and "batch_size" in msg and "max_steps_per_epoch" in msg
    with pytest.raises(AttrnetError, match="unknown section 'trian'; valid sections: data, model, train, mtl"):
        load_config(None, ["trian.epochs=3"])


def test_config_file_errors(tmp_path):
    with pytest.raises(AttrnetError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(AttrnetError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(AttrnetError, match=f"{typo}: unknown key train.epoch"):
        load_config(typo)


def test_seed8_preset_and_attribute_specs():
    cfg = load_config(None, ["data.attributes=seed8"])
    assert cfg.attribute_names() == ["Eyeglasses", "Male", "Smiling", "Wearing_Hat", "Wearing_Necklace",
                                     "Wearing_Necktie", "Wearing_Earrings", "Wearing_Lipstick"]
    assert cfg.attribute_names() == SEED8 and len(SEED8) == 8
    cfg.attribute_names().append("X")  # a copy: the preset itself is not changed
    assert len(SEED8) == 8
    assert load_config(None, ["data.attributes=all"]).attribute_names() is None
    assert load_config(None, []).attribute_names() is None
    with pytest.raises(AttrnetError, match="unknown preset 'seed9'"):
        load_config(None, ["data.attributes=seed9"]).attribute_names()


def test_image_size_forms():
    assert config_from_dict({"data": {"image_size": 40}}).image_hw() == (40, 40)
    assert config_from_dict({"data": {"image_size": [30, 50]}}).image_hw() == (30, 50)
    with pytest.raises(AttrnetError, match="image_size"):
        config_from_dict({"data": {"image_size": [1, 2, 3]}}).image_hw()


def test_apply_overrides_does_not_modify_its_input():
    raw = {"train": {"epochs": 1}}
    out = apply_overrides(raw, ["train.epochs=2", "model.trunk=[8]"])
    assert raw == {"train": {"epochs": 1}}
    assert out == {"train": {"epochs": 2}, "model": {"trunk": [8]}}
