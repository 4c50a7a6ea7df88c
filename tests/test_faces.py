"""Faces in ordinary photos (attrnet.faces, Predictor.predict_faces, predict --faces, data align): the alignment's
geometry, the order and independence of several faces, photos without faces, and the photos people have (EXIF,
grey, RGBA, large, corrupt, read-only arrays).

The one real face: matplotlib's sample photo of Grace Hopper (in matplotlib's wheel, a dependency), re-posed."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from attrnet.faces.align import apply_transform, similarity_transform, warp_faces
from attrnet.faces.template import CELEBA_FRAME, CELEBA_TEMPLATE

pytest.importorskip("facenet_pytorch")
GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
TEMPLATE = np.asarray(CELEBA_TEMPLATE)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


# ---- geometry ------------------------------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_similarity_and_never_mirrors():
    S = _similarity(23.0, 1.7, 40.0, -12.5)
    moved = apply_transform(S, TEMPLATE)
    np.testing.assert_allclose(similarity_transform(TEMPLATE, moved), S, atol=1e-9)
    mirrored = TEMPLATE * [-1, 1]  # the best map onto the template would be a reflection: refused
    M = similarity_transform(mirrored, TEMPLATE)
    assert np.linalg.det(M[:, :2]) > 0


def test_a_face_reposed_by_a_known_similarity_comes_back_to_the_template_within_a_pixel():
    """Dots drawn at the template's landmarks in the frame, re-posed into a larger photo by a known similarity
    (rotated 25 degrees, 1.6x), then aligned back from the re-posed landmark positions and warped: each dot's
    centre lands within 1 px of its template position."""
    fh, fw = CELEBA_FRAME
    frame = torch.zeros((3, fh, fw), dtype=torch.uint8)
    yy, xx = np.mgrid[0:fh, 0:fw] + 0.5
    for x, y in TEMPLATE:
        frame[:, (xx - x) ** 2 + (yy - y) ** 2 <= 2.5 ** 2] = 255
    S = _similarity(25.0, 1.6, 160.0, 40.0)                     # frame -> photo
    photo = warp_faces(frame, [S], (480, 560))[0]               # the frame drawn into the photo by S
    landmarks = apply_transform(S, TEMPLATE)                    # where the landmarks are in the photo
    aligned = warp_faces(photo, [similarity_transform(landmarks, TEMPLATE)], CELEBA_FRAME)[0].float()[0]
    for x, y in TEMPLATE:
        near = ((torch.from_numpy(xx) - x) ** 2 + (torch.from_numpy(yy) - y) ** 2) <= 7 ** 2
        w = aligned * near
        cx, cy = float((w * torch.from_numpy(xx)).sum() / w.sum()), float((w * torch.from_numpy(yy)).sum() / w.sum())
        assert math.hypot(cx - x, cy - y) < 1.0, (x, y, cx, cy)


# ---- a face model and photos ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    """A tiny model trained on a CelebA-layout folder: it says it reads aligned faces at CelebA's template."""
    from attrnet.engine.train import fit
    from attrnet.inference import load_model
    from conftest import CELEBA_NAMES, CELEBA_VALUES, tiny_config, write_celeba

    base = tmp_path_factory.mktemp("face_model")
    data = write_celeba(base / "celeba", CELEBA_NAMES, CELEBA_VALUES, size=(24, 30))
    fit(tiny_config(base / "cache", data__root=data, data__image_size="[40,32]"), base / "run", progress=False)
    model = load_model(base / "run", "cpu", precision="fp32")
    assert model.info.preprocessing.input == "aligned_face"
    assert model.info.preprocessing.face_template == CELEBA_TEMPLATE
    return model


def _grace(scale: float = 1.0, angle: float = 0.0) -> Image.Image:
    img = Image.open(GRACE).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    return img.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=(90, 120, 90)) if angle else img


def _canvas(size=(900, 640), colour=(90, 120, 90)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _expected(model, photo: Image.Image, face: dict) -> np.ndarray:
    """What the model says of this face read through the pipeline's own steps, from the face's own landmarks."""
    from attrnet.data.images import resize_image
    pre = model.info.preprocessing
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)
    crop = warp_faces(pixels, [similarity_transform(np.asarray(face["landmarks"]), TEMPLATE)], pre.face_frame)[0]
    return model.probabilities(resize_image(crop, pre.image_size, pre.resize)[None])[0]


