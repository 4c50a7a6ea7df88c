"""attrnet.precision: the auto rule on CPUs with and without native bf16 and on CUDA, forced settings,
Precision.from_config, and training steps under the resolved autocast on a CPU."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

import attrnet.precision as prec
from attrnet.errors import AttrnetError
from attrnet.precision import Precision, cpu_has_native_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a cuda device object needs no GPU: pure logic


def test_the_shipped_default_is_bf16_with_channels_last_on_a_cpu_with_native_bf16(monkeypatch):
    """Adopted after the full-length CelebA pair (docs/benchmarks.md); the switch still turns it off."""
    assert prec.CPU_AUTO_BF16 is True and prec.CPU_BF16_CHANNELS_LAST is True
    monkeypatch.setenv(prec.ENV_CPU_BF16, "1")
    p = Precision.resolve("auto", "auto", CPU, image_hw=(64, 64))
    assert (p.bf16, p.channels_last) == (True, True) and "has native bf16" in p.reason
    monkeypatch.setattr(prec, "CPU_AUTO_BF16", False)
    p = Precision.resolve("auto", "auto", CPU, image_hw=(64, 64))
    assert (p.bf16, p.channels_last) == (False, False) and "CPU_AUTO_BF16 off" in p.reason
    assert Precision.resolve("bf16", "auto", CPU, image_hw=(64, 64)).bf16  # forcing it still works


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setenv(prec.ENV_CPU_BF16, "1")


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setenv(prec.ENV_CPU_BF16, "0")


# --- detection ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f", "avx512_bf16"}, True), ({"amx_bf16", "sse2"}, True),
                                           ({"avx2", "avx512f", "avx512_vnni"}, False), (set(), False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.delenv(prec.ENV_CPU_BF16, raising=False)
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: frozenset(flags))
    monkeypatch.setattr(prec, "_torch_says_bf16", lambda: not native)  # not consulted when the flags exist
    assert cpu_has_native_bf16() is native


@pytest.mark.parametrize("torch_says", [True, False])
def test_without_cpuinfo_torch_decides(monkeypatch, torch_says):
    monkeypatch.delenv(prec.ENV_CPU_BF16, raising=False)
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: None)
    monkeypatch.setattr(prec, "_torch_says_bf16", lambda: torch_says)
    assert cpu_has_native_bf16() is torch_says


def test_the_environment_variable_overrides_the_flags(monkeypatch):
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv(prec.ENV_CPU_BF16, "0")
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv(prec.ENV_CPU_BF16, "1")
    assert cpu_has_native_bf16() is True
    monkeypatch.setenv(prec.ENV_CPU_BF16, "yes")
    with pytest.raises(ValueError, match="ATTRNET_CPU_BF16 must be 0 or 1"):
        cpu_has_native_bf16()


def test_this_machines_cpuinfo_agrees_with_torch():
    """On Linux x86 the flags and torch's own check must tell the same story (else the rule picks wrongly)."""
    flags = prec._cpuinfo_flags()
    if flags is None or "avx2" not in flags or not hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        pytest.skip("no x86 /proc/cpuinfo, or a torch without its bf16 check")
    assert ("avx512_bf16" in flags) == torch.cpu._is_avx512_bf16_supported()


# --- the auto rule --------------------------------------------------------------------------------------------

def test_auto_on_a_cpu_with_native_bf16_is_bf16_autocast(bf16_cpu):
    p = Precision.resolve("auto", "auto", CPU)
    assert (p.bf16, p.channels_last, p.device_type) == (True, prec.CPU_BF16_CHANNELS_LAST, "cpu")
    assert p.name == "bf16" and p.describe().startswith("bf16 autocast")
    assert "native bf16" in p.reason


def test_auto_on_a_cpu_without_native_bf16_is_plain_fp32(plain_cpu):
    p = Precision.resolve("auto", "auto", CPU)
    assert (p.bf16, p.channels_last, p.name, p.describe()) == (False, False, "fp32", "fp32")
    assert p.as_dict() == {"precision": "fp32", "channels_last": False}
    assert "has no native bf16" in p.reason


