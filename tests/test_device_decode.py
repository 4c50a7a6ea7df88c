"""Decoding on a device (nvJPEG on a GPU), run on the CPU through the same torchvision calls: batched decode_jpeg
on a list, resizing there, the fallbacks, the cache built on the device during the first epoch, and prediction
with its one-batch lag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_csv_rows, tiny_config, write_csv_folder, write_jpeg
from PIL import Image

from attrnet.data.cache import decode_all, open_or_start
from attrnet.data.cache_files import cache_key
from attrnet.data.device_decode import decode_batch, read_encoded
from attrnet.data.images import load_image

CPU = torch.device("cpu")


def _files(tmp_path):
    """JPEGs of three sizes, a PNG, a file that is no image, a truncated JPEG, a JPEG whose header declares
    65535 x 65535 pixels, and a missing file."""
    paths = [write_jpeg(tmp_path / f"{i}.jpg", i, size) for i, size in enumerate([(20, 24), (20, 24), (33, 17),
                                                                                   (40, 40), (20, 24)])]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 22, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "text.jpg").write_bytes(b"not an image")
    (tmp_path / "cut.jpg").write_bytes(paths[0].read_bytes()[:60])
    huge = bytearray(paths[1].read_bytes())
    sof = huge.index(b"\xff\xc0") + 5  # the frame header's height and width
    huge[sof:sof + 4] = b"\xff\xff\xff\xff"
    (tmp_path / "huge.jpg").write_bytes(bytes(huge))
    return paths + [tmp_path / n for n in ("p.png", "text.jpg", "cut.jpg", "huge.jpg", "missing.jpg")]


def test_batched_device_decode_gives_the_cpu_decoders_pixels_and_reports_bad_files(tmp_path):
    paths = _files(tmp_path)
    pixels, ok = decode_batch([read_encoded(p) for p in paths], (16, 12), "squash", CPU)
    assert pixels.shape == (len(paths), 3, 16, 12) and pixels.dtype == torch.uint8
    assert ok.tolist() == [True] * 6 + [False] * 4
    for i in range(6):  # on the CPU the same libjpeg-turbo and the same resize: the same pixels
        assert torch.equal(pixels[i], load_image(paths[i], (16, 12)))
    assert pixels[6:].abs().sum() == 0
    # one bad JPEG among good ones does not send the others to a slower path with other pixels
    good_only, _ = decode_batch([read_encoded(p) for p in paths[:5]], (16, 12), "crop", CPU)
    assert all(torch.equal(good_only[i], load_image(paths[i], (16, 12), resize="crop")) for i in range(5))


def test_cache_built_on_the_device_during_the_first_epoch(tmp_path):
    """Rows are decoded batch by batch in the first epoch's order as they are asked for; finish() writes the
    disk cache (under its own key), and the device copy comes with it."""
    paths = _files(tmp_path / "img" if (tmp_path / "img").mkdir() is None else tmp_path)
    first = [np.array([9, 3, 1]), np.array([0, 5])]
    build = open_or_start(paths, (16, 12), cache_root=tmp_path / "cache", first=lambda: first, decode_device=CPU)
    assert type(build).__name__ == "DeviceCacheBuild"
    assert build.wait(np.array([3, 9, 1])).tolist() == [True, False, True]
    assert build.done.sum() == 3  # only the first batch so far
    assert torch.equal(build.images[3], load_image(paths[3], (16, 12)))
    done = build.finish()
    assert done.device_images is build.images and done.ok.tolist() == [True] * 6 + [False] * 4
    assert np.array_equal(np.asarray(done.images), build.images.numpy())
    cpu = decode_all(paths, (16, 12), cache_root=tmp_path / "cache", progress=False)
    assert np.array_equal(np.asarray(cpu.images), np.asarray(done.images))  # the CPU's decoder: equal pixels
    keys = {p.name for p in (tmp_path / "cache").iterdir()}
    assert keys == {cache_key(paths, (16, 12), False, "squash"), cache_key(paths, (16, 12), False, "squash", "cpu-decode")}
    again = open_or_start(paths, (16, 12), cache_root=tmp_path / "cache", decode_device=CPU)
    assert np.array_equal(np.asarray(again.images), np.asarray(done.images)) and again.device_images is None


def test_training_on_a_cache_decoded_on_the_device_as_the_epoch_goes(tmp_path, monkeypatch):
    """fit with the device build (the GPU's path, forced here on the CPU): each first-epoch batch waits for its
    rows through the loaders' `ready` path and reads the device tensor; the step sees the same images and labels
    as on a CPU-built cache (an unreadable image's labels unknown), so its loss is the same."""
    from attrnet.data.device_cache import DeviceCacheBuild
    from attrnet.engine import setup
    from attrnet.engine.train import fit

    rows = random_csv_rows(24, ["A", "B"], seed=5)
    data = write_csv_folder(tmp_path / "d", ["image", "A", "B"], rows)
    (data / rows[7][0]).write_bytes(b"broken")
    waits = []
    real_wait = DeviceCacheBuild.wait
    monkeypatch.setattr(DeviceCacheBuild, "wait", lambda self, idx: waits.append(len(idx)) or real_wait(self, idx))

    def first_loss(name: str, steps: int) -> float:
        # no flips or shifts: their draws belong to a position in the batch, and the host path sorts a batch's
        # rows; one step: a few Adam steps turn rounding differences into different weights
        cfg = tiny_config(tmp_path / f"{name}-cache", data__root=data, data__format="csv", train__epochs=1,
                          train__max_steps_per_epoch=steps, data__val_fraction=0.25, data__test_fraction=0.25,
                          train__seed=3, train__flip="false", train__shift=0, train__precision="fp32")
        fit(cfg, tmp_path / f"{name}{steps}", progress=False)
        return float((tmp_path / f"{name}{steps}" / "metrics.csv").read_text().splitlines()[1].split(",")[1])

    on_cpu = first_loss("cpu", 1)
    monkeypatch.setattr(setup, "_decode_device", lambda cfg, device, n: CPU)
    assert first_loss("dev", 1) == pytest.approx(on_cpu, rel=1e-6)
    waits.clear()
    first_loss("dev3", 3)
    assert waits[:3] == [4, 4, 4]  # each of the first epoch's batches waited for its own rows
    (folder,) = (tmp_path / "dev-cache").iterdir()  # the device build's own cache, published at the end
    assert json.loads((folder / "meta.json").read_text())["decoder"] == "cpu-decode"


def test_prediction_with_device_decoding_and_a_one_batch_lag(tmp_path, csv_run):
    """iter_files' device path (forced on the CPU): every image once, in input order, the same probabilities as
    the model's own predict, the unreadable ones reported."""
    from attrnet.inference import load_model
    from attrnet.data.images import find_images
    from attrnet.predict import iter_files

    model = load_model(csv_run["run"], "cpu", precision="fp32")
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    paths = find_images([csv_run["data"]]) + [tmp_path / "junk.jpg"]
    out_paths, probs, bad = [], [], []
    for p, pr, b in iter_files(model, paths, batch_size=6, device_decode=True):
        out_paths += p
        probs.append(pr)
        bad += b
    assert out_paths == paths[:-1] and [b for b, _ in bad] == [tmp_path / "junk.jpg"]
    expected = model.predict([str(p) for p in paths[:-1]]).probabilities
    np.testing.assert_allclose(np.concatenate(probs), expected, rtol=0, atol=1e-6)


def test_a_bare_cuda_device_is_the_current_gpu(monkeypatch):
    """torch.device('cuda') != torch.device('cuda:0'): the GPU-decoded cache must still be found as on the
    device the training asked for (else a second copy of the whole set is made on the GPU)."""
    from attrnet.device import same_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cuda, cuda0, cuda1, cpu = (torch.device(d) for d in ("cuda", "cuda:0", "cuda:1", "cpu"))
    assert cuda != cuda0 and same_device(cuda, cuda0) and same_device(cuda0, cuda)
    assert not same_device(cuda, cuda1) and not same_device(cuda, cpu) and same_device(cpu, torch.device("cpu"))