def test_several_faces_come_largest_first_each_with_its_own_prediction(face_model):
    photo = _canvas()
    photo.paste(_grace(0.45), (40, 60))
    photo.paste(_grace(0.8, angle=15), (380, 80))
    result = face_model.predict_faces([photo, _canvas((300, 200))])
    faces = result.faces[0]
    assert len(faces) == 2 and result.faces[1] == [] and result.without_face == [1] and not result.failed
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert areas[0] > areas[1] and faces[0]["box"][0] > 380 > faces[1]["box"][2]  # the larger one, on the right
    for f in faces:
        np.testing.assert_allclose(f["probabilities"], _expected(face_model, photo, f), rtol=0, atol=1e-6)
        assert f["decisions"].tolist() == (f["probabilities"] >= face_model.thresholds).astype(int).tolist()
        assert len(f["landmarks"]) == 5 and f["score"] >= 0.9
    assert set(result.seconds) == {"decode", "detect", "align", "model"}


def test_a_model_of_whole_images_refuses_faces(csv_run):
    from attrnet.errors import AttrnetError
    from attrnet.inference import load_model
    with pytest.raises(AttrnetError, match="trained on whole images"):
        load_model(csv_run["run"], "cpu").predict_faces([GRACE])


def test_the_photos_people_have(face_model, tmp_path):
    """EXIF-rotated JPEG, grey, RGBA PNG, a 4000 x 3000 photo, a corrupt file, a read-only array: each face found
    (where there is one) in upright photo coordinates; the corrupt file reported, not raised."""
    upright = _canvas((640, 480))
    upright.paste(_grace(0.5), (200, 80))
    ref = face_model.predict_faces([upright]).faces[0]
    assert len(ref) == 1
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the stored pixels are upright turned 90 counter-clockwise
    upright.rotate(90, expand=True).save(tmp_path / "exif.jpg", "JPEG", quality=95, exif=exif)
    upright.convert("L").save(tmp_path / "grey.jpg", "JPEG", quality=95)
    rgba = upright.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(tmp_path / "rgba.png")
    big = _canvas((4000, 3000))
    big.paste(_grace(2.5), (1500, 700))
    big.save(tmp_path / "big.jpg", "JPEG", quality=90)
    (tmp_path / "corrupt.jpg").write_bytes((tmp_path / "grey.jpg").read_bytes()[:300])
    frozen = np.asarray(upright)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")  # torch's, for a read-only array
        result = face_model.predict_faces([tmp_path / "exif.jpg", tmp_path / "grey.jpg", tmp_path / "rgba.png",
                                           tmp_path / "big.jpg", tmp_path / "corrupt.jpg", frozen])
    assert [i for i, _ in result.failed] == [4]
    assert [len(f) for f in result.faces] == [1, 1, 1, 1, 0, 1]
    # the same face where the upright photo has it: JPEG, grey and alpha change the pixels a little, and MTCNN's
    # box regression moves an edge by a few per cent of the face's width; another face would be off by all of it
    width = ref[0]["box"][2] - ref[0]["box"][0]
    for i in (0, 1, 2, 5):
        np.testing.assert_allclose(result.faces[i][0]["box"], ref[0]["box"], atol=0.1 * width)
    assert result.faces[3][0]["box"][0] > 1400