@pytest.mark.parametrize("native", ["0", "1"])
def test_forced_settings_win_over_detection(monkeypatch, native):
    monkeypatch.setenv(prec.ENV_CPU_BF16, native)
    assert Precision.resolve("fp32", "auto", CPU) == Precision(False, False, "cpu")
    assert Precision.resolve("bf16", "auto", CPU).bf16 is True  # emulated where not native: slow, but asked for
    for cl, want in [(True, True), (False, False), ("true", True), ("false", False), ("False", False)]:
        assert Precision.resolve("bf16", cl, CPU).channels_last is want
        assert Precision.resolve("fp32", cl, CPU).channels_last is want


@pytest.mark.parametrize("native", ["0", "1"])
def test_cuda_rule_is_unchanged_and_ignores_the_cpu(monkeypatch, native):
    monkeypatch.setenv(prec.ENV_CPU_BF16, native)
    assert Precision.resolve("auto", "auto", CUDA) == Precision(True, True, "cuda")
    assert Precision.resolve("auto", "auto", torch.device("cuda", 1)).device_type == "cuda"
    assert Precision.resolve("fp32", "auto", CUDA) == Precision(False, True, "cuda")  # as before: CL on GPU
    assert Precision.resolve("auto", False, CUDA) == Precision(True, False, "cuda")
    assert Precision.resolve("auto", "auto", CUDA).describe() == "bf16 autocast, channels_last"


def test_other_devices_stay_fp32(bf16_cpu):
    assert Precision.resolve("auto", "auto", torch.device("meta")) == Precision(False, False, "meta")


@pytest.mark.parametrize("p, cl, match", [("fp16", "auto", "precision must be auto, bf16 or fp32"),
                                          ("auto", "yes", "channels_last must be auto, true or false"),
                                          ("auto", 1, "channels_last must be")])
def test_bad_settings_say_what_is_allowed(p, cl, match):
    with pytest.raises(ValueError, match=match):
        Precision.resolve(p, cl, CPU)


def _config(**keys):
    from attrnet.config import load_config
    return load_config(None, [(k if "." in k else f"train.{k}") + f"={v}" for k, v in keys.items()])


# --- tiny images stay fp32 on a CPU (oneDNN's bf16 weight gradients on 1x1 maps) ---------------------------

@pytest.mark.parametrize("hw, bf16", [((16, 16), False), ((8, 8), False), ((16, 64), False), ((17, 17), True),
                                      ((32, 24), True), (None, True)])
def test_auto_keeps_tiny_images_in_fp32_on_a_cpu(bf16_cpu, hw, bf16):
    p = Precision.resolve("auto", "auto", CPU, image_hw=hw)
    assert p.bf16 is bf16 and p.channels_last is (bf16 and prec.CPU_BF16_CHANNELS_LAST)
    if not bf16:
        assert f"images of {min(hw)} px stay fp32" in p.reason
    assert Precision.resolve("auto", "auto", CUDA, image_hw=hw).bf16  # cuDNN: no such exception


def test_bf16_forced_on_tiny_images_is_kept_with_a_warning(bf16_cpu, caplog):
    with caplog.at_level("WARNING", logger="attrnet.precision"):
        assert Precision.resolve("bf16", "auto", CPU, image_hw=(16, 16)).bf16
    assert "train.precision=fp32 is exact there" in caplog.text


def test_why_tiny_images_stay_fp32():
    """The shape behind the exception: a stride-2 3x3 convolution on a 1x1 map (a ResNet's layer4 at 16 px).
    Only the centre tap sees data, so the other taps' weight gradient is exactly 0; fp32 gets that right.
    (Under bf16 autocast, torch 2.14's oneDNN returned garbage there, up to inf, on an avx512_bf16 CPU.)"""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
    conv(torch.randn(4, 64, 1, 1)).sum().backward()
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    assert conv.weight.grad[:, :, off_centre].abs().max().item() == 0.0
    assert conv.weight.grad[:, :, 1, 1].abs().max().item() > 0


def test_from_config_passes_the_image_size(bf16_cpu):
    assert Precision.from_config(_config(**{"data.image_size": 16}), CPU).bf16 is False
    assert Precision.from_config(_config(**{"data.image_size": 64}), CPU).bf16 is True


# --- the config forms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("native, want", [("0", Precision(False, False, "cpu")),
                                          ("1", Precision(True, prec.CPU_BF16_CHANNELS_LAST, "cpu"))])
