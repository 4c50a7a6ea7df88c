"""The predict_runtimes case: a folder of JPEGs to probabilities on the CPU with each runtime, the same
images and batch in one run: torch eager (fp32), torch bf16 autocast + channels_last (where the CPU has native
bf16) and ONNX Runtime (the exported graph). Also the decode-and-resize pass alone, to say where time goes."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attrnet.inference.export import export_onnx
from attrnet.inference.model import AttributeModel
from attrnet.inference.onnx_model import OnnxAttributeModel
from attrnet.inference.sources import ModelInfo
from attrnet.precision import Precision, cpu_has_native_bf16
from attrnet.predict import iter_files
from attrnet.preprocessing import Preprocessing


def _timed_pass(model, paths, batch_size: int) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, images) of one pass of predict.iter_files, after an untimed
    batch (kernel and session set-up)."""
    for _ in iter_files(model, paths[:batch_size], batch_size):
        pass
    w0, c0, n = time.perf_counter(), time.process_time(), 0
    for done, _, _ in iter_files(model, paths, batch_size):
        n += len(done)
    return time.perf_counter() - w0, time.process_time() - c0, n


class _DecodeOnly:
    """A stand-in model whose forward costs nothing: what is left is reading, decoding and resizing."""

    def __init__(self, info):
        self.info = info

    def probabilities(self, batch):
        return np.zeros((len(batch), len(self.info.attributes)))


def predict_runtimes(bench) -> dict:

    cpu = torch.device("cpu")
    cfg = bench.config()
    info = ModelInfo(kind="attribute_net", attributes=list(bench.names), thresholds=np.full(len(bench.names), 0.5),
                     preprocessing=Preprocessing(image_size=cfg.image_hw()), config=cfg.to_dict())
    net = bench.model().to(cpu)
    if bench.trained_state is not None:
        net.load_state_dict(bench.trained_state)
    paths = [bench.table.image_dir / bench.table.files[i] for i in bench.train_idx]
    variants = {"torch_fp32": AttributeModel(net, info, cpu, Precision.resolve("fp32", False, cpu))}
    if cpu_has_native_bf16():
        variants["torch_bf16_channels_last"] = AttributeModel(net, info, cpu, Precision.resolve("bf16", True, cpu))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(variants["torch_fp32"], Path(tmp) / "model.onnx", "none")
        variants["onnxruntime"] = OnnxAttributeModel.load(onnx_path)
        variants["decode_only"] = _DecodeOnly(info)
        for name, model in variants.items():
            wall, cpu_s, n = _timed_pass(model, paths, bench.batch_size)
            rows[name] = {"images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu_s, 1),
                          "seconds": round(wall, 3), "n_images": n}
    eager = rows["torch_fp32"]["images_per_s"]
    return {"runtimes": rows, "n_images": rows["torch_fp32"]["n_images"],
            "onnx_over_torch_eager": round(rows["onnxruntime"]["images_per_s"] / eager, 2),
            "predict_images_per_s": rows["onnxruntime"]["images_per_s"]}
