"""Every bad input gets one line, `attrnet: error: ...`, exit code 2, no traceback, and changes nothing.

Each case runs the real command line (attrnet.cli.main) in-process against a small world: a labelled CSV
folder, a trained run, a second run that bad starts must not touch, and whatever bad file the case makes.
Every file of that world is hashed before and after: a refused command may not change or remove any of them.
Timestamped log lines of the work done before the problem showed (reading the labels, say) and erased progress
bars may come before the error line; nothing else may.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import random_csv_rows, write_csv_folder, write_jpeg

from attrnet.cli import main

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def world(tmp_path_factory, csv_run) -> dict:
    base = tmp_path_factory.mktemp("bad_inputs")
    victim = base / "victim"  # an existing finished run that no bad start may touch
    shutil.copytree(csv_run["run"], victim)
    plain_file = base / "plain.txt"
    plain_file.write_text("a file, not a folder\n")
    synth = base / "synth"
    synth.mkdir()
    (synth / "keep.txt").write_text("someone's file\n")
    yield {"data": csv_run["data"], "run": csv_run["run"], "victim": victim, "base": base, "cache": csv_run["cache"],
           "file": plain_file, "synth": synth}
    shutil.rmtree(base, ignore_errors=True)


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list, capsys) -> tuple[int, str]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []  # main's logging.basicConfig writes to the captured stderr, as in a shell
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
    return code, capsys.readouterr().err


def _message_lines(err: str) -> list[str]:
    """stderr less what a terminal shows and then erases or that is not a message: progress bars (redrawn
    with carriage returns and cleared) and timestamped log records of the work done before the error."""
    segments = [seg.strip() for line in err.splitlines() for seg in line.split("\r")]
    progress = re.compile(r"\|\s*\d+/\d+ \[")  # tqdm: "decoding 8 images:  0%|   | 0/8 [00:00<?, ?img/s]"
    log_record = re.compile(r"^\d\d:\d\d:\d\d ")
    return [seg for seg in segments if seg and not progress.search(seg) and not log_record.match(seg)]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _train(w, t, *extra) -> list:
    return ["train", "--out", t / "newrun", "train.device=cpu", f"data.cache_dir={w['cache']}", "data.image_size=16",
            f"data.root={w['data']}", "data.format=csv", "train.epochs=1", "train.batch_size=4",
            "train.max_steps_per_epoch=1", *extra]


def _train_config(w, t, text: str | bytes) -> list:
    return ["train", "--config", _write(t / "bad.yaml", text), "--out", t / "newrun"]


def _csv_data(t: Path, header: str, rows: list[str], make_images: bool = True, raw: bytes | None = None) -> Path:
    root = t / "csvdata"
    for i in range(8):
        if make_images:
            write_jpeg(root / f"img{i:03d}.jpg", seed=i)
    _write(root / "labels.csv", raw if raw is not None else header + "\n" + "\n".join(rows) + "\n")
    return root


def _csv_rows(n=8) -> list[str]:
    return [f"img{i:03d}.jpg,{i % 2},{(i // 2) % 2}" for i in range(n)]


def _train_on(t, root, *extra):
    return ["train", "--out", t / "newrun", "train.device=cpu", f"data.cache_dir={t / 'cache'}", "data.image_size=16",
            f"data.root={root}", "data.format=csv", "train.epochs=1", "train.batch_size=4", *extra]


def _edited_checkpoint(w, t, edit) -> Path:
    ckpt = torch.load(w["run"] / "checkpoints" / "best.pt", weights_only=True)
    edit(ckpt)
    path = t / "edited.pt"
    torch.save(ckpt, path)
    return path


def _shape_mismatch(ckpt):
    key = next(k for k in ckpt["model"] if k.endswith("weight") and ckpt["model"][k].ndim == 2)
    ckpt["model"][key] = torch.zeros(3, 3)
    ckpt["ema"] = None


def _missing_key(ckpt):
    ckpt["model"].pop(next(iter(ckpt["model"])))
    ckpt["ema"] = None


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _payload_checkpoint(w, t) -> Path:
    ckpt = torch.load(w["run"] / "checkpoints" / "best.pt", weights_only=True)
    ckpt["history"] = [_Payload(t / "PAYLOAD_RAN")]
    path = t / "evil.pt"
    torch.save(ckpt, path)
    return path


def _empty_folder(t: Path) -> Path:
    (t / "empty").mkdir()
    return t / "empty"


def _unreadable_images(t: Path) -> Path:
    folder = t / "junk"
    for i in range(3):
        _write(folder / f"bad{i}.jpg", b"not a jpeg at all")
    return folder


# (id, argv from (world, case folder), a piece of the expected message)
CASES = [
    # --- config files --------------------------------------------------------------------------------------
    ("config-top-level-list", lambda w, t: _train_config(w, t, "- a\n- b\n"), "expected a mapping of sections"),
    ("config-top-level-scalar", lambda w, t: _train_config(w, t, "42\n"), "expected a mapping of sections"),
    ("config-section-list", lambda w, t: _train_config(w, t, "train: [1, 2]\n"), "section 'train' must be a mapping"),
    ("config-section-scalar", lambda w, t: _train_config(w, t, "data: 5\n"), "section 'data' must be a mapping"),
    ("config-unknown-section", lambda w, t: _train_config(w, t, "trian: {epochs: 1}\n"), "unknown section 'trian'"),
    ("config-unknown-key", lambda w, t: _train_config(w, t, "train: {epoch: 1}\n"), "unknown key train.epoch"),
    ("config-bad-yaml", lambda w, t: _train_config(w, t, "train:\n  lr: [1,\n"), "not valid YAML (line"),
    ("config-not-utf8", lambda w, t: _train_config(w, t, b"train:\n  lr: \xff\xfe\n"), "not a UTF-8 text file"),
    ("config-missing", lambda w, t: ["train", "--config", t / "nope.yaml"], "config file not found"),
    ("config-is-folder", lambda w, t: ["train", "--config", t], "config file not found"),
    ("config-bad-value-in-file", lambda w, t: _train_config(w, t, "train:\n  lr: -1\n"), "train.lr must be > 0"),
    # --- config values ---------------------------------------------------------------------------------------
    ("lr-zero", lambda w, t: _train(w, t, "train.lr=0"), "train.lr must be > 0"),
    ("lr-negative", lambda w, t: _train(w, t, "train.lr=-0.1"), "train.lr must be > 0"),
    ("lr-text", lambda w, t: _train(w, t, "train.lr=fast"), "train.lr must be a number"),
    ("lr-nan", lambda w, t: _train(w, t, "train.lr=.nan"), "train.lr must be a number"),
    ("image-size-zero", lambda w, t: _train(w, t, "data.image_size=0"), "data.image_size"),
    ("image-size-negative", lambda w, t: _train(w, t, "data.image_size=-16"), "data.image_size"),
    ("image-size-three", lambda w, t: _train(w, t, "data.image_size=[16,16,16]"), "data.image_size"),
    ("batch-size-zero", lambda w, t: _train(w, t, "train.batch_size=0"), "train.batch_size must be >= 1"),
    ("epochs-zero", lambda w, t: _train(w, t, "train.epochs=0"), "train.epochs must be >= 1"),
    ("epochs-fraction", lambda w, t: _train(w, t, "train.epochs=1.5"), "train.epochs must be a whole number"),
    ("threshold-metric", lambda w, t: _train(w, t, "train.threshold_metric=bogus"), "train.threshold_metric must be one of"),
    ("schedule", lambda w, t: _train(w, t, "train.schedule=linear"), "train.schedule must be one of"),
    ("backbone", lambda w, t: _train(w, t, "model.backbone=resnet9000"), "unknown backbone 'resnet9000'"),
    ("tta", lambda w, t: _train(w, t, "model.tta=rotate"), "model.tta must be one of"),
    ("precision", lambda w, t: _train(w, t, "train.precision=fp8"), "train.precision must be one of"),
    ("head", lambda w, t: _train(w, t, "model.head=shared"), "model.head must be one of"),
    ("pretrained-missing", lambda w, t: _train(w, t, f"model.pretrained={t / 'no.pth'}"), "no such weights file"),
    ("workers-negative", lambda w, t: _train(w, t, "data.workers=-1"), "data.workers must be >= 0"),
    ("weight-decay-negative", lambda w, t: _train(w, t, "train.weight_decay=-1"), "train.weight_decay must be >= 0"),
    ("mixup-negative", lambda w, t: _train(w, t, "train.mixup=-1"), "train.mixup must be >= 0"),
    ("ema-above-one", lambda w, t: _train(w, t, "train.ema=1.5"), "train.ema must be < 1"),
    ("dropout-one", lambda w, t: _train(w, t, "model.dropout=1"), "model.dropout must be < 1"),
    ("fractions-sum", lambda w, t: _train(w, t, "data.val_fraction=0.5", "data.test_fraction=0.5"), "must be below 1"),
    ("attributes-twice", lambda w, t: _train(w, t, "data.attributes=[A,A]"), "data.attributes names 'A' twice"),
    ("attributes-unknown", lambda w, t: _train(w, t, "data.attributes=[A,Z]"), "unknown attribute(s) Z"),
    ("format", lambda w, t: _train(w, t, "data.format=parquet"), "data.format must be one of"),
    ("resize", lambda w, t: _train(w, t, "data.resize=stretch"), "data.resize must be one of"),
    ("device-name", lambda w, t: _train(w, t, "train.device=gpu"), "train.device must be auto, cpu, cuda"),
    ("flag-not-bool", lambda w, t: _train(w, t, "train.flip=maybe"), "train.flip must be true or false"),
    ("trunk-not-list", lambda w, t: _train(w, t, "model.trunk=4096"), "model.trunk must be a list"),
    ("grid-unknown-key", lambda w, t: _train(w, t, "mtl.grid={nu: [1]}"), "mtl.grid unknown key 'nu'"),
    ("groups-unknown-preset", lambda w, t: _train(w, t, "data.groups=faces"), "data.groups unknown preset"),
    ("override-no-equals", lambda w, t: _train(w, t, "train.epochs"), "must look like section.key=value"),
    ("override-no-section", lambda w, t: _train(w, t, "epochs=3"), "must be section.key"),
    ("override-bad-yaml", lambda w, t: _train(w, t, "train.lr=[1,"), "value is not valid YAML"),
    # --- data folders and label files ------------------------------------------------------------------------
    ("data-root-missing", lambda w, t: _train_on(t, t / "nowhere"), "data folder not found"),
    ("labels-missing", lambda w, t: _train_on(t, _empty_folder(t)), "label file not found"),
    ("labels-not-utf8", lambda w, t: _train_on(t, _csv_data(t, "", [], raw=b"image,A\n\xff\xfe,1\n")), "UTF-8"),
    ("labels-empty", lambda w, t: _train_on(t, _csv_data(t, "", [], raw=b"")), "labels.csv"),
    ("labels-attribute-twice", lambda w, t: _train_on(t, _csv_data(t, "image,A,A", _csv_rows())), "labels.csv"),
    ("labels-image-twice", lambda w, t: _train_on(t, _csv_data(t, "image,A,B", _csv_rows() + ["img000.jpg,1,1"])),
     "labels.csv"),
    ("labels-short-row", lambda w, t: _train_on(t, _csv_data(t, "image,A,B", _csv_rows() + ["img001.jpg,1"])),
     "labels.csv"),
    ("labels-bad-value", lambda w, t: _train_on(t, _csv_data(t, "image,A,B", ["img000.jpg,maybe,1"] + _csv_rows()[1:])),
     "labels.csv"),
    ("images-all-unreadable", lambda w, t: _train_on(t, _csv_data(t, "image,A,B", _csv_rows(), make_images=False)),
     "csvdata"),
    ("images-bad-error-mode", lambda w, t: _train_on(t, _bad_image_data(t), "data.bad_images=error"),
     "unreadable image"),
    # --- run folders and output paths ------------------------------------------------------------------------
    ("train-existing-run", lambda w, t: _train(w, t)[:1] + ["--out", w["victim"]] + _train(w, t)[3:],
     "already holds an attrnet run"),
    ("train-resume-changed", lambda w, t: ["train", "--resume", "--config", w["victim"] / "config.yaml", "--out",
                                           w["victim"], "data.image_size=24"],
     "--resume: data.image_size was 16 in this run, now 24. A resumed run may only add epochs"),
    ("train-resume-other-lr", lambda w, t: ["train", "--resume", "--config", w["victim"] / "config.yaml",
                                                "--out", w["victim"], "train.epochs=1", "train.lr=0.5"],
     "train.lr was 0.002 in this run, now 0.5"),
    ("train-resume-and-overwrite", lambda w, t: _train(w, t, "--resume", "--overwrite"), "contradict"),
    ("train-out-under-file", lambda w, t: _train(w, t)[:1] + ["--out", w["file"] / "run"] + _train(w, t)[3:],
     "is a file, not a folder"),
    ("train-out-is-file", lambda w, t: _train(w, t)[:1] + ["--out", w["file"]] + _train(w, t)[3:], "is a file"),
    ("train-out-read-only", lambda w, t: _train(w, t)[:1] + ["--out", "/proc/attrnet-run"] + _train(w, t)[3:],
     "cannot be written"),
    ("train-device-cuda", lambda w, t: _train(w, t, "train.device=cuda") if NO_GPU else pytest.skip("has a GPU"),
     "no CUDA GPU"),
    ("evaluate-out-is-folder", lambda w, t: ["evaluate", w["run"], "--out", t], "is a folder"),
    ("evaluate-out-under-file", lambda w, t: ["evaluate", w["run"], "--out", w["file"] / "m.json"], "is a file"),
    ("evaluate-out-read-only", lambda w, t: ["evaluate", w["run"], "--out", "/proc/attrnet.json"], "cannot be written"),
    ("predict-out-is-folder", lambda w, t: ["predict", w["run"], w["data"], "--out", t], "is a folder"),
    ("predict-out-under-file", lambda w, t: ["predict", w["run"], w["data"], "--out", w["file"] / "p.csv"], "is a file"),
    ("predict-out-suffix", lambda w, t: ["predict", w["run"], w["data"], "--out", t / "p.txt", "--device", "cpu"],
     "must end in .csv or .json"),
    ("synth-out-under-file", lambda w, t: ["data", "synth", "--out", w["file"] / "faces", "--n", "2"], "is a file"),
    ("synth-out-not-empty", lambda w, t: ["data", "synth", "--out", w["synth"], "--n", "2"], "already has files"),
    ("synth-n-negative", lambda w, t: ["data", "synth", "--out", t / "s", "--n", "-5"], "--n: must be at least 1"),
    ("synth-size-zero", lambda w, t: ["data", "synth", "--out", t / "s", "--size", "0"], "--size: must be at least 8"),
    # --- command-line arguments ------------------------------------------------------------------------------
    ("unknown-command", lambda w, t: ["fit"], "invalid choice"),
    ("evaluate-batch-size-zero", lambda w, t: ["evaluate", w["run"], "--batch-size", "0"], "--batch-size"),
    ("predict-batch-size-zero", lambda w, t: ["predict", w["run"], w["data"], "--batch-size", "0"], "--batch-size"),
    ("predict-batch-size-text", lambda w, t: ["predict", w["run"], w["data"], "--batch-size", "many"], "--batch-size"),
    ("evaluate-tta", lambda w, t: ["evaluate", w["run"], "--tta", "rotate"], "--tta"),
    ("evaluate-split", lambda w, t: ["evaluate", w["run"], "--split", "holdout"], "--split"),
    ("evaluate-device", lambda w, t: ["evaluate", w["run"], "--device", "tpu"], "unknown device 'tpu'"),
    ("evaluate-cuda", lambda w, t: ["evaluate", w["run"], "--device", "cuda"] if NO_GPU else pytest.skip("GPU"),
     "no CUDA GPU"),
    ("predict-cuda", lambda w, t: ["predict", w["run"], w["data"], "--device", "cuda"] if NO_GPU else pytest.skip("GPU"),
     "no CUDA GPU"),
    ("evaluate-data-missing", lambda w, t: ["evaluate", w["run"], "--data", t / "nowhere", "--device", "cpu"],
     "data folder not found"),
    ("evaluate-format", lambda w, t: ["evaluate", w["run"], "--format", "parquet", "--device", "cpu"], "data.format"),
    ("bench-cases", lambda w, t: ["bench", "--cases", "warp_speed", "--device", "cpu"], "unknown bench case"),
    ("inspect-missing", lambda w, t: ["data", "inspect", t / "nowhere"], "nowhere"),
    # --- checkpoints -----------------------------------------------------------------------------------------
    ("checkpoint-missing", lambda w, t: ["evaluate", t / "none.pt"], "checkpoint not found"),
    ("checkpoint-empty-run-folder", lambda w, t: ["predict", _empty_folder(t), w["data"]], "no checkpoints/best.pt"),
    ("checkpoint-text", lambda w, t: ["evaluate", _write(t / "m.pt", "not a checkpoint\n"), "--device", "cpu"],
     "not an attrnet checkpoint"),
    ("checkpoint-truncated", lambda w, t: ["evaluate", _write(t / "m.pt", (w["run"] / "checkpoints" / "best.pt")
                                                               .read_bytes()[:2000]), "--device", "cpu"],
     "not a readable attrnet checkpoint"),
    ("checkpoint-payload-evaluate", lambda w, t: ["evaluate", _payload_checkpoint(w, t), "--device", "cpu"], "refused"),
    ("checkpoint-payload-predict", lambda w, t: ["predict", _payload_checkpoint(w, t), w["data"], "--device", "cpu"],
     "refused"),
    ("checkpoint-shape-mismatch", lambda w, t: ["evaluate", _edited_checkpoint(w, t, _shape_mismatch), "--device", "cpu"],
     "do not fit the network"),
    ("checkpoint-missing-key", lambda w, t: ["predict", _edited_checkpoint(w, t, _missing_key), w["data"],
                                             "--device", "cpu"], "do not fit the network"),
    ("checkpoint-other-attributes", lambda w, t: ["evaluate", w["run"], "--data", _other_attributes(t),
                                                  "--device", "cpu"], "no labels for the checkpoint's attribute"),
    ("checkpoint-not-a-dict", lambda w, t: ["evaluate", _tensor_file(t), "--device", "cpu"], "not an attrnet checkpoint"),
    ("upgrade-missing", lambda w, t: ["checkpoint", "upgrade", t / "none.pt"], "no such file"),
    ("upgrade-text", lambda w, t: ["checkpoint", "upgrade", _write(t / "m.pt", "hello\n")], "not a readable torch file"),
    # --- images to predict -----------------------------------------------------------------------------------
    ("predict-path-missing", lambda w, t: ["predict", w["run"], t / "nowhere.jpg", "--device", "cpu"],
     "no such image or folder"),
    ("predict-no-images", lambda w, t: ["predict", w["run"], _empty_folder(t), "--device", "cpu"], "no images found"),
    ("predict-all-unreadable", lambda w, t: ["predict", w["run"], _unreadable_images(t), "--device", "cpu",
                                             "--out", t / "p.csv"], "none of the 3 image(s) could be read"),
]


def _bad_image_data(t: Path) -> Path:
    root = _csv_data(t, "image,A,B", _csv_rows())
    _write(root / "img003.jpg", b"\xff\xd8 truncated")
    return root


def _other_attributes(t: Path) -> Path:
    return write_csv_folder(t / "other", ["image", "X", "Y"], random_csv_rows(6, ["X", "Y"]))


def _tensor_file(t: Path) -> Path:
    torch.save(torch.zeros(3), t / "tensor.pt")
    return t / "tensor.pt"


def test_there_are_enough_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv_of,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, tmp_path, capsys, argv_of, expected):
    case = tmp_path / "case"
    case.mkdir()
    argv = argv_of(world, case)
    watched = (world["data"], world["run"], world["victim"], world["synth"], world["file"].parent)
    before = _snapshot(*watched)
    code, err = _run(argv, capsys)
    assert code == 2, err
    lines = _message_lines(err)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("attrnet: error: ") and "Traceback" not in err, lines[0]
    assert expected in lines[0], lines[0]
    assert _snapshot(*watched) == before, "a refused command changed or removed existing files"
    assert not (case / "PAYLOAD_RAN").exists(), "loading the checkpoint ran code from it"
    assert not (case / "newrun").exists(), "a refused training left a run folder"