def test_from_config_resolves_the_train_keys(monkeypatch, native, want):
    monkeypatch.setenv(prec.ENV_CPU_BF16, native)
    assert Precision.from_config(_config(), CPU) == want
    assert Precision.from_config(_config(precision="fp32", channels_last="true"), CPU) == Precision(False, True, "cpu")


def test_from_config_reports_a_bad_config_as_a_user_error(monkeypatch):
    cfg = _config()
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="fp8"))
    with pytest.raises(AttrnetError, match="train.precision must be auto, bf16 or fp32, got 'fp8'"):
        Precision.from_config(bad, CPU)
    monkeypatch.setenv(prec.ENV_CPU_BF16, "maybe")
    with pytest.raises(AttrnetError, match="^ATTRNET_CPU_BF16 must be 0 or 1"):
        Precision.from_config(cfg, CPU)


# --- training and inference under the resolved setting on a CPU ----------------------------------------------

def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _step(p: Precision) -> tuple[float, torch.Tensor, torch.dtype]:
    """One forward + backward as train_one_epoch does it: (loss, flattened gradient, the logits' dtype)."""
    from attrnet.losses import masked_bce

    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 16, 16, generator=g)
    y = (torch.rand(8, 4, generator=g) < 0.5).float()
    y[0, 1] = float("nan")
    model = _net()
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with p.autocast():
        logits = model(x)
    loss = masked_bce(logits, y)
    loss.backward()
    return loss.item(), torch.cat([q.grad.flatten() for q in model.parameters()]), logits.dtype


@pytest.mark.parametrize("native", ["0", "1"])
def test_a_training_step_under_auto_is_finite_and_matches_fp32(monkeypatch, native):
    monkeypatch.setenv(prec.ENV_CPU_BF16, native)
    auto = Precision.resolve("auto", "auto", CPU)
    loss, grad, dtype = _step(auto)
    ref_loss, ref_grad, ref_dtype = _step(Precision.resolve("fp32", False, CPU))
    assert ref_dtype == torch.float32
    assert dtype == (torch.bfloat16 if native == "1" else torch.float32)  # autocast really ran in bf16
    assert math.isfinite(loss) and bool(torch.isfinite(grad).all())
    if native == "0":  # the same arithmetic as the reference
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
    else:  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, so the loss within 2%, gradients aligned
        assert loss == pytest.approx(ref_loss, rel=2e-2)
        assert loss != ref_loss  # it did compute in another precision
        cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0).item()
        assert cos > 0.99, cos


def test_autocast_is_a_no_op_in_fp32_and_bf16_in_bf16():
    a, b = torch.rand(4, 8), torch.rand(8, 3)
    with Precision(False, False, "cpu").autocast():
        assert (a @ b).dtype == torch.float32
    with Precision(True, False, "cpu").autocast():
        out = a @ b
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), a @ b, rtol=2e-2, atol=2e-2)


def test_inference_follows_the_same_rule(monkeypatch, tmp_path):
    """engine.evaluate.predict_logits under the auto setting: float32 logits, close to fp32's."""
    import numpy as np
    from conftest import tiny_config

    from attrnet.data.batches import BatchLoader
    from attrnet.engine.evaluate import predict_logits
    from attrnet.models.build import build_model

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    labels = np.zeros((12, 2), dtype=np.float32)
    loader = BatchLoader(images, labels, np.arange(12), 6, CPU, shuffle=False)
    cfg = tiny_config(tmp_path, data__image_size=32)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, 3).eval()
    out = {}
    for native in ("0", "1"):
        monkeypatch.setenv(prec.ENV_CPU_BF16, native)
        p = Precision.from_config(cfg, CPU)
        assert p.bf16 is (native == "1")
        m = model.to(memory_format=torch.channels_last) if p.channels_last else model
        out[native], _ = predict_logits(m, loader, p)
    assert out["0"].dtype == out["1"].dtype == torch.float32 and out["1"].shape == (12, 2)
    assert bool(torch.isfinite(out["1"]).all())
    scale = out["0"].abs().max().item()
    assert (out["1"] - out["0"]).abs().max().item() <= 0.05 * scale + 1e-3