def test_predict_cli_writes_one_row_per_face(run_cli, face_model, csv_run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    two = _canvas()
    two.paste(_grace(0.45), (40, 60))
    two.paste(_grace(0.8), (380, 80))
    two.save(photos / "two.jpg", "JPEG", quality=95)
    _canvas((300, 200)).save(photos / "none.jpg", "JPEG")
    run = Path(face_model.info.source).parent.parent
    code, out, err = run_cli(["predict", run, photos, "--out", tmp_path / "faces.csv", "--device", "cpu"])
    assert code == 0, err
    lines = (tmp_path / "faces.csv").read_text().splitlines()
    names = face_model.attributes
    assert lines[0].split(",") == (["image", "face", "x1", "y1", "x2", "y2", "face_score"]
                                   + [f"{a}_prob" for a in names] + names)
    assert [ln.split(",")[:2] for ln in lines[1:]] == [[str(photos / "two.jpg"), "0"], [str(photos / "two.jpg"), "1"]]
    assert "1 image(s) without a face" in err and "none.jpg" in err and "wrote 2 face(s) of 2 image(s)" in out
    code, _, err = run_cli(["predict", run, photos, "--out", tmp_path / "faces.json", "--device", "cpu"])
    nested = json.loads((tmp_path / "faces.json").read_text())
    assert [len(i["faces"]) for i in nested["images"]] == [2] and nested["without_face"] == [str(photos / "none.jpg")]
    code, _, err = run_cli(["predict", csv_run["run"], photos, "--faces", "on", "--out", tmp_path / "x.csv"])
    assert code == 2 and err.count("\n") == 1 and "trained on whole images" in err
    assert not (tmp_path / "x.csv").exists()


def test_a_missing_faces_extra_is_one_line(run_cli, face_model, monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import fails as if it were not installed
    _canvas((64, 64)).save(tmp_path / "p.jpg")
    run = Path(face_model.info.source).parent.parent
    code, _, err = run_cli(["predict", run, tmp_path / "p.jpg", "--out", tmp_path / "o.csv", "--device", "cpu"])
    assert code == 2 and err == "attrnet: error: finding faces needs facenet-pytorch: pip install 'attrnet[faces]'\n"
    assert not (tmp_path / "o.csv").exists()


def test_data_align_writes_crops_labels_and_the_lists(run_cli, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    _grace(0.5).save(src / "a.jpg", "JPEG", quality=95)
    pair = _canvas()
    pair.paste(_grace(0.4), (30, 40))
    pair.paste(_grace(0.6), (400, 40))
    pair.save(src / "b.jpg", "JPEG", quality=95)
    _canvas((200, 150)).save(src / "c.jpg", "JPEG")
    (src / "labels.csv").write_text("image,Smiling,Eyeglasses\na.jpg,1,0\nb.jpg,0,\nc.jpg,1,1\n")
    out = tmp_path / "aligned"
    code, printed, err = run_cli(["data", "align", src, "--out", out, "--labels", "labels.csv"])
    assert code == 0, err
    assert "wrote 2 aligned face(s)" in printed
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.jpg", "b.jpg"]
    assert Image.open(out / "images" / "a.jpg").size == (CELEBA_FRAME[1], CELEBA_FRAME[0])
    assert (out / "no_face.txt").read_text() == "c.jpg\n" and (out / "several_faces.txt").read_text() == "b.jpg 2\n"
    assert (out / "labels.csv").read_text().splitlines() == ["image,Smiling,Eyeglasses", "images/a.jpg,1,0",
                                                             "images/b.jpg,0,"]
    prov = json.loads((out / "attrnet-data.json").read_text())
    assert prov["input"] == "aligned_face" and prov["face_template"] == [list(p) for p in CELEBA_TEMPLATE]
    from attrnet.data.csv_folder import read_csv_folder
    assert read_csv_folder(out).names == ["Smiling", "Eyeglasses"]  # ready to train on
    code, _, err = run_cli(["data", "align", src, "--out", out])
    assert code == 2 and "not empty" in err


def test_rest_predict_returns_each_photos_faces(face_model, csv_run):
    """/v1/predict on a face model: per image its faces (largest first) with the same probabilities as
    predict_faces; ?faces=false reads the image whole; a model of whole images refuses faces=true."""
    fastapi = pytest.importorskip("fastapi")  # noqa: F841 - the serve extra
    from fastapi.testclient import TestClient

    from attrnet.inference import load_model
    from attrnet.serve.app import create_app

    photo = _canvas()
    photo.paste(_grace(0.45), (40, 60))
    photo.paste(_grace(0.8), (380, 80))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    expected = face_model.predict_faces([buf.getvalue()]).faces[0]
    with TestClient(create_app(face_model)) as client:
        assert client.get("/v1/model").json()["faces"] is True
        body = client.post("/v1/predict", files={"file": ("two.png", buf.getvalue())}).json()
        (result,) = body["results"]
        assert result["size"] == [900, 640] and len(result["faces"]) == 2
        for got, want in zip(result["faces"], expected):
            assert got["box"] == pytest.approx(want["box"], abs=0.06)
            assert [got["attributes"][a]["probability"] for a in face_model.attributes] == \
                pytest.approx(want["probabilities"], abs=1e-5)
        whole = client.post("/v1/predict?faces=false", files={"file": ("two.png", buf.getvalue())}).json()
        assert "attributes" in whole["results"][0] and "faces" not in whole["results"][0]
        bad = client.post("/v1/predict?faces=maybe", files={"file": ("two.png", buf.getvalue())})
        assert bad.status_code == 400 and "faces must be one of auto, true, false" in bad.json()["error"]
        none = client.post("/v1/predict", files={"file": ("blank.png", _png(_canvas((200, 150))))}).json()
        assert none["results"][0]["faces"] == []
    with TestClient(create_app(load_model(csv_run["run"], "cpu"))) as client:
        refused = client.post("/v1/predict?faces=true", files={"file": ("two.png", buf.getvalue())})
        assert refused.status_code == 400 and "whole images" in refused.json()["error"]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
